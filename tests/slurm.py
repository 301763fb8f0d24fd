"""A one-node Slurm cluster for tests: this host is the node.

Debian's packages (`slurm-wlm`, `munge`) run from a temporary folder: a munge key and a munged
on its own socket, a slurm.conf naming this host with the CPUs and memory `slurmd -C` finds,
slurmctld and slurmd on free loopback ports, no accounting database, no systemd and no cgroup
plugin (proctrack/linuxproc, task/none). Client commands find it through SLURM_CONF
(`Slurm.env`). Needs root (slurmd runs each job as its submitter).

Teardown cancels every job, stops every daemon, ends any process left whose environment names
the temporary folder (a job's slurmstepd and its children outlive slurmd), and removes the folder.
The daemons also get SIGTERM if the test process dies; a cluster whose test process was killed
before its teardown (its folder's lock free) is swept by the next start.
The `slurm` fixture skips, saying what is missing and the command that installs it, when the
cluster cannot start here.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

PREFIX = "slurm-test-"  # of the temporary folders, in the system's temporary folder
INSTALL = "apt-get install -y slurm-wlm munge"
PROGRAMS = ("munged", "slurmctld", "slurmd", "slurmstepd", "sinfo", "sbatch", "squeue", "scancel")
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
PR_SET_PDEATHSIG = 1  # prctl(2)


@dataclass
class Slurm:
    """A running one-node cluster in `root`; `env` is os.environ plus SLURM_CONF."""

    root: Path
    node: str
    env: dict[str, str]
    lock: IO
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def run(self, *cmd: str, check: bool = True) -> str:
        """A Slurm client command (sinfo, squeue...) against this cluster; its stdout."""
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def node_state(self) -> str:
        return self.run("sinfo", "--noheader", "--nodes", self.node, "--format", "%T").strip()

    def job_ids(self) -> list[str]:
        """Ids of the jobs queued or running now (squeue)."""
        return self.run("squeue", "--noheader", "--format", "%i").split()

    def slurmd_log(self) -> str:
        return _read(self.root / "log" / "slurmd.log")

    def logs(self) -> str:
        """Every daemon's log, for a failure message."""
        return "\n".join(f"--- {p.name}\n{_read(p)[-3000:]}" for p in sorted((self.root / "log").glob("*")))


def unavailable() -> str | None:
    """Why a Slurm cluster cannot start on this machine, or None."""
    if os.geteuid() != 0:
        return ("the Slurm test needs root (slurmd runs each job as the user who submitted it): run it as root, "
                "e.g. `sudo .venv/bin/python -m pytest tests/test_grading_slurm.py`")
    missing = [p for p in PROGRAMS if shutil.which(p, path=_path()) is None]
    if missing:
        return f"Slurm or munge is not installed (no {', '.join(missing)}): `{INSTALL}` installs them"
    return None


def start(root: Path) -> Slurm:
    """Start munged, slurmctld and slurmd in `root`; wait until the node is idle.
    Raises RuntimeError (with the daemons' logs) when they do not come up; stops what it started.
    `root` stays locked (flock on root/lock) while this process holds the cluster."""
    node_line = _node_line()
    node = node_line.split()[0].split("=", 1)[1]
    lock = open(root / "lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    for sub in ("log", "state", "spool", "run", "munge"):
        (root / sub).mkdir(mode=0o700)
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf"), "PATH": _path()}
    slurm = Slurm(root, node, env, lock)
    try:
        _start_munge(slurm)
        slurm.conf.write_text(_slurm_conf(root, node_line, _free_port(), _free_port()))
        slurm.daemons["slurmctld"] = _daemon(slurm, "slurmctld", "-D", "-f", str(slurm.conf))
        slurm.daemons["slurmd"] = _daemon(slurm, "slurmd", "-D", "-f", str(slurm.conf), "-N", node)
        wait_for(lambda: slurm.node_state() == "idle", "the node to be idle in sinfo", slurm)
    except BaseException:
        stop(slurm, remove=False)
        raise
    return slurm


def stop(slurm: Slurm, remove: bool = True) -> list[str]:
    """Cancel every job, stop every daemon, end every process left from this cluster; remove its
    folder. Returns the processes it had to kill after the daemons stopped (for a test to check)."""
    if "slurmctld" in slurm.daemons:
        slurm.run("scancel", "--full", "--user", str(os.geteuid()), check=False)
        _wait_quietly(lambda: not slurm.job_ids(), STOP_TIMEOUT_S)
    for name in ("slurmd", "slurmctld", "munged"):
        proc = slurm.daemons.pop(name, None)
        if proc is not None:
            _end(proc)
    leftovers = _kill_leftovers(slurm.root)
    slurm.lock.close()
    if remove:
        shutil.rmtree(slurm.root, ignore_errors=True)
    return leftovers


def sweep_stale() -> None:
    """End the processes and remove the folders of clusters whose test process died before
    stopping them: folders of ours whose lock nobody holds and that are past their start."""
    for root in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        try:
            if time.time() - root.stat().st_mtime < START_TIMEOUT_S:
                continue
            with open(root / "lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # gone, no lock file yet, or held by a live cluster
            continue
        _kill_leftovers(root)
        shutil.rmtree(root, ignore_errors=True)


def processes_of(root: Path) -> list[int]:
    """Pids of the processes whose command line or environment names `root`."""
    needle = str(root).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes() or needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


@pytest.fixture(scope="module")
def slurm():
    """A running one-node Slurm cluster (see the module); skipped where it cannot start."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    sweep_stale()
    root = Path(tempfile.mkdtemp(prefix=PREFIX))
    try:
        cluster = start(root)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"Slurm did not start on this machine: {e}")
    try:
        yield cluster
    finally:
        stop(cluster)


def _path() -> str:
    """PATH with the sbin folders, where Debian puts the daemons."""
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def _node_line() -> str:
    """`NodeName=host CPUs=... RealMemory=...` for this host, as slurmd sees it."""
    done = subprocess.run([shutil.which("slurmd", path=_path()), "-C"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0 or not done.stdout.startswith("NodeName="):
        raise RuntimeError(f"`slurmd -C` failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout.splitlines()[0].strip()


def _start_munge(slurm: Slurm) -> None:
    key = slurm.root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    socket_path = slurm.root / "munge" / "munge.socket"
    slurm.daemons["munged"] = _daemon(
        slurm, "munged", "--foreground", "--force", f"--socket={socket_path}", f"--key-file={key}",
        f"--log-file={slurm.root / 'log' / 'munged.log'}", f"--pid-file={slurm.root / 'run' / 'munged.pid'}",
        f"--seed-file={slurm.root / 'munge' / 'munged.seed'}")
    wait_for(socket_path.exists, "munged's socket", slurm)


def _slurm_conf(root: Path, node_line: str, ctld_port: int, slurmd_port: int) -> str:
    node = node_line.split()[0].split("=", 1)[1]
    return f"""\
ClusterName=test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root / 'munge' / 'munge.socket'}
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}
SlurmdPidFile={root / 'run' / 'slurmd.pid'}
SlurmctldLogFile={root / 'log' / 'slurmctld.log'}
SlurmdLogFile={root / 'log' / 'slurmd.log'}
SlurmdDebug=verbose
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
{node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _daemon(slurm: Slurm, name: str, *args: str) -> subprocess.Popen:
    """Start a daemon in the foreground of its own session; it gets SIGTERM if this process dies."""
    log = open(slurm.root / "log" / f"{name}.out", "wb")
    with log:
        return subprocess.Popen([shutil.which(name, path=_path()), *args], env=slurm.env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_for(ready, what: str, slurm: Slurm) -> None:
    """Poll `ready()` until true; RuntimeError with the logs if a daemon exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        dead = [n for n, p in slurm.daemons.items() if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}:\n{slurm.logs()}")
        try:
            if ready():
                return
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no {what} after {START_TIMEOUT_S} s:\n{slurm.logs()}")


def _wait_quietly(done, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if done():
                return
        except (RuntimeError, subprocess.TimeoutExpired):
            return
        time.sleep(0.5)


def _end(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _kill_leftovers(root: Path) -> list[str]:
    """SIGKILL the processes still naming `root` (a job's slurmstepd and its children)."""
    killed = []
    for pid in processes_of(root):
        try:
            killed.append(f"{pid} {_read(Path(f'/proc/{pid}/cmdline')).replace(chr(0), ' ').strip()}")
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue
    return killed


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
