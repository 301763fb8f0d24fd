"""Grading on Slurm: a one-node cluster of this host (tests/slurm.py), workers submitted by sbatch.

Skipped, saying why, where the cluster cannot start (not root, slurm-wlm or munge missing)."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest

import slurm as slurm_mod
from conftest import ROOT, run_env
from slurm import slurm  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow


def test_teardown_leaves_nothing_running():
    """A cluster stopped with a job still running leaves no daemon, no job process, no folder."""
    reason = slurm_mod.unavailable()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix=slurm_mod.PREFIX))
    cluster = slurm_mod.start(root)
    try:
        job = cluster.run("sbatch", "--parsable", "--output", str(root / "job-%j.out"), "--wrap", "sleep 600").strip()
        slurm_mod.wait_for(lambda: cluster.run("squeue", "--noheader", "--jobs", job, "--format", "%T").strip()
                           == "RUNNING", f"job {job} to run", cluster)
        daemons = list(cluster.daemons.values())
    finally:
        slurm_mod.stop(cluster)
    assert all(d.poll() is not None for d in daemons)
    assert slurm_mod.processes_of(root) == []
    assert not root.exists()


def test_dask_worker_joins_through_sbatch(slurm, tmp_path, monkeypatch):  # noqa: F811
    """dask-jobqueue's SLURMCluster submits one job; its worker joins and runs a task inside it."""
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    monkeypatch.setenv("PATH", slurm.env["PATH"])
    with SLURMCluster(cores=1, processes=1, memory="1GiB", walltime="00:05:00", python=sys.executable,
                      interface="lo", scheduler_options={"dashboard_address": ":0"}, local_directory=str(tmp_path / "local"),
                      log_directory=str(tmp_path / "logs")) as cluster, Client(cluster) as client:
        cluster.scale(jobs=1)
        client.wait_for_workers(1, timeout=120)
        queued = slurm.job_ids()
        ran_in = client.submit(os.getenv, "SLURM_JOB_ID", pure=False).result(timeout=60)
        assert ran_in and ran_in in queued, f"the task ran in job {ran_in!r}; squeue shows {queued}"
        assert [job.job_id for job in cluster.workers.values()] == [ran_in]
    assert f"Launching batch job {ran_in} " in slurm.slurmd_log(), slurm.logs()


# ----------------------------------------------------------------------------- grading on it

TINY = Path(__file__).resolve().parent / "tiny_lab" / "course.toml"
GRADED = ("reference", "unscaled")  # the tiny lab's demo class: full marks, and one check lost


def one_job_course(folder: Path) -> Path:
    """The tiny lab's course file, its folders made absolute, asking for one batch job of one
    worker process on one core ([cluster] and [cluster.slurm], as a TA would set them)."""
    text = TINY.read_text()
    for key in ("source", "release", "grading"):
        text, n = re.subn(rf'(?m)^{key} = "([^"/]+)"', lambda m: f'{key} = "{TINY.parent / m[1]}"', text)
        assert n == 1, f"{TINY}: no {key} = \"...\" line to make absolute"
    text, n = re.subn(r"(?m)^batch_jobs = \d+", "batch_jobs = 1", text)
    assert n == 1, f"{TINY}: no [cluster] batch_jobs line"
    text, n = re.subn(r"(?m)^\[cluster\.slurm\]\n", '[cluster.slurm]\ncores = 1\nprocesses = 1\nmemory = "2GiB"\n'
                      'walltime = "00:15:00"\n', text)
    assert n == 1, f"{TINY}: no [cluster.slurm] table"
    path = folder / "course.toml"
    path.write_text(text)
    return path


def dask_config(folder: Path) -> Path:
    """Dask's jobqueue.slurm settings a TA keeps beside the course file's: loopback (this one
    host), the workers' folders, no fixed dashboard port."""
    (folder / "dask").mkdir()
    (folder / "dask" / "jobqueue.yaml").write_text(f"""\
jobqueue:
  slurm:
    interface: lo
    local-directory: {folder / 'local'}
    log-directory: {folder / 'logs'}
    scheduler-options:
      dashboard_address: ":0"
""")
    return folder / "dask"


@pytest.fixture(scope="module")
def graded_on_slurm(slurm, tmp_path_factory):  # noqa: F811
    from grader import course as course_mod
    from grader import lab, release
    from grader.kernel import probe
    from grader.samples import write_samples

    if probe.probe().missing():
        pytest.skip("the sandbox is missing here: " + "; ".join(probe.probe().missing()))
    work = tmp_path_factory.mktemp("slurm-grading")
    course_file = one_job_course(work)
    course = course_mod.load(course_file)
    student = release.generate(course, work / "release") / f"{course.notebook}.ipynb"
    samples = [s for s in lab.load(course).DEMO_CLASS if s.name in GRADED]
    write_samples(samples, work / "inbox", course.source_notebook, student)
    env = run_env() | {course_mod.COURSE_VAR: str(course_file), "DASK_CONFIG": str(dask_config(work)),
                       "SLURM_CONF": slurm.env["SLURM_CONF"], "PATH": run_env()["PATH"] + os.pathsep + slurm.env["PATH"]}
    proc = subprocess.run([sys.executable, "-m", "grader", "grade", str(work / "inbox"), "--out", str(work / "out"),
                           "--cluster", "slurm"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.returncode == 0, slurm.logs()
    return course, samples, work, proc.stdout


def test_the_demo_class_gets_its_points_on_slurm(graded_on_slurm):
    course, samples, work, _ = graded_on_slurm
    source = nbformat.read(course.source_notebook, as_version=4)
    rows = {r["student_id"]: r for r in csv.DictReader(open(work / "out" / "results.csv"))}
    assert sorted(rows) == sorted(GRADED)
    for sample in samples:
        got = {test: float(rows[sample.name][test]) for test in sample.expected(source)}
        assert got == sample.expected(source), (sample.name, rows[sample.name]["reason"], rows[sample.name]["notes"])


def test_its_workers_came_from_slurm_jobs(graded_on_slurm, slurm):  # noqa: F811
    """Each worker the summary names started in a Slurm job: its address is in the log of a job
    slurmd launched; one job, as the course file asks; each graded in the sandbox."""
    _, _, work, _ = graded_on_slurm
    summary = (work / "out" / "summary.md").read_text()
    named = set(re.findall(r"tcp://127\.0\.0\.1:\d+", summary))
    assert named, f"summary.md names no worker:\n{summary}"
    started = {}  # worker address -> the Slurm job whose log says it started there
    for log in (work / "logs").glob("*.err"):
        for address in re.findall(r"Start worker at:\s+(tcp://\S+)", log.read_text()):
            started[address] = log.stem.rsplit("-", 1)[1]
    assert named <= set(started), f"workers {named - set(started)} are in no job's log ({started})"
    jobs = {started[a] for a in named}
    assert len(jobs) == 1 and all(f"Launching batch job {j} " in slurm.slurmd_log() for j in jobs), slurm.logs()
    worker_lines = [line for line in summary.splitlines() if any(a in line for a in named)]
    assert worker_lines and all("isolation ON" in line for line in worker_lines), "sandboxed inside the job"
