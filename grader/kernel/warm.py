"""Start and stop the batch's zygote (kernel/zygote.py), and tell the workers where it is.

    with warm.start(roots, env, binds, log, echo, limits) as zygote:   # None: cold kernels (echo says why)
        ... workers get {ENV_VAR: zygote.folder} and pass Zygote.from_env() to Sandbox(zygote=...)

A Sandbox uses the zygote only where it can confine a fork as well as a cold kernel: bwrap
works, and the grader makes its cgroups itself (as root, or in a subtree delegated to its
user: see zygote.py). Before serving, the zygote confines a test fork and has it join a test
cgroup; otherwise, and whenever the zygote cannot start, kernels start cold: slower, never
less safe. check() runs that test alone, in a second (`python -m grader doctor`).

The zygote's folder (/tmp/grader-zyg-*) is removed when the block ends. If the batch process is
killed instead (SIGKILL), bubblewrap's --die-with-parent ends the zygote and, with its pid
namespace, every warm kernel; the folder stays until the next start() removes it (its owner.json
names a process that no longer runs).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import BOOT, HERE, INSIDE, ZYGOTE, cgroups, probe, reap
from . import sandbox as sbx
from . import zygote as zyg

ENV_VAR = "GRADER_ZYGOTE"            # the batch's zygote folder (zygote.json), for the workers
SCRIPT = HERE / "zygote.py"
SOCKET, SHARE = "zygote.sock", "share"   # in the zygote's folder: its socket, the kernels' socket folders
HOSTPROC = f"{INSIDE}/{zyg.HOSTPROC_NAME}"  # the host's /proc in the zygote's sandbox (zygote.HOSTPROC)
INFO = "zygote.json"
OWNER = "owner.json"                   # the batch process the folder belongs to: {"pid", "started"}
PREFIX = "grader-zyg-"
START_TIMEOUT_S = 300


@dataclass(frozen=True)
class Zygote:
    """A running zygote, as a worker sees it."""
    folder: Path                # short host folder: the socket, the kernels' socket folders
    roots: tuple[str, ...]      # read-write folders of its sandbox, hidden from each kernel

    @property
    def socket(self) -> Path:
        return self.folder / SOCKET

    @property
    def share(self) -> Path:
        return self.folder / SHARE

    @property
    def script(self) -> Path:
        return SCRIPT

    @property
    def boot(self) -> str:
        return BOOT

    def serves(self, caps: probe.Capabilities) -> bool:
        """Can a fork confine a kernel as well as a cold sandbox would?"""
        return not unavailable(caps) and self.socket.exists()

    @classmethod
    def from_env(cls, environ) -> Zygote | None:
        folder = environ.get(ENV_VAR)
        if not folder or not (Path(folder) / INFO).exists():
            return None
        info = json.loads((Path(folder) / INFO).read_text())
        return cls(Path(folder), tuple(info["roots"]))


def unavailable(caps: probe.Capabilities) -> str:
    """'' if this machine may run warm kernels (the zygote's test fork has the last word), else
    why not, in words: one sentence, with the command that fixes it where there is one."""
    if not caps.namespaces:
        return "no bubblewrap sandbox here"
    if caps.cgroup == "systemd":
        return ("each kernel gets a systemd scope of its own, which a fork cannot join; grade from a shell in a "
                f"scope delegated to you for warm kernels: `{probe.SYSTEMD_DELEGATE}`")
    if caps.cgroup not in ("v1", "v2"):
        return "no cgroup the grader may make here (as root, or in a subtree delegated to you)"
    return ""


def _command(folder: Path, roots: tuple[str, ...], env: dict[str, str], binds: dict, caps, limits,
             join: list[int] = (), mode: str = "serve") -> list[str]:
    """The zygote's bubblewrap sandbox: a kernel's, with the batch's folders read-write (each fork
    hides them) and the host's /proc; its cwd is the kernels' working folder, where each fork
    mounts its own. CAP_SYS_ADMIN for the forks' namespaces and mounts, CAP_NET_ADMIN to bring up
    their loopback, CAP_SETPCAP to empty their bounding set (bubblewrap gives an ordinary user only
    the capabilities asked for; root gets them all). join: file descriptors of a test cgroup's
    cgroup.procs files, passed on to the zygote's test fork. mode "check": only the test fork,
    without the imports."""
    etc = sbx.write_etc(folder, sbx.WORKDIR)
    binds = {str(Path(h).resolve()): str(i) for h, i in binds.items()} | {
        str(SCRIPT): ZYGOTE, str(HERE / "boot.py"): BOOT}
    writable = {r: r for r in roots} | {"/proc": HOSTPROC}
    args = sbx.bwrap_args(caps.bwrap, etc, sbx.kernel_env(sbx.WORKDIR, True, env), limits.tmp_mb,
                           limits.run_mb, binds=binds, writable=writable)
    where = [str(folder / SOCKET)] if mode == "serve" else []
    joined = ["--join", ",".join(map(str, join))] if join else []
    caps_added = [x for cap in ("CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SETPCAP") for x in ("--cap-add", cap)]
    return [*args, *caps_added, "--", sys.executable, f"{INSIDE}/zygote.py", mode, *where, *joined, *roots]


@contextlib.contextmanager
def _test_cgroup(caps: probe.Capabilities):
    """A cgroup of the sandboxes' kind for the zygote's test fork to join: the cgroup.procs files,
    open for writing (empty if it cannot be made: the test then tells). Removed after the block."""
    try:
        group = cgroups.Cgroup.create(caps.cgroup, f"grader-sbx-probe-{secrets.token_hex(4)}", None)
    except OSError:
        yield []
        return
    fds = []
    try:
        fds = [os.open(file, os.O_WRONLY) for file in group.procs_files]
        yield fds
    finally:
        for fd in fds:
            os.close(fd)
        group.kill()
        try:
            group.remove()
        except OSError:
            pass


def check(limits: sbx.Limits, caps: probe.Capabilities | None = None) -> str:
    """'' if warm kernels work here, else why not: the zygote's test fork alone (no imports, about a
    second), in the zygote's own sandbox (`limits`: the kernels'), joining a test cgroup."""
    caps = caps or probe.probe()
    why = unavailable(caps)
    if why:
        return why
    folder = Path(tempfile.mkdtemp(prefix="grader-zygcheck-"))
    try:
        with _test_cgroup(caps) as fds:
            argv = _command(folder, (str(folder),), {}, {}, caps, limits, fds, mode="check")
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=60, pass_fds=fds)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"the test fork did not run ({type(exc).__name__}: {exc})"
    finally:
        reap.remove_tree(folder)
    said = (done.stdout + done.stderr).strip().splitlines()
    return "" if done.returncode == 0 else "a confined fork failed here: " + (said[-1] if said else
                                                                            f"exit status {done.returncode}")


@contextlib.contextmanager
def start(roots: list[Path], env: dict[str, str], binds: dict, log: Path, echo, limits: sbx.Limits,
          preload: tuple[str, ...] = (), libraries: str = "its libraries"):
    """Run a zygote for the block (None: cold kernels); `env`, `binds` and `limits` as a kernel's sandbox's;
    `preload`: the modules it imports once (`libraries` says them in words).
    The workers find it through ENV_VAR, which the caller adds to their environment."""
    caps = probe.probe()
    why = unavailable(caps)
    if why:
        echo(f"Warm kernels off ({why}): every kernel imports {libraries} itself.")
        yield None
        return
    _remove_stale(Path(tempfile.gettempdir()))
    folder = Path(tempfile.mkdtemp(prefix=PREFIX))
    (folder / OWNER).write_text(json.dumps(_owner(os.getpid())))
    all_roots = tuple(str(Path(r).resolve()) for r in roots) + (str(folder),)
    (folder / SHARE).mkdir()
    zygote = Zygote(folder, all_roots)
    proc = None
    try:
        with _test_cgroup(caps) as fds, open(log, "ab") as out:
            proc = subprocess.Popen(_command(folder, all_roots, env | {zyg.PRELOAD_VAR: ",".join(preload)}, binds,
                                             caps, limits, fds),
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, pass_fds=fds)
            waited = _wait_ready(proc, zygote, log, echo, libraries)  # its test fork has left the test cgroup by then
        if waited is None:
            yield None
            return
        (folder / INFO).write_text(json.dumps({"roots": all_roots}))
        echo(f"Warm kernels on: the libraries were imported once ({waited:.0f} s); each kernel is a "
             "confined fork of that process.")
        yield zygote
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        try:
            reap.remove_tree(folder)
        except OSError as exc:
            echo(f"Warm kernels: could not remove {folder} ({exc})")


def _owner(pid: int) -> dict | None:
    """{"pid", "started"} of a running process, None if there is none."""
    import psutil

    try:
        return {"pid": pid, "started": psutil.Process(pid).create_time()}
    except psutil.Error:
        return None


def _remove_stale(tmp: Path) -> list[Path]:
    """Remove the zygote folders in tmp whose batch process no longer runs (it was killed);
    return them. A folder without a readable owner.json is left alone."""
    removed = []
    for folder in tmp.glob(f"{PREFIX}*"):
        try:
            owner = json.loads((folder / OWNER).read_text())
            pid, started = int(owner["pid"]), float(owner["started"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _owner(pid) != {"pid": pid, "started": started} and not _listening(folder / SOCKET):
            try:
                reap.remove_tree(folder)
            except OSError:
                continue
            removed.append(folder)
    return removed


def _listening(path: Path) -> bool:
    """A process still accepts connections on this Unix socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(1)
        try:
            client.connect(str(path))
            return True
        except OSError:
            return False


def _wait_ready(proc: subprocess.Popen, zygote: Zygote, log: Path, echo, libraries: str) -> float | None:
    started = time.monotonic()
    echo(f"Warm kernels: importing {libraries} once for the whole batch...")
    while not zygote.socket.exists():
        if proc.poll() is not None or time.monotonic() - started > START_TIMEOUT_S:
            echo(f"Warm kernels off: the zygote did not start (see {log}); kernels start cold.")
            return None
        time.sleep(0.1)
    return time.monotonic() - started
