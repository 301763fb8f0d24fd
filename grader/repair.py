"""Check a submitted notebook against the release version and repair what nbgrader needs.

nbgrader finds the graded cells of a submission by the `nbgrader` entry of each cell's
metadata. A notebook saved by an editor that does not know nbgrader may lose it; a
student may delete a provided cell or a test cell, or copy one. This module reads the
submission as plain JSON (it never runs it) and:

- matches every cell of the release notebook that nbgrader tracks to a cell of the
  submission: by its nbgrader grade_id, else by the cell id (nbformat >= 4.5), else (for
  provided cells) by identical source, else by position between matched cells;
- puts the nbgrader metadata back on matched cells that lost it;
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

MIN_FOUND = 0.5  # below this share of the provided cells found, it is not this lab's notebook
SIMILAR = 0.6    # an unmatched cell this similar to a provided one is that cell, edited


@dataclass
class Repaired:
    nb: nbformat.NotebookNode | None
    notes: list[str] = field(default_factory=list)
    review: list[str] = field(default_factory=list)
    error: str | None = None


def _meta(cell) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def _norm(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def _is_locked(meta: dict) -> bool:
    return bool(meta.get("locked")) and not meta.get("solution")


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


def repair(raw: bytes, release: nbformat.NotebookNode, notebook_name: str = "the lab's notebook") -> Repaired:
    nb, error = parse(raw)
    if nb is None:
        return Repaired(None, error=error)

    tracked = [i for i, c in enumerate(release.cells) if _meta(c).get("grade_id")]
    rel_gid = {i: _meta(release.cells[i])["grade_id"] for i in tracked}
    known = set(rel_gid.values())
    locked = [i for i in tracked if _is_locked(_meta(release.cells[i]))]
    out = Repaired(nb)
    cells = nb.cells

    # 1. By nbgrader grade_id; a second cell with the same id is a copy.
    first: dict[str, int] = {}
    duplicates = []
    for j, cell in enumerate(cells):
        gid = _meta(cell).get("grade_id")
        if gid in known:
            if gid in first:
                duplicates.append(j)
            else:
                first[gid] = j
    match: dict[int, int] = {}
    how: dict[int, str] = {}
    for i in tracked:
        if rel_gid[i] in first:
            match[i], how[i] = first[rel_gid[i]], "metadata"
    taken = lambda: set(match.values()) | set(duplicates)  # noqa: E731
    free = lambda j: j not in taken() and not _meta(cells[j]).get("grade_id")  # noqa: E731

    # 2. By cell id.
    by_id = {c.get("id"): j for j, c in enumerate(cells) if c.get("id")}
    for i in tracked:
        j = by_id.get(release.cells[i].get("id"))
        if i not in match and j is not None and free(j) and cells[j].cell_type == release.cells[i].cell_type:
            match[i], how[i] = j, "id"

    # 3. Provided cells by identical source (when the source is unique on both sides).
    rel_src: dict[str, list[int]] = {}
    for i in locked:
        if _norm(release.cells[i].source):
            rel_src.setdefault(_norm(release.cells[i].source), []).append(i)
    sub_src: dict[str, list[int]] = {}
    for j, cell in enumerate(cells):
        if free(j):
            sub_src.setdefault(_norm(cell.source), []).append(j)
    for src, rel_is in rel_src.items():
        if len(rel_is) == 1 and len(sub_src.get(src, [])) == 1 and rel_is[0] not in match:
            match[rel_is[0]], how[rel_is[0]] = sub_src[src][0], "source"

    # Keep only matches in the release's order; the others are cells moved around.
    keep = _longest_increasing(list(match.items()))
    moved = [rel_gid[i] for i, j in match.items() if (i, j) not in keep]
    for i in list(match):
        if (i, match[i]) not in keep:
            del match[i], how[i]
    if moved:
        out.review.append(f"cells out of the notebook's order: {_names(moved)} (graded where they "
                          "stand in the release order; check the answers were not moved)")

    # 4. Unmatched cells between two matched ones: an edited provided cell, or the answer cell.
    def gaps():
        anchors = sorted(match.items()) + [(len(release.cells), len(cells))]
        prev = (-1, -1)
        for anchor in anchors:
            yield prev, anchor
            prev = anchor

    for (ra, sa), (rb, sb) in list(gaps()):
        pointer = sa
        for i in [i for i in locked if ra < i < rb and i not in match]:
            ratios = [(difflib.SequenceMatcher(None, release.cells[i].source, cells[j].source).ratio(), j)
                      for j in range(pointer + 1, sb)
                      if free(j) and cells[j].cell_type == release.cells[i].cell_type]
            ratio, j = max(ratios, default=(0.0, None))
            if j is not None and ratio >= SIMILAR:
                match[i], how[i], pointer = j, "similar", j
    for (ra, sa), (rb, sb) in list(gaps()):
        pointer = sa
        for i in [i for i in tracked if ra < i < rb and i not in match]:
            if _is_locked(_meta(release.cells[i])):
                continue
            j = next((j for j in range(pointer + 1, sb)
                      if free(j) and cells[j].cell_type == release.cells[i].cell_type), None)
            if j is not None:
                match[i], how[i], pointer = j, "position", j

    found = sum(1 for i in locked if i in match)
    if locked and found < MIN_FOUND * len(locked):
        return Repaired(None, error=(f"does not look like {notebook_name}: only {found} of the "
                                     f"{len(locked)} provided cells were found"))

    # 5. Metadata back on matched cells; edited provided cells are reported (nbgrader restores them).
    restored = {"id": [], "source": [], "similar": [], "position": []}
    edited = []
    for i, j in sorted(match.items()):
        rel_cell, cell = release.cells[i], cells[j]
        if how[i] != "metadata":
            cell.metadata["nbgrader"] = copy.deepcopy(rel_cell.metadata["nbgrader"])
            restored[how[i]].append(rel_gid[i])
        if _is_locked(_meta(rel_cell)) and rel_cell.cell_type == "code" \
                and _norm(cell.source) != _norm(rel_cell.source):
            edited.append(rel_gid[i])
    if any(restored.values()):
        parts = [f"{len(v)} by {k.replace('similar', 'similar source').replace('id', 'cell id')}"
                 for k, v in restored.items() if v]
        out.notes.append(f"nbgrader metadata was missing on {sum(map(len, restored.values()))} cells "
                         f"(an editor removed it?); restored: {', '.join(parts)}")
    if edited:
        out.notes.append(f"provided cells edited, nbgrader puts the originals back: {_names(edited)}")

    # Metadata that belongs to no release cell, or to a copy of one, would confuse nbgrader.
    stray = []
    for j, cell in enumerate(cells):
        gid = _meta(cell).get("grade_id")
        if j not in match.values() and "nbgrader" in cell.metadata:
            del cell.metadata["nbgrader"]
            if gid:
                stray.append(gid)
    if stray:
        out.notes.append(f"nbgrader metadata removed from extra cells (copies or unknown): {_names(stray)}")

    # 6. Deleted cells go back where they were, after the previous release cell found.
    missing = [i for i in tracked if i not in match]
    position = {i: j for i, j in match.items()}
    inserted: list[tuple[int, int]] = []  # (index in cells before insertion, release index)
    for i in missing:
        before = [position[k] for k in position if k < i]
        inserted.append((max(before) + 1 if before else 0, i))
    for at, i in sorted(inserted, key=lambda x: (x[0], x[1]), reverse=True):
        # reversed: inserting from the end keeps the earlier positions valid, and cells
        # put back at the same spot end up in release order
        cell = copy.deepcopy(release.cells[i])
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cells.insert(at, cell)
    answers = [rel_gid[i] for i in missing if _meta(release.cells[i]).get("solution")]
    tests = [rel_gid[i] for i in missing if _meta(release.cells[i]).get("grade") and rel_gid[i] not in answers]
    provided = [rel_gid[i] for i in missing if rel_gid[i] not in answers and rel_gid[i] not in tests]
    if tests:
        out.review.append(f"test cells missing from the submission (deleted?): {_names(tests)}; "
                          "put back from the release and graded")
    if answers:
        msg = f"answer cells not found: {_names(answers)} (graded as not answered)"
        (out.review if any(restored.values()) else out.notes).append(msg)
    if provided:
        out.notes.append(f"provided cells missing, put back: {_names(provided)}")

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
