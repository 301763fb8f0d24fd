"""Grading on a Dask cluster (grader/cluster.py, grader/node.py), on a LocalCluster of this
machine, with the tiny lab (seconds per submission): a worker killed while grading, a
submission that takes its worker down every time, the client killed and run again. That the
cluster grades as the local pool does is checked on the CRAFT lab by tests/test_grading_batch.py.
Every test here starts a cluster and a reference run: about a minute each."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from conftest import ROOT, run_env
from grader import batch, cluster, jobs, lab, node, release, runner
from grader import course as course_mod
from grader.kernel import probe
from grader.samples import write_samples

TINY = ROOT / "tests" / "tiny_lab" / "course.toml"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def course():
    if probe.probe().missing():
        pytest.skip("the sandbox is missing here: " + "; ".join(probe.probe().missing()))
    return course_mod.load(TINY)


@pytest.fixture(scope="module")
def samples(course):
    return {s.name: s for s in lab.load(course).DEMO_CLASS}


@pytest.fixture(scope="module")
def inbox(course, samples, tmp_path_factory):
    """The tiny lab's demo class, and two more: `victim` (the reference answers, whose worker is
    killed while grading it) and `poison` (blank, whose every grading kills its worker)."""
    work = tmp_path_factory.mktemp("tiny-cluster")
    student = release.generate(course, work / "release") / f"{course.notebook}.ipynb"
    write_samples(list(samples.values()), work / "inbox", course.source_notebook, student)
    shutil.copytree(work / "inbox" / "reference", work / "inbox" / "victim")
    shutil.copytree(work / "inbox" / "blank", work / "inbox" / "poison")
    return work / "inbox"


def marked_alive(marker: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(runner.MARKER) == marker:
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


class Saboteur:
    """What kills the workers, as a Dask worker plugin (registered beside the grader's): every task
    of `poison` kills its worker as it starts; `victim`'s worker is killed once, while its grading
    process runs (its marker is kept in `flag`, to check afterwards that nothing of it survived)."""

    def __init__(self, flag: str, plugin: str):
        self.flag, self.plugin = flag, plugin

    def setup(self, worker):
        self.worker = worker

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing":
            return
        if str(key).endswith("-poison"):
            os.kill(os.getpid(), signal.SIGKILL)
        if str(key).endswith("-victim") and not os.path.exists(self.flag):
            threading.Thread(target=self._kill_while_grading, daemon=True).start()

    def _kill_while_grading(self):
        marker = self.worker.plugins[self.plugin].folders.job("victim").path / jobs.MARKER_FILE
        for _ in range(600):
            if marker.exists() and marker.read_text():
                Path(self.flag).write_text(marker.read_text())
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.1)


class SabotagedExecutor(cluster.Executor):
    def __init__(self, flag: Path):
        super().__init__("local", workers=2)
        self.flag = flag

    def begin(self, *args):
        where = super().begin(*args)
        from distributed import WorkerPlugin

        plugin = type("SaboteurPlugin", (Saboteur, WorkerPlugin), {})(str(self.flag), self.plugin)
        self.client.register_plugin(plugin, name="saboteur")
        return where


def _by_student(rows):
    return {r["student_id"]: r for r in rows}


def test_a_killed_worker_costs_a_retry_and_a_poison_submission_fails_alone(course, samples, inbox, tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    out, flag, lines = tmp_path / "out", tmp_path / "victim-marker", []
    result = batch.grade(course, batch.Options(submissions=inbox, out=out, workers=2), lines.append,
                         executor=SabotagedExecutor(flag))
    print("\n".join(lines))
    got = {r.student: r for r in result.results}
    tries = course_mod.cluster_settings(course).allowed_failures + 1
    assert got["poison"].status == "failed" and f"took down the worker each time it ran, {tries} times" in \
        got["poison"].reason
    source = nbformat.read(course.source_notebook, as_version=4)
    expected = {**{name: s.expected(source) for name, s in samples.items()}, "victim": samples["reference"].expected(source)}
    for name, points in expected.items():
        assert {t: got[name].points(t) for t in points} == points, (name, got[name].reason)
    # the victim was killed mid-grading, graded again, merged once; its first attempt left nothing running
    assert flag.exists() and marked_alive(flag.read_text()) == []
    progress = [line.split()[1] for line in lines if line.startswith("[")]
    assert sorted(progress) == sorted([*expected, "poison"])
    assert any(" left (" in line for line in lines if line.startswith("Cluster: worker"))
    rows = list(csv.DictReader(open(out / "grades.csv")))
    assert sorted(r["student_id"] for r in rows) == sorted(got)
    assert float(_by_student(rows)["poison"]["score"]) == 0
    summary = (out / "summary.md").read_text()
    assert "Graded on the cluster `local`" in summary and summary.count("isolation ON") >= 3
    assert not list(node.machine_root().glob("w-*")), "a worker's folder survived the batch"


def test_the_client_killed_and_run_again_grades_nothing_twice(course, inbox, tmp_path):
    names = ["reference", "blank", "unscaled"]
    some = tmp_path / "inbox"
    for name in names:
        shutil.copytree(inbox / name, some / name)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "grader", "grade", str(some), "--out", str(out), "--cluster", "local", "--workers", "1"]
    env = run_env() | {course_mod.COURSE_VAR: str(TINY)}
    first = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    said = []
    for line in first.stdout:
        said.append(line)
        if line.startswith("[1/"):
            first.kill()  # the client only: its cluster's workers go with it
            break
    first.wait(timeout=60)
    print("".join(said))
    merged = {p.parent.name: p.stat().st_mtime_ns for p in (out / "work").glob(f"*/{jobs.MERGED}")}
    assert len(merged) >= 1
    again = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    print(again.stdout[-3000:], again.stderr[-3000:])
    assert again.returncode == 0
    assert f"{len(merged)} submissions already graded" in again.stdout
    graded_again = [line.split()[1] for line in again.stdout.splitlines() if line.startswith("[")]
    assert sorted(graded_again) == sorted(set(names) - set(merged))
    assert {p.parent.name: p.stat().st_mtime_ns for p in (out / "work").glob(f"*/{jobs.MERGED}")
            if p.parent.name in merged} == merged
    for table in ("grades.csv", "results.csv"):
        ids = [r["student_id"] for r in csv.DictReader(open(out / table))]
        assert sorted(ids) == sorted(names), table
    results = {p.parent.name: json.loads(p.read_text()) for p in (out / "work").glob(f"*/{jobs.MERGED}")}
    assert all(r["status"] == "graded" for r in results.values())
    assert not list(node.machine_root().glob("w-*")), "a killed worker's folder survived the next run"


def test_unexpected_files_from_a_worker_are_refused(tmp_path):
    names = jobs.returned_files(course_mod.load(TINY), "s1")
    jobs.unpack(tmp_path, {names[0]: b"ok"}, names)
    assert (tmp_path / names[0]).read_bytes() == b"ok"
    for bad in ({"../escape": b"x"}, {"submitted/s2/tiny_lab/tiny_lab.ipynb": b"x"}, {names[1]: "not bytes"}):
        with pytest.raises(ValueError, match="refused"):
            jobs.unpack(tmp_path / "job", bad, names)
        assert not (tmp_path / "job").exists() and not (tmp_path / "escape").exists()


def test_a_cluster_spec_is_checked_before_anything_starts():
    assert cluster.check_spec("tcp://127.0.0.1:8786") == "tcp://127.0.0.1:8786"
    with pytest.raises(SystemExit, match="expected local, slurm, pbs or tcp://HOST:PORT"):
        cluster.check_spec("kubernetes")


def test_what_a_killed_worker_left_is_reaped_and_a_live_ones_kept(tmp_path):
    """node.reap_stale: a worker folder whose worker process is gone goes, with the processes of
    its jobs (found by the marker in their environment); a running worker's folder stays."""
    import secrets

    gone = subprocess.Popen(["true"])
    gone.wait()
    marker = f"s1-{secrets.token_hex(6)}"
    orphan = subprocess.Popen(["sleep", "300"], env={**os.environ, runner.MARKER: marker})
    try:
        dead, alive = tmp_path / "w-dead", tmp_path / "w-alive"
        for folder, pid in ((dead, gone.pid), (alive, os.getpid())):
            job = jobs.BatchFolders(folder).job("s1").path
            job.mkdir(parents=True)
            (job / jobs.MARKER_FILE).write_text(marker if folder == dead else "not-running")
            started = psutil.Process(pid).create_time() if folder == alive else 0.0
            (folder / node.OWNER).write_text(json.dumps({"pid": pid, "started": started}))
        assert node.reap_stale(tmp_path) == [dead]
        assert not dead.exists() and alive.exists()
        assert marked_alive(marker) == [] and orphan.wait(timeout=10) is not None  # killed (and reaped by psutil)
    finally:
        orphan.kill()


def test_a_slurm_jobs_worker_may_start_grading_processes_in_the_kit():
    """--cluster slurm's job script (no job is submitted): the settings from course.toml, the
    worker started in the kit's folder and non-daemonic (so that it may fork graders)."""
    import dataclasses

    cfg = course_mod.cluster_settings(course_mod.load(TINY))
    cfg = dataclasses.replace(cfg, jobqueue={**cfg.jobqueue, "slurm": {"cores": 2, "memory": "4GB", "queue": "grading"}})
    made = cluster.jobqueue_cluster("slurm", cfg)
    try:
        script = made.job_script()
    finally:
        made.close()
    assert "#SBATCH -p grading" in script and f"cd {ROOT}" in script
    assert "export DASK_DISTRIBUTED__WORKER__DAEMON=False" in script and sys.executable in script
