"""A Dask worker's side of grading on a cluster (grader/cluster.py is the batch's side).

`GradingPlugin`, registered once per batch, readies each worker of the cluster, present or
joining later: a folder of its own on the worker's machine (no shared filesystem needed),
holding what the batch shares with every worker (jobs.shared_files: the template gradebook, the
student version, the reference run's evidence), after removing what an earlier worker on that
machine left when it was killed (its job folders, their processes, cgroups and sandbox folders).
On its first task it probes the machine's sandbox and starts its own warm-kernel zygote
(batch.warm_kernels), or kernels start cold, or, where a protection is missing and the TA did
not allow it, every task it gets is refused.

`grade` is the task: one submission, given as bytes, graded in a job folder of the worker's
own by the same runner.run_job as on one machine; what comes back is the result and the files
jobs.returned_files names, as bytes. The job folder and whatever still runs of it are removed
after each task.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

from distributed import WorkerPlugin, get_worker

from . import batch, jobs, runner
from . import course as course_mod
from .jobs import GRADEBOOK, BatchFolders, Job
from .kernel.reap import remove_tree
from .results import GradingResult

ROOT_NAME = "grader-cluster"   # in the machine's temporary folder: one folder per worker process
OWNER = "owner.json"           # the worker process a folder belongs to: {"pid", "started"}
LOCK = ".lock"                 # in the root: held while a worker reaps


def machine_root() -> Path:
    """This user's folder for the workers of this machine, made if missing; refused if someone else
    made it (or put a link there)."""
    import stat

    root = Path(tempfile.gettempdir()) / f"{ROOT_NAME}-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        root.mkdir(mode=0o700)
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise RuntimeError(f"{root} is not a folder of this user's: remove it, then grade again")
    return root


def _owner(pid: int) -> dict | None:
    import psutil

    try:
        return {"pid": pid, "started": psutil.Process(pid).create_time()}
    except psutil.Error:
        return None


def reap_stale(root: Path | None = None) -> list[Path]:
    """Remove the worker folders under root whose worker process no longer runs, with what still
    runs of their jobs (runner.kill_job: processes by their marker, the sandboxes' leftovers);
    return them. A folder without a readable owner.json is left alone."""
    import fcntl

    root = root or machine_root()
    with open(root / LOCK, "w") as lock:  # one reaper at a time: the workers of a machine start together
        fcntl.flock(lock, fcntl.LOCK_EX)
        return [folder for folder in sorted(root.glob("w-*")) if _reap_if_stale(folder)]


def _reap_if_stale(folder: Path) -> bool:
    try:
        owner = json.loads((folder / OWNER).read_text())
        pid, started = int(owner["pid"]), float(owner["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if _owner(pid) == {"pid": pid, "started": started}:
        return False
    for job_dir in sorted(BatchFolders(folder).work.glob("*")):
        clear_job(job_dir)
    remove_tree(folder)
    return True


def clear_job(job_dir: Path) -> None:
    """Stop and remove whatever an earlier grading of job_dir left, and the folder itself."""
    if job_dir.is_dir() and not job_dir.is_symlink():
        runner.kill_job(job_dir)
        remove_tree(job_dir)


@dataclasses.dataclass(frozen=True)
class Batch:
    """What a worker needs to know of the batch (pickled with the plugin)."""
    course: str                  # the course file: relative to the kit's folder when inside it
    opts: batch.Options
    settings: batch.Settings     # threads per kernel 0: from this machine's CPUs and the worker's threads
    shared: dict                 # jobs.shared_files -> bytes


class GradingPlugin(WorkerPlugin):
    """Readies a worker for a batch (see the module's docstring); `grade` runs on it."""

    def __init__(self, batch_info: Batch, name: str):
        self.batch, self.name = batch_info, name

    def setup(self, worker) -> None:
        self.worker = worker
        self.stack = contextlib.ExitStack()
        reap_stale()
        self.folder = machine_root() / f"w-{os.getpid()}-{secrets.token_hex(4)}"
        self.folder.mkdir(mode=0o700)
        (self.folder / OWNER).write_text(json.dumps(_owner(os.getpid())))
        self.folders = BatchFolders(self.folder)
        shared = self.batch.shared
        jobs.unpack(self.folders.work, shared, shared.keys())
        # Grading processes are children of the worker: a daemonic worker process may not have any
        # (multiprocessing refuses). The grader asks for non-daemonic workers (distributed.worker.daemon);
        # a worker started otherwise is made so here, as the grader's own processes clean up after themselves.
        if multiprocessing.current_process().daemon:
            multiprocessing.current_process()._config["daemon"] = False
        # The probe, the zygote and the fork server start while the batch sends its tasks, in a thread
        # that lives as long as the plugin: the zygote's sandbox ends with the thread that started it.
        self.started, self.stopping = threading.Event(), threading.Event()
        self.keeper = threading.Thread(target=self._keep, name="grader-worker-start", daemon=True)
        self.keeper.start()

    def teardown(self, worker) -> None:
        if not hasattr(self, "keeper"):  # its setup failed
            return
        self.stopping.set()
        self.keeper.join()
        for job_dir in sorted(self.folders.work.glob("*")):
            clear_job(job_dir)
        remove_tree(self.folder)

    def ready(self):
        """(course, settings, zygote, refusal) on this worker, once its start (setup) is done."""
        self.started.wait()
        return self.course, self.settings, self.zygote, self.refusal

    def _keep(self) -> None:
        """Start (see setup), then hold the zygote until teardown."""
        self.course = self.settings = self.zygote = None
        with self.stack:
            try:
                self._prepare()
            except Exception as exc:  # said by every task this worker gets
                self.zygote, self.refusal = None, f"the worker {self.worker.address} could not start grading ({exc!r})"
                self.statement = self.refusal
            self.started.set()
            self.stopping.wait()

    def _prepare(self) -> None:
        from .kernel import probe

        path = Path(self.batch.course)
        self.course = course_mod.load(path if path.is_absolute() else course_mod.ROOT / path)
        caps = probe.probe()
        threads = self.batch.settings.threads or max(1, len(os.sched_getaffinity(0)) // max(1, self.worker.state.nthreads))
        self.refusal, off = "", ()
        try:
            off = batch.sandbox_check(self.batch.opts.allow_unsafe, caps)
        except SystemExit as exc:
            self.refusal = f"refused on the worker {self.worker.address} ({os.uname().nodename}): {exc}"
        self.settings = dataclasses.replace(self.batch.settings, threads=threads, protections_off=off, caps=caps)
        said: list[str] = []
        self.zygote = None
        if not self.refusal:
            self.zygote = self.stack.enter_context(batch.warm_kernels(self.course, self.batch.opts, self.settings,
                                                                      self.folders, True, said.append))
        self.statement = self.refusal or batch.graded_with(self.settings, self.batch.opts, self.zygote is not None)
        if not self.refusal:
            runner.start_forkserver()

    def identity(self) -> dict:
        return {"address": self.worker.address, "host": os.uname().nodename, "statement": self.statement}

    def grade(self, sid: str, job: dict, name: str, data: bytes) -> dict:
        course, settings, zygote, refusal = self.ready()
        started = time.monotonic()
        if refusal:
            return {"result": GradingResult.failure(sid, refusal).to_dict(), "files": {}, "worker": self.identity(),
                    "job_dir": "", "seconds": 0.0}
        job_dir = self.folders.job(sid).path
        clear_job(job_dir)
        incoming = job_dir / "incoming" / (Path(name).name if Path(name).name not in ("", ".", "..") else
                                           f"{course.notebook}.ipynb")
        incoming.parent.mkdir(parents=True)
        incoming.write_bytes(data)
        shutil.copyfile(self.folders.template / GRADEBOOK, job_dir / GRADEBOOK)
        release = self.folders.template / "release" / course.assignment / f"{course.notebook}.ipynb"
        Job(**{**job, "source": str(incoming), "release": str(release), "allow_unsafe": bool(settings.protections_off),
               "reference_job": str(self.folders.job(batch.REFERENCE).path)}).write(job_dir)
        try:
            env = batch.job_env(course, self.batch.opts, settings, job_dir, zygote)
            result = runner.run_job(job_dir, env, settings.notebook_timeout_s)
            files = jobs.pack(job_dir, jobs.returned_files(course, sid))
        finally:
            clear_job(job_dir)
        return {"result": result.to_dict(), "files": files, "worker": self.identity(), "job_dir": str(job_dir),
                "seconds": round(time.monotonic() - started, 2)}


async def wait_ready(plugin: str, dask_worker=None) -> str:
    """Wait until the worker's start is done (Client.run: the batch waits for the workers it has);
    return what it grades with."""
    import asyncio

    ready = dask_worker.plugins[plugin]
    await asyncio.to_thread(ready.started.wait)
    return ready.statement


def grade(plugin: str, sid: str, job: dict, name: str, data: bytes) -> dict:
    """The task: grade one submission on this worker (GradingPlugin.grade); its seconds are the
    task's own, after the worker's start."""
    return get_worker().plugins[plugin].grade(sid, job, name, data)


def batch_info(course, opts, settings, shared: dict, threads: int = 0) -> Batch:
    """What the plugin carries to each worker: the course file, the options, the settings and the
    shared files. threads: per kernel (0: each worker divides its machine's CPUs among its threads)."""
    path = course.file
    ref = str(path.relative_to(course_mod.ROOT)) if path.is_relative_to(course_mod.ROOT) else str(path)
    settings = dataclasses.replace(settings, caps=None, protections_off=(), threads=threads)
    return Batch(ref, opts, settings, shared)

