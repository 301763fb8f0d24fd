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

import craftlab  # noqa: E402


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
