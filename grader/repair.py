"""Check a submitted notebook against the release version and repair what nbgrader needs.

nbgrader finds the graded cells of a submission by the `nbgrader` entry of each cell's
metadata. A notebook saved by an editor that does not know nbgrader may lose it; a
student may delete a provided cell or a test cell, or copy one. This module reads the
submission as plain JSON (it never runs it) and:

- matches every cell of the release notebook that nbgrader tracks to a cell of the
  submission: by its nbgrader grade_id, else by the cell id (nbformat >= 4.5), else (for
  provided cells) by identical source, else by position between matched cells;
- puts the nbgrader metadata back on matched cells that lost it: code and markdown alike, so
  a written answer (a markdown answer cell graded by a TA) stays an answer with its points,
  and one left as released gets its checksum back (nbgrader then scores it 0, "no response");
- puts back provided cells and test cells that were deleted (nbgrader then restores
  their full source, hidden tests included, from the gradebook);
- drops nbgrader metadata that belongs to no cell of the release (or to a duplicate).

What it did goes into `notes`; what a person should look at goes into `review`. A file
that is not a notebook, or not this lab's notebook, comes back with `error` set.
"""
from __future__ import annotations

import copy
import difflib
import json
import uuid
from dataclasses import dataclass, field

import nbformat
from nbgrader import utils as nbu

from . import cells

MIN_FOUND = 0.5  # below this share of the provided cells found, it is not this lab's notebook
SIMILAR = 0.6    # an unmatched cell this similar to a provided one is that cell, edited


@dataclass
class Repaired:
    nb: nbformat.NotebookNode | None
    notes: list[str] = field(default_factory=list)
    review: list[str] = field(default_factory=list)
    error: str | None = None


_gid = cells.grade_id


def _norm(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def _names(ids) -> str:
    return ", ".join(ids)


def parse(raw: bytes) -> tuple[nbformat.NotebookNode | None, str | None]:
    """The notebook in `raw`, or None and why it is not one."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, f"not a notebook: the file is not UTF-8 text ({exc.reason} at byte {exc.start})"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not a notebook: invalid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})"
    if not isinstance(data, dict) or not isinstance(data.get("cells", None), list):
        return None, "not a notebook: the JSON has no list of cells"
    for cell in data["cells"]:  # damaged cell metadata is dropped, not fatal
        if isinstance(cell, dict) and not isinstance(cell.get("metadata", {}), dict):
            cell["metadata"] = {}
    try:
        nb = nbformat.reads(json.dumps(data), as_version=4)
    except Exception as exc:  # nbformat's errors on a damaged notebook vary
        return None, f"not a notebook: nbformat cannot read it ({type(exc).__name__}: {exc})"
    for i, cell in enumerate(nb.cells):
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw") \
                or not isinstance(cell.get("source", None), str):
            return None, f"not a notebook: cell {i} is malformed"
        if not isinstance(cell.get("metadata"), dict):
            cell["metadata"] = nbformat.NotebookNode()
        if "nbgrader" in cell.metadata and not isinstance(cell.metadata["nbgrader"], dict):
            del cell.metadata["nbgrader"]  # damaged: treated as missing, and rebuilt if the cell matches
    return nb, None


def _longest_increasing(pairs: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """The largest subset of (release index, submission index) pairs in the same order in both."""
    pairs = sorted(pairs)
    best: list[list[tuple[int, int]]] = []
    for pair in pairs:
        chain = max((c for c in best if c[-1][1] < pair[1]), key=len, default=[])
        best.append(chain + [pair])
    return set(max(best, key=len, default=[]))


class _Matcher:
    """Pairs the release's tracked cells (index i) with the submission's cells (index j)."""

    def __init__(self, release, nb):
        self.rel, self.cells = release.cells, nb.cells
        self.tracked = [i for i, c in enumerate(self.rel) if _gid(c)]
        self.gid = {i: _gid(self.rel[i]) for i in self.tracked}
        self.locked = [i for i in self.tracked if nbu.is_locked(self.rel[i])]
        self.match: dict[int, int] = {}
        self.how: dict[int, str] = {}
        self.duplicates: list[int] = []

    def pair(self, i: int, j: int, how: str) -> None:
        self.match[i], self.how[i] = j, how

    def free(self, j: int) -> bool:
        return j not in self.match.values() and j not in self.duplicates and not _gid(self.cells[j])

    def by_grade_id(self) -> None:
        """1. By nbgrader grade_id; a second cell with the same id is a copy."""
        first: dict[str, int] = {}
        known = set(self.gid.values())
        for j, cell in enumerate(self.cells):
            if _gid(cell) in known:
                (self.duplicates.append(j) if _gid(cell) in first else first.setdefault(_gid(cell), j))
        for i in self.tracked:
            if self.gid[i] in first:
                self.pair(i, first[self.gid[i]], "metadata")

    def by_cell_id(self) -> None:
        """2. By cell id (nbformat >= 4.5)."""
        by_id = {c.get("id"): j for j, c in enumerate(self.cells) if c.get("id")}
        for i in self.tracked:
            j = by_id.get(self.rel[i].get("id"))
            if i not in self.match and j is not None and self.free(j) \
                    and self.cells[j].cell_type == self.rel[i].cell_type:
                self.pair(i, j, "id")

    def by_source(self) -> None:
        """3. Provided cells by identical source, when the source is unique on both sides."""
        rel_src: dict[str, list[int]] = {}
        for i in self.locked:
            if _norm(self.rel[i].source):
                rel_src.setdefault(_norm(self.rel[i].source), []).append(i)
        sub_src: dict[str, list[int]] = {}
        for j, cell in enumerate(self.cells):
            if self.free(j):
                sub_src.setdefault(_norm(cell.source), []).append(j)
        for src, rel_is in rel_src.items():
            if len(rel_is) == 1 and len(sub_src.get(src, [])) == 1 and rel_is[0] not in self.match:
                self.pair(rel_is[0], sub_src[src][0], "source")

    def drop_out_of_order(self) -> list[str]:
        """Keep only matches in the release's order; return the grade ids of cells moved around."""
        keep = _longest_increasing(list(self.match.items()))
        moved = [self.gid[i] for i, j in self.match.items() if (i, j) not in keep]
        for i in [i for i, j in self.match.items() if (i, j) not in keep]:
            del self.match[i], self.how[i]
        return moved

    def gaps(self):
        """(previous match, next match) around each stretch of unmatched cells."""
        anchors = sorted(self.match.items()) + [(len(self.rel), len(self.cells))]
        return list(zip([(-1, -1)] + anchors[:-1], anchors))

    def by_similarity(self) -> None:
        """4a. An unmatched provided cell between two matches: the most similar cell there, edited."""
        for (ra, sa), (rb, sb) in self.gaps():
            pointer = sa
            for i in [i for i in self.locked if ra < i < rb and i not in self.match]:
                ratios = [(difflib.SequenceMatcher(None, self.rel[i].source, self.cells[j].source).ratio(), j)
                          for j in range(pointer + 1, sb)
                          if self.free(j) and self.cells[j].cell_type == self.rel[i].cell_type]
                ratio, j = max(ratios, default=(0.0, None))
                if j is not None and ratio >= SIMILAR:
                    self.pair(i, j, "similar")
                    pointer = j

    def by_position(self) -> None:
        """4b. An unmatched answer cell (code, or a markdown written answer) between two matches:
        the next free cell of its type."""
        for (ra, sa), (rb, sb) in self.gaps():
            pointer = sa
            for i in [i for i in self.tracked if ra < i < rb and i not in self.match]:
                if nbu.is_locked(self.rel[i]):
                    continue
                j = next((j for j in range(pointer + 1, sb)
                          if self.free(j) and self.cells[j].cell_type == self.rel[i].cell_type), None)
                if j is not None:
                    self.pair(i, j, "position")
                    pointer = j


def _restore_metadata(m: _Matcher, out: Repaired) -> bool:
    """5. Metadata back on matched cells; edited provided cells reported (nbgrader restores them).
    Returns whether any metadata had to be rebuilt."""
    restored = {"id": [], "source": [], "similar": [], "position": []}
    edited = []
    for i, j in sorted(m.match.items()):
        rel_cell, cell = m.rel[i], m.cells[j]
        if m.how[i] != "metadata":
            cell.metadata["nbgrader"] = copy.deepcopy(rel_cell.metadata["nbgrader"])
            restored[m.how[i]].append(m.gid[i])
        if nbu.is_locked(rel_cell) and rel_cell.cell_type == "code" and _norm(cell.source) != _norm(rel_cell.source):
            edited.append(m.gid[i])
    if any(restored.values()):
        parts = [f"{len(v)} by {k.replace('similar', 'similar source').replace('id', 'cell id')}"
                 for k, v in restored.items() if v]
        out.notes.append(f"nbgrader metadata was missing on {sum(map(len, restored.values()))} cells "
                         f"(an editor removed it?); restored: {', '.join(parts)}")
    if edited:
        out.notes.append(f"provided cells edited, nbgrader puts the originals back: {_names(edited)}")
    # Metadata that belongs to no release cell, or to a copy of one, would confuse nbgrader.
    stray = []
    for j, cell in enumerate(m.cells):
        if j not in m.match.values() and "nbgrader" in cell.metadata:
            stray += [_gid(cell)] if _gid(cell) else []
            del cell.metadata["nbgrader"]
    if stray:
        out.notes.append(f"nbgrader metadata removed from extra cells (copies or unknown): {_names(stray)}")
    return any(restored.values())


def _put_back_missing(m: _Matcher, out: Repaired, rebuilt: bool) -> None:
    """6. Deleted cells go back where they were, after the previous release cell found.

    nbgrader's own OverwriteCells.add_missing_cells does this for grade cells only, and
    fails when the cell before a deleted one is a provided cell; this covers every tracked cell.
    """
    missing = [i for i in m.tracked if i not in m.match]
    inserted = []  # (index in cells before insertion, release index)
    for i in missing:
        before = [m.match[k] for k in m.match if k < i]
        inserted.append((max(before) + 1 if before else 0, i))
    for at, i in sorted(inserted, reverse=True):
        # from the end: earlier positions stay valid, and cells put back at one spot keep release order
        cell = copy.deepcopy(m.rel[i])
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        m.cells.insert(at, cell)
    answers = [m.gid[i] for i in missing if nbu.is_solution(m.rel[i])]
    tests = [m.gid[i] for i in missing if nbu.is_grade(m.rel[i]) and m.gid[i] not in answers]
    provided = [m.gid[i] for i in missing if m.gid[i] not in answers and m.gid[i] not in tests]
    if tests:
        out.review.append(f"test cells missing from the submission (deleted?): {_names(tests)}; "
                          "put back from the release and graded")
    if answers:
        msg = f"answer cells not found: {_names(answers)} (graded as not answered)"
        (out.review if rebuilt else out.notes).append(msg)
    if provided:
        out.notes.append(f"provided cells missing, put back: {_names(provided)}")


def repair(raw: bytes, release: nbformat.NotebookNode, notebook_name: str = "the lab's notebook") -> Repaired:
    nb, error = parse(raw)
    if nb is None:
        return Repaired(None, error=error)
    m, out = _Matcher(release, nb), Repaired(nb)
    m.by_grade_id()
    m.by_cell_id()
    m.by_source()
    moved = m.drop_out_of_order()
    if moved:
        out.review.append(f"cells out of the notebook's order: {_names(moved)} (graded where they "
                          "stand in the release order; check the answers were not moved)")
    m.by_similarity()
    m.by_position()
    found = sum(1 for i in m.locked if i in m.match)
    if m.locked and found < MIN_FOUND * len(m.locked):
        return Repaired(None, error=(f"does not look like {notebook_name}: only {found} of the "
                                     f"{len(m.locked)} provided cells were found"))
    rebuilt = _restore_metadata(m, out)
    _put_back_missing(m, out, rebuilt)
    _ensure_cell_ids(nb)
    return out


def _ensure_cell_ids(nb) -> None:
    """Cell ids are required from nbformat 4.5; Colab still writes 4.0-4.4 notebooks."""
    if nb.nbformat == 4 and nb.nbformat_minor < 5:
        nb.nbformat_minor = 5
    seen = set()
    for cell in nb.cells:
        cid = cell.get("id")
        if not cid or cid in seen:
            cid = uuid.uuid4().hex[:8]
            cell["id"] = cid
        seen.add(cid)
