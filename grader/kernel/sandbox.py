"""Confine one submission's Jupyter kernel: the OS-level sandbox around untrusted student code.

    caps = probe()                                   # what this machine offers (probe.py)
    with Sandbox(run_dir, Limits.load(course_file), caps, files={helper: "helper.py"}, manifest_dir=job_dir) as sb:
        os.environ.update(sb.jupyter_env())          # so jupyter finds the sandbox's kernelspec
        ExecutePreprocessor(config=sb.config(), ...).preprocess(nb, {"metadata": {"path": str(run_dir)}})
    # leaving the block kills whatever the submission left running, removes the cgroup and the folders
    reap(job_dir)   # the same, from another process, when the one holding the Sandbox was killed (reap.py)

What each protection relies on:

- isolation (bubblewrap, `bwrap --unshare-all --unshare-user`): new user, pid, network, ipc,
  uts and mount namespaces. The kernel runs as uid/gid 65534 with only loopback (nothing
  listens on it), sees read-only binds of the system folders, of a few files of /etc, of the
  Python installation and of the venv (never the repository around it), a private /tmp and
  /dev/shm, and its working folder WORKDIR (its cwd and HOME): a private tmpfs of run_mb,
  holding read-only binds of the lab's helper files (`files`). Nothing it writes there
  exists on the host, and all of it is gone with the kernel. Its only host folder is the
  short socket folder (`ipc_dir`) where it creates its Jupyter sockets; the connection file is
  in another one it can only read (`conn_dir`). Its environment is rebuilt from scratch
  (`--clearenv`): nothing of the grader's (secrets, JPY_PARENT_PID). When the grader is root,
  uid 65534 inside is root's uid on the host (bwrap maps it so): it can read root-only files
  among what it sees, hence so little of /etc.
- memory and process count (a cgroup per sandbox): v1 or v2, made as root or, for an ordinary
  user, inside a cgroup subtree delegated to them (by systemd: `systemd-run --user --scope -p
  Delegate=yes`, or by root: a folder chowned to them holding their shell); else a systemd
  scope per kernel (`systemd-run --user --scope`). Everything the kernel starts is inside it,
  and so are the pages of its tmpfs folders and the kernel memory of their files. Without a cgroup, the memory falls
  back to an address-space cap per process (RLIMIT_AS, generous: TensorFlow needs more than
  4 GiB of address space to import), and the process count to RLIMIT_NPROC set inside the
  sandbox's user namespace, where Linux >= 5.14 counts only that sandbox's processes (it never
  applies to processes that are root on the host).
- CPU time, file size, no core files: rlimits, always.
- nothing survives cleanup: when the kernel ends, bubblewrap's init (pid 1 of the sandbox)
  ends and Linux kills every process of that pid namespace, however it detached; cleanup()
  also kills whatever is left in the cgroup, or the sandbox's process tree, and removes the
  cgroup and the sandbox's folders. Given `manifest_dir`, the Sandbox records there, before
  making any of them, what it makes on the host; reap(manifest_dir) removes it all from
  another process once the one holding the Sandbox is gone (SIGKILL at a time limit).

A machine without some of these makes Sandbox() raise SandboxUnavailable, which says what is
missing and the command that brings it (Capabilities.gaps), unless the caller passes allow_unsafe=True: then what is
available is applied and `Sandbox.off` lists, in plain words, the protections that are off.
Without bubblewrap there is no private working folder: the kernel works in run_dir, a host
folder, where the helper files are copied.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from . import MB
from .cgroups import Cgroup, systemd_prefix
from .reap import KERNEL_PREFIX, STATE_PREFIX, Leftovers

if TYPE_CHECKING:  # probe.py and warm.py import this module: their types only
    from .probe import Capabilities
    from .warm import Zygote

UID = GID = 65534                        # "nobody" inside the sandbox
# The kernel's working folder and HOME inside the sandbox: a private tmpfs (no host path).
WORKDIR = "/home/sandbox"
REQUEST = "request.json"   # a warm kernel's zygote.Request, in the state folder
# The only files of /etc the kernel sees (a root grader's /etc holds shadow, keys, ...).
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "nsswitch.conf",
             "hosts", "host.conf", "gai.conf", "services", "protocols", "mime.types", "os-release",
             "alternatives", "fonts", "ssl/certs", "ssl/openssl.cnf", "ca-certificates")

# Runs first in the kernel's process: options, then "--", then the command it becomes.
#   --pid FILE: write this process's pid to FILE (a pid file, or a cgroup's cgroup.procs);
#   --limit RLIMIT_X=N: setrlimit; --env NAME=VALUE: the command gets only these variables;
#   --chdir DIR: the command's working folder.
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
    elif option == '--chdir':
        os.chdir(value)
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
    run_mb: int             # size of the kernel's private working folder (in memory)
    run_files: int          # most files and folders in it (tmpfs nr_inodes; warm kernels only)

    def __post_init__(self):
        bad = [f.name for f in fields(self) if not isinstance(getattr(self, f.name), int)
               or getattr(self, f.name) <= 0]
        if bad:
            raise ValueError(f"sandbox limits must be positive integers: {', '.join(bad)}")

    @classmethod
    def load(cls, path: Path | str) -> Limits:
        """The [sandbox] section of a course file (the course's: grader/course.py)."""
        with open(path, "rb") as f:
            data = tomllib.load(f).get("sandbox", {})
        names = [f.name for f in fields(cls)]
        unknown, absent = sorted(set(data) - set(names)), [n for n in names if n not in data]
        if unknown or absent:
            raise ValueError(f"[sandbox] in {path}: unknown {unknown}, missing {absent}; "
                             f"expected exactly {names}")
        return cls(**data)



# ----------------------------------------------------------------------------- bubblewrap

def python_dirs() -> list[Path]:
    """The venv and the Python installation it comes from, outside /usr, without duplicates."""
    found = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    found.add(Path(sys.executable).resolve().parent.parent)
    found = {p for p in found if not p.is_relative_to("/usr")}
    return sorted(p for p in found if not any(p != q and p.is_relative_to(q) for q in found))


def write_etc(state: Path, home: Path | str) -> Path:
    """passwd and group naming only the sandbox's user, so the host's accounts stay unseen."""
    etc = state / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text(f"nobody:x:{UID}:{GID}:nobody:{home}:/usr/sbin/nologin\n")
    (etc / "group").write_text(f"nogroup:x:{GID}:\n")
    return etc


def bwrap_args(bwrap: str, etc: Path, env: dict[str, str], tmp_mb: int, run_mb: int, *,
                binds: dict[str, str] | None = None, files: dict[str, str] | None = None,
                writable: dict[str, str] | None = None) -> list[str]:
    """bwrap's options. Mounts apply in order: the tmpfs folders first, binds over them.
    binds: read-only, host path -> path inside; files: host file -> its name in WORKDIR (bound
    read-only); writable: read-write binds, host path -> path inside (the socket folder, or the
    warm-kernel zygote's folders)."""
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
    for folder in python_dirs():
        args += ["--ro-bind", str(folder), str(folder)]
    # The working folder: a tmpfs of its own (bubblewrap gives no nr_inodes: the cgroup's memory
    # bounds how many files it holds), the helper files bound read-only into it.
    args += ["--size", str(run_mb * MB), "--tmpfs", WORKDIR]
    for host, name in (files or {}).items():
        args += ["--ro-bind", host, f"{WORKDIR}/{name}"]
    for host, inside in (binds or {}).items():
        args += ["--ro-bind", host, inside]
    for host, inside in (writable or {}).items():
        args += ["--bind", host, inside]
    # The sandbox's own root and /dev are tmpfs the sandbox could write to: read-only.
    return args + ["--chdir", WORKDIR, "--remount-ro", "/", "--remount-ro", "/dev"]


# ----------------------------------------------------------------------------- the sandbox

def kernel_env(home: Path | str, isolated: bool, extra: dict[str, str]) -> dict[str, str]:
    """The whole environment of a kernel (or of the warm-kernel zygote): nothing of the grader's."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
           "HOME": str(home), "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
    if isolated:  # the private /tmp: keeps the working folder free of caches
        env |= {"IPYTHONDIR": "/tmp/.ipython", "MPLCONFIGDIR": "/tmp/.matplotlib"}
    env |= extra
    env.pop("JPY_PARENT_PID", None)
    return env


def _check_run_dir(run_dir: Path) -> Path:
    """run_dir, made if needed; refused if it holds what must stay read-only or unseen."""
    run_dir = run_dir.resolve()
    for folder in [Path("/"), Path.home().resolve(), Path(__file__).resolve().parent, *python_dirs()]:
        if folder.is_relative_to(run_dir):
            raise ValueError(f"run_dir {run_dir} contains {folder}: the kernel could read and change "
                             "all of it. Give each submission a folder of its own, without the gradebook")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _check_workdir(inside: list[str]) -> None:
    """WORKDIR must be a folder of its own: nothing else the sandbox shows may be in it or around it."""
    for path in map(Path, inside):
        if path.is_relative_to(WORKDIR) or Path(WORKDIR).is_relative_to(path):
            raise ValueError(f"{path} would be inside or around the kernel's working folder {WORKDIR}: "
                             "bind it elsewhere")


class Sandbox:
    """One submission's kernel sandbox: a kernelspec that starts ipykernel confined, its cgroup.

    run_dir: a host folder, the cwd of the process that starts the kernel. With bubblewrap it
    stays empty: the kernel works in WORKDIR, a private tmpfs. Without (allow_unsafe) it is the
    kernel's working folder and HOME, and the `files` are copied into it.
    env: variables the kernel gets besides PATH, HOME, LANG, TMPDIR (nothing else passes).
    binds: extra read-only binds, host path -> path inside (not applied without bubblewrap).
    files: host files -> their names in the kernel's working folder, bound there read-only.
    boot: path inside of a script run instead of `-m ipykernel_launcher`; it gets ipykernel's
    arguments (`-f CONNECTION_FILE ...`) and must start ipykernel itself; bind it read-only.
    allow_unsafe: run with what this machine has; `off` lists what is missing. Without it,
    a missing protection raises SandboxUnavailable.
    zygote: the batch's warm-kernel zygote (warm.Zygote): the kernel is a fork of it where it
    can be confined as well as a cold one.
    manifest_dir: a folder the kernel cannot write (the submission's job folder) where the
    Sandbox records what it makes on the host before making it (KERNEL_NAME.json), for reap().
    """

    def __init__(self, run_dir: Path | str, limits: Limits, caps: Capabilities,
                 *, env: dict[str, str] | None = None, binds: dict[str | Path, str | Path] | None = None,
                 files: dict[str | Path, str] | None = None, boot: str | Path | None = None,
                 allow_unsafe: bool = False, zygote: Zygote | None = None,
                 manifest_dir: Path | str | None = None):
        self.run_dir = _check_run_dir(Path(run_dir))
        self.limits, self.caps = limits, caps
        self.off = self.caps.missing()
        if self.off and not allow_unsafe:
            raise SandboxUnavailable(
                "cannot confine the submissions' Jupyter kernels on this machine:\n  - "
                + "\n  - ".join(self.off)
                + "\nInstall or enable what is missing, or allow running without it explicitly "
                  "(allow_unsafe=True).")
        token = secrets.token_hex(6)
        self.kernel_name = KERNEL_PREFIX + token
        self.binds = {str(Path(h).resolve()): str(i) for h, i in (binds or {}).items()}
        absent = [h for h in self.binds if not Path(h).exists()]
        if absent:
            raise FileNotFoundError(f"cannot bind into the sandbox what does not exist: {absent}")
        self.files = {str(Path(h).resolve()): str(n) for h, n in (files or {}).items()}
        odd = [n for n in self.files.values() if "/" in n or n in ("", ".", "..")]
        absent = [h for h in self.files if not Path(h).is_file()]
        if odd or absent:
            raise ValueError(f"files must be existing files and plain names: {odd or absent}")
        self.boot = str(boot) if boot else None
        self.env = dict(env or {})
        self.zygote = zygote if zygote is not None and zygote.serves(self.caps) else None
        # the kernel's working folder as it sees it
        self.cwd = WORKDIR if self.caps.namespaces else str(self.run_dir)
        if self.caps.namespaces:
            _check_workdir([*map(str, python_dirs()), *self.binds.values()])
        self.state = Path(tempfile.gettempdir()).resolve() / (STATE_PREFIX + token)
        # A warm kernel's socket and connection-file folders are in the zygote's folder, which its
        # fork sees; a cold kernel's in the state folder. Short either way (Unix sockets: 107 bytes).
        share = self.zygote.share / self.kernel_name if self.zygote else None
        self.ipc_dir = (share or self.state) / "ipc"          # read-write inside: the kernel's sockets
        self.conn_dir = (share or self.state) / "conn"        # read-only inside: the connection file
        if len(str(self.ipc_dir / "k-99999")) > 100:
            raise ValueError(f"{self.ipc_dir} is too long a folder for Unix sockets: set TMPDIR shorter")
        self.cgroup: Cgroup | None = None
        plan = Cgroup.plan(self.caps.cgroup, self.kernel_name, self.limits) \
            if self.caps.cgroup in ("v1", "v2") else {}
        self._left = Leftovers(token, str(self.state), [str(share)] if share else [], list(map(str, plan)),
                                self.kernel_name if self.caps.cgroup == "systemd" else "")
        self.manifest = Path(manifest_dir).resolve() / f"{self.kernel_name}.json" if manifest_dir else None
        try:
            if self.manifest:
                self._left.write(self.manifest)
            self._setup(plan, share)
        except BaseException:
            self.cleanup()
            raise

    def _setup(self, plan: dict, share: Path | None) -> None:
        self.state.mkdir(mode=0o700)
        if share:
            share.mkdir()
        self.ipc_dir.mkdir()
        self.conn_dir.mkdir()
        self._etc = write_etc(self.state, self.cwd)
        if plan:
            self.cgroup = Cgroup.make(plan)
        if not self.caps.namespaces:  # no private folder: the helper files, copied into run_dir
            for host, name in self.files.items():
                shutil.copyfile(host, self.run_dir / name)
        spec_dir = self.state / "kernels" / self.kernel_name
        spec_dir.mkdir(parents=True)
        if self.zygote:
            (share / "files").mkdir()
            for host, name in self.files.items():  # copies the fork can see, to bind read-only
                shutil.copyfile(host, share / "files" / name)
            self._warm_request(share / "files").write(str(self.state / REQUEST))
        argv = self.kernel_argv()
        odd = [a for a in argv if re.search(r"\{[A-Za-z0-9_]+\}", a) and a != "{connection_file}"]
        if odd:  # jupyter would replace them
            raise ValueError(f"no {{name}} placeholders allowed in paths or variables: {odd}")
        spec = {"argv": argv, "display_name": "Python 3 (grading sandbox)",
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
        cfg.KernelManager.connection_file = str(self.conn_dir / "kernel.json")
        cfg.KernelManager.ip = str(self.ipc_dir / "k")
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
                    str(self.state / REQUEST), "--", *kernel[kernel.index("-f"):]]
        if self.caps.namespaces:
            bwrap = bwrap_args(self.caps.bwrap, self._etc, self._kernel_env(), self.limits.tmp_mb,
                                self.limits.run_mb, binds=self.binds | {str(self.conn_dir): str(self.conn_dir)},
                                files=self.files, writable={str(self.ipc_dir): str(self.ipc_dir)})
            argv = outer + ["--", *bwrap, "--", *launch, *limits, "--", *kernel]
        else:
            env = [x for name, value in self._kernel_env().items() for x in ("--env", f"{name}={value}")]
            argv = outer + limits + env + ["--chdir", self.cwd, "--", *kernel]
        if self.caps.cgroup == "systemd":
            argv = systemd_prefix(self.kernel_name, self.limits.memory_mb, self.limits.max_processes) + argv
        return argv

    def pids(self) -> set[int]:
        """Host pids of the processes still running in the sandbox."""
        return self._left.pids()

    def cleanup(self) -> int:
        """Kill whatever is left in the sandbox, remove its cgroup, its folders and its manifest;
        return how many processes were killed. The manifest stays if something could not be removed."""
        killed = self._left.kill()
        self._left.remove()
        self.cgroup = None
        if self.manifest:
            self.manifest.unlink(missing_ok=True)
        return killed

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ internals

    def _kernel_env(self) -> dict[str, str]:
        return kernel_env(self.cwd, self.caps.namespaces, self.env)

    def _warm_request(self, copies: Path):
        """What the zygote's fork needs to become this sandbox's kernel (zygote.Request)."""
        from .zygote import Request

        return Request(env=self._kernel_env(), rlimits=self._rlimits(), cwd=WORKDIR, writable=[str(self.ipc_dir)],
                       readable=[str(self.conn_dir)],
                       files={str(copies / name): f"{WORKDIR}/{name}" for name in self.files.values()},
                       tmp_bytes=self.limits.tmp_mb * MB, run_bytes=self.limits.run_mb * MB,
                       run_inodes=self.limits.run_files, threads=self.env.get("OMP_NUM_THREADS"),
                       boot=self.zygote.boot, cgroup_procs=[str(f) for f in self.cgroup.procs_files])

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
