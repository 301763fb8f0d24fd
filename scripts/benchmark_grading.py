"""Benchmark batch grading against plain nbgrader autograde, on this machine, in one run.

    .venv/bin/python scripts/benchmark_grading.py [--k 3] [--full-k 1] [--n-images 8]

1. Makes K copies of the reference solution (the student notebook with the source
   notebook's answers), as K students' submissions.
2. Grades them with `python -m grader grade` in grading mode (offline, --n-images images)
   with 1 worker, then with 2 workers: median seconds per submission and submissions per
   hour (K / wall-clock time).
3. Autogrades FULL_K of them with plain `nbgrader autograde` at full size (all 300 images,
   offline, one after the other into one gradebook, as a TA would without this kit),
   with a cell limit high enough for the full-size fit.
4. Prints the figures and the speed-up. Nothing is asserted: it is a measurement.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grader import batch, release, score  # noqa: E402
from grader import course as course_mod  # noqa: E402
from grader.course import GRADER_DIR  # noqa: E402
from grader.samples import DEMO_CLASS, write_samples  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of the finished child processes and their own children (kernels included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def grading_mode(course, inbox: Path, out: Path, workers: int, n_images: int) -> dict:
    lines = []
    started, cpu = time.monotonic(), cpu_seconds()
    result = batch.grade(course, batch.Options(submissions=inbox, out=out, workers=workers,
                                               n_images=n_images), echo=lines.append)
    wall = time.monotonic() - started
    cpu = cpu_seconds() - cpu
    seconds = [r.seconds for r in result.results]
    scores = {sid: sum(cells.values()) for sid, cells in result.scores.items()}
    return {"wall": wall, "median": statistics.median(seconds), "per_hour": 3600 * len(seconds) / wall,
            "cpu": cpu / len(seconds), "scores": scores, "max": sum(result.max_tests.values()),
            "lines": lines}


def plain_full_size(course, inbox: Path, work: Path, students: list[str], cell_timeout: int) -> dict:
    """The peer: plain `nbgrader autograde` of every student at full size, one after the other."""
    gradebook = score.prepare_gradebook(course, work)
    for sid in students:
        dest = work / "submitted" / sid / course.assignment / f"{course.notebook}.ipynb"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(inbox / sid / f"{course.notebook}.ipynb", dest)
    env = course_mod.grading_env(course, work)
    env.pop(course_mod.lab_module(course).N_IMAGES_VAR)  # all 300 images
    started, cpu = time.monotonic(), cpu_seconds()
    proc = subprocess.run([course_mod.tool("nbgrader"), "autograde", course.assignment, "--force",
                           f"--ExecutePreprocessor.timeout={cell_timeout}", "--log-level=WARN"],
                          cwd=GRADER_DIR, env=env, capture_output=True, text=True)
    wall, cpu = time.monotonic() - started, cpu_seconds() - cpu
    cells = score.cell_scores(gradebook, course.assignment)
    scores = {sid: sum(c.final for c in cells.get(sid, {}).values()) for sid in students}
    return {"wall": wall, "per_notebook": wall / len(students), "per_hour": 3600 * len(students) / wall,
            "cpu": cpu / len(students),
            "scores": scores, "rc": proc.returncode, "log": proc.stdout[-2000:] + proc.stderr[-2000:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=3, help="submissions graded in grading mode (default 3)")
    parser.add_argument("--full-k", type=int, default=1, help="submissions autograded at full size (default 1)")
    parser.add_argument("--n-images", type=int, default=None, help="grading-mode images (default: course.toml)")
    parser.add_argument("--full-cell-timeout", type=int, default=3600,
                        help="cell limit for the full-size plain autograde (default 3600 s)")
    parser.add_argument("--keep", type=Path, help="keep the work folders here")
    args = parser.parse_args()
    course = course_mod.load()
    n_images = args.n_images or course.grading_n_images
    tmp = Path(tempfile.mkdtemp(prefix="craft-lab-bench-"))
    work = args.keep or tmp
    started = time.monotonic()
    try:
        student = release.generate(course, work / "release") / f"{course.notebook}.ipynb"
        reference = next(s for s in DEMO_CLASS if s.name == "reference")
        inbox = work / "inbox"
        write_samples([reference], inbox, course.source_notebook, student)
        students = [f"s{i:02d}" for i in range(1, max(args.k, args.full_k) + 1)]
        for sid in students:
            shutil.copytree(inbox / "reference", inbox / sid)
        shutil.rmtree(inbox / "reference")
        graded = inbox.parent / "inbox-k"
        for sid in students[: args.k]:
            shutil.copytree(inbox / sid, graded / sid)

        print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}")
        runs = {}
        for workers in (1, 2):
            print(f"Grading mode: {args.k} submissions, {workers} worker(s), {n_images} images, offline...",
                  flush=True)
            runs[workers] = grading_mode(course, graded, work / f"out-{workers}", workers, n_images)
            r = runs[workers]
            print(f"  wall {r['wall']:.0f} s, median {r['median']:.1f} s per submission, "
                  f"{r['per_hour']:.0f} submissions/hour, {r['cpu']:.0f} CPU-s per submission; scores {sorted(set(r['scores'].values()))} "
                  f"of {r['max']:g}", flush=True)
        full = None
        if args.full_k:
            print(f"Plain nbgrader autograde at full size: {args.full_k} submission(s), 300 images, offline, "
                  "sequential...", flush=True)
            full = plain_full_size(course, inbox, work / "plain", students[: args.full_k], args.full_cell_timeout)
            print(f"  wall {full['wall']:.0f} s, {full['per_notebook']:.0f} s per submission, "
                  f"{full['per_hour']:.2f} submissions/hour, {full['cpu']:.0f} CPU-s per submission; scores {full['scores']} (rc {full['rc']})", flush=True)
            if full["rc"] != 0:
                print(full["log"])

        print("\n| mode | workers | images | median s / submission | submissions / hour | CPU-s / submission |")
        print("|---|---|---|---|---|---|")
        for workers, r in runs.items():
            print(f"| grading mode (`python -m grader grade`) | {workers} | {n_images} | "
                  f"{r['median']:.0f} | {r['per_hour']:.0f} | {r['cpu']:.0f} |")
        if full:
            print(f"| plain `nbgrader autograde`, full size | 1 (sequential) | 300 | "
                  f"{full['per_notebook']:.0f} | {full['per_hour']:.2f} | {full['cpu']:.0f} |")
            print(f"\nCPU time per submission: {full['cpu'] / min(r['cpu'] for r in runs.values()):.0f}x less "
                  "than plain full-size autograde (a figure that other load on the machine does not change)")
            best = max(r["per_hour"] for r in runs.values())
            print(f"Throughput: {best / full['per_hour']:.0f}x plain full-size autograde "
                  f"(target >= 10x); median per submission in grading mode: "
                  f"{min(r['median'] for r in runs.values()):.0f} s (target <= 90 s)")
        print(f"Benchmark wall time: {(time.monotonic() - started) / 60:.1f} min")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
