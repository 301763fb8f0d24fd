"""Run nbgrader autograde on submissions inside a grading work folder, and read the scores."""
from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import course as course_mod
from .course import GRADER_DIR, Course


@dataclass
class Result:
    student: str
    score: float | None
    max_score: float
    seconds: float
    returncode: int
    log: str


def grading_env(course: Course, work: Path, offline: bool = True, n_images: int | None = None) -> dict:
    """Environment for notebooks executed by the grader: grading mode, offline unless asked."""
    extra = {"CRAFT_LAB_N_IMAGES": str(n_images or course.grading_n_images)}
    if offline:
        extra["CRAFT_LAB_OFFLINE"] = "1"
    return course_mod.nbgrader_env(work, **extra)


def prepare_gradebook(course: Course, work: Path) -> None:
    """Record the assignment and its graded cells in work/gradebook.db (from the source notebook)."""
    work.mkdir(parents=True, exist_ok=True)
    cmd = [course_mod.tool("nbgrader"), "generate_assignment", course.assignment, "--force",
           "--log-level=WARN", f"--CourseDirectory.release_directory={work / 'release'}"]
    result = subprocess.run(cmd, cwd=GRADER_DIR, env=course_mod.nbgrader_env(work),
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"could not prepare the gradebook in {work}:\n{result.stderr}")


def submit(course: Course, work: Path, student: str, notebook: Path) -> Path:
    """Place `notebook` where nbgrader expects student's submission."""
    dest = work / "submitted" / student / course.assignment / f"{course.notebook}.ipynb"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(notebook, dest)
    return dest


def autograde(course: Course, work: Path, student: str, env: dict) -> Result:
    """nbgrader autograde for one student; the score comes from the gradebook."""
    started = time.monotonic()
    cmd = [course_mod.tool("nbgrader"), "autograde", course.assignment, "--student", student,
           "--force", "--log-level=INFO"]
    proc = subprocess.run(cmd, cwd=GRADER_DIR, env=env, capture_output=True, text=True)
    score, max_score = read_score(course, work, student)
    return Result(student, score, max_score, time.monotonic() - started, proc.returncode,
                  proc.stdout + proc.stderr)


def read_score(course: Course, work: Path, student: str) -> tuple[float | None, float]:
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{work / 'gradebook.db'}") as gb:
        max_score = gb.find_assignment(course.assignment).max_score
        try:
            submission = gb.find_submission(course.assignment, student)
        except MissingEntry:
            return None, max_score
        return submission.score, max_score


def cell_scores(course: Course, work: Path, student: str) -> dict[str, float]:
    """Points earned per graded cell (grade_id -> score) for one student."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{work / 'gradebook.db'}") as gb:
        nb = gb.find_submission_notebook(course.notebook, course.assignment, student)
        return {grade.name: grade.score for grade in nb.grades}
