"""Shared fixtures. Every test runs offline: no test touches the network beyond loopback."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grader import course as course_mod  # noqa: E402

COURSE = course_mod.load()
sys.path.insert(0, str(COURSE.source_dir))  # craftlab.py

import warnings  # noqa: E402

from nbgrader.api import Gradebook  # noqa: E402

import craftlab  # noqa: E402
from grader import score  # noqa: E402
from grader.jobs import MERGED, BatchFolders  # noqa: E402
from grader.results import GradingResult  # noqa: E402


@pytest.fixture(scope="session")
def course():
    return COURSE


@pytest.fixture
def offline_env(monkeypatch):
    """Offline mode for code run in this process."""
    monkeypatch.setenv(craftlab.OFFLINE_VAR, "1")
    monkeypatch.delenv(craftlab.N_IMAGES_VAR, raising=False)
    return craftlab.Settings.from_env()


def run_env(work: Path | None = None, n_images: int | None = None) -> dict[str, str]:
    """Environment for notebooks run by tests: the grader's (offline, the venv first on PATH)."""
    return course_mod.grading_env(COURSE, work, n_images=n_images)


def reference_answers(course=COURSE) -> dict[str, str]:
    """cell id -> the reference answer of each solution cell (see tests/submissions.py)."""
    import nbformat

    from submissions import reference_answers as from_notebook

    return from_notebook(nbformat.read(course.source_notebook, as_version=4))


def build_submission(path: Path, answers: dict[str, str] | None = None, course=COURSE, edit=None) -> Path:
    """Write a submission made from the student notebook: `answers` fill the answer cells
    (by cell id); `edit(nb)` may change anything else. Like a student's hand-in."""
    import nbformat

    nb = nbformat.read(course.student_notebook, as_version=4)
    for cell in nb.cells:
        if answers and cell.id in answers:
            cell.source = answers[cell.id]
    if edit is not None:
        edit(nb)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def graded_submission(course, folders: BatchFolders, sid: str, auto: dict[str, float], written: dict[str, float | None]):
    """A graded submission, as the worker leaves it: its own gradebook with the automatic scores
    (None for a written answer that was answered, 0 for one left blank), merged into the main one."""
    own = folders.job(sid).gradebook
    own.parent.mkdir(parents=True)
    score.copy_gradebook(folders.template / "gradebook.db", own)
    with warnings.catch_warnings(), Gradebook(score.db_url(own)) as gb:
        warnings.simplefilter("ignore", category=Warning)  # nbgrader's add_submission trips SQLAlchemy's autoflush
        gb.update_or_create_student(sid)
        gb.add_submission(course.assignment, sid)
        for nb in gb.find_submission(course.assignment, sid).notebooks:
            for grade in nb.grades:
                grade.auto_score = {**auto, **written}[grade.name]
        gb.db.commit()
    score.merge(folders.main_db, course.assignment, sid, own)
    GradingResult(sid, status="graded", tests=dict(auto), max_tests=score.max_scores(own, course.assignment),
                  file=f"{sid}/{course.notebook}.ipynb").write(folders.job(sid).file(MERGED))
