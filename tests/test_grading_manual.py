"""The TA's path for the written answers: autograde leaves them waiting, a TA scores them in
formgrader, `python -m grader export` puts the totals in grades.csv and results.csv.

No notebook runs here (the sample batch of test_grading_batch.py covers what autograde does
with the written answers of real submissions): the main gradebook of a batch is built the way
the batch builds it (nbgrader's template, each submission's own gradebook merged into it),
manual scores are entered through nbgrader's gradebook API, as formgrader's handlers do, and
the reports are exported through the command line, as the TA runs it. About 30 s.
"""
from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from nbgrader.api import Gradebook

from conftest import ROOT, graded_submission, run_env
from grader import batch, score
from grader.jobs import BatchFolders
from grader.results import GradingResult


def _export(out) -> str:
    proc = subprocess.run([sys.executable, "-m", "grader", "export", "--out", str(out)], cwd=ROOT, env=run_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _rows(path) -> dict[str, dict[str, str]]:
    return {row["student_id"]: row for row in csv.DictReader(open(path, encoding="utf-8"))}


@pytest.fixture(scope="module")
def batch_out(course, tmp_path_factory):
    """A batch's output folder holding two graded submissions: ada answered every written
    question and got every test; bob answered one written question and lost check_fit."""
    out = tmp_path_factory.mktemp("manual")
    folders = BatchFolders(out)
    batch.gradebooks_phase(course, folders, {})
    max_tests = score.max_scores(folders.main_db, course.assignment)
    manual = score.manual_max_scores(folders.main_db, course.assignment)
    graded_submission(course, folders, "ada", max_tests, dict.fromkeys(manual))
    first = next(iter(manual))
    graded_submission(course, folders, "bob", {**max_tests, "check_fit": 0.0},
            {t: (None if t == first else 0.0) for t in manual})
    return out, max_tests, manual, first


def test_the_written_answers_are_graded_by_hand_and_the_tests_automatically(course, batch_out):
    _, max_tests, manual, _ = batch_out
    assert set(manual) == {"written_concepts", "written_local", "written_deletion", "written_layers"}
    assert not set(manual) & set(max_tests)
    assert "gf_check_recursion_select" in max_tests and "gf_check_recursion_fit" in max_tests


def test_manual_scores_entered_in_the_gradebook_reach_grades_csv_and_results_csv(course, batch_out):
    out, max_tests, manual, first = batch_out
    auto_total, full = sum(max_tests.values()), sum(max_tests.values()) + sum(manual.values())

    # After autograding: the answered written questions wait for a person, counted 0, never failures.
    said = _export(out)
    assert "written answers still wait for manual grading" in said
    grades, results = _rows(out / "grades.csv"), _rows(out / "results.csv")
    assert float(grades["ada"]["score"]) == auto_total and float(grades["ada"]["max_score"]) == full
    assert float(results["ada"]["score"]) == auto_total and float(results["ada"]["max_score"]) == full
    assert results["ada"]["waiting_manual"].split() == [t for t in batch.tests_in_order(course, manual)]
    assert results["bob"]["waiting_manual"].split() == [first]
    assert results["ada"]["status"] == "graded" and all(results["ada"][t] == "0" for t in manual)
    summary = (out / "summary.md").read_text()
    assert "## Waiting for manual grading" in summary and "5 written answers in 2 submissions" in summary
    assert "Formgrader" in summary and f"grader export --out {out}" in summary
    assert "| ada | " in summary and "## Needs a look" not in summary

    # The TA grades in formgrader: its handlers write manual scores into the gradebook.
    given = dict(zip(manual, (2.0, 0.5, 1.0, 1.0)))
    with Gradebook(score.db_url(out / "nbgrader" / "gradebook.db")) as gb:
        for test, points in given.items():
            grade = gb.find_grade(test, course.notebook, course.assignment, "ada")
            grade.manual_score, grade.needs_manual_grade = points, False
        grade = gb.find_grade(first, course.notebook, course.assignment, "bob")
        grade.manual_score, grade.needs_manual_grade = 1.0, False
        gb.db.commit()

    said = _export(out)
    assert "No written answer waits for manual grading" in said
    grades, results = _rows(out / "grades.csv"), _rows(out / "results.csv")
    ada, bob = auto_total + sum(given.values()), auto_total - max_tests["check_fit"] + 1.0
    assert float(grades["ada"]["score"]) == float(results["ada"]["score"]) == ada
    assert float(grades["bob"]["score"]) == float(results["bob"]["score"]) == bob
    assert {t: float(results["ada"][t]) for t in manual} == given
    assert results["ada"]["waiting_manual"] == results["bob"]["waiting_manual"] == ""
    summary = (out / "summary.md").read_text()
    assert "Every written answer" in summary and "nothing waits for a person" in summary
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_refuses_a_folder_that_was_never_graded(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "grader", "export", "--out", str(tmp_path)], cwd=ROOT,
                          env=run_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "grade" in proc.stderr


def test_the_summary_counts_waiting_answers_apart_from_zeros():
    from grader import report

    results = [GradingResult("ada", status="graded"), GradingResult("bob", status="graded")]
    scores = {"ada": {"check": 1.0, "written": 0.0}, "bob": {"check": 0.0, "written": 2.0}}
    rows = {row[0]: row for row in report.summary_rows(results, scores, ["check", "written"],
                                                        {"check": 1.0, "written": 2.0}, {"ada": ["written"]})}
    assert rows["written"][2:] == ["2.00", "2.00", "1", "0", "1"]   # bob's 2 only; ada's answer waits
    assert rows["check"][2:] == ["0.50", "0.50", "1", "1", ""]
    assert rows["TOTAL"][2:] == ["1.50", "1.50", "0", "0", "1"]


def test_export_keeps_what_only_the_grading_run_knew(tmp_path):
    """summary.md's list of protections that were off (--allow-unsafe) survives a re-export."""
    summary = tmp_path / "summary.md"
    summary.write_text("# Grading summary\n\n## Needs a look\n\nx\n\n## Protections that were OFF (--allow-unsafe)\n\n"
                       "- no bubblewrap\n- no cgroup\n\n## Waiting for manual grading\n\ny\n")
    assert batch._kept_summary_lines(summary) == [
        "", "## Protections that were OFF (--allow-unsafe)", "", "- no bubblewrap", "- no cgroup"]
    summary.write_text("# Grading summary\n")
    assert batch._kept_summary_lines(summary) == [] == batch._kept_summary_lines(tmp_path / "none.md")


def test_grades_csv_is_quoted_and_inert_whatever_the_roster_names(course, tmp_path):
    """nbgrader's own CSV export joins fields with bare commas: a name with a comma or a quote
    shifts its row. grades.csv is written by grader/grades_csv.py instead: each field quoted as
    needed, text that a spreadsheet would run as a formula made inert."""
    from grader import collect, report

    folders = BatchFolders(tmp_path)
    nasty = collect.Student("s1", '=HYPERLINK("http://x","y")', 'Lovelace, "Ada"', "ada@x.org,bob@y.org")
    batch.gradebooks_phase(course, folders, {"s1": nasty, "s2": collect.Student("s2", "Bo\nb", "", "")})
    report.export_grades(folders.main, tmp_path / "grades.csv", course)
    rows = _rows(tmp_path / "grades.csv")
    assert set(rows) == {"s1", "s2"}
    assert rows["s1"]["last_name"] == 'Lovelace, "Ada"' and rows["s1"]["email"] == "ada@x.org,bob@y.org"
    assert rows["s1"]["first_name"] == "'" + '=HYPERLINK("http://x","y")'
    assert "\n" not in rows["s2"]["first_name"] and rows["s2"]["score"] == "0.0"
    assert list(next(iter(rows.values())))[:4] == ["assignment", "duedate", "timestamp", "student_id"]
