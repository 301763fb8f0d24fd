"""Where the time of batch grading goes, on this machine, in one run.

    .venv/bin/python scripts/benchmark_grading.py [--k 6] [--workers 1 2] [--cold] [--full-k 0]

1. The import floor: a fresh `python -c "import torch, torchvision, tensorflow, xplique.concepts"`,
   timed here, now (what every cold kernel pays before the first line of a notebook).
2. K copies of the reference solution, graded with `python -m grader grade`'s code path (sandbox
   and out-of-kernel verification on, grading mode: offline, course.toml's images) with each
   number of workers asked for: submissions per hour (K / wall-clock time of the grading phase,
   the batch's one-off reference run and zygote start excluded and shown apart), median seconds
   per submission, CPU-seconds per submission (the whole machine's, from /proc/stat: kernels in
   sandboxes included) and the ratio of seconds per submission to the import floor.
   And the disk the batch keeps per submission (grader/light.py: disk_use), and what it shares.
3. The per-stage profile: the median over the submissions of each worker stage
   (grader/results.py STAGES) and of the slowest cells.
4. --keep-work: grade as `grade --keep-work` does, to measure the disk it keeps; --cold: the same with cold kernels (--cold-kernels), to show what warm kernels save;
   --allow-unsafe: grade where part of the sandbox is missing (what a TA's machine without a
   writable cgroup gives), to measure it.
5. --full-k N: plain sequential `nbgrader autograde` of N submissions at full size (300 images), the peer.
6. --cluster local: instead of 1-5, the same K submissions graded with the local pool and on a Dask
   LocalCluster of as many worker processes (grader/cluster.py), in one run: seconds per submission
   each way, the cluster's overhead per task (a no-op task's round trip through the scheduler, the
   worker's own work around the grading, the batch's unpacking), bytes shipped per submission, and
   from these the projected wall time of 3,000 submissions on N nodes of C cores.
Nothing is asserted: it is a measurement. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grader import batch, lab, light, release, score  # noqa: E402
from grader import course as course_mod  # noqa: E402
from grader.course import GRADER_DIR  # noqa: E402
from grader.results import STAGES  # noqa: E402
from grader.samples import write_samples  # noqa: E402

IMPORTS = "import torch, torchvision, tensorflow, xplique.concepts"


def cpu_seconds() -> float:
    """CPU time used by the whole machine so far (user + system, all processes), from /proc/stat."""
    fields = open("/proc/stat").readline().split()[1:]
    user, nice, system = (int(x) for x in fields[:3])
    irq, softirq = int(fields[5]), int(fields[6])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def import_floor(runs: int = 3) -> float:
    """Median seconds of a fresh interpreter importing the lab's heavy libraries."""
    times = []
    for _ in range(runs):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", IMPORTS], check=True, capture_output=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        times.append(time.monotonic() - started)
    return statistics.median(times)


def grading_mode(course, inbox: Path, out: Path, workers: int, n_images: int, warm: bool,
                 allow_unsafe: bool = False, keep_work: bool = False, executor=None) -> dict:
    def echo(line: str) -> None:
        if line.startswith("Grading "):  # the grading phase starts: zygote and reference run done
            grading.append((time.monotonic(), cpu_seconds()))
        if line.startswith("Graded with: "):  # the kernels the batch really used (warm ones may be off)
            used.append("warm" if "; warm kernels" in line else "cold")
        print("   ", line, flush=True)

    grading: list[tuple[float, float]] = []
    used: list[str] = []
    started, cpu = time.monotonic(), cpu_seconds()
    result = batch.grade(course, batch.Options(submissions=inbox, out=out, workers=workers, n_images=n_images,
                                               warm=warm, allow_unsafe=allow_unsafe, keep_work=keep_work), echo=echo,
                         executor=executor)
    ended, cpu_end = time.monotonic(), cpu_seconds()
    t0, c0 = grading[0] if grading else (started, cpu)
    done = [r for r in result.results if r.status != "failed"]
    wall = ended - t0
    kept, shared, _ = light.disk_use(out)
    return {"wall": wall, "setup": t0 - started, "n": len(result.results), "kernels": used[0] if used else "?",
            "median": statistics.median(r.seconds for r in result.results),
            "per_hour": 3600 * len(result.results) / wall, "cpu": (cpu_end - c0) / len(result.results),
            "scores": {sid: sum(cells.values()) for sid, cells in result.scores.items()},
            "max": sum(result.max_tests.values()), "failed": len(result.results) - len(done),
            "stages": {s: statistics.median(r.stage_seconds.get(s, 0.0) for r in done) for s in STAGES} if done else {},
            "cells": _slowest_cells(done), "kept": kept / len(result.results), "shared": shared}


def _slowest_cells(results, top: int = 8) -> list[tuple[str, float]]:
    names = {c for r in results for c in r.cell_seconds}
    medians = {c: statistics.median(r.cell_seconds.get(c, 0.0) for r in results) for c in names}
    return sorted(medians.items(), key=lambda kv: -kv[1])[:top]


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
    parser.add_argument("--k", type=int, default=6, help="submissions graded per configuration (default 6)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    parser.add_argument("--cold", action="store_true", help="also grade with cold kernels (--cold-kernels)")
    parser.add_argument("--allow-unsafe", action="store_true",
                        help="grade where this machine lacks part of the sandbox, as `grade --allow-unsafe` does")
    parser.add_argument("--full-k", type=int, default=0, help="submissions autograded plainly at full size (default 0)")
    parser.add_argument("--n-images", type=int, default=None, help="grading-mode images (default: course.toml)")
    parser.add_argument("--full-cell-timeout", type=int, default=3600,
                        help="cell limit for the full-size plain autograde (default 3600 s)")
    parser.add_argument("--keep", type=Path, help="keep the work folders here")
    parser.add_argument("--keep-work", action="store_true", help="grade as `grade --keep-work` (the disk it keeps)")
    parser.add_argument("--cluster", choices=["local"], help="the local pool against a Dask LocalCluster (6. above)")
    args = parser.parse_args()
    course = course_mod.load()
    n_images = args.n_images or course.grading_n_images
    work = args.keep or Path(tempfile.mkdtemp(prefix="grader-bench-"))
    started = time.monotonic()
    try:
        student = release.generate(course, work / "release") / f"{course.notebook}.ipynb"
        reference = next(s for s in lab.load(course).DEMO_CLASS if s.name == "reference")
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
              f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}", flush=True)
        if args.cluster:
            cluster_comparison(course, graded, work, args.workers[-1], n_images, args.allow_unsafe)
            return 0
        floor = import_floor()
        print(f"Import floor (`python -c \"{IMPORTS}\"`, median of 3): {floor:.1f} s", flush=True)
        runs = {}
        for warm in ([True, False] if args.cold else [True]):
            for workers in args.workers:
                kind = "warm" if warm else "cold"
                print(f"Grading {args.k} submissions, {workers} worker(s), {kind} kernels, {n_images} images...",
                      flush=True)
                r = grading_mode(course, graded, work / f"out-{kind}-{workers}", workers, n_images, warm,
                                 args.allow_unsafe, args.keep_work)
                runs[kind if r["kernels"] == kind else f"{r['kernels']} (warm off)", workers] = r
                print(f"  {r['per_hour']:.0f} submissions/hour; scores {sorted(set(r['scores'].values()))} of "
                      f"{r['max']:g}; batch set-up (zygote + reference run) {r['setup']:.0f} s", flush=True)
                print(f"  disk kept: {r['kept'] / 1e6:.2f} MB per submission (du -sb of --out without the "
                      f"shared part), shared {r['shared'] / 1e6:.1f} MB (reference run, template, reports); "
                      f"limit {light.KEPT_PER_SUBMISSION / 1e6:g} MB (grader/light.py)", flush=True)
        full = None
        if args.full_k:
            print(f"Plain nbgrader autograde at full size: {args.full_k} submission(s), 300 images, offline, "
                  "sequential...", flush=True)
            full = plain_full_size(course, inbox, work / "plain", students[: args.full_k], args.full_cell_timeout)
            if full["rc"] != 0:
                print(full["log"])
        report(runs, full, floor, n_images)
        print(f"Benchmark wall time: {(time.monotonic() - started) / 60:.1f} min")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def cluster_comparison(course, inbox: Path, work: Path, workers: int, n_images: int, allow_unsafe: bool) -> None:
    """The local pool, then a LocalCluster of as many workers, on the same submissions (6. above)."""
    from grader import cluster

    class Measured(cluster.Executor):
        def close(self):  # before the cluster goes: a no-op task's round trip, 20 times
            trips = []
            for i in range(20):
                sent = time.monotonic()
                self.client.submit(int, i, pure=False).result()
                trips.append(time.monotonic() - sent)
            self.noop = statistics.median(trips)
            super().close()

    merges: list[float] = []
    finish = batch.Merger.finish

    def timed(self, *args):
        started = time.monotonic()
        finish(self, *args)
        merges.append(time.monotonic() - started)

    batch.Merger.finish = timed
    print(f"Grading {len(list(inbox.iterdir()))} submissions with the local pool, {workers} worker(s)...", flush=True)
    pool = grading_mode(course, inbox, work / "out-pool", workers, n_images, True, allow_unsafe)
    pool_merge = statistics.median(merges)
    executor = Measured("local", workers)
    print(f"Grading them on a LocalCluster of {workers} worker process(es)...", flush=True)
    on = grading_mode(course, inbox, work / "out-cluster", workers, n_images, True, allow_unsafe, executor=executor)
    report_cluster(pool, on, executor, pool_merge, workers)


def hours(seconds: float) -> str:
    return f"{int(seconds // 3600)} h {int(seconds // 60 % 60):02d} min"


def report_cluster(pool: dict, on: dict, executor, merge_s: float, workers: int) -> None:
    stats = executor.stats
    n = on["n"]
    around = max(0.0, statistics.median(s["task_seconds"] - s["grading_seconds"] for s in stats))  # 0.1 s rounding
    unpack = statistics.median(s["unpack_seconds"] for s in stats)
    overhead = executor.noop + around + unpack
    grading = pool["median"]
    print(f"\nLoad average now {os.getloadavg()[0]:.1f} (1 min), {os.getloadavg()[2]:.1f} (15 min); {os.cpu_count()} CPUs")
    print("\n| | local pool | LocalCluster |\n|---|---|---|")
    print(f"| workers | {workers} | {workers} processes |")
    print(f"| s / submission (grading phase wall / K) | {pool['wall'] / pool['n']:.1f} | {on['wall'] / n:.1f} |")
    print(f"| s / submission (median, each alone) | {pool['median']:.1f} | {on['median']:.1f} |")
    print(f"| batch set-up (zygote, reference run; cluster start) | {pool['setup']:.0f} | {on['setup']:.0f} |")
    print(f"| scores | {sorted(set(pool['scores'].values()))} | {sorted(set(on['scores'].values()))} |")
    print(f"\nCluster overhead per task: scheduler round trip (no-op task) {executor.noop * 1000:.0f} ms, the worker's "
          f"work around the grading (job folder, packing) {around * 1000:.0f} ms, the batch's unpacking "
          f"{unpack * 1000:.0f} ms: {overhead:.2f} s, {100 * overhead / grading:.1f}% of a submission's "
          f"{grading:.1f} s of grading (target: under 5%)")
    print(f"Wall time per submission, cluster against pool: {on['wall'] / n - pool['wall'] / pool['n']:+.2f} s "
          "(includes each worker's first submission, slower: its warm kernels' first; on one machine the reference run "
          "pays it)")
    sent = statistics.median(s["bytes_in"] for s in stats)
    back = statistics.median(s["bytes_out"] for s in stats)
    print(f"Bytes per submission: {sent / 1e3:.0f} kB sent, {back / 1e3:.0f} kB back; once per worker: "
          f"{executor.shared_bytes / 1e3:.0f} kB (template, reference evidence)")
    print(f"The batch's merge of one submission (serial, on the batch's machine): {merge_s:.2f} s")
    stages = ", ".join(f"{st} {pool['stages'].get(st, 0):.1f}/{on['stages'].get(st, 0):.1f}" for st in STAGES)
    print(f"Stages, median s, pool/cluster: {stages}")
    setup = on["setup"]
    print(f"\nProjected wall time of 3,000 submissions, one kernel per core, {grading:.1f} s of grading + {overhead:.2f} s "
          f"overhead each, {setup:.0f} s of set-up, the merge ({merge_s:.2f} s each) as the floor:\n")
    cores = (16, 32, 64)
    print("| nodes | " + " | ".join(f"{c} cores" for c in cores) + " |\n|---|" + "---|" * len(cores))
    for nodes in (1, 4, 16, 64):
        cells = [hours(setup + max(3000 * (grading + overhead) / (nodes * c), 3000 * merge_s)) for c in cores]
        print(f"| {nodes} | " + " | ".join(cells) + " |")


def report(runs: dict, full: dict | None, floor: float, n_images: int) -> None:
    print("\n| kernels | workers | submissions / hour | s / submission (wall, each) | batch s / submission "
          "| CPU-s / submission | s / submission / import floor |")
    print("|---|---|---|---|---|---|---|")
    for (kind, workers), r in runs.items():
        per = r["wall"] / r["n"]
        print(f"| {kind} | {workers} | {r['per_hour']:.0f} | {r['median']:.1f} | {per:.1f} | {r['cpu']:.0f} | "
              f"{per / floor:.1f} |")
    if full:
        print(f"| plain `nbgrader autograde`, 300 images | 1 | {full['per_hour']:.2f} | {full['per_notebook']:.0f} "
              f"| {full['per_notebook']:.0f} | {full['cpu']:.0f} | {full['per_notebook'] / floor:.0f} |")
    print(f"\nPer-stage profile (median seconds per submission, {n_images} images):\n")
    keys = list(runs)
    print("| stage | " + " | ".join(f"{k} x{w}" for k, w in keys) + " | what |")
    print("|---|" + "---|" * len(keys) + "---|")
    for stage, what in STAGES.items():
        print(f"| {stage} | " + " | ".join(f"{runs[k]['stages'].get(stage, 0):.1f}" for k in keys) + f" | {what} |")
    for k in keys:
        cells = ", ".join(f"{name} {sec:.1f}" for name, sec in runs[k]["cells"])
        print(f"\nSlowest cells, {k[0]} x{k[1]} (median s): {cells}")


if __name__ == "__main__":
    sys.exit(main())
