"""Grade one submission, in the worker's own process: the grading pipeline.

In its job folder (its own nbgrader folder and gradebook: grader/jobs.py), `main` checks and
repairs the notebook (repair.py), places it where nbgrader expects it, runs nbgrader's
autograde in-process with ResilientExecute (execute.py: the kernel in its sandbox, the lab's
captures), verifies each graded cell outside the kernel (the lab's rules, with replays where
needed), runs generate_feedback, and writes result.json atomically. The student's code only
ever runs in the kernel. The parent side is grader/runner.py.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import psutil
from nbgrader import utils as nbu

from . import course as course_mod
from . import gpu
from . import repair as repair_mod
from .course import GRADER_DIR, Course
from .execute import TIMING_KEY, cell_label, outcome
from .jobs import (
    EVIDENCE,
    REPLAY,
    RESULT,
    RUN,
    VERIFICATION,
    Job,
    JobFolder,
    notebook_path,
    write_notebook,
)
from .results import GradingResult, write_json

# Exception names a student knows, for the private ones Python raises in their place.
PUBLIC_NAMES = {"_IncompleteInputError": "SyntaxError"}


def nbgrader_config(cell_timeout_s: int, run_dir: Path | None = None, sandbox=None, seed: int | None = None,
                    evidence_dir: Path | None = None, reference: bool = False):
    """nbgrader_config.py, plus this module's settings: hidden tests removed before the notebook
    is written or run (the kernel never sees them, nor does the feedback page), our Execute,
    the kernel in run_dir and, when given, in the sandbox; with evidence_dir and seed, the
    lab's captures run and their evidence is written there."""
    from nbconvert.preprocessors import ClearMetadataPreprocessor  # noqa: F401  (nbgrader needs it)
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import ClearHiddenTests, Execute, OverwriteCells
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    from .execute import ResilientExecute
    from .sanitize import autograde_preprocessors

    cfg = PyFileConfigLoader("nbgrader_config.py", path=str(GRADER_DIR)).load_config()
    traits = Autograde.class_traits()
    sanitize = list(traits["sanitize_preprocessors"].default())
    sanitize.insert(sanitize.index(OverwriteCells) + 1, ClearHiddenTests)
    extra = Config()
    extra.Autograde.sanitize_preprocessors = sanitize
    extra.Autograde.autograde_preprocessors = autograde_preprocessors(
        [ResilientExecute if p is Execute else p for p in traits["autograde_preprocessors"].default()])
    extra.ResilientExecute.timeout = int(cell_timeout_s)
    if run_dir is not None:
        extra.ResilientExecute.run_dir = str(run_dir)
    if evidence_dir is not None and seed is not None:
        extra.ResilientExecute.evidence_dir = str(evidence_dir)
        extra.ResilientExecute.capture_seed = seed
        extra.ResilientExecute.reference_run = reference
    extra.HTMLExporter.template_name = "feedback"
    cfg.merge(extra)
    if sandbox is not None:
        cfg.merge(sandbox.config())
    return cfg


def _run_app(app_class, cfg, assignment: str, student: str, log: logging.Logger) -> str | None:
    """Run an nbgrader converter for one student; None on success, else the error."""
    from nbgrader.coursedir import CourseDirectory

    coursedir = CourseDirectory(config=cfg)
    coursedir.assignment_id, coursedir.student_id = assignment, student
    app = app_class(coursedir=coursedir, config=cfg)
    app.log = log
    app.force = True
    if hasattr(app, "create_student"):
        app.create_student = True
    try:
        app.start()
    except BaseException as exc:  # nbgrader signals failure with NbGraderException or SystemExit
        log.error("%s failed:\n%s", app_class.__name__, traceback.format_exc())
        return f"{type(exc).__name__}: {exc}".strip(": ")
    return None


def _error_text(cell) -> tuple[str, str]:
    """(name, first line) of a cell's first error output: the kernel's words, for notes only."""
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            name = str(out.get("ename", ""))
            return PUBLIC_NAMES.get(name, name), " ".join(str(out.get("evalue", "")).split())[:100]
    return "", ""


def _cell_problems(nb, cell_timeout_s: int) -> tuple[list[str], list[str]]:
    """(notes, review) from the grader's own record of each code cell's run (ResilientExecute's,
    in the cell's metadata): never from error names or texts, which the kernel prints."""
    unanswered, errors, timeouts, stops = [], [], [], []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        label, how = cell_label(cell, index), outcome(cell)
        if how == "died":
            stops.append(f"the kernel died in {label}: the cells after it were not run")
        elif how == "hung":
            stops.append(f"the kernel stopped responding in {label} and was stopped; the cells after it were not run")
        elif how == "timeout":
            timeouts.append(label)
        elif how == "error" and not (nbu.is_grade(cell) or nbu.is_locked(cell)):
            name, value = _error_text(cell)
            if name == "NotImplementedError" and nbu.is_solution(cell):
                unanswered.append(label)
            else:
                errors.append(f"{label} ({name}: {value})" if value else f"{label} ({name})")
    notes = [f"not answered: {', '.join(unanswered)}"] if unanswered else []
    notes += [f"errors in: {'; '.join(errors)}"] if errors else []
    review = [f"ran past the {cell_timeout_s} s cell limit and was interrupted: {', '.join(timeouts)}"] \
        if timeouts else []
    return notes, review + stops


def cell_seconds(nb) -> dict[str, float]:
    """Seconds each cell that ran took, as ResilientExecute recorded them in the notebook."""
    return {cell_label(cell, i): cell.metadata[TIMING_KEY]["seconds"] for i, cell in enumerate(nb.cells)
            if cell.get("metadata", {}).get(TIMING_KEY, {}).get("outcome", "not_run") != "not_run"}


@dataclass
class Grading:
    """One submission's grading as it goes: the course (loaded once), the job, its folder, the result."""
    course: Course
    job: Job
    folder: JobFolder
    result: GradingResult

    @property
    def log(self) -> logging.Logger:
        log = logging.getLogger(f"grader.pipeline.{self.job.student}")
        if not log.handlers:
            log.setLevel(logging.INFO)
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
            log.addHandler(handler)
        return log

    def notebook(self, kind: str) -> Path:
        return self.folder.notebook(kind, self.course, self.job.student)

    @contextlib.contextmanager
    def stage(self, name: str):
        """Add the block's seconds to result.stage_seconds[name] (results.STAGES says what each is)."""
        started = time.monotonic()
        try:
            yield
        finally:
            seconds = self.result.stage_seconds.get(name, 0.0) + time.monotonic() - started
            self.result.stage_seconds[name] = round(seconds, 2)


def _submit(g: Grading) -> bool:
    """Check and repair the file as JSON; place it where nbgrader expects it. False: not gradable."""
    import nbformat

    name = f"{g.course.notebook}.ipynb"
    release = nbformat.read(g.job.release, as_version=4)
    repaired = repair_mod.repair(Path(g.job.source).read_bytes(), release, name)
    if repaired.error:
        g.result.reason = repaired.error
        return False
    if Path(g.job.source).name != name:
        g.result.notes.append(f"submitted as '{Path(g.job.source).name}', graded as {name}")
    g.result.notes += repaired.notes
    g.result.review += repaired.review
    dest = g.notebook("submitted")
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(repaired.nb, dest)
    return True


def _run_dir(g: Grading, name: str = RUN) -> Path:
    """A kernel's host folder, empty: the cwd of the process that starts the kernel. The kernel
    works in a private folder of its sandbox (the lab's helper files bound into it); only
    without bubblewrap is this its working folder. The grader never reads anything back from it."""
    run_dir = g.folder.file(name)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    return run_dir


def _sandbox(g: Grading, run_dir: Path):
    """A kernel sandbox for this submission, started by kernel/boot.py (the CPU standing in for
    CUDA), as a fork of the batch's zygote when there is one (kernel/warm.py)."""
    from . import lab
    from .kernel import BOOT
    from .kernel.probe import probe
    from .kernel.sandbox import Limits, Sandbox
    from .kernel.warm import Zygote

    env, binds = course_mod.kernel_spec(g.course, os.environ)
    helpers = {g.course.source_dir / name: name for name in lab.load(g.course).SUPPORT_FILES}
    return Sandbox(run_dir, Limits.load(g.course.file), probe(), env=env, binds=binds, files=helpers, boot=BOOT,
                   allow_unsafe=g.job.allow_unsafe, zygote=Zygote.from_env(os.environ), manifest_dir=g.folder.path)


def _autograde(g: Grading) -> bool:
    """nbgrader autograde in the sandbox (kernel events and captures land in the notebook and the
    evidence folder); then what the grader's own record says about each cell."""
    import nbformat
    from nbgrader.converters import Autograde

    run_dir = _run_dir(g)
    with g.stage("sandbox"):
        sandbox = _sandbox(g, run_dir)
    with sandbox:
        os.environ.update(sandbox.jupyter_env())
        with g.stage("autograde"):
            config = nbgrader_config(g.job.cell_timeout_s, run_dir, sandbox, g.job.seed, g.folder.file(EVIDENCE),
                                     reference=not g.job.reference_job)
            error = _run_app(Autograde, config, g.course.assignment, g.job.student, g.log)
        left = sandbox.cleanup()
    if left:
        g.result.notes.append(f"{left} process(es) left running by the submission were killed")
    autograded = g.notebook("autograded")
    if error or not autograded.exists():
        g.result.reason = f"nbgrader autograde failed ({error or 'no autograded notebook'}); see worker.log"
        return False
    nb = nbformat.read(autograded, as_version=4)
    notes, review = _cell_problems(nb, g.job.cell_timeout_s)
    g.result.notes += notes + [reason for reason in [gpu.gpu_reason(nb)] if reason]
    g.result.review += review
    g.result.cell_seconds = cell_seconds(nb)
    _split_autograde(g.result, nb.metadata.get(TIMING_KEY, {}))
    return True


def _split_autograde(result: GradingResult, timing: dict) -> None:
    """nbgrader autograde's seconds, split into kernel start, cells, captures and nbgrader's own."""
    total = result.stage_seconds.pop("autograde", 0.0)
    parts = {"kernel_start": timing.get("kernel_start_seconds", 0.0), "cells": round(sum(result.cell_seconds.values()), 2),
             "captures": timing.get("capture_seconds", 0.0)}
    result.stage_seconds |= parts | {"nbgrader": round(max(0.0, total - sum(parts.values())), 2)}


def _feedback(g: Grading) -> None:
    """nbgrader generate_feedback, and the page's Content-Security-Policy made sure of."""
    from nbgrader.converters import GenerateFeedback

    from .sanitize import protect_page

    error = _run_app(GenerateFeedback, nbgrader_config(g.job.cell_timeout_s), g.course.assignment, g.job.student,
                     g.log)
    if error:
        g.result.notes.append(f"no feedback file: nbgrader generate_feedback failed ({error})")
        return
    page = notebook_path(g.folder.path, "feedback", g.job.student, g.course, ".html")
    try:  # the feedback template already did it: this makes sure, or publishes no page
        protect_page(page)
    except (OSError, ValueError) as exc:
        page.unlink(missing_ok=True)
        g.result.notes.append(f"no feedback file: its page could not be protected ({exc})")


def _replayer(g: Grading, lab):
    """The lab's replays of this submission, in a sandboxed kernel of their own (grader/replay.py)."""
    from . import replay

    def run(requests):
        with g.stage("replay"):
            run_dir = _run_dir(g, REPLAY)
            with _sandbox(g, run_dir) as sandbox:
                done = replay.run(requests, lab.REPLAY_SOURCE, lab.context(g.job.seed), sandbox, run_dir,
                                  g.job.cell_timeout_s, g.log)
        g.result.notes.append(f"{len(requests)} trusted recomputation(s) on the student's own values "
                              f"({', '.join(r.name for r in requests)})")
        return done
    return run


def _verify(g: Grading) -> None:
    """The trusted side: each graded cell's points from the evidence the captures sent, compared
    with the batch's reference run and with trusted recomputations; the in-kernel scores only
    serve to spot tampering."""
    import nbformat

    from . import evidence, lab, score, verdicts

    graded = lab.load(g.course)
    reference = JobFolder(Path(g.job.reference_job))
    autograded = g.notebook("autograded")
    nb = nbformat.read(autograded, as_version=4)
    ref_nb = nbformat.read(reference.notebook("autograded", g.course), as_version=4)
    cells = graded.check(evidence.Store(g.folder.file(EVIDENCE)).load(), evidence.Store(reference.file(EVIDENCE)).load(),
                         evidence.displayed(nb), evidence.displayed(ref_nb), g.job.seed, _replayer(g, graded))
    scores, tampering = verdicts.decide(cells, {t: v or 0.0 for t, v in g.result.kernel_tests.items()},
                                        g.result.max_tests)
    score.set_auto_scores(g.folder.gradebook, g.course.assignment, g.job.student, scores)
    g.result.tests = scores
    g.result.review += [f"possible tampering: {t.summary()}" for t in tampering]
    write_json(g.folder.file(VERIFICATION), {"verdicts": {gid: v.to_dict() for gid, v in cells.items()},
                                             "tampering": [t.to_dict() for t in tampering]})
    verdicts.annotate(nb, cells)
    write_notebook(nb, autograded)


def grade_here(job_dir: Path) -> GradingResult:
    """Grade the submission job_dir/job.json describes, in this process."""
    from . import score

    job = Job.read(job_dir)
    g = Grading(course_mod.load(), job, JobFolder(Path(job_dir)), GradingResult(job.student, file=job.file,
                                                                                 sha256=job.sha256))
    with g.stage("repair"):
        submitted = _submit(g)
    if not submitted or not _autograde(g):
        return g.result
    g.result.kernel_tests = score.auto_scores(g.folder.gradebook, g.course.assignment, job.student)
    g.result.max_tests = score.max_scores(g.folder.gradebook, g.course.assignment)
    if job.reference_job:
        with g.stage("verify"):
            _verify(g)
        if "replay" in g.result.stage_seconds:  # counted apart (results.STAGES)
            g.result.stage_seconds["verify"] = round(g.result.stage_seconds["verify"]
                                                     - g.result.stage_seconds["replay"], 2)
    else:  # the reference run itself (trusted code), or verification off in a test
        g.result.tests = dict(g.result.kernel_tests)
        unscored = sorted(t for t, v in g.result.tests.items() if v is None)
        if unscored:
            g.result.review.append(f"nbgrader could not score {', '.join(unscored)} (counted as 0)")
    with g.stage("feedback"):
        if _light(job):
            _lighten(g)
        _feedback(g)
    return g.result.conclude()


def _light(job: Job) -> bool:
    """Whether this job keeps only what light.py says: a verified submission, unless --keep-work
    (the reference run is kept whole: every submission is verified against it)."""
    return bool(job.reference_job) and not job.keep_work


def _lighten(g: Grading) -> None:
    """The autograded notebook's figures made light (light.py), once verified, before the page."""
    import nbformat

    from . import light

    autograded = g.notebook("autograded")
    nb = nbformat.read(autograded, as_version=4)
    before, after = light.lighten_notebook(nb)
    if after < before:
        write_notebook(nb, autograded)


def _tidy(job_dir: Path) -> None:
    """At the end of the pipeline: what only served the grading removed (light.tidy_job)."""
    from . import light

    try:
        job = Job.read(job_dir)
        if _light(job):
            light.tidy_job(JobFolder(job_dir), course_mod.load(), job.student)
    except Exception:  # a folder left heavier; the grading stands
        traceback.print_exc()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job_dir = Path(argv[0]).resolve()
    started = time.monotonic()
    since_exec = time.time() - psutil.Process().create_time()  # the interpreter and this module's imports
    try:
        result = grade_here(job_dir)
    except Exception as exc:
        traceback.print_exc()
        result = GradingResult.failure(job_dir.name, f"the grader itself failed ({type(exc).__name__}: "
                                                     f"{exc}); see worker.log")
    result.stage_seconds = {"worker_start": round(since_exec, 2), **result.stage_seconds}
    result.worker_seconds = round(time.monotonic() - started + since_exec, 1)
    result.write(job_dir / RESULT)
    _tidy(job_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
