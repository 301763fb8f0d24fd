"""`make demo`, the kit's main job, end to end: a sample class graded through the batch grader
TAs use, each sample getting exactly its due (the reference full marks, the blank notebook 0,
the handout's fresh classifier head and its missing eval() losing exactly their points)."""
from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from conftest import ROOT, run_env

pytestmark = pytest.mark.slow  # ~2 min on 2 cores
# Two of the demo's class (the others are in the batch tests' samples): a wrong answer and the
# blank notebook, graded after the reference run, as `make demo` does.
DEMO = ["train_mode", "blank"]


def git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture(scope="module")
def demo():
    before = git_status()
    proc = subprocess.run([sys.executable, "-m", "grader", "demo", "--only", *DEMO], cwd=ROOT, env=run_env(),
                          capture_output=True, text=True, timeout=1800)
    return proc, ROOT / ".grading" / "demo" / "out", (before, git_status())


def test_demo_grades_the_sample_class_and_checks_every_score(demo):
    proc, out, _ = demo
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"Demo OK: each of the {len(DEMO)} samples got exactly the points it must get." in proc.stdout


def test_demo_prints_the_per_student_table_and_where_the_files_are(demo, course):
    proc, out, _ = demo
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["student", "status", "score"])
    rows = [line.split() for line in lines[header + 2:header + 2 + len(DEMO)]]
    assert sorted(row[0] for row in rows) == sorted(DEMO) and all(row[1] == "graded" for row in rows), rows
    for name in ("grades.csv", "scores.png", "summary.md", f"feedback/<student>/{course.notebook}.html"):
        assert name in proc.stdout
    grades = {r["student_id"]: float(r["score"]) for r in csv.DictReader(open(out / "grades.csv"))}
    assert grades["blank"] == 0 and grades["train_mode"] == max(grades.values()) > 0
    assert (out / "feedback" / "train_mode" / f"{course.notebook}.html").exists()


def test_demo_leaves_the_working_tree_as_it_was(demo):
    _, _, (before, after) = demo
    assert after == before
