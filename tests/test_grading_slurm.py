"""Grading on Slurm: a one-node cluster of this host (tests/slurm.py), workers submitted by sbatch.

Skipped, saying why, where the cluster cannot start (not root, slurm-wlm or munge missing)."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import slurm as slurm_mod
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
        job = cluster.run("sbatch", "--parsable", "--wrap", "sleep 600").strip()
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
                      interface="lo", local_directory=str(tmp_path / "local"),
                      log_directory=str(tmp_path / "logs")) as cluster, Client(cluster) as client:
        cluster.scale(jobs=1)
        client.wait_for_workers(1, timeout=120)
        queued = slurm.job_ids()
        ran_in = client.submit(os.getenv, "SLURM_JOB_ID", pure=False).result(timeout=60)
        assert ran_in and ran_in in queued, f"the task ran in job {ran_in!r}; squeue shows {queued}"
        assert [job.job_id for job in cluster.workers.values()] == [ran_in]
    assert f"Launching batch job {ran_in} " in slurm.slurmd_log(), slurm.logs()
