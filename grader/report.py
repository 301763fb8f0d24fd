"""What a batch grading leaves for the TA, besides nbgrader's own folders.

- grades.csv: `nbgrader export` of the main gradebook (nbgrader's format, for the LMS);
- results.csv: one row per submission: status, points per test, reason, notes, time;
  the points are read from the same gradebook (a TA's manual score overrides the
  automatic one), so results.csv and grades.csv always agree;
- summary.md: the per-test table (mean points, full marks, zeros, answers waiting for a
  person) and the status counts;
- scores.png: a heatmap of points per test across students, and a histogram of totals;
- feedback/<student>/<notebook>.html: nbgrader generate_feedback's page, or for a
  submission that could not be graded, a page that says why.

Student ids, reasons, notes and file names come from the submissions: text.py makes them
inert in each of these (a CSV cell, a markdown cell, a terminal line, HTML).
"""
from __future__ import annotations

import csv
import html
import statistics
import subprocess
from pathlib import Path

from . import course as course_mod
from . import text
from .course import GRADER_DIR
from .results import STATUSES, GradingResult

# student -> grade_id -> points that count (score.CellScore.final)
Points = dict[str, dict[str, float]]
# student -> the written answers of that submission waiting for a person (score.waiting)
Waiting = dict[str, list[str]]


def export_grades(main_work: Path, dest: Path, course=None) -> None:
    """grades.csv through `nbgrader export` (grades_csv.QuotedCsvExport, set in nbgrader_config.py)."""
    tmp = dest.with_name(dest.name + ".tmp")
    proc = subprocess.run([course_mod.tool("nbgrader"), "export", f"--to={tmp}", "--log-level=WARN"],
                          cwd=GRADER_DIR, env=course_mod.nbgrader_env(main_work, course),
                          capture_output=True, text=True)
    if proc.returncode != 0 or not tmp.exists():
        raise RuntimeError(f"nbgrader export failed:\n{proc.stdout}\n{proc.stderr}")
    tmp.replace(dest)


def points(scores: Points, student: str, test: str) -> float:
    return float(scores.get(student, {}).get(test) or 0.0)


def total(scores: Points, student: str, tests: list[str]) -> float:
    return sum(points(scores, student, t) for t in tests)


def _fmt(x: float) -> str:
    return f"{x:g}"


def write_results(results: list[GradingResult], scores: Points, tests: list[str],
                  max_tests: dict[str, float], dest: Path, waiting: Waiting | None = None) -> None:
    """`waiting_manual`: the written answers not graded by a person yet (they count 0 until then)."""
    waiting = waiting or {}
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["student_id", "status", "score", "max_score", "waiting_manual", *tests, "reason", "notes",
                    "file", "seconds"])
        for r in sorted(results, key=lambda r: r.student):
            w.writerow([text.csv_cell(r.student), r.status, _fmt(total(scores, r.student, tests)),
                        _fmt(sum(max_tests.values())), " ".join(waiting.get(r.student, [])),
                        *[_fmt(points(scores, r.student, t)) for t in tests], text.csv_cell(r.reason),
                        text.csv_cell(" | ".join(r.notes)), text.csv_cell(r.file), r.seconds])
    tmp.replace(dest)


def summary_rows(results: list[GradingResult], scores: Points, tests: list[str],
                 max_tests: dict[str, float], waiting: Waiting | None = None) -> list[list[str]]:
    """Per test: points, means (all, graded), full marks, zeros, answers waiting for a TA."""
    waiting = waiting or {}
    rows = []
    graded = [r for r in results if r.status != "failed"]

    def got(rs, t):
        """Points of `t` (or totals), leaving out written answers still waiting for a TA (their
        0 is no grade yet); totals count them as 0, as grades.csv does."""
        if t == "TOTAL":
            return [total(scores, r.student, tests) for r in rs]
        return [points(scores, r.student, t) for r in rs if t not in waiting.get(r.student, [])]

    for t in tests + ["TOTAL"]:
        full = sum(max_tests.values()) if t == "TOTAL" else max_tests[t]
        got_all, got_graded = got(results, t), got(graded, t)
        rows.append([t, _fmt(full),
                     f"{statistics.mean(got_all):.2f}" if got_all else "-",
                     f"{statistics.mean(got_graded):.2f}" if got_graded else "-",
                     str(sum(1 for g in got_all if g >= full)), str(sum(1 for g in got_all if g == 0)),
                     _waiting_count(results, waiting, t)])
    return rows


def _waiting_count(results: list[GradingResult], waiting: Waiting, test: str) -> str:
    """Submissions whose answer to `test` (any answer, for TOTAL) waits for a person; blank if none."""
    n = sum(1 for r in results if (waiting.get(r.student) if test == "TOTAL" else test in waiting.get(r.student, [])))
    return str(n) if n else ""


STUDENT_HEADER = ["student", "status", "score", "reason"]


def student_rows(results: list[GradingResult], scores: Points, tests: list[str],
                 max_tests: dict[str, float], waiting: Waiting | None = None) -> list[list[str]]:
    """One row per submission: the table a TA reads first (printed: student text made terminal-safe)."""
    waiting = waiting or {}
    full = _fmt(sum(max_tests.values()))

    def got(r):
        left = len(waiting.get(r.student, []))
        return f"{_fmt(total(scores, r.student, tests))}/{full}" + (f" ({left} waiting)" if left else "")
    return [[text.terminal(r.student), r.status, got(r), text.terminal(r.reason, limit=100)]
            for r in sorted(results, key=lambda r: r.student)]


SUMMARY_HEADER = ["test", "points", "mean (all)", "mean (graded)", "full marks", "zero", "waiting"]


def table_text(rows: list[list[str]], header: list[str] = SUMMARY_HEADER) -> str:
    """The rows as aligned columns for a terminal; every cell goes through text.terminal."""
    rows = [[text.terminal(c) for c in row] for row in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def waiting_lines(results: list[GradingResult], waiting: Waiting, manual: dict[str, float], out: Path,
                  source: str = "the source notebook") -> list[str]:
    """summary.md's section on the written answers: how many wait for a person, and the TA's path."""
    if not manual:
        return []
    left = {r.student: waiting.get(r.student, []) for r in results if waiting.get(r.student)}
    cells = ", ".join(f"{t} ({_fmt(p)})" for t, p in manual.items())
    md = ["", "## Waiting for manual grading", ""]
    if not left:
        return md + [f"Every written answer ({cells}) is graded: nothing waits for a person."]
    answers = sum(len(v) for v in left.values())
    return md + [
        f"{answers} written answers in {len(left)} submissions wait for a TA ({cells}: graded by a person, "
        "never automatically). They are not failures: until a TA scores them they count 0 in the totals "
        "above, in `grades.csv` and in `results.csv` (column `waiting_manual` lists them).", "",
        f"To grade them: `.venv/bin/python -m grader formgrade --out {out}` starts nbgrader's Formgrader on "
        "this batch and prints its address; there each answer has a score box, a comment box and its model "
        f"answer and rubric (from the source notebook, {source}, which students never get). Then "
        f"`.venv/bin/python -m grader export --out {out}` rewrites grades.csv, results.csv, this summary, "
        "scores.png and the students' feedback pages from the gradebook. Details: grader/README-TA.md, "
        "*Written answers*.", "",
        "| student | waiting |", "|---|---|",
        *[f"| {text.markdown_cell(sid)} | {', '.join(cells_)} |" for sid, cells_ in sorted(left.items())]]


def write_summary(results: list[GradingResult], scores: Points, tests: list[str], max_tests: dict[str, float],
                  dest: Path, extra: list[str] = (), waiting: Waiting | None = None,
                  manual: dict[str, float] | None = None, source: str = "the source notebook") -> str:
    rows = summary_rows(results, scores, tests, max_tests, waiting)
    counts = {s: sum(1 for r in results if r.status == s) for s in STATUSES}
    md = [f"# Grading summary: {len(results)} submissions", "",
          ", ".join(f"{n} {s}" for s, n in counts.items()), "",
          "| " + " | ".join(SUMMARY_HEADER) + " |", "|" + "---|" * len(SUMMARY_HEADER)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    problems = [r for r in sorted(results, key=lambda r: r.student) if r.status != "graded"]
    if problems:
        md += ["", "## Needs a look", "", "| student | status | score | reason |", "|---|---|---|---|"]
        md += [f"| {text.markdown_cell(r.student)} | {r.status} | {_fmt(total(scores, r.student, tests))} | "
               f"{text.markdown_cell(r.reason)} |" for r in problems]
    md += waiting_lines(results, waiting or {}, manual or {}, dest.parent, source)
    md += [*extra, ""]
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text("\n".join(md), encoding="utf-8")
    tmp.replace(dest)
    return table_text(rows)


def plot(results: list[GradingResult], scores: Points, tests: list[str], max_tests: dict[str, float],
         dest: Path, waiting: Waiting | None = None) -> None:
    """Heatmap (students x tests, share of the points earned; written answers waiting for a TA
    in blue) and a histogram of the totals."""
    waiting = waiting or {}
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap

    rows = sorted(results, key=lambda r: (-total(scores, r.student, tests), r.student))
    n = max(len(rows), 1)
    grid = np.array([[points(scores, r.student, t) / max_tests[t] if max_tests[t] else 0 for t in tests]
                     for r in rows] or [[0.0] * len(tests)])
    failed = np.array([r.status == "failed" for r in rows] or [False])
    pending = np.array([[t in waiting.get(r.student, []) for t in tests] for r in rows] or [[False] * len(tests)])
    height = min(3.5 + 0.25 * n, 40)
    fig, (ax, hx) = plt.subplots(1, 2, figsize=(max(8, 0.55 * len(tests) + 6), height),
                                 gridspec_kw={"width_ratios": [max(len(tests), 4), 4]})
    cmap = matplotlib.colormaps["RdYlGn"]
    masked = np.ma.masked_where(np.repeat(failed[:, None], len(tests), axis=1) | pending, grid)
    ax.imshow(np.where(failed[:, None], 1, np.nan) * np.ones_like(grid),
              cmap=ListedColormap(["#bbbbbb"]), aspect="auto", vmin=0, vmax=1)
    if pending.any():
        ax.imshow(np.where(pending, 1, np.nan), cmap=ListedColormap(["#9ecae1"]), aspect="auto", vmin=0, vmax=1)
    image = ax.imshow(masked, cmap=cmap, vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(tests)), [f"{t} ({_fmt(max_tests[t])})" for t in tests], rotation=60, ha="right")
    if n <= 80:
        ax.set_yticks(range(len(rows)), [f"{text.terminal(r.student)}{' (failed)' if r.status == 'failed' else ''}"
                                         f"{' *' if r.status == 'review' else ''}" for r in rows],
                      fontsize=8 if n > 30 else 10)
    else:
        ax.set_yticks([])
        ax.set_ylabel(f"{n} students, best first")
    ax.set_title("Share of each test's points (grey: not gradable, *: needs review"
                 + (", blue: written answer waiting for a TA)" if pending.any() else ")"))
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    totals = [total(scores, r.student, tests) for r in rows]
    full = sum(max_tests.values())
    hx.hist(totals, bins=np.arange(-0.5, full + 1.5, 1.0), color="#4477aa", edgecolor="white")
    hx.set_xlabel(f"total points (of {_fmt(full)})")
    hx.set_ylabel("students")
    hx.set_title(f"Totals: median {_fmt(float(np.median(totals))) if totals else '-'}")
    fig.tight_layout()
    tmp = dest.with_name(dest.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(dest)


def failure_feedback(student: str, notebook: str, reason: str, dest: Path) -> None:
    """The feedback page of a submission that could not be graded automatically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(notebook)}: feedback"
            f"</title></head><body><h1>{html.escape(notebook)}.ipynb: not graded automatically</h1>"
            f"<p>Student: {html.escape(student)}</p><p>Your submission could not be graded "
            f"automatically: <b>{html.escape(reason)}</b>.</p><p>It is recorded with 0 points for "
            "now and marked for a teaching assistant to look at.</p></body></html>\n")
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(dest)
