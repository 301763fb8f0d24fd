"""Grade ONE submission, in a process of its own.

Parent side, `run_job`: starts the worker as a fork of the batch's fork server (which has
imported nbgrader and this package once, PRELOAD), in a new session with the grading
environment, waits at most the per-notebook limit, then kills the worker and
everything it started (the Jupyter kernel runs in a session of its own, so it is found by
a marker in its environment as well as by parentage). It returns the worker's result, or
a failure saying why there is none. This is the one place where isolation and resource
limits for untrusted code go.

Child side, `main`: in JOB_DIR (its own nbgrader folder with its own gradebook) it
checks and repairs the notebook (repair.py), places it where nbgrader expects it, runs
nbgrader's autograde and generate_feedback in-process with ResilientExecute (execute.py)
and writes result.json atomically. The student's code only ever runs in the kernel.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from nbgrader import utils as nbu

from . import course as course_mod
from . import gpu
from . import repair as repair_mod
from .course import GRADER_DIR, ROOT
from .execute import TIMING_KEY, cell_label, outcome
from .results import GradingResult, write_json
from .sandbox import reap

RESULT = "result.json"
JOB = "job.json"
BOOT = "/opt/craft-lab/kernel_boot.py"  # where the kernel's entry point is bound in the sandbox
LOG = "worker.log"
EVIDENCE = "evidence"               # what the captures sent, as the worker received it
VERIFICATION = "verification.json"  # each graded cell's verdict and any tampering evidence
MARKER = "CRAFT_LAB_JOB"
# Exception names a student knows, for the private ones Python raises in their place.
PUBLIC_NAMES = {"_IncompleteInputError": "SyntaxError"}


# ----------------------------------------------------------------------------- parent side

def _marked_processes(marker: str):
    import psutil

    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(MARKER) == marker:
                yield proc
        except (psutil.Error, OSError):
            continue


def kill_tree(pid: int, marker: str | None = None) -> int:
    """Kill pid, its descendants and every process carrying the job's marker; return how many."""
    import psutil

    procs = {}
    try:
        root = psutil.Process(pid)
        procs[root.pid] = root
        for child in root.children(recursive=True):
            procs[child.pid] = child
    except psutil.Error:
        pass
    if marker:
        for proc in _marked_processes(marker):
            procs[proc.pid] = proc
    procs.pop(os.getpid(), None)
    for proc in procs.values():
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(procs.values()), timeout=10)
    return len(procs)


# What each worker needs, imported once by the batch's fork server instead of once per submission
PRELOAD = ("grader.worker", "grader.execute", "grader.verdicts", "grader.evidence", "grader.replay", "grader.score",
           "grader.sandbox", "grader.warm", "grader.repair", "grader.sanitize", "nbgrader.converters",
           "nbgrader.preprocessors", "nbconvert", "nbclient", "jupyter_client", "psutil")
_forkserver = None


def _context():
    """multiprocessing's fork server, with PRELOAD imported: each worker is a fresh fork of it."""
    global _forkserver
    if _forkserver is None:
        import multiprocessing

        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(PRELOAD))
        _forkserver = context
    return _forkserver


def _worker_process(job_dir: str, env: dict[str, str], log: str, argv: list[str] | None) -> None:
    """The worker's start, in its fresh fork: own session, the job's environment and log; then
    main(), or argv instead (tests)."""
    os.setsid()
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(ROOT)
    if argv:
        os.execve(argv[0], argv, env)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    main([job_dir])


def run_job(job_dir: Path, env: dict[str, str], timeout_s: float, registry: dict | None = None,
            argv: list[str] | None = None) -> GradingResult:
    """Grade the submission described in job_dir/job.json in a process of its own (a fork of the
    fork server); return its result.

    registry, when given, holds {job folder name: (pid, marker)} while the worker runs, so
    that the caller can kill every running worker (on Ctrl-C). argv replaces the worker
    command (tests).
    """
    marker = f"{job_dir.name}-{os.getpid()}-{time.monotonic_ns()}"
    env = dict(env, **{MARKER: marker, "PYTHONUNBUFFERED": "1"})
    started = time.monotonic()
    proc = _context().Process(target=_worker_process, args=(str(job_dir), env, str(job_dir / LOG), argv),
                              name=f"grader-worker-{job_dir.name}", daemon=False)
    proc.start()
    if registry is not None:
        registry[job_dir.name] = (proc.pid, marker)
    try:
        timed_out = _wait(proc, timeout_s, marker)
    finally:
        leftovers = kill_tree(proc.pid, marker)
        proc.join(timeout=10)
        reap(job_dir)  # what the sandbox of a killed worker left: cgroups, /tmp folders
        if registry is not None:
            registry.pop(job_dir.name, None)
    seconds = round(time.monotonic() - started, 1)
    if timed_out:
        return GradingResult.failure(job_dir.name, seconds=seconds, reason=(
            f"killed after {timeout_s:.0f} s: the notebook ran past the per-notebook time limit "
            "(an endless loop the interrupt could not stop, or far too slow)"))
    if not (job_dir / RESULT).exists():
        code = proc.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        return GradingResult.failure(job_dir.name, seconds=seconds, reason=(
            f"the grading process ended without a result ({how}); see {job_dir / LOG}"))
    result = GradingResult.read(job_dir / RESULT)
    if leftovers > 1:
        result.notes.append(f"{leftovers - 1} process(es) left running by the submission were killed")
    result.seconds = seconds
    return result


def _wait(proc, timeout_s: float, marker: str) -> bool:
    """Wait for the worker; True if it ran past timeout_s. Ctrl-C takes the worker down with us."""
    try:
        proc.join(timeout=timeout_s)
        return proc.is_alive()
    except BaseException:
        kill_tree(proc.pid, marker)
        raise


# ----------------------------------------------------------------------------- child side

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


@dataclass
class Job:
    """What the parent asks the worker to grade (job.json in the job folder)."""
    student: str
    source: str             # the submitted file, as collected
    release: str            # the student version the submission is checked against
    cell_timeout_s: int
    file: str = ""
    sha256: str = ""
    allow_unsafe: bool = False   # grade even where the sandbox lacks a protection (the TA said so)
    seed: int | None = None      # the batch's secret seed (None: no captures, no verification)
    reference_job: str = ""      # job folder of the batch's trusted reference run ("": this IS it)

    def write(self, job_dir: Path) -> None:
        write_json(job_dir / JOB, asdict(self))

    @classmethod
    def read(cls, job_dir: Path) -> "Job":
        return cls(**json.loads((job_dir / JOB).read_text()))


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


def _submit(job: Job, job_dir: Path, result: GradingResult) -> bool:
    """Check and repair the file as JSON; place it where nbgrader expects it. False: not gradable."""
    import nbformat

    course = course_mod.load()
    name = f"{course.notebook}.ipynb"
    release = nbformat.read(job.release, as_version=4)
    repaired = repair_mod.repair(Path(job.source).read_bytes(), release, name)
    if repaired.error:
        result.reason = repaired.error
        return False
    if Path(job.source).name != name:
        result.notes.append(f"submitted as '{Path(job.source).name}', graded as {name}")
    result.notes += repaired.notes
    result.review += repaired.review
    dest = job_dir / "submitted" / job.student / course.assignment / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(repaired.nb, dest)
    return True


def _logger(student: str) -> logging.Logger:
    log = logging.getLogger(f"grader.worker.{student}")
    log.setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    log.addHandler(handler)
    return log


def _run_dir(job_dir: Path, name: str = "run") -> Path:
    """A kernel's host folder, empty: the cwd of the process that starts the kernel. The kernel
    works in a private folder of its sandbox (the lab's helper files bound into it); only
    without bubblewrap is this its working folder. The grader never reads anything back from it."""
    run_dir = job_dir / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    return run_dir


def sandbox_spec(environ) -> tuple[dict[str, str], dict[Path, str]]:
    """(variables, read-only binds) of a kernel graded in the environment `environ`: the lab's
    settings, the thread counts, the CPU standing in for CUDA; the data when online."""
    from .kernel_boot import CUDA_ON_CPU, TF_EAGER

    craftlab = course_mod.lab_module()
    names = (*craftlab.VARIABLES, CUDA_ON_CPU, TF_EAGER, *course_mod.THREAD_VARS, "PYTHONUNBUFFERED")
    env = {name: environ[name] for name in names if name in environ}
    env["NBGRADER_EXECUTION"] = "autograde"
    binds = {GRADER_DIR / "kernel_boot.py": BOOT}
    settings = craftlab.Settings.from_env(environ)
    if not settings.offline:  # no network inside: the images and weights the batch fetched, read-only
        torch_home = Path(environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch")
        binds |= {settings.data_dir: settings.data_dir, torch_home: torch_home}
        env["TORCH_HOME"] = str(torch_home)
    return env, binds


def _sandbox(job: Job, run_dir: Path):
    """The submission's kernel sandbox, started by kernel_boot.py (the CPU standing in for CUDA),
    as a fork of the batch's zygote when there is one (warm.py)."""
    from . import lab
    from .sandbox import Limits, Sandbox
    from .warm import Zygote

    course = course_mod.load()
    env, binds = sandbox_spec(os.environ)
    helpers = {course.source_dir / name: name for name in lab.load(course).SUPPORT_FILES}
    return Sandbox(run_dir, Limits.load(), env=env, binds=binds, files=helpers, boot=BOOT,
                   allow_unsafe=job.allow_unsafe, zygote=Zygote.from_env(os.environ), manifest_dir=run_dir.parent)


def _autograde(job: Job, job_dir: Path, result: GradingResult) -> bool:
    """nbgrader autograde in the sandbox (kernel events land in the notebook), then generate_feedback."""
    import nbformat
    from nbgrader.converters import Autograde

    course = course_mod.load()
    log = _logger(job.student)
    run_dir = _run_dir(job_dir)
    with _stage(result, "sandbox"):
        sandbox = _sandbox(job, run_dir)
    with sandbox:
        os.environ.update(sandbox.jupyter_env())
        with _stage(result, "autograde"):
            config = nbgrader_config(job.cell_timeout_s, run_dir, sandbox, job.seed, job_dir / EVIDENCE,
                                     reference=not job.reference_job)
            error = _run_app(Autograde, config, course.assignment, job.student, log)
        left = sandbox.cleanup()
    if left:
        result.notes.append(f"{left} process(es) left running by the submission were killed")
    autograded = autograded_path(job_dir, job.student)
    if error or not autograded.exists():
        result.reason = f"nbgrader autograde failed ({error or 'no autograded notebook'}); see worker.log"
        return False
    nb = nbformat.read(autograded, as_version=4)
    notes, review = _cell_problems(nb, job.cell_timeout_s)
    result.notes += notes + [reason for reason in [gpu.gpu_reason(nb)] if reason]
    result.review += review
    result.cell_seconds = cell_seconds(nb)
    _split_autograde(result, nb.metadata.get(TIMING_KEY, {}))
    return True


@contextlib.contextmanager
def _stage(result: GradingResult, name: str):
    """Add the block's seconds to result.stage_seconds[name] (results.STAGES says what each is)."""
    started = time.monotonic()
    try:
        yield
    finally:
        result.stage_seconds[name] = round(result.stage_seconds.get(name, 0.0) + time.monotonic() - started, 2)


def _split_autograde(result: GradingResult, timing: dict) -> None:
    """nbgrader autograde's seconds, split into kernel start, cells, captures and nbgrader's own."""
    total = result.stage_seconds.pop("autograde", 0.0)
    parts = {"kernel_start": timing.get("kernel_start_seconds", 0.0), "cells": round(sum(result.cell_seconds.values()), 2),
             "captures": timing.get("capture_seconds", 0.0)}
    result.stage_seconds |= parts | {"nbgrader": round(max(0.0, total - sum(parts.values())), 2)}


def _feedback(job: Job, result: GradingResult) -> None:
    from nbgrader.converters import GenerateFeedback

    from .sanitize import protect_page

    course = course_mod.load()
    cfg = nbgrader_config(job.cell_timeout_s)
    error = _run_app(GenerateFeedback, cfg, course.assignment, job.student, _logger(job.student))
    if error:
        result.notes.append(f"no feedback file: nbgrader generate_feedback failed ({error})")
        return
    page = (Path(cfg.CourseDirectory.root) / cfg.CourseDirectory.feedback_directory / job.student
            / course.assignment / f"{course.notebook}.html")
    try:  # the feedback template already did it: this makes sure, or publishes no page
        protect_page(page)
    except (OSError, ValueError) as exc:
        page.unlink(missing_ok=True)
        result.notes.append(f"no feedback file: its page could not be protected ({exc})")


def autograded_path(job_dir: Path, student: str) -> Path:
    course = course_mod.load()
    return job_dir / "autograded" / student / course.assignment / f"{course.notebook}.ipynb"


def write_notebook(nb, path: Path) -> None:
    """Write a notebook atomically (nbgrader leaves the autograded copy read-only)."""
    import nbformat

    tmp = path.with_name(path.name + ".tmp")
    nbformat.write(nb, tmp)
    tmp.replace(path)


def _replayer(job: Job, job_dir: Path, result: GradingResult, lab):
    """The lab's replays of this submission, in a sandboxed kernel of their own (grader/replay.py)."""
    from . import replay

    def run(requests):
        with _stage(result, "replay"):
            run_dir = _run_dir(job_dir, "replay")
            with _sandbox(job, run_dir) as sandbox:
                done = replay.run(requests, lab.REPLAY_SOURCE, lab.context(job.seed), sandbox, run_dir,
                                  job.cell_timeout_s, _logger(job.student))
        result.notes.append(f"{len(requests)} trusted recomputation(s) on the student's own values "
                            f"({', '.join(r.name for r in requests)})")
        return done
    return run


def _verify(job: Job, job_dir: Path, result: GradingResult) -> None:
    """The trusted side: each graded cell's points from the evidence the captures sent, compared
    with the batch's reference run and with trusted recomputations; the in-kernel scores only
    serve to spot tampering."""
    import nbformat

    from . import evidence, lab, score, verdicts

    course = course_mod.load()
    graded = lab.load(course)
    reference = Path(job.reference_job)
    autograded = autograded_path(job_dir, job.student)
    nb = nbformat.read(autograded, as_version=4)
    ref_nb = nbformat.read(autograded_path(reference, reference.name), as_version=4)
    cells = graded.check(evidence.Store(job_dir / EVIDENCE).load(), evidence.Store(reference / EVIDENCE).load(),
                         evidence.displayed(nb), evidence.displayed(ref_nb), job.seed,
                         _replayer(job, job_dir, result, graded))
    scores, tampering = verdicts.decide(cells, {t: v or 0.0 for t, v in result.kernel_tests.items()},
                                        result.max_tests)
    score.set_auto_scores(job_dir / "gradebook.db", course.assignment, job.student, scores)
    result.tests = scores
    result.review += [f"possible tampering: {t.summary()}" for t in tampering]
    write_json(job_dir / VERIFICATION, {"verdicts": {g: v.to_dict() for g, v in cells.items()},
                                        "tampering": [t.to_dict() for t in tampering]})
    verdicts.annotate(nb, cells)
    write_notebook(nb, autograded)


def grade_here(job_dir: Path) -> GradingResult:
    from . import score

    job = Job.read(job_dir)
    course = course_mod.load()
    result = GradingResult(job.student, file=job.file, sha256=job.sha256)
    with _stage(result, "repair"):
        submitted = _submit(job, job_dir, result)
    if not submitted or not _autograde(job, job_dir, result):
        return result
    gradebook = job_dir / "gradebook.db"
    result.kernel_tests = score.auto_scores(gradebook, course.assignment, job.student)
    result.max_tests = score.max_scores(gradebook, course.assignment)
    if job.reference_job:
        with _stage(result, "verify"):
            _verify(job, job_dir, result)
        if "replay" in result.stage_seconds:  # counted apart (results.STAGES)
            result.stage_seconds["verify"] = round(result.stage_seconds["verify"] - result.stage_seconds["replay"], 2)
    else:  # the reference run itself (trusted code), or verification off in a test
        result.tests = dict(result.kernel_tests)
        unscored = sorted(t for t, v in result.tests.items() if v is None)
        if unscored:
            result.review.append(f"nbgrader could not score {', '.join(unscored)} (counted as 0)")
    with _stage(result, "feedback"):
        _feedback(job, result)
    return result.conclude()


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
