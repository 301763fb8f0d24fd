"""Confine one submission's Jupyter kernel: the OS-level sandbox around untrusted student code.

    caps = probe()                                   # what this machine offers
    with Sandbox(run_dir, Limits.load(), caps) as sb:
        os.environ.update(sb.jupyter_env())          # so jupyter finds the sandbox's kernelspec
        ExecutePreprocessor(config=sb.config(), ...).preprocess(nb, {"metadata": {"path": str(run_dir)}})
    # leaving the block kills whatever the submission left running and removes the cgroup

What each protection relies on:

- isolation (bubblewrap, `bwrap --unshare-all --unshare-user`): new user, pid, network, ipc,
  uts and mount namespaces. The kernel runs as uid/gid 65534 with only loopback (nothing
  listens on it), sees read-only binds of the system folders, of a few files of /etc, of the
  Python installation and of the venv (never the repository around it), a private /tmp and
  /dev/shm, and one writable folder, run_dir, which is also its cwd and HOME. Its environment
  is rebuilt from scratch (`--clearenv`): nothing of the grader's (secrets, JPY_PARENT_PID).
  When the grader is root, uid 65534 inside is root's uid on the host (bwrap maps it so): it
  can read root-only files among what it sees, hence so little of /etc.
- memory and process count (a cgroup per sandbox: v1 or v2 as root, or a systemd scope for a
  user with delegation): everything the kernel starts is inside it. Without a cgroup, the
  memory falls back to an address-space cap per process (RLIMIT_AS, generous: TensorFlow
  needs more than 4 GiB of address space to import), and the process count to RLIMIT_NPROC set
  inside the sandbox's user namespace, where Linux >= 5.14 counts only that sandbox's processes
  (it never applies to processes that are root on the host).
- CPU time, file size, no core files: rlimits, always.
- nothing survives cleanup: when the kernel ends, bubblewrap's init (pid 1 of the sandbox)
  ends and Linux kills every process of that pid namespace, however it detached; cleanup()
  also kills whatever is left in the cgroup, or the sandbox's process tree.

A machine without some of these makes Sandbox() raise SandboxUnavailable, which says what is
missing and what to install, unless the caller passes allow_unsafe=True: then what is
available is applied and `Sandbox.off` lists, in plain words, the protections that are off.
"""
from __future__ import annotations

import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

COURSE_TOML = Path(__file__).resolve().parent / "course.toml"
MB = 2 ** 20
UID = GID = 65534                        # "nobody" inside the sandbox
CGROUP_ROOT = Path("/sys/fs/cgroup")
# The only files of /etc the kernel sees (a root grader's /etc holds shadow, keys, ...).
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "nsswitch.conf",
             "hosts", "host.conf", "gai.conf", "services", "protocols", "mime.types", "os-release",
             "alternatives", "fonts", "ssl/certs", "ssl/openssl.cnf", "ca-certificates")

# Runs first in the kernel's process: options, then "--", then the command it becomes.
#   --pid FILE: write this process's pid to FILE (a pid file, or a cgroup's cgroup.procs);
#   --limit RLIMIT_X=N: setrlimit; --env NAME=VALUE: the command gets only these variables.
# No braces in it: jupyter fills {name} placeholders in every word of a kernelspec's argv.
LAUNCHER = """\
import os, resource, sys
args, env = sys.argv[1:], None
while args[0] != '--':
    option, value, args = args[0], args[1], args[2:]
    if option == '--pid':
        with open(value, 'w') as f:
            f.write(str(os.getpid()))
    elif option == '--limit':
        name, n = value.split('=')
        resource.setrlimit(getattr(resource, name), (int(n), int(n)))
    elif option == '--env':
        env = dict() if env is None else env
        name, _, text = value.partition('=')
        env[name] = text
os.execve(args[1], args[1:], os.environ if env is None else env)
"""


class SandboxUnavailable(RuntimeError):
    """This machine lacks a protection the sandbox needs, and running without it was not allowed."""


# ----------------------------------------------------------------------------- limits

@dataclass(frozen=True)
class Limits:
    """Resource limits per sandbox; the defaults are in the [sandbox] section of course.toml."""

    memory_mb: int          # memory really used by everything in the sandbox (cgroup)
    max_processes: int      # processes and threads at once (pids cgroup, else RLIMIT_NPROC)
    cpu_seconds: int        # CPU time per process, all threads together (RLIMIT_CPU)
    address_space_mb: int   # fallback without a cgroup: address space per process (RLIMIT_AS)
    tmp_mb: int             # size of the private /tmp and of /dev/shm (each, in memory)
    file_mb: int            # largest file the kernel may write (RLIMIT_FSIZE)

    def __post_init__(self):
        bad = [f.name for f in fields(self) if not isinstance(getattr(self, f.name), int)
               or getattr(self, f.name) <= 0]
        if bad:
            raise ValueError(f"sandbox limits must be positive integers: {', '.join(bad)}")

    @classmethod
    def load(cls, path: Path = COURSE_TOML) -> Limits:
        """The [sandbox] section of course.toml."""
        with open(path, "rb") as f:
            data = tomllib.load(f).get("sandbox", {})
        names = [f.name for f in fields(cls)]
        unknown, absent = sorted(set(data) - set(names)), [n for n in names if n not in data]
        if unknown or absent:
            raise ValueError(f"[sandbox] in {path}: unknown {unknown}, missing {absent}; "
                             f"expected exactly {names}")
        return cls(**data)


# ----------------------------------------------------------------------------- what the machine offers

@dataclass(frozen=True)
class Capabilities:
    """What this machine offers, as found by probe()."""

    bwrap: str | None            # path of bubblewrap, None if not installed
    namespaces: bool             # a bwrap sandbox (user+pid+net+mount namespaces) really starts
    namespaces_error: str        # why not, if not
    cgroup: str | None           # "v1", "v2" (as root), "systemd" (a scope), or None
    cgroup_error: str            # why none, if none
    root: bool                   # the grader runs as root
    userns_restricted: bool      # Ubuntu's AppArmor restriction on user namespaces is on
    system: str                  # platform.system()
    kernel: tuple[int, int]      # Linux version (major, minor)

    @property
    def process_limit(self) -> bool:
        """A limit on processes per sandbox exists (a cgroup, or RLIMIT_NPROC in a user namespace)."""
        return bool(self.cgroup) or (self.namespaces and not self.root and self.kernel >= (5, 14))

    def missing(self) -> list[str]:
        """Each protection that is off here, in plain words, with what to install or enable."""
        out = []
        if not self.namespaces:
            out.append("no isolation (network, files, user, processes): the kernel would run as "
                       f"{'root' if self.root else 'you'}, with your files and your network; "
                       + self._isolation_advice())
        if not self.cgroup:
            out.append("no real memory limit: only an address-space cap per process (RLIMIT_AS), "
                       "which several processes together can exceed"
                       + (" and which macOS does not enforce" if self.system == "Darwin" else "")
                       + f" ({self.cgroup_error}); " + self._cgroup_advice())
        if not self.process_limit:
            why = ("RLIMIT_NPROC never applies to root" if self.root and self.namespaces else
                   "without a user namespace RLIMIT_NPROC would count all your own processes"
                   if not self.namespaces else "Linux older than 5.14 counts RLIMIT_NPROC per user")
            out.append(f"no limit on the number of processes ({why}); " + self._cgroup_advice())
        if not self.namespaces and not self.cgroup:
            out.append("processes the submission detaches (setsid, double fork) can outlive "
                       "the grading: there is neither a pid namespace nor a cgroup to find them")
        return out

    def _isolation_advice(self) -> str:
        if self.system != "Linux":
            return (f"bubblewrap needs Linux ({self.system} has no such namespaces): grade in a "
                    "Linux machine, VM or container")
        if not self.bwrap:
            return ("install bubblewrap: `sudo apt-get install bubblewrap` (Debian/Ubuntu), "
                    "`sudo dnf install bubblewrap` (Fedora)")
        advice = f"bubblewrap is installed but cannot start a sandbox here ({self.namespaces_error})"
        if self.userns_restricted and not self.root:
            return advice + (
                ". Ubuntu 23.10+ (AppArmor) forbids user namespaces to programs without a profile "
                "allowing them, Ubuntu's own /usr/bin/bwrap included: either run the grader as "
                "root (sudo), or `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` "
                "(to keep it, a file in /etc/sysctl.d/), or load an AppArmor profile for "
                "/usr/bin/bwrap with the `userns,` rule")
        return advice + (". Check that user namespaces are enabled (sysctl user.max_user_namespaces "
                         "> 0; kernel.unprivileged_userns_clone=1 on old Debian kernels); in a "
                         "Docker container, grade on the host instead")

    def _cgroup_advice(self) -> str:
        if self.system != "Linux":
            return "cgroups need Linux"
        if self.root:
            return "as root this needs a writable cgroup v1 memory+pids hierarchy or cgroup v2 " \
                   "with memory and pids in /sys/fs/cgroup/cgroup.subtree_control"
        return ("run the grader as root (sudo), or use a systemd user session with memory and pids "
                "delegated: `systemd-run --user --scope -p MemoryMax=1G -p TasksMax=64 true` must work")


def probe(bwrap: str | None = None) -> Capabilities:
    """Find out what this machine offers; bwrap overrides which bubblewrap is tried."""
    bwrap = bwrap or shutil.which("bwrap")
    system = platform.system()
    ns_error = _try_bwrap(bwrap) if bwrap and system == "Linux" else "bubblewrap is not installed"
    cgroup, cg_error = _probe_cgroup() if system == "Linux" else (None, f"{system} has no cgroups")
    restrict = Path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    version = re.match(r"(\d+)\.(\d+)", platform.release())
    return Capabilities(
        bwrap=bwrap, namespaces=not ns_error, namespaces_error=ns_error,
        cgroup=cgroup, cgroup_error=cg_error, root=os.geteuid() == 0,
        userns_restricted=restrict.exists() and restrict.read_text().strip() == "1",
        system=system, kernel=(int(version[1]), int(version[2])) if system == "Linux" and version else (0, 0))


def _try_bwrap(bwrap: str) -> str:
    """'' if a sandbox laid out like the real one starts and runs Python as uid 65534, else why not."""
    with tempfile.TemporaryDirectory(prefix="craft-sbx-probe-") as tmp:
        folder = Path(tmp).resolve()
        etc = _write_etc(folder, folder)
        check = "import os, sys; sys.exit(0 if os.getuid() == 65534 else 3)"
        argv = _bwrap_args(bwrap, folder, folder, etc, {}, {"HOME": str(folder)}, 16) + [
            "--", sys.executable, "-I", "-S", "-c", check]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{type(exc).__name__}: {exc}"
    return "" if done.returncode == 0 else (done.stderr.strip() or f"exit status {done.returncode}")


def _probe_cgroup() -> tuple[str | None, str]:
    """(kind, '') for the first cgroup mechanism that works here, else (None, why not)."""
    errors = []
    for kind in ("v1", "v2"):
        try:
            _Cgroup.create(kind, f"craft-sbx-probe-{secrets.token_hex(4)}", None).remove()
            return kind, ""
        except OSError as exc:
            errors.append(f"cgroup {kind}: {exc.strerror or exc}")
    why = _try_systemd()
    if not why:
        return "systemd", ""
    return None, "; ".join(errors + [why])


def _try_systemd() -> str:
    """'' if `systemd-run --scope` applies MemoryMax and TasksMax here, else why not."""
    if not shutil.which("systemd-run"):
        return "no systemd-run"
    show = 'p=$(sed -n "s/^0:://p" /proc/self/cgroup); cat /sys/fs/cgroup$p/memory.max /sys/fs/cgroup$p/pids.max'
    argv = _systemd_prefix("craft-sbx-probe-" + secrets.token_hex(4), 256, 64) + ["sh", "-c", show]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"systemd-run: {exc}"
    if done.stdout.split() == [str(256 * MB), "64"]:
        return ""
    said = done.stderr.strip().splitlines()
    return "systemd-run --scope did not apply MemoryMax and TasksMax" + (f" ({said[-1]})" if said else "")


def _systemd_prefix(unit: str, memory_mb: int, tasks: int) -> list[str]:
    user = [] if os.geteuid() == 0 else ["--user"]
    return ["systemd-run", *user, "--scope", "--quiet", "--collect", f"--unit={unit}",
            "-p", f"MemoryMax={memory_mb}M", "-p", "MemorySwapMax=0", "-p", f"TasksMax={tasks}", "--"]


# ----------------------------------------------------------------------------- cgroups

def _own_cgroup(controller: str) -> str:
    """This process's cgroup in the hierarchy of a cgroup v1 controller."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return path
    return "/"


class _Cgroup:
    """One sandbox's cgroup: v1 (one folder per controller) or v2 (one folder)."""

    def __init__(self, dirs: list[Path]):
        self.dirs = dirs

    @classmethod
    def create(cls, kind: str, name: str, limits: Limits | None) -> _Cgroup:
        """Make it (nested in this process's own cgroup for v1) and write the limits."""
        if kind == "v1":
            settings = {
                "memory": {} if limits is None else {"memory.limit_in_bytes": limits.memory_mb * MB,
                                                     "memory.memsw.limit_in_bytes": limits.memory_mb * MB},
                "pids": {} if limits is None else {"pids.max": limits.max_processes}}
            plan = {CGROUP_ROOT / c / _own_cgroup(c).lstrip("/") / name: s for c, s in settings.items()}
        else:
            enabled = (CGROUP_ROOT / "cgroup.subtree_control").read_text().split()
            if not {"memory", "pids"} <= set(enabled):
                raise OSError(0, f"memory and pids are not enabled in {CGROUP_ROOT}/cgroup.subtree_control")
            plan = {CGROUP_ROOT / name: {} if limits is None else {
                "memory.max": limits.memory_mb * MB, "memory.swap.max": 0, "pids.max": limits.max_processes}}
        group = cls([])
        try:
            for folder, values in plan.items():
                folder.mkdir()
                group.dirs.append(folder)
                for file, value in values.items():
                    if (folder / file).exists():  # memsw/swap files exist only with swap accounting
                        (folder / file).write_text(str(value))
        except BaseException:
            group.remove()
            raise
        return group

    @property
    def procs_files(self) -> list[Path]:
        return [folder / "cgroup.procs" for folder in self.dirs]

    def pids(self) -> set[int]:
        found = set()
        for file in self.procs_files:
            try:
                found |= {int(p) for p in file.read_text().split()}
            except OSError:
                pass
        return found

    def kill(self, timeout_s: float = 10) -> int:
        """SIGKILL everything in it until it is empty; return how many processes."""
        killed: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids - {os.getpid()}:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed |= pids
            time.sleep(0.02)
        return len(killed)

    def remove(self, timeout_s: float = 5) -> None:
        deadline = time.monotonic() + timeout_s
        for folder in reversed(self.dirs):
            while folder.exists():
                try:
                    folder.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        self.dirs = []


# ----------------------------------------------------------------------------- bubblewrap

def _python_dirs() -> list[Path]:
    """The venv and the Python installation it comes from, outside /usr, without duplicates."""
    found = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    found.add(Path(sys.executable).resolve().parent.parent)
    found = {p for p in found if not p.is_relative_to("/usr")}
    return sorted(p for p in found if not any(p != q and p.is_relative_to(q) for q in found))


def _write_etc(state: Path, home: Path) -> Path:
    """passwd and group naming only the sandbox's user, so the host's accounts stay unseen."""
    etc = state / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text(f"nobody:x:{UID}:{GID}:nobody:{home}:/usr/sbin/nologin\n")
    (etc / "group").write_text(f"nogroup:x:{GID}:\n")
    return etc


def _bwrap_args(bwrap: str, run_dir: Path, ipc_dir: Path, etc: Path, binds: dict[str, str],
                env: dict[str, str], tmp_mb: int, writable: dict[str, str] | None = None) -> list[str]:
    """bwrap's options (mounts apply in order: the tmpfs first, binds over them); `writable`:
    more read-write binds, host path -> path inside (the warm-kernel zygote's)."""
    args = [bwrap, "--unshare-all", "--unshare-user", "--uid", str(UID), "--gid", str(GID),
            "--die-with-parent", "--new-session", "--hostname", "sandbox", "--clearenv"]
    for name, value in env.items():
        args += ["--setenv", name, value]
    # --clearenv already dropped it; said again in case a caller passes it: in a new pid
    # namespace ipykernel would take its parent for gone and stop at once.
    args += ["--unsetenv", "JPY_PARENT_PID"]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(tmp_mb * MB), "--tmpfs", "/tmp",
             "--size", str(tmp_mb * MB), "--tmpfs", "/dev/shm", "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        top = Path("/") / name
        if top.is_symlink():
            args += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            args += ["--ro-bind", str(top), str(top)]
    for name in ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    args += ["--ro-bind", str(etc / "passwd"), "/etc/passwd", "--ro-bind", str(etc / "group"), "/etc/group"]
    for folder in _python_dirs():
        args += ["--ro-bind", str(folder), str(folder)]
    for host, inside in binds.items():
        args += ["--ro-bind", host, inside]
    args += ["--bind", str(run_dir), str(run_dir)]
    for host, inside in (writable or {}).items():
        args += ["--bind", host, inside]
    if ipc_dir != run_dir:
        args += ["--bind", str(ipc_dir), str(ipc_dir)]
    # The sandbox's own root and /dev are tmpfs the sandbox could write to: read-only.
    return args + ["--remount-ro", "/", "--remount-ro", "/dev"]


# ----------------------------------------------------------------------------- the sandbox

def kernel_env(home: Path, isolated: bool, extra: dict[str, str]) -> dict[str, str]:
    """The whole environment of a kernel (or of the warm-kernel zygote): nothing of the grader's."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
           "HOME": str(home), "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
    if isolated:  # the private /tmp: keeps run_dir free of caches
        env |= {"IPYTHONDIR": "/tmp/.ipython", "MPLCONFIGDIR": "/tmp/.matplotlib"}
    env |= extra
    env.pop("JPY_PARENT_PID", None)
    return env


def _check_run_dir(run_dir: Path) -> Path:
    """run_dir, made if needed; refused if it holds what must stay read-only or unseen."""
    run_dir = run_dir.resolve()
    for folder in [Path("/"), Path.home().resolve(), Path(__file__).resolve().parent, *_python_dirs()]:
        if folder.is_relative_to(run_dir):
            raise ValueError(f"run_dir {run_dir} contains {folder}: the kernel could read and change "
                             "all of it. Give each submission a folder of its own, without the gradebook")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


class Sandbox:
    """One submission's kernel sandbox: a kernelspec that starts ipykernel confined, its cgroup.

    run_dir: the host folder that is the kernel's only writable place, its cwd and its HOME
    (put the notebook there; keep the gradebook out of it).
    env: variables the kernel gets besides PATH, HOME, LANG, TMPDIR (nothing else passes).
    binds: extra read-only binds, host path -> path inside (not applied without bubblewrap).
    boot: path inside of a script run instead of `-m ipykernel_launcher`; it gets ipykernel's
    arguments (`-f CONNECTION_FILE ...`) and must start ipykernel itself; bind it read-only.
    allow_unsafe: run with what this machine has; `off` lists what is missing. Without it,
    a missing protection raises SandboxUnavailable.
    """

    def __init__(self, run_dir: Path | str, limits: Limits | None = None, caps: Capabilities | None = None,
                 *, env: dict[str, str] | None = None, binds: dict[str | Path, str | Path] | None = None,
                 boot: str | Path | None = None, allow_unsafe: bool = False, zygote=None):
        self.run_dir = _check_run_dir(Path(run_dir))
        self.limits = limits or Limits.load()
        self.caps = caps or probe()
        self.off = self.caps.missing()
        if self.off and not allow_unsafe:
            raise SandboxUnavailable(
                "cannot confine the submissions' Jupyter kernels on this machine:\n  - "
                + "\n  - ".join(self.off)
                + "\nInstall or enable what is missing, or allow running without it explicitly "
                  "(allow_unsafe=True).")
        self.kernel_name = f"craft-sandbox-{secrets.token_hex(6)}"
        self.binds = {str(Path(h).resolve()): str(i) for h, i in (binds or {}).items()}
        absent = [h for h in self.binds if not Path(h).exists()]
        if absent:
            raise FileNotFoundError(f"cannot bind into the sandbox what does not exist: {absent}")
        self.boot = str(boot) if boot else None
        self.env = dict(env or {})
        self.zygote = zygote if zygote is not None and zygote.serves(self.run_dir, self.caps) else None
        self.cgroup: _Cgroup | None = None
        self.state = Path(tempfile.mkdtemp(prefix="craft-sbx-"))
        try:
            self._setup()
        except BaseException:
            self.cleanup()
            raise

    def _setup(self) -> None:
        # Unix socket paths are limited to 107 bytes: if run_dir is too deep, a short private folder.
        long = len(str(self.run_dir / ".jupyter-kernel-ipc-99")) > 100
        self.ipc_dir = self.run_dir if not long else \
            self.zygote.share / self.kernel_name if self.zygote else self.state / "ipc"
        self.ipc_dir.mkdir(exist_ok=True)
        self._etc = _write_etc(self.state, self.run_dir)
        if self.caps.cgroup in ("v1", "v2"):
            self.cgroup = _Cgroup.create(self.caps.cgroup, self.kernel_name, self.limits)
        spec_dir = self.state / "kernels" / self.kernel_name
        spec_dir.mkdir(parents=True)
        if self.zygote:
            (self.state / "request.json").write_text(json.dumps(self._warm_request()))
        argv = self.kernel_argv()
        odd = [a for a in argv if re.search(r"\{[A-Za-z0-9_]+\}", a) and a != "{connection_file}"]
        if odd:  # jupyter would replace them
            raise ValueError(f"no {{name}} placeholders allowed in paths or variables: {odd}")
        spec = {"argv": argv, "display_name": "Python 3 (CRAFT Lab sandbox)",
                "language": "python", "interrupt_mode": "message", "metadata": {"debugger": False}}
        (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))

    # ------------------------------------------------------------------ what the caller uses

    def jupyter_env(self) -> dict[str, str]:
        """Environment additions for the grading process, so jupyter finds this sandbox's kernelspec."""
        rest = os.environ.get("JUPYTER_PATH")
        return {"JUPYTER_PATH": str(self.state) + (os.pathsep + rest if rest else "")}

    def config(self):
        """traitlets Config for nbclient / nbconvert's ExecutePreprocessor / nbgrader's Execute."""
        from traitlets.config import Config

        cfg = Config()
        cfg.NotebookClient.kernel_name = self.kernel_name
        # TCP on loopback cannot cross the network namespace: Unix sockets in a folder both see.
        cfg.KernelManager.transport = "ipc"
        cfg.KernelManager.connection_file = str(self.ipc_dir / ".jupyter-kernel.json")
        cfg.KernelManager.ip = str(self.ipc_dir / ".jupyter-kernel-ipc")
        return cfg

    def kernel_argv(self) -> list[str]:
        """The kernelspec's argv: launcher (pid, cgroup) -> bwrap -> launcher (rlimits) -> kernel."""
        launch = [sys.executable, "-I", "-S", "-c", LAUNCHER]
        outer = launch + ["--pid", str(self.state / "pid")]
        for file in self.cgroup.procs_files if self.cgroup else []:
            outer += ["--pid", str(file)]
        limits = [x for name, n in self._rlimits().items() for x in ("--limit", f"{name}={n}")]
        kernel = self._kernel_command()
        if self.zygote:  # a fork of the batch's zygote, confined as described in zygote.py
            return [*launch[:3], str(self.zygote.script), "client", str(self.zygote.socket),
                    str(self.state / "request.json"), "--", *kernel[kernel.index("-f"):]]
        if self.caps.namespaces:
            bwrap = _bwrap_args(self.caps.bwrap, self.run_dir, self.ipc_dir, self._etc, self.binds,
                                self._kernel_env(), self.limits.tmp_mb)
            argv = outer + ["--", *bwrap, "--", *launch, *limits, "--", *kernel]
        else:
            env = [x for name, value in self._kernel_env().items() for x in ("--env", f"{name}={value}")]
            argv = outer + limits + env + ["--", *kernel]
        if self.caps.cgroup == "systemd":
            argv = _systemd_prefix(self.kernel_name, self.limits.memory_mb, self.limits.max_processes) + argv
        return argv

    def pids(self) -> set[int]:
        """Host pids of the processes still running in the sandbox."""
        if self.cgroup:
            return self.cgroup.pids()
        if self.caps.cgroup == "systemd":
            return self._systemd_pids()
        root = self._launcher()
        if root is None:
            return set()
        return {root.pid} | {p.pid for p in root.children(recursive=True)}

    def cleanup(self) -> int:
        """Kill whatever is left in the sandbox, remove its cgroup and files; return how many were killed."""
        try:
            if self.cgroup:
                killed = self.cgroup.kill()
                self.cgroup.remove()
                self.cgroup = None
            elif self.caps.cgroup == "systemd":
                killed = len(self._systemd_pids())
                user = [] if os.geteuid() == 0 else ["--user"]
                subprocess.run(["systemctl", *user, "kill", "--signal=SIGKILL", f"{self.kernel_name}.scope"],
                               capture_output=True, timeout=30)
            else:
                killed = self._kill_tree()
        finally:
            shutil.rmtree(self.state, ignore_errors=True)
            if self.zygote and self.ipc_dir != self.run_dir:
                shutil.rmtree(self.ipc_dir, ignore_errors=True)
        return killed

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ internals

    def _kernel_env(self) -> dict[str, str]:
        return kernel_env(self.run_dir, self.caps.namespaces, self.env)

    def _warm_request(self) -> dict:
        """What the zygote's fork needs to become this sandbox's kernel (zygote.py, client)."""
        return {"env": self._kernel_env(), "rlimits": self._rlimits(), "cwd": str(self.run_dir),
                "writable": sorted({str(self.run_dir), str(self.ipc_dir)}),
                "tmp_bytes": self.limits.tmp_mb * MB, "threads": self.env.get("OMP_NUM_THREADS"),
                "cgroup_procs": [str(f) for f in self.cgroup.procs_files], "boot": self.zygote.boot}

    def _kernel_command(self) -> list[str]:
        boot = self.boot
        if boot and not self.caps.namespaces:  # no mount namespace: the boot script's host path
            boot = next((h + boot[len(i):] for h, i in self.binds.items()
                         if boot == i or boot.startswith(i.rstrip("/") + "/")), boot)
        start = [sys.executable, boot] if boot else [sys.executable, "-m", "ipykernel_launcher"]
        return start + ["-f", "{connection_file}", "--HistoryManager.hist_file=:memory:"]

    def _rlimits(self) -> dict[str, int]:
        limits = {"RLIMIT_CPU": self.limits.cpu_seconds, "RLIMIT_FSIZE": self.limits.file_mb * MB,
                  "RLIMIT_CORE": 0}
        if not self.caps.cgroup and self.caps.system == "Linux":
            limits["RLIMIT_AS"] = self.limits.address_space_mb * MB
        if not self.caps.cgroup and self.caps.process_limit:  # inside the user namespace: per sandbox
            limits["RLIMIT_NPROC"] = self.limits.max_processes
        return limits

    def _launcher(self):
        """The kernel's first process (the launcher, now bwrap or the kernel), if still running."""
        import psutil

        pid_file = self.state / "pid"
        try:
            proc = psutil.Process(int(pid_file.read_text()))
            # a pid reused by another process would have started after the pid file was written
            return proc if proc.create_time() <= pid_file.stat().st_mtime + 1 else None
        except (OSError, ValueError, psutil.Error):
            return None

    def _kill_tree(self) -> int:
        import psutil

        root = self._launcher()
        if root is None:
            return 0
        procs = [root] + root.children(recursive=True)
        for proc in procs:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)
        return len(procs)

    def _systemd_pids(self) -> set[int]:
        user = [] if os.geteuid() == 0 else ["--user"]
        done = subprocess.run(["systemctl", *user, "show", "-p", "ControlGroup", "--value",
                               f"{self.kernel_name}.scope"], capture_output=True, text=True, timeout=30)
        procs = CGROUP_ROOT / done.stdout.strip().lstrip("/") / "cgroup.procs"
        try:
            return {int(p) for p in procs.read_text().split()} if done.stdout.strip() else set()
        except OSError:
            return set()
