"""Grade a folder of submissions: collect, autograde in parallel, merge, report.

Layout of the output folder (OUT):

  collect.csv                 every file found, the student it maps to and why (or why not)
  grades.csv                  nbgrader export of the main gradebook
  results.csv, summary.md     per-submission and per-test results, reasons
  scores.png                  heatmap of points per test, histogram of totals
  feedback/<student>/<notebook>.html
  nbgrader/                   the main nbgrader folder: gradebook.db, submitted/, autograded/,
                              feedback/ (use it with CRAFT_LAB_WORK=OUT/nbgrader for formgrader)
  work/<student>/             one submission's own grading: its gradebook, worker.log, result.json
  collected/                  a copy of the input, archives unpacked

Running the command again on the same OUT continues: submissions already merged, with the
same file content, are not graded again (--regrade forces it). Manual grades entered in
the main gradebook are kept, as nbgrader autograde keeps them.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import nbformat

from . import autograde, collect, report, score, worker
from .course import ROOT, Course

MERGED = "merged.json"


@dataclass
class Options:
    submissions: Path
    out: Path
    workers: int = 0                       # 0: one per CPU
    roster: Path | None = None
    mapping: Path | None = None
    online: bool = False
    n_images: int | None = None            # default: course.toml grading.n_images
    cell_timeout_s: int | None = None      # default: course.toml grading.batch_cell_timeout_s
    notebook_timeout_s: int | None = None  # default: course.toml grading.notebook_timeout_s
    regrade: bool | list[str] = False      # True: all; a list: these student ids


@dataclass
class Batch:
    results: list[dict]
    tests: list[str]
    max_tests: dict[str, float]
    collection: collect.Collection
    seconds: float
    graded_now: int


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def grading_env(course: Course, job_dir: Path, opts: Options, threads: int) -> dict[str, str]:
    env = autograde.grading_env(course, job_dir, offline=not opts.online, n_images=opts.n_images)
    if opts.online:
        env.pop("CRAFT_LAB_OFFLINE", None)
        env.setdefault("CRAFT_LAB_DATA_DIR", str(ROOT / "data"))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        env[var] = str(threads)
    return env


def prefetch_online(course: Course, env: dict[str, str], echo) -> None:
    """Online grading: download the images and weights once, before the workers start."""
    import sys
    sys.path.insert(0, str(course.source_dir))
    import craftlab  # the kit's helper module (not student code)

    settings = craftlab.Settings.from_env(env)
    echo(f"Online: caching rabbit.npz in {settings.data_dir} and the ResNet50 weights once...")
    try:
        craftlab.load_rabbits(settings)
        craftlab.load_resnet50(settings)
    except Exception as exc:
        raise SystemExit(f"Online grading needs the images and the weights, and getting them failed "
                         f"({type(exc).__name__}: {exc}). Fix the connection, or grade offline "
                         "(without --online).") from exc


def tests_in_order(course: Course, max_tests: dict[str, float]) -> list[str]:
    """Graded cells in notebook order (from the source notebook's metadata)."""
    nb = nbformat.read(course.source_notebook, as_version=4)
    order = [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells
             if c.metadata.get("nbgrader", {}).get("grade")]
    return [t for t in order if t in max_tests] + sorted(set(max_tests) - set(order))


def _publish(course: Course, main: Path, out: Path, job_dir: Path, student: str, result: dict) -> None:
    """Move one graded submission's files into the main nbgrader folder; link its feedback page."""
    a, name = course.assignment, course.notebook
    for kind in ("submitted", "autograded", "feedback"):
        src, dst = job_dir / kind / student / a, main / kind / student / a
        if dst.exists():
            shutil.rmtree(dst)
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(src, dst)
    page = out / "feedback" / student / f"{name}.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.unlink(missing_ok=True)
    html = main / "feedback" / student / a / f"{name}.html"
    if result["status"] == "failed" or not html.exists():
        report.failure_feedback(student, name, result.get("reason") or "no feedback was generated", page)
    else:
        try:
            os.link(html, page)  # the same file twice, without the space (pages hold the plots)
        except OSError:
            shutil.copyfile(html, page)


def grade(course: Course, opts: Options, echo=print) -> Batch:
    started = time.monotonic()
    out = opts.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    n_images = opts.n_images or course.grading_n_images
    if n_images < 2:
        raise SystemExit("--n-images must be at least 2: CRAFT's NMF needs at least as many crops "
                         "(9 per image) as concepts (10)")
    opts.n_images = n_images
    cell_timeout = opts.cell_timeout_s or course.batch_cell_timeout_s
    nb_timeout = opts.notebook_timeout_s or course.notebook_timeout_s
    workers = opts.workers or os.cpu_count() or 1
    threads = max(1, (os.cpu_count() or 1) // workers)

    # 1. Collect.
    roster = collect.read_roster(opts.roster) if opts.roster else None
    mapping = collect.read_mapping(opts.mapping) if opts.mapping else None
    root = collect.unpack(opts.submissions, out / "collected")
    found = collect.collect(root, course.notebook, course.named_regexps, roster, mapping)
    collect.write_report(found, out / "collect.csv")
    echo(f"Collected {len(found.submissions)} submissions from {opts.submissions} "
         f"({len(found.files)} files; details in {out / 'collect.csv'})")
    for f in found.files:
        if f.status in ("unmapped", "superseded"):
            echo(f"  {f.status.upper()}: {f.relpath}: {f.reason}")

    # 2. Gradebooks: an empty template, and the main one (kept across runs).
    template_dir = out / "work" / "_template"
    shutil.rmtree(template_dir, ignore_errors=True)
    autograde.prepare_gradebook(course, template_dir)
    template = template_dir / "gradebook.db"
    # the student version generated with this gradebook: what submissions are checked against
    release_nb = template_dir / "release" / course.assignment / f"{course.notebook}.ipynb"
    main = out / "nbgrader"
    main_db = main / "gradebook.db"
    max_tests = score.max_scores(template, course.assignment)
    if main_db.exists():
        if score.max_scores(main_db, course.assignment) != max_tests:
            raise RuntimeError(f"{main_db} was made for another version of the notebook (other tests "
                               "or points): grade into a new --out folder")
    else:
        main.mkdir(parents=True, exist_ok=True)
        score.copy_gradebook(template, main_db)
    if roster:
        score.add_students(main_db, list(roster.values()))
    tests = tests_in_order(course, max_tests)

    # 3. Jobs (skipping what an earlier run of this command already merged).
    results: dict[str, dict] = {}
    todo = []
    for sid, f in sorted(found.submissions.items()):
        job_dir = out / "work" / sid
        merged = job_dir / MERGED
        again = opts.regrade is True or (isinstance(opts.regrade, list) and sid in opts.regrade)
        if merged.exists() and not again:
            previous = json.loads(merged.read_text())
            if previous.get("sha256") == f.sha256:
                results[sid] = previous
                continue
        if job_dir.exists():
            shutil.rmtree(job_dir)
        job_dir.mkdir(parents=True)
        score.copy_gradebook(template, job_dir / "gradebook.db")
        worker.write_json(job_dir / worker.JOB, {
            "student": sid, "source": str(f.path), "file": f.relpath, "sha256": f.sha256,
            "cell_timeout_s": cell_timeout, "release": str(release_nb)})
        todo.append((sid, f, job_dir))
    if results:
        echo(f"{len(results)} submissions already graded in {out} (same files): kept. "
             "Use --regrade to grade them again.")
    mode = "online" if opts.online else "offline"
    echo(f"Grading {len(todo)} submissions with {workers} worker(s), {mode}, {n_images} images, "
         f"limits {cell_timeout} s per cell and {nb_timeout} s per notebook")
    if opts.online and todo:
        prefetch_online(course, grading_env(course, out, opts, threads), echo)

    # 4. Grade in parallel; merge one at a time, here, as each finishes.
    roster_info = roster or {}
    done = 0
    batch_started = time.monotonic()
    lock = threading.Lock()

    def finish(sid, f, job_dir, result):
        nonlocal done
        result.update(student=sid, file=f.relpath, sha256=f.sha256)
        result.setdefault("notes", [])
        f_notes = [] if f.rule in ("regexp", "") else [f"student id from the {f.rule}"]
        result["notes"] = f_notes + result["notes"]
        ok = result["status"] in ("graded", "review")
        score.merge(main_db, course.assignment, sid, job_dir / "gradebook.db" if ok else None,
                    flag=result["status"] != "graded", info=roster_info.get(sid))
        _publish(course, main, out, job_dir, sid, result)
        worker.write_json(job_dir / MERGED, result)
        results[sid] = result
        done += 1
        elapsed = time.monotonic() - batch_started
        left = (len(todo) - done) * elapsed / done
        got = f"{report.total(result, tests):g}/{sum(max_tests.values()):g}"
        why = f"  {result.get('reason', '')}" if result["status"] != "graded" else ""
        echo(f"[{done:>{len(str(len(todo)))}}/{len(todo)}] {sid:<{width}} {got:>7}  {result['status']:<6} "
             f"{result.get('seconds', 0):>5.0f} s | elapsed {_clock(elapsed)}, "
             f"~{_clock(left)} left{why}")

    width = max((len(sid) for sid, _, _ in todo), default=8)
    running: dict[str, tuple] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {}
        for sid, f, job_dir in todo:
            env = grading_env(course, job_dir, opts, threads)
            futures[pool.submit(worker.run_job, job_dir, env, nb_timeout, running)] = (sid, f, job_dir)
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for fut in finished:
                    sid, f, job_dir = futures[fut]
                    try:
                        result = fut.result()
                    except Exception as exc:  # the launcher itself failed: record, go on
                        result = {"status": "failed", "reason": f"could not run the grader ({exc})"}
                    with lock:
                        finish(sid, f, job_dir, result)
        except BaseException:
            for fut in pending:
                fut.cancel()
            with lock:
                for pid, marker in list(running.values()):
                    worker.kill_tree(pid, marker)
            echo(f"Interrupted: {done} submissions were graded and saved in {main_db}. "
                 "Run the same command again to grade the rest.")
            raise

    # 5. Reports.
    all_results = list(results.values())
    report.export_grades(main, out / "grades.csv")
    report.write_results(all_results, tests, max_tests, out / "results.csv")
    table = report.write_summary(all_results, tests, max_tests, out / "summary.md")
    report.plot(all_results, tests, max_tests, out / "scores.png")
    seconds = time.monotonic() - started
    echo("")
    echo(table)
    counts = ", ".join(f"{sum(1 for r in all_results if r['status'] == s)} {s}" for s in report.STATUSES)
    echo(f"\n{len(all_results)} submissions ({counts}) in {_clock(seconds)}. Wrote {out / 'grades.csv'}, "
         f"results.csv, summary.md, scores.png and feedback/ in {out}")
    return Batch(all_results, tests, max_tests, found, seconds, len(todo))
