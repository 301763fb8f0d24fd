"""Grade a batch on a Dask cluster: the batch's side (grader/node.py is each worker's).

    python -m grader grade SUBS --out DIR --cluster SPEC

SPEC: `local` (a LocalCluster of worker processes on this machine), `slurm` or `pbs` (batch jobs
through dask-jobqueue, its settings from course.toml [cluster.slurm] / [cluster.pbs] and Dask's own
configuration, jobqueue.slurm / jobqueue.pbs), or `tcp://host:port` (a scheduler already running).

Everything but the grading stays on this machine, as on one machine (batch.grade): collect, the
reference run, the job folders, the merge into the main gradebook, the reports. `Executor` is
grade_phase's executor for a cluster: it shares the batch's template and reference evidence with
every worker once (in node.GradingPlugin), sends each submission as bytes with its job.json, and
writes what comes back only into that submission's job folder, only under the names
jobs.returned_files gives. A submission whose worker dies is graded again on another one
(Dask reschedules it); once it has taken down allowed_failures + 1 workers (course.toml
[cluster]) it is recorded as failed. Running the same command again resumes, as on one machine.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import secrets
import sys
import time
from pathlib import Path

import dask
from distributed import Client, KilledWorker

from . import batch, jobs, node, text
from .course import ROOT, Course, cluster_settings
from .jobs import BatchFolders, Job
from .results import GradingResult

KINDS = ("local", "slurm", "pbs")
POLL_S = 2.0   # how often the workers are counted, for the lines saying who joined and left
ALONE_S = 60.0  # with no worker, how often to say so (batch jobs waiting in the queue)


def check_spec(spec: str) -> str:
    """The spec, if it is one of the forms above; else SystemExit saying which forms there are."""
    if spec in KINDS or (spec.startswith("tcp://") and spec.rpartition(":")[2].isdigit()):
        return spec
    raise SystemExit(f"--cluster {text.terminal(spec)}: expected local, slurm, pbs or tcp://HOST:PORT "
                     "(an existing Dask scheduler); see grader/README-TA.md, *Grading on a cluster*")


def dask_settings(allowed_failures: int) -> dict:
    """Dask's settings for the clusters the grader starts: tries per submission, one task at a time
    per worker thread (a task sent ahead to a worker that dies would be counted against it), and
    worker processes that may start the grading processes."""
    return {"distributed.scheduler.allowed-failures": allowed_failures,
            "distributed.scheduler.worker-saturation": 1.0,
            "distributed.worker.daemon": False}


def local_size(course: Course, workers: int = 0) -> tuple[int, int, int]:
    """--cluster local: (worker processes, threads each, threads per kernel): --workers, else course.toml."""
    cfg = cluster_settings(course)
    n = workers or cfg.local_workers or os.cpu_count() or 1
    return n, cfg.local_threads, max(1, (os.cpu_count() or 1) // (n * cfg.local_threads))


def start(spec: str, course: Course, workers: int = 0):
    """(the cluster the grader started, or None for a running scheduler; what to connect to)."""
    cfg = cluster_settings(course)
    dask.config.set(dask_settings(cfg.allowed_failures))
    if spec == "local":
        from distributed import LocalCluster

        n, threads, _ = local_size(course, workers)
        made = LocalCluster(n_workers=n, threads_per_worker=threads, processes=True,
                            dashboard_address=":0", silence_logs=40)  # ":0": any free port
        return made, made
    if spec in ("slurm", "pbs"):
        return (made := _jobqueue(spec, cfg)), made
    return None, spec


def jobqueue_cluster(kind: str, cfg):
    """dask-jobqueue's cluster of `kind` (no job asked for yet): its settings from course.toml
    [cluster.<kind>] over Dask's jobqueue.<kind>; each job's worker non-daemonic, started in the kit's folder."""
    import dask_jobqueue

    made = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}[kind]
    kwargs = dict(cfg.jobqueue[kind])
    prologue = list(kwargs.pop("job_script_prologue", None) or dask.config.get(f"jobqueue.{kind}.job-script-prologue",
                                                                               default=None) or [])
    kwargs["job_script_prologue"] = prologue + [f"cd {ROOT}", "export DASK_DISTRIBUTED__WORKER__DAEMON=False"]
    kwargs.setdefault("python", sys.executable)
    try:
        return getattr(dask_jobqueue, made)(**kwargs)
    except ValueError as exc:
        raise SystemExit(f"--cluster {kind}: {exc}\nSet it in course.toml [cluster.{kind}] or in Dask's "
                         f"configuration (jobqueue.{kind} in ~/.config/dask/jobqueue.yaml)") from exc


def _jobqueue(kind: str, cfg):
    """jobqueue_cluster, with cfg.batch_jobs jobs asked for."""
    cluster = jobqueue_cluster(kind, cfg)
    cluster.scale(jobs=cfg.batch_jobs)
    return cluster


class Executor:
    """batch.grade_phase's executor on a Dask cluster (batch.LocalPool is the other)."""

    def __init__(self, spec: str, workers: int = 0):
        self.spec, self.workers = check_spec(spec), workers
        self.cluster = self.client = None
        self.futures: dict[str, object] = {}
        self.seen: dict[str, int] = {}        # worker address -> its threads, as last counted
        self.used: dict[str, dict] = {}       # worker address -> what it graded with, and how many
        self.stats: list[dict] = []           # per task: bytes each way, seconds (scripts/benchmark_grading.py)
        self.polled = self.alone = 0.0
        self.token = secrets.token_hex(4)

    def begin(self, course: Course, opts, settings, folders: BatchFolders, zygote, echo) -> str:
        self.course, self.echo = course, echo
        echo(f"Cluster: starting {self.spec}...")
        self.cluster, target = start(self.spec, course, self.workers)
        self.client = Client(target)
        shared = jobs.pack(folders.work, jobs.shared_files(folders, course, batch.REFERENCE))
        info = node.batch_info(course, opts, settings, shared, local_size(course, self.workers)[2]
                               if self.spec == "local" else 0)
        self.plugin = f"grader-{self.token}"
        self.client.register_plugin(node.GradingPlugin(info, self.plugin), name=self.plugin)
        self.shared_bytes = sum(map(len, shared.values()))
        self.poll(force=True)
        self._wait_ready()
        return f"on the cluster {self.spec} ({len(self.seen)} worker(s) now)"

    def _wait_ready(self) -> None:
        """Wait for the workers there are to finish their start (sandbox probe, warm kernels)."""
        if not self.seen:
            return
        self.echo(f"Cluster: {len(self.seen)} worker(s) probing their sandbox and starting their warm kernels...")
        started = time.monotonic()
        said = {a: v for a, v in self.client.run(node.wait_ready, self.plugin, on_error="return").items()
                if isinstance(v, str)}  # a worker lost meanwhile is left out
        kinds = sorted({line.split("; ")[-1].rstrip(".") for line in said.values()})
        self.echo(f"Cluster: {len(said)} worker(s) ready ({time.monotonic() - started:.0f} s): {'; '.join(kinds)}")

    def submit(self, sid: str, f, job_dir: Path) -> concurrent.futures.Future:
        job = dataclasses.asdict(Job.read(job_dir))
        data = Path(job["source"]).read_bytes()
        done: concurrent.futures.Future = concurrent.futures.Future()
        sent = time.monotonic()
        future = self.client.submit(node.grade, self.plugin, sid, job, Path(job["source"]).name, data,
                                    key=f"grade-{self.token}-{sid}", pure=False)
        future.add_done_callback(lambda fut: self._collect(fut, done, sid, job_dir, len(data), sent))
        self.futures[sid] = future
        return done

    def _collect(self, future, done: concurrent.futures.Future, sid: str, job_dir: Path, size: int, sent: float):
        """A task's end, in the client's callback thread: its files into the job folder, its result."""
        try:
            done.set_result(self._result(future, sid, job_dir, size, sent))
        except BaseException as exc:
            done.set_exception(exc)
        self.futures.pop(sid, None)

    def _result(self, future, sid: str, job_dir: Path, size: int, sent: float) -> GradingResult:
        if future.cancelled():
            return GradingResult.failure(sid, "its task on the cluster was cancelled")
        exc = future.exception()
        if isinstance(exc, KilledWorker):
            return GradingResult.failure(sid, (
                f"its grading took down the worker each time it ran, {exc.allowed_failures + 1} times (the worker "
                "process died: killed, out of memory, or its machine lost); not tried again"))
        if exc is not None:
            return GradingResult.failure(sid, f"the cluster could not grade it ({type(exc).__name__}: {exc})")
        payload = future.result()
        started = time.monotonic()
        try:
            received = jobs.unpack(job_dir, payload["files"], jobs.returned_files(self.course, sid))
            result = GradingResult.from_dict(payload["result"])
        except (ValueError, TypeError, KeyError) as exc:
            return GradingResult.failure(sid, f"refused what the worker sent back ({exc})")
        if payload.get("job_dir"):
            result.reason = result.reason.replace(payload["job_dir"], str(job_dir))
        worker = payload["worker"]
        entry = self.used.setdefault(worker["address"], dict(worker, graded=0))
        entry["graded"] += 1
        self.stats.append({"student": sid, "bytes_in": size, "bytes_out": received, "task_seconds": payload["seconds"],
                           "grading_seconds": result.seconds, "round_trip": time.monotonic() - sent,
                           "unpack_seconds": time.monotonic() - started})
        return result

    def poll(self, force: bool = False) -> None:
        """Say which workers joined and left since the last count (at most every POLL_S)."""
        if not force and time.monotonic() - self.polled < POLL_S:
            return
        self.polled = time.monotonic()
        try:
            now = self.client.nthreads()
        except Exception:  # the scheduler is busy or going: count next time
            return
        for address in sorted(set(now) - set(self.seen)):
            self.echo(f"Cluster: worker {address} joined ({len(now)} worker(s), {sum(now.values())} thread(s))")
        for address in sorted(set(self.seen) - set(now)):
            self.echo(f"Cluster: worker {address} left ({len(now)} worker(s), {sum(now.values())} thread(s))")
        self.seen = dict(now)
        if not now and time.monotonic() - self.alone > ALONE_S:
            self.alone = time.monotonic()
            self.echo(f"Cluster: no worker yet ({self.spec}: batch jobs still queued, or none could start)")

    def stop(self) -> None:
        """Interrupted: cancel what is left; the workers' plugin removes their job folders."""
        if self.client is not None:
            self.client.cancel(list(self.futures.values()))

    def summary_lines(self) -> list[str]:
        """What each worker graded with (summary.md, under the batch's own line)."""
        lines = [f"- {a} ({text.markdown_cell(w['host'])}), {w['graded']} submission(s): "
                 f"{w['statement'].removeprefix('Graded with: ')}" for a, w in sorted(self.used.items())]
        return ["", f"Graded on the cluster `{self.spec}`, each worker with its own sandbox:", "", *lines] if lines else []

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        if self.spec == "local":
            node.reap_stale()  # what an interrupted worker of this machine left


def grade(course: Course, opts, spec: str, echo=print, workers: int = 0) -> batch.Batch:
    """batch.grade on the cluster `spec`."""
    return batch.grade(course, opts, echo, executor=Executor(spec, workers))
