"""Gradebooks: one per submission while grading, merged one at a time into the main one.

nbgrader keeps grades in SQLite and was never made to autograde in parallel (nbgrader
issue #174). So every submission is autograded against its own copy of an empty
gradebook, in its own folder; only the parent process writes the main gradebook, one
submission at a time, after that submission's grading has finished. A crashed or killed
grading can leave at worst its own small gradebook half-written, which is never read.

Merging does what `nbgrader autograde` does to an existing gradebook: it sets the
automatic scores and comments and keeps what a person entered (manual scores, extra
credit, manual comments, flags).
"""
from __future__ import annotations

import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import course as course_mod
from .collect import Student
from .course import GRADER_DIR, Course
from .jobs import GRADEBOOK


@dataclass(frozen=True)
class CellScore:
    """One graded cell of one student, as the gradebook holds it."""
    auto: float | None      # what the autograder gave (None: it could not score the cell)
    manual: float | None    # what a TA entered in formgrader, which overrides auto
    extra_credit: float = 0.0

    @property
    def final(self) -> float:
        """What counts: the manual score when a TA gave one, else the automatic one, plus extra credit."""
        base = self.manual if self.manual is not None else self.auto
        return float(base or 0.0) + float(self.extra_credit or 0.0)


def db_url(path: Path) -> str:
    return f"sqlite:///{path}"


def prepare_gradebook(course: Course, work: Path) -> Path:
    """An empty gradebook in work/ holding the assignment and its graded cells (from the source
    notebook, hidden tests included), and the student version generated with it in work/release/.
    Returns the gradebook's path."""
    work.mkdir(parents=True, exist_ok=True)
    cmd = [course_mod.tool("nbgrader"), "generate_assignment", course.assignment, "--force",
           "--log-level=WARN", f"--CourseDirectory.release_directory={work / 'release'}"]
    proc = subprocess.run(cmd, cwd=GRADER_DIR, env=course_mod.nbgrader_env(work, course), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"could not prepare the gradebook in {work}:\n{proc.stderr}")
    return work / GRADEBOOK


def copy_gradebook(template: Path, dest: Path) -> None:
    """A fresh per-submission gradebook: a copy of the template, written atomically."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(template, tmp)
    tmp.replace(dest)


def _graded_cells(gradebook: Path, assignment: str) -> dict[str, tuple[float, bool]]:
    """grade_id -> (max score, graded by a person?) over all notebooks of the assignment.

    A graded cell that is also an answer (solution) cell is graded by a person in formgrader
    (the written answers): nbgrader's autograde gives it no score (None) when answered, and 0
    when left as released ("no response"). Every other graded cell is a test cell, scored
    automatically (by the trusted verifier, grader/verify.py)."""
    from nbgrader.api import Gradebook

    with Gradebook(db_url(gradebook)) as gb:
        out = {}
        for nb in gb.find_assignment(assignment).notebooks:
            answers = {cell.name for cell in nb.solution_cells}
            for cell in nb.grade_cells:
                out[cell.name] = (float(cell.max_score), cell.name in answers)
        return out


def max_scores(gradebook: Path, assignment: str) -> dict[str, float]:
    """Points of each AUTOMATICALLY graded cell (grade_id -> max score): the test cells."""
    return {name: points for name, (points, manual) in _graded_cells(gradebook, assignment).items() if not manual}


def manual_max_scores(gradebook: Path, assignment: str) -> dict[str, float]:
    """Points of each cell graded by a person in formgrader (grade_id -> max score): the written answers."""
    return {name: points for name, (points, manual) in _graded_cells(gradebook, assignment).items() if manual}


def auto_scores(gradebook: Path, assignment: str, student: str) -> dict[str, float | None]:
    """Automatic score of each automatically graded cell for one student (None: nbgrader could
    not score it). The written answers are left out: a person scores them."""
    auto = max_scores(gradebook, assignment)
    return {name: cell.auto for name, cell in cell_scores(gradebook, assignment)[student].items() if name in auto}


def waiting(cells: dict[str, CellScore], manual: dict[str, float] | set[str]) -> list[str]:
    """The written answers of one submission still waiting for a person: answered (nbgrader
    gave no automatic score) and not scored by hand yet. An answer left blank has an
    automatic 0 ("no response") and waits for nobody."""
    return [name for name, cell in cells.items() if name in manual and cell.auto is None and cell.manual is None]


def set_auto_scores(gradebook: Path, assignment: str, student: str, scores: dict[str, float]) -> None:
    """Write the automatic scores the trusted verifier decided over nbgrader's in-kernel ones."""
    from nbgrader.api import Gradebook

    with Gradebook(db_url(gradebook)) as gb:
        for nb in gb.find_submission(assignment, student).notebooks:
            for grade in nb.grades:
                if grade.name in scores:
                    grade.auto_score = scores[grade.name]
        gb.db.commit()


def cell_scores(gradebook: Path, assignment: str) -> dict[str, dict[str, CellScore]]:
    """Every submission's graded cells: student -> grade_id -> CellScore (auto and manual apart)."""
    from nbgrader.api import Gradebook

    with Gradebook(db_url(gradebook)) as gb:
        return {sub.student.id: {g.name: CellScore(g.auto_score, g.manual_score, g.extra_credit or 0.0)
                                 for nb in sub.notebooks for g in nb.grades}
                for sub in gb.find_assignment(assignment).submissions}


def add_students(gradebook: Path, students: list[Student]) -> None:
    from nbgrader.api import Gradebook

    with Gradebook(db_url(gradebook)) as gb:
        for s in students:
            gb.update_or_create_student(s.id, first_name=s.first_name or None,
                                        last_name=s.last_name or None, email=s.email or None)


def merge(main: Path, assignment: str, student: str, source: Path | None,
          flag: bool = False, info: Student | None = None) -> None:
    """Write one student's autograde results into the main gradebook.

    source: that student's own gradebook after a successful autograde; None when the
    submission could not be graded at all, which is recorded as 0 on every test, marked
    as needing a manual grade.
    flag: mark the notebook as flagged for review (nbgrader's own flag); never unflags.
    """
    from nbgrader.api import Gradebook, MissingEntry

    scores: dict[tuple[str, str], tuple[float | None, str | None]] = {}
    comments: dict[tuple[str, str], str | None] = {}
    timestamp = None
    if source is not None:
        with Gradebook(db_url(source)) as src:
            sub = src.find_submission(assignment, student)
            timestamp = sub.timestamp
            for nb in sub.notebooks:
                for g in nb.grades:
                    scores[(nb.name, g.name)] = g.auto_score
                for c in nb.comments:
                    comments[(nb.name, c.name)] = c.auto_comment

    with warnings.catch_warnings(), Gradebook(db_url(main)) as gb:
        # nbgrader's add_submission trips SQLAlchemy's autoflush warning; it is harmless
        warnings.simplefilter("ignore", category=Warning)
        fields = {}
        if info is not None:
            fields = {k: v for k, v in (("first_name", info.first_name), ("last_name", info.last_name),
                                        ("email", info.email)) if v}
        gb.update_or_create_student(student, **fields)
        try:
            gb.find_submission(assignment, student)
        except MissingEntry:
            gb.add_submission(assignment, student)
        sub = gb.find_submission(assignment, student)
        if timestamp is not None:
            sub.timestamp = timestamp
        for nb in sub.notebooks:
            for g in nb.grades:
                if source is None:
                    g.auto_score, g.needs_manual_grade = 0.0, True
                else:
                    g.auto_score = scores.get((nb.name, g.name))
                    g.needs_manual_grade = g.manual_score is not None or g.auto_score is None
            for c in nb.comments:
                c.auto_comment = comments.get((nb.name, c.name)) if source is not None else None
            if flag:
                nb.flagged = True
        gb.db.commit()


def dump(gradebook: Path, assignment: str) -> dict:
    """Everything a gradebook says about the submissions, without row ids: for comparisons."""
    from nbgrader.api import Gradebook

    out = {}
    with Gradebook(db_url(gradebook)) as gb:
        for student in gb.students:
            out[("student", student.id)] = (student.first_name, student.last_name, student.email)
        for sub in gb.find_assignment(assignment).submissions:
            out[("submission", sub.student.id)] = str(sub.timestamp)
            for nb in sub.notebooks:
                out[("notebook", sub.student.id, nb.name)] = (nb.flagged, nb.late_submission_penalty)
                for g in nb.grades:
                    out[("grade", sub.student.id, nb.name, g.name)] = (
                        g.auto_score, g.manual_score, g.extra_credit, g.needs_manual_grade)
                for c in nb.comments:
                    out[("comment", sub.student.id, nb.name, c.name)] = (c.auto_comment, c.manual_comment)
    return out
