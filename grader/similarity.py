"""Similar hand-ins: pairs and clusters of submissions whose answers are unusually similar, as
leads for a person to look at. Never a verdict, never a score.

What is compared is what each student wrote: the answer cells of the submitted notebooks
(OUT/nbgrader/submitted/, where nbgrader's metadata has been restored), less what the student
version already gives.

- Code: every answer cell's code, tokenised and normalised by copydetect (names become V, F,
  O; strings S; comments and layout dropped, so renaming variables or rewording comments
  changes nothing), fingerprinted by winnowing k-grams; the student version's fingerprints
  are removed (copydetect's boilerplate), and so are fingerprints found in more than
  `common_share` of the class (what everyone writes). A pair's code score is the fingerprints
  they share over the geometric mean of their counts (0..1); reordered lines keep most of them.
  All pairs at once: a sparse hand-ins x fingerprints matrix times its transpose.
- Written answers: each question's text, lower-cased, compared with RapidFuzz's
  token_sort_ratio (word order ignored, small edits cost little), every pair at once
  (`process.cdist`); a pair's written score is its most similar question (0..1).

A pair is listed when a score is unusually high for this class: at least its floor and at
least `spread` robust standard deviations (1.4826 x the median absolute deviation) above the
class's median pair (course.toml [similarity]). Clusters are the connected groups of listed pairs.

Writes OUT/similarity.html (pairs, clusters, the two students' cells side by side; student
text escaped; no script may run: sanitize.CSP) and OUT/similarity.png, and a section of
OUT/summary.md.
"""
from __future__ import annotations

import html
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import course as course_mod
from . import text
from .jobs import BatchFolders, notebook_path

K, WINDOW = 25, 6                 # copydetect's defaults: k-grams of 25 normalised characters, windows of 6
MIN_FINGERPRINTS = 5              # less code than this says nothing about a pair
MIN_WRITTEN_CHARS = 40            # a shorter written answer says nothing about a pair
MAX_CHARS = 100_000               # of one hand-in's code, or one written answer: the rest is not compared
SHOWN_PAIRS = 200                 # pairs shown side by side in the page (all are in the table)
SHOWN_CHARS = 20_000              # of one cell, side by side
PARALLEL_FROM = 100               # hand-ins from which their code is read on every CPU
SECTION = "## Similar hand-ins"


@dataclass(frozen=True)
class Settings:
    """course.toml's [similarity] section (its comments say what each means)."""
    code_floor: float
    written_floor: float
    spread: float
    common_share: float

    @classmethod
    def load(cls, path: Path | str) -> "Settings":
        return course_mod.typed(cls, course_mod.read(Path(path)).get("similarity") or {}, f"[similarity] in {path}")


@dataclass
class HandIn:
    student: str
    cells: dict[str, tuple[str, str]] = field(default_factory=dict)  # grade_id -> (code|written, text), answered only


@dataclass
class Metric:
    """One way of comparing: every pair's score, the class's median and spread, the threshold."""
    name: str
    scores: np.ndarray            # n x n, symmetric; NaN where the pair cannot be compared
    floor: float
    median: float = 0.0
    spread: float = 0.0
    threshold: float = 1.0
    compared: int = 0

    def decide(self, k: float) -> None:
        upper = self.scores[np.triu_indices(len(self.scores), 1)]
        upper = upper[~np.isnan(upper)]
        self.compared = len(upper)
        if len(upper):
            self.median = float(np.median(upper))
            self.spread = 1.4826 * float(np.median(np.abs(upper - self.median)))
        self.threshold = max(self.floor, self.median + k * self.spread)


@dataclass
class Pair:
    a: int
    b: int
    code: float
    written: float
    question: str     # the written answer most alike
    cluster: int = 0


# ----------------------------------------------------------------------------- reading

def release_notebook(course, folders: BatchFolders) -> Path:
    """The student version: the batch's own (nbgrader/release, work/_template/release), else the course's."""
    for root in (folders.main / "release", folders.template / "release"):
        if (path := root / course.assignment / f"{course.notebook}.ipynb").exists():
            return path
    return course.student_notebook


def _answer_cells(nb: dict) -> dict[str, tuple[str, str]]:
    """grade_id -> (kind, source) of each answer cell, plus cells with no nbgrader identity (a
    student's own cells), keyed by position."""
    out = {}
    for i, cell in enumerate(nb.get("cells", [])):
        meta = (cell.get("metadata") or {}).get("nbgrader") or {}
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        kind = "code" if cell.get("cell_type") == "code" else "written"
        if meta.get("solution"):
            out[str(meta.get("grade_id", f"cell {i}"))] = (kind, source)
        elif not meta and kind == "code":
            out[f"own cell {i}"] = (kind, source)
    return out


def _read(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_hand_ins(course, folders: BatchFolders, release: dict, echo) -> tuple[list[HandIn], list[str]]:
    """Each submitted notebook's answers that differ from the student version; and what could not be read."""
    given = {key: src.strip() for key, (_, src) in _answer_cells(release).items()}
    root = folders.main / "submitted"
    students = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    hand_ins, unread = [], []
    for student in students:
        path = notebook_path(folders.main, "submitted", student, course)
        try:
            cells = _answer_cells(_read(path))
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            unread.append(f"{text.terminal(student)} ({type(exc).__name__})")
            continue
        hand_ins.append(HandIn(student, {k: (kind, src) for k, (kind, src) in cells.items()
                                         if src.strip() and src.strip() != given.get(k)}))
    return hand_ins, unread


# ----------------------------------------------------------------------------- scoring

def _normalised(code: str) -> str:
    """copydetect's tokenised code (names V, F, O; strings S; no comments or layout): the slow
    part (pygments), deterministic, so it may run in other processes."""
    from copydetect.utils import filter_code

    return filter_code(code[:MAX_CHARS], "answer.py", "python")[0]


def _fingerprints(normalised: str, boilerplate: np.ndarray) -> set[int]:
    """Winnowed k-gram hashes (Python's str hash: only compared within this process)."""
    from copydetect.utils import get_document_fingerprints

    return set(get_document_fingerprints(normalised, K, WINDOW, boilerplate)[0])


def _all_normalised(codes: list[str], echo) -> list[str]:
    """_normalised of each, on every CPU for a large class, with a progress line every few seconds."""
    from concurrent.futures import ProcessPoolExecutor

    workers = min(os.cpu_count() or 1, 8) if len(codes) >= PARALLEL_FROM else 1
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    results, started, said = [], time.monotonic(), time.monotonic()
    try:
        for i, done in enumerate(pool.map(_normalised, codes, chunksize=8) if pool else map(_normalised, codes), 1):
            results.append(done)
            if time.monotonic() - said > 5:
                echo(f"  similar hand-ins: read the code of {i}/{len(codes)} hand-ins "
                     f"({time.monotonic() - started:.0f} s, {workers} processes)")
                said = time.monotonic()
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return results


def code_scores(hand_ins: list[HandIn], release: dict, common_share: float, echo) -> np.ndarray:
    """Every pair's code score (NaN where either has too little code of its own)."""
    from scipy import sparse

    given = "\n".join("".join(c.get("source", "")) for c in release.get("cells", []) if c.get("cell_type") == "code")
    boilerplate = np.array(sorted(_fingerprints(_normalised(given), np.array([]))))
    codes = ["\n".join(src for kind, src in h.cells.values() if kind == "code") for h in hand_ins]
    prints = [_fingerprints(code, boilerplate) for code in _all_normalised(codes, echo)]
    n = len(hand_ins)
    index: dict[int, int] = {}
    rows, cols = [], []
    for i, fp in enumerate(prints):
        for h in fp:
            rows.append(i)
            cols.append(index.setdefault(h, len(index)))
    m = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, max(len(index), 1)))
    share = np.asarray(m.sum(axis=0)).ravel()
    m = m[:, np.flatnonzero(share <= max(2, common_share * n))]           # what everyone writes is no lead
    counts = np.asarray(m.sum(axis=1)).ravel()
    shared = (m @ m.T).toarray()
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = shared / np.sqrt(np.outer(counts, counts))
    small = counts < MIN_FINGERPRINTS
    scores[small, :] = np.nan
    scores[:, small] = np.nan
    return scores


def _words(answer: str) -> str:
    """The answer's words, lower-cased and sorted: RapidFuzz's ratio on these is its
    token_sort_ratio, sorted once per answer instead of once per pair."""
    return " ".join(sorted(re.findall(r"\w+", answer[:MAX_CHARS].lower())))


def written_scores(hand_ins: list[HandIn], echo=print) -> tuple[np.ndarray, np.ndarray]:
    """Every pair's written score (its most alike question; NaN: no question both answered at
    length), and the index of that question in `questions(hand_ins)`."""
    from rapidfuzz import fuzz, process

    n, qs = len(hand_ins), questions(hand_ins)
    best, which = np.full((n, n), np.nan), np.full((n, n), -1)
    for q, question in enumerate(qs):
        texts = [_words(h.cells[question][1]) if question in h.cells else "" for h in hand_ins]
        ok = np.array([len(t) >= MIN_WRITTEN_CHARS for t in texts])
        if ok.sum() < 2:
            continue
        at = np.flatnonzero(ok)
        if n >= PARALLEL_FROM:
            echo(f"  similar hand-ins: comparing the answers to {text.terminal(question)} ({q + 1}/{len(qs)})")
        sub = process.cdist([texts[i] for i in at], [texts[i] for i in at], scorer=fuzz.ratio,
                            dtype=np.float32, workers=-1) / 100.0
        block = np.full((n, n), np.nan)
        block[np.ix_(at, at)] = sub
        better = np.nan_to_num(block, nan=-1) > np.nan_to_num(best, nan=-1)
        best[better], which[better] = block[better], q
    return best, which


def questions(hand_ins: list[HandIn]) -> list[str]:
    return sorted({k for h in hand_ins for k, (kind, _) in h.cells.items() if kind == "written"})


def find_pairs(code: Metric, written: Metric, which: np.ndarray, qs: list[str]) -> list[Pair]:
    """Pairs above either threshold, most alike first, with their cluster (connected groups)."""
    n = len(code.scores)
    a, b = np.triu_indices(n, 1)
    over = (np.nan_to_num(code.scores[a, b], nan=-1) >= code.threshold) | \
           (np.nan_to_num(written.scores[a, b], nan=-1) >= written.threshold)
    pairs = [Pair(int(i), int(j), float(code.scores[i, j]), float(written.scores[i, j]),
                  qs[which[i, j]] if which[i, j] >= 0 else "") for i, j in zip(a[over], b[over])]
    pairs.sort(key=lambda p: -max(np.nan_to_num(p.code), np.nan_to_num(p.written)))
    parent = list(range(n))

    def root(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x
    for p in pairs:
        parent[root(p.a)] = root(p.b)
    numbers: dict[int, int] = {}
    for p in pairs:
        p.cluster = numbers.setdefault(root(p.a), len(numbers) + 1)
    return pairs


def clusters(pairs: list[Pair]) -> dict[int, list[int]]:
    out: dict[int, set[int]] = {}
    for p in pairs:
        out.setdefault(p.cluster, set()).update((p.a, p.b))
    return {c: sorted(members) for c, members in out.items()}


# ----------------------------------------------------------------------------- the page

def _name(student: str) -> str:
    return html.escape(text.terminal(student))


def _lines(source: str) -> str:
    """A cell's text for the page: each line escaped as text.terminal does (ESC, bidi overrides
    shown, never acting), then as HTML."""
    more = f"\n(... {len(source) - SHOWN_CHARS} more characters)" if len(source) > SHOWN_CHARS else ""
    lines = source[:SHOWN_CHARS].expandtabs(4).splitlines()
    return html.escape("\n".join(text.terminal(line) for line in lines) + more)


def _score(x: float) -> str:
    return "-" if np.isnan(x) else f"{x:.2f}"


def _how(metric: Metric, k: float, what: str) -> str:
    return (f"<li><b>{what}</b>: {metric.compared} pairs compared; the class's median pair scores "
            f"{metric.median:.2f}, its spread (1.4826 &times; median absolute deviation) is {metric.spread:.2f}. "
            f"Listed from <b>{metric.threshold:.2f}</b>: the larger of the floor ({metric.floor:.2f}) and the "
            f"median + {k:g} &times; spread.</li>")


def _side_by_side(number: int, p: Pair, hand_ins: list[HandIn]) -> str:
    left, right = hand_ins[p.a], hand_ins[p.b]
    keys = [k for k in dict.fromkeys([*left.cells, *right.cells])]
    rows = "".join(
        f"<tr><th colspan='2'>{html.escape(text.terminal(k))} "
        f"({html.escape((left.cells.get(k) or right.cells.get(k))[0])})</th></tr>"
        f"<tr><td><pre>{_lines(left.cells.get(k, ('', ''))[1])}</pre></td>"
        f"<td><pre>{_lines(right.cells.get(k, ('', ''))[1])}</pre></td></tr>" for k in keys)
    return (f"<h3 id='pair-{number}'>{number}. {_name(left.student)} and {_name(right.student)}</h3>"
            f"<p>code {_score(p.code)}, written {_score(p.written)}"
            f"{' (' + html.escape(text.terminal(p.question)) + ')' if p.question else ''}, cluster {p.cluster}</p>"
            f"<table class='side'><tr><th>{_name(left.student)}</th><th>{_name(right.student)}</th></tr>{rows}</table>")


def page(hand_ins: list[HandIn], pairs: list[Pair], code: Metric, written: Metric, settings: Settings,
         unread: list[str]) -> str:
    from .sanitize import CSP_META

    groups = clusters(pairs)
    listed = "".join(
        f"<tr><td><a href='#pair-{i}'>{i}</a></td><td>{_name(hand_ins[p.a].student)}</td>"
        f"<td>{_name(hand_ins[p.b].student)}</td><td>{_score(p.code)}</td><td>{_score(p.written)}</td>"
        f"<td>{html.escape(text.terminal(p.question))}</td><td>{p.cluster}</td></tr>"
        for i, p in enumerate(pairs, 1))
    group_items = "".join(f"<li>cluster {c}: {', '.join(_name(hand_ins[m].student) for m in members)} "
                          f"({len(members)} hand-ins)</li>" for c, members in groups.items())
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8">{CSP_META}<title>Similar hand-ins</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:90em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;vertical-align:top;text-align:left}}
table.side td{{width:50%}}pre{{white-space:pre-wrap;margin:0;font-size:90%}}</style></head><body>
<h1>Similar hand-ins: pairs worth a look</h1>
<p>{len(hand_ins)} hand-ins compared on what each student wrote (the student version's own code and text
left out). These pairs are unusually similar <i>for this class</i>: they are leads for a person to look at,
not findings. Answers can be alike for honest reasons (a short task, a hint everyone followed, a shared
study group the course allows). No score was changed.</p>
<h2>How the thresholds were chosen</h2><ul>
{_how(code, settings.spread, "code")}{_how(written, settings.spread, "written answers")}
<li>Code fingerprints found in more than {settings.common_share:.0%} of the hand-ins were ignored (what
everyone writes). Settings: [similarity] in the course file.</li></ul>
{f"<p>Not read: {html.escape(', '.join(unread))}</p>" if unread else ""}
<h2>Clusters</h2>{f"<ul>{group_items}</ul>" if groups else "<p>None.</p>"}
<h2>Pairs</h2>{"<table><tr><th>#</th><th>student</th><th>student</th><th>code</th><th>written</th>"
               "<th>most alike question</th><th>cluster</th></tr>" + listed + "</table>" if pairs else "<p>None.</p>"}
<h2>Side by side</h2>{"".join(_side_by_side(i, p, hand_ins) for i, p in enumerate(pairs[:SHOWN_PAIRS], 1))}
</body></html>
"""


def plot(hand_ins: list[HandIn], pairs: list[Pair], code: Metric, written: Metric, dest: Path) -> None:
    """The class's pair scores (code, written) with each threshold; the listed students' pairs as a heatmap."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cluster_of: dict[int, int] = {}
    for p in pairs:
        cluster_of.setdefault(p.a, p.cluster)
        cluster_of.setdefault(p.b, p.cluster)
    members = sorted(cluster_of, key=lambda m: (cluster_of[m], m))[:60]
    fig, axes = plt.subplots(1, 3 if members else 2, figsize=(16 if members else 11, 4.8))
    for ax, metric in zip(axes, (code, written)):
        upper = metric.scores[np.triu_indices(len(metric.scores), 1)]
        upper = upper[~np.isnan(upper)]
        ax.hist(upper, bins=np.linspace(0, 1, 41), color="#4477aa", log=len(upper) > 0)
        ax.axvline(metric.threshold, color="#cc3311", linestyle="--", label=f"listed from {metric.threshold:.2f}")
        ax.set_title(f"{metric.name}: {len(upper)} pairs")
        ax.set_xlabel("similarity (0..1)")
        ax.set_ylabel("pairs")
        ax.legend()
    if members:
        both = np.fmax(code.scores, written.scores)[np.ix_(members, members)]
        ax = axes[2]
        image = ax.imshow(both, vmin=0, vmax=1, cmap="magma_r")
        labels = [text.terminal(hand_ins[m].student, 20) for m in members]
        ax.set_xticks(range(len(members)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(members)), labels, fontsize=7)
        ax.set_title("listed students, by cluster (higher of code, written)")
        fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    tmp = dest.with_name(dest.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, dest)


def _write(dest: Path, content: str) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, dest)


def summary_lines(hand_ins: list[HandIn], pairs: list[Pair], out: Path) -> list[str]:
    groups = clusters(pairs)
    return ["", SECTION, "",
            (f"{len(pairs)} pairs in {len(groups)} clusters are unusually similar for this class, worth a look "
             f"(never a verdict; no score changed): `{out / 'similarity.html'}` (side by side) and "
             "`similarity.png`." if pairs else
             f"No pair of the {len(hand_ins)} hand-ins is unusually similar for this class "
             f"(`{out / 'similarity.html'}` says how that was decided).")]


def _add_to_summary(summary: Path, lines: list[str]) -> None:
    """summary.md with its similar hand-ins section replaced by `lines` (written atomically)."""
    if not summary.exists():
        return
    old = summary.read_text(encoding="utf-8")
    if SECTION in old:
        before, after = old.split(SECTION, 1)
        rest = after.split("\n## ", 1)
        old = before.rstrip("\n") + ("\n\n## " + rest[1] if len(rest) > 1 else "\n")
    _write(summary, old.rstrip("\n") + "\n" + "\n".join(lines) + "\n")


def compare(course, out: Path, echo=print):
    """Read, score and decide: (hand-ins, pairs, code metric, written metric, settings, unread)."""
    folders = BatchFolders(Path(out).resolve())
    settings = Settings.load(course.file)
    release = _read(release_notebook(course, folders))
    hand_ins, unread = read_hand_ins(course, folders, release, echo)
    few = len(hand_ins) < 2   # nothing to compare: no fingerprints taken
    code = Metric("code", np.full((len(hand_ins),) * 2, np.nan) if few else
                  code_scores(hand_ins, release, settings.common_share, echo), settings.code_floor)
    scores, which = written_scores(hand_ins, echo)
    written = Metric("written answers", scores, settings.written_floor)
    for metric in (code, written):
        metric.decide(settings.spread)
    return hand_ins, find_pairs(code, written, which, questions(hand_ins)), code, written, settings, unread


def report(course, out: Path, echo=print, strict: bool = False) -> list:
    """OUT/similarity.html, OUT/similarity.png and summary.md's section; one line on screen.
    Returns the listed pairs. A failure here never stops a batch's report (unless `strict`)."""
    out = Path(out).resolve()
    try:
        started = time.monotonic()
        hand_ins, pairs, code, written, settings, unread = compare(course, out, echo)
        _write(out / "similarity.html", page(hand_ins, pairs, code, written, settings, unread))
        plot(hand_ins, pairs, code, written, out / "similarity.png")
        _add_to_summary(out / "summary.md", summary_lines(hand_ins, pairs, out))
    except Exception as exc:
        if strict:
            raise
        echo(f"Similar hand-ins: not compared ({text.terminal(exc)}); `python -m grader similar --out {out}` "
             "says more.")
        return []
    echo(f"Similar hand-ins: {len(pairs)} pairs worth a look among {len(hand_ins)} hand-ins "
         f"({time.monotonic() - started:.0f} s): {out / 'similarity.html'}")
    return pairs
