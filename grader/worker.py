"""Grade ONE submission, in a process of its own.

Parent side, `run_job`: starts `python -m grader.worker JOB_DIR` in a new session with
the grading environment, waits at most the per-notebook limit, then kills the worker and
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

import json
import logging
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from . import course as course_mod
from . import repair as repair_mod
from .course import GRADER_DIR, ROOT

RESULT = "result.json"
JOB = "job.json"
LOG = "worker.log"
MARKER = "CRAFT_LAB_JOB"


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    tmp.replace(path)


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


def run_job(job_dir: Path, env: dict[str, str], timeout_s: float, registry: dict | None = None,
            argv: list[str] | None = None) -> dict:
    """Grade the submission described in job_dir/job.json in a child process; return its result.

    registry, when given, holds {job folder name: (pid, marker)} while the worker runs, so
    that the caller can kill every running worker (on Ctrl-C). argv replaces the worker
    command (tests).
    """
    marker = f"{job_dir.name}-{os.getpid()}-{time.monotonic_ns()}"
    env = dict(env, **{MARKER: marker, "PYTHONUNBUFFERED": "1"})
    started = time.monotonic()
    with open(job_dir / LOG, "ab") as log:
        argv = argv or [sys.executable, "-m", "grader.worker", str(job_dir)]
        proc = subprocess.Popen(argv, cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        if registry is not None:
            registry[job_dir.name] = (proc.pid, marker)
        reason = None
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            reason = (f"killed after {timeout_s:.0f} s: the notebook ran past the per-notebook time "
                      "limit (an endless loop the interrupt could not stop, or far too slow)")
        except BaseException:  # Ctrl-C in the parent: take the worker down with us
            kill_tree(proc.pid, marker)
            raise
        finally:
            leftovers = kill_tree(proc.pid, marker)
            if registry is not None:
                registry.pop(job_dir.name, None)
    seconds = time.monotonic() - started
    result_path = job_dir / RESULT
    if reason is None and result_path.exists():
        result = json.loads(result_path.read_text())
        if leftovers > 1:
            result.setdefault("notes", []).append(
                f"{leftovers - 1} process(es) left running by the submission were killed")
        result["seconds"] = round(seconds, 1)
        return result
    if reason is None:
        code = proc.returncode
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        reason = f"the grading process ended without a result ({how}); see {job_dir / LOG}"
    return {"status": "failed", "reason": reason, "seconds": round(seconds, 1)}


# ----------------------------------------------------------------------------- child side

def nbgrader_config(cell_timeout_s: int):
    """nbgrader_config.py, plus this module's execution settings."""
    from nbconvert.preprocessors import ClearMetadataPreprocessor  # noqa: F401  (nbgrader needs it)
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import Execute
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    from .execute import ResilientExecute

    cfg = PyFileConfigLoader("nbgrader_config.py", path=str(GRADER_DIR)).load_config()
    defaults = Autograde.class_traits()["autograde_preprocessors"].default()
    extra = Config()
    extra.Autograde.autograde_preprocessors = [ResilientExecute if p is Execute else p for p in defaults]
    extra.ResilientExecute.timeout = int(cell_timeout_s)
    extra.HTMLExporter.template_name = "feedback"
    cfg.merge(extra)
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


def _cell_problems(nb, cell_timeout_s: int) -> tuple[list[str], list[str]]:
    """(notes, review) from the outputs of the autograded notebook."""
    from .execute import cell_label

    unanswered, errors, timeouts = [], [], []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        meta = cell.metadata.get("nbgrader", {})
        label = cell_label(cell, index)
        errs = [out for out in cell.get("outputs", []) if out.get("output_type") == "error"]
        names = [out.get("ename", "") for out in errs]
        if "CellTimeoutError" in names:
            timeouts.append(label)
        elif not errs or meta.get("grade") or (meta.get("locked") and not meta.get("solution")):
            continue  # a failing test or a provided cell: the scores say it
        elif names[0] == "NotImplementedError" and meta.get("solution"):
            unanswered.append(label)
        elif names[0] not in ("NotRun", "KernelDied", "KernelUnresponsive"):
            value = " ".join(str(errs[0].get("evalue", "")).split())[:100]
            errors.append(f"{label} ({names[0]}: {value})" if value else f"{label} ({names[0]})")
    notes, review = [], []
    if unanswered:
        notes.append(f"not answered: {', '.join(unanswered)}")
    if errors:
        notes.append(f"errors in: {'; '.join(errors)}")
    if timeouts:
        review.append(f"ran past the {cell_timeout_s} s cell limit and was interrupted: "
                      f"{', '.join(timeouts)}")
    return notes, review


def grade_here(job_dir: Path) -> dict:
    import nbformat

    from . import score
    from .execute import LAST_RUN

    job = json.loads((job_dir / JOB).read_text())
    course = course_mod.load()
    student, assignment, name = job["student"], course.assignment, course.notebook
    result = {"student": student, "file": job.get("file"), "sha256": job.get("sha256"),
              "status": "failed", "reason": "", "notes": [], "review": []}

    release = nbformat.read(job["release"], as_version=4)
    repaired = repair_mod.repair(Path(job["source"]).read_bytes(), release, f"{name}.ipynb")
    if repaired.error:
        result["reason"] = repaired.error
        return result
    if Path(job["source"]).name != f"{name}.ipynb":
        result["notes"].append(f"submitted as '{Path(job['source']).name}', graded as {name}.ipynb")
    result["notes"] += repaired.notes
    result["review"] += repaired.review
    dest = job_dir / "submitted" / student / assignment / f"{name}.ipynb"
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(repaired.nb, dest)

    log = logging.getLogger(f"grader.worker.{student}")
    log.setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    log.addHandler(handler)

    from nbgrader.converters import Autograde, GenerateFeedback

    cfg = nbgrader_config(job["cell_timeout_s"])
    error = _run_app(Autograde, cfg, assignment, student, log)
    autograded = job_dir / "autograded" / student / assignment / f"{name}.ipynb"
    if error or not autograded.exists():
        result["reason"] = f"nbgrader autograde failed ({error or 'no autograded notebook'}); see worker.log"
        return result

    notes, review = _cell_problems(nbformat.read(autograded, as_version=4), job["cell_timeout_s"])
    for event, label in LAST_RUN["events"]:
        review.append(f"the kernel died in {label}: the cells after it were not run" if event == "kernel_died"
                      else f"the kernel stopped responding in {label} and was stopped; "
                           "the cells after it were not run")
    result["notes"] += notes
    result["review"] += review
    result["cell_seconds"] = LAST_RUN["cell_seconds"]

    feedback_error = _run_app(GenerateFeedback, cfg, assignment, student, log)
    if feedback_error:
        result["notes"].append(f"no feedback file: nbgrader generate_feedback failed ({feedback_error})")

    gradebook = job_dir / "gradebook.db"
    result["tests"] = score.cell_scores(gradebook, assignment, student)
    result["max_tests"] = score.max_scores(gradebook, assignment)
    unscored = sorted(t for t, v in result["tests"].items() if v is None)
    if unscored:
        result["review"].append(f"nbgrader could not score {', '.join(unscored)} (counted as 0)")
    result["status"] = "review" if result["review"] else "graded"
    result["reason"] = "; ".join(result["review"])
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job_dir = Path(argv[0]).resolve()
    started = time.monotonic()
    try:
        result = grade_here(job_dir)
    except Exception as exc:
        traceback.print_exc()
        result = {"status": "failed", "notes": [], "review": [],
                  "reason": f"the grader itself failed ({type(exc).__name__}: {exc}); see worker.log"}
    result["worker_seconds"] = round(time.monotonic() - started, 1)
    write_json(job_dir / RESULT, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
