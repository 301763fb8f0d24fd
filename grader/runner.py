"""Grade one submission in a process of its own: the parent's side.

`run_job` starts the worker as a fork of the batch's fork server (which imported nbgrader and
the grading pipeline once, PRELOAD), in a new session with the grading environment; waits at
most the per-notebook limit; then kills the worker and everything it started (the Jupyter
kernel runs in a session of its own, so it is found by a marker in its environment as well as
by parentage) and removes what a killed worker's sandbox left (kernel/reap.py). It
returns the worker's result (grader/pipeline.py writes it), or a failure saying why there is
none.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .course import ROOT
from .jobs import LOG, MARKER_FILE, RESULT
from .kernel.reap import reap
from .results import GradingResult

MARKER = "GRADER_JOB"  # in every process of a job's environment, so that stray ones are found
# What each worker needs, imported once by the batch's fork server instead of once per submission
PRELOAD = ("grader.pipeline", "grader.execute", "grader.verdicts", "grader.evidence", "grader.replay",
           "grader.score", "grader.kernel.sandbox", "grader.kernel.warm", "grader.repair", "grader.sanitize",
           "nbgrader.converters", "nbgrader.preprocessors", "nbconvert", "nbclient", "jupyter_client", "psutil")
_forkserver = None


def _marked_processes(marker: str):
    import psutil

    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(MARKER) == marker:
                yield proc
        except (psutil.Error, OSError):
            continue


def kill_tree(pid: int | None, marker: str | None = None) -> int:
    """Kill pid (if any), its descendants and every process carrying the job's marker; return how many."""
    import psutil

    procs = {}
    try:
        root = psutil.Process(pid) if pid else None
        for proc in [root, *root.children(recursive=True)] if root else []:
            procs[proc.pid] = proc
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


def kill_job(job_dir: Path) -> int:
    """Kill what still runs of an earlier grading of job_dir (found by the marker it wrote there,
    even when the process that started it was killed), then reap what its sandbox left."""
    try:
        marker = (job_dir / MARKER_FILE).read_text().strip()
    except OSError:
        marker = ""
    killed = kill_tree(None, marker) if marker else 0
    reap(job_dir)
    return killed


def _context():
    """multiprocessing's fork server, with PRELOAD imported: each worker is a fresh fork of it."""
    global _forkserver
    if _forkserver is None:
        import multiprocessing

        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(PRELOAD))
        _forkserver = context
    return _forkserver


def start_forkserver() -> None:
    """Start the fork server now, and wait for its imports (PRELOAD), rather than with the first job."""
    proc = _context().Process(target=os.getpid, name="grader-forkserver-ready")
    proc.start()
    proc.join()


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
    from .pipeline import main

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
    (job_dir / MARKER_FILE).write_text(marker)
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


