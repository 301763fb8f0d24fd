"""Confine one submission's Jupyter kernel: the OS-level sandbox around untrusted student code.

    caps = probe()                                   # what this machine offers
    with Sandbox(run_dir, Limits.load(), caps, files={helper: "helper.py"}, manifest_dir=job_dir) as sb:
        os.environ.update(sb.jupyter_env())          # so jupyter finds the sandbox's kernelspec
        ExecutePreprocessor(config=sb.config(), ...).preprocess(nb, {"metadata": {"path": str(run_dir)}})
    # leaving the block kills whatever the submission left running, removes the cgroup and the folders
    reap(job_dir)   # the same, from another process, when the one holding the Sandbox was killed

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

import errno
import json
import os
import platform
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # warm.py imports this module
    from .warm import Zygote

MB = 2 ** 20
UID = GID = 65534                        # "nobody" inside the sandbox
# The kernel's working folder and HOME inside the sandbox: a private tmpfs (no host path).
WORKDIR = "/home/sandbox"
# Names of what one sandbox makes on the host, all from one random token: its kernel (and
# cgroup, systemd scope, socket folder in a zygote's folder), its state folder in /tmp, its manifest.
TOKEN = re.compile(r"[0-9a-f]{12}")
KERNEL_PREFIX, STATE_PREFIX = "grader-sandbox-", "grader-sbx-"
REQUEST = "request.json"   # a warm kernel's zygote.Request, in the state folder
MANIFEST = re.compile(rf"{KERNEL_PREFIX}({TOKEN.pattern})\.json")
CGROUP_ROOT = Path("/sys/fs/cgroup")
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
    def load(cls, path: Path | None = None) -> Limits:
        """The [sandbox] section of the course file (grader/course.py course_file())."""
        from ..course import course_file

        path = path or course_file()
        with open(path, "rb") as f:
            data = tomllib.load(f).get("sandbox", {})
        names = [f.name for f in fields(cls)]
        unknown, absent = sorted(set(data) - set(names)), [n for n in names if n not in data]
        if unknown or absent:
            raise ValueError(f"[sandbox] in {path}: unknown {unknown}, missing {absent}; "
                             f"expected exactly {names}")
        return cls(**data)


# ----------------------------------------------------------------------------- what the machine offers

NEED = frozenset({"memory", "pids"})     # the cgroup controllers a sandbox uses
# cgroup v2 hands controllers only to the children of a cgroup without processes: in a subtree
# delegated to an ordinary user, the grader first moves the subtree's processes into this child.
V2_LEAF = "grader"
# The commands a TA's root runs to delegate a cgroup subtree to them (run from the shell they
# will grade in: $$ is that shell; it holds again until the next reboot).
V1_DELEGATE = ("for c in memory pids; do d=/sys/fs/cgroup/$c/grader-$(id -un); sudo mkdir -p $d && "
               "sudo chown $(id -un) $d $d/cgroup.procs $d/tasks && echo $$ | sudo tee $d/cgroup.procs >/dev/null; done")
V2_DELEGATE = ("d=/sys/fs/cgroup/grader-$(id -un); sudo mkdir -p $d && sudo chown $(id -un) $d $d/cgroup.procs "
               "$d/cgroup.subtree_control $d/cgroup.threads && echo $$ | sudo tee $d/cgroup.procs >/dev/null")
SYSTEMD_DELEGATE = "systemd-run --user --scope -p Delegate=yes bash"
APPARMOR_FILE = "/etc/apparmor.d/bwrap"


def apparmor_command(bwrap: str = "/usr/bin/bwrap") -> str:
    """One shell command that gives bubblewrap an AppArmor profile allowing user namespaces (and
    nothing else: bwrap stays unconfined), for systems that restrict them (Ubuntu 24.04, Debian 13)."""
    lines = ["abi <abi/4.0>,", "include <tunables/global>", f"profile bwrap {bwrap} flags=(unconfined) {{",
             "  userns,", "  include if exists <local/bwrap>", "}"]
    quoted = " ".join(f"'{line}'" for line in lines)
    return (f"printf '%s\\n' {quoted} | sudo tee {APPARMOR_FILE} >/dev/null && "
            f"sudo apparmor_parser -r {APPARMOR_FILE}")


@dataclass(frozen=True)
class Gap:
    """A protection that is off on this machine: one sentence for what it costs, and one for what
    brings it back, ending with the command (empty when the gap follows from another one)."""

    what: str
    fix: str = ""

    def __str__(self) -> str:
        return self.what + (f" Fix: {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class Capabilities:
    """What this machine offers, as found by probe()."""

    bwrap: str | None            # path of bubblewrap, None if not installed
    namespaces: bool             # a bwrap sandbox (user+pid+net+mount namespaces) really starts
    namespaces_error: str        # why not, if not
    cgroup: str | None           # "v1", "v2" (a folder this process may make cgroups in), "systemd" (a scope per kernel), or None
    cgroup_error: str            # why none, if none
    root: bool                   # the grader runs as root
    userns_restricted: bool      # the AppArmor restriction on user namespaces is on (Ubuntu 24.04, Debian 13)
    system: str                  # platform.system()
    kernel: tuple[int, int]      # Linux version (major, minor)
    hierarchy: str = ""          # the cgroup filesystem: "v1" (memory and pids mounted apart), "v2", "" (none)
    cgroup_where: str = ""       # the folders the sandboxes' cgroups go in (v1, v2)
    userns_sysctl: str = ""      # the sysctl that turns user namespaces off here, if one does
    distro: tuple[str, ...] = ()  # /etc/os-release's ID then ID_LIKE ("ubuntu", "debian")
    os_name: str = ""            # /etc/os-release's PRETTY_NAME, or the system's name
    container: bool = False      # inside a container (docker, podman)
    systemd_run: bool = False    # systemd-run is installed

    @property
    def process_limit(self) -> bool:
        """A limit on processes per sandbox exists (a cgroup, or RLIMIT_NPROC in a user namespace)."""
        return bool(self.cgroup) or (self.namespaces and not self.root and self.kernel >= (5, 14))

    @property
    def cgroup_text(self) -> str:
        """The cgroup mechanism in words ('' if none)."""
        if self.cgroup in ("v1", "v2"):
            return f"cgroup {self.cgroup}, " + ("as root" if self.root else "a subtree delegated to you")
        return "a systemd scope per kernel (cgroup v2)" if self.cgroup == "systemd" else ""

    def protections(self) -> list[tuple[str, bool, str]]:
        """(protection, on, by what or what is left) for each thing a kernel's sandbox does."""
        memory_left = "an address-space cap per process only (RLIMIT_AS)" if self.system == "Linux" else "none"
        return [
            ("isolation", self.namespaces, "bubblewrap: own user, pid, network, mount, ipc and uts namespaces"
             if self.namespaces else "none: the kernel runs as you, with your files and your network"),
            ("memory limit", bool(self.cgroup), self.cgroup_text or memory_left),
            ("process limit", self.process_limit, self.cgroup_text or (
                "RLIMIT_NPROC in the sandbox's user namespace" if self.process_limit else "none")),
            ("CPU time and file size limits", True, "rlimits"),
        ]

    def missing(self) -> list[str]:
        """Each protection that is off here, in plain words, with what brings it back."""
        return [str(gap) for gap in self.gaps()]

    def gaps(self) -> list[Gap]:
        """Each protection that is off here, with its fix."""
        out = []
        if not self.namespaces:
            out.append(Gap("no isolation (network, files, user, processes): the kernel would run as "
                           f"{'root' if self.root else 'you'}, with your files and your network "
                           f"({self.namespaces_error}).", self.isolation_fix()))
            out.append(Gap("no private working folder: the kernel works in a host folder (the submission's "
                           "run folder), and what it writes there (any number of files, each up to "
                           "file_mb) stays on disk after grading."))
        if not self.cgroup:
            out.append(Gap("no real memory limit: only an address-space cap per process (RLIMIT_AS), which "
                           "several processes together can exceed"
                           + (" and which macOS does not enforce" if self.system == "Darwin" else "")
                           + f" ({self.cgroup_error}).", self.cgroup_fix()))
        if not self.process_limit:
            why = ("RLIMIT_NPROC never applies to root" if self.root and self.namespaces else
                   "without a user namespace RLIMIT_NPROC would count all your own processes"
                   if not self.namespaces else "Linux older than 5.14 counts RLIMIT_NPROC per user")
            out.append(Gap(f"no limit on the number of processes ({why}).",
                           "the memory limit's fix brings it too." if self.system == "Linux" else ""))
        if not self.namespaces and not self.cgroup:
            out.append(Gap("processes the submission detaches (setsid, double fork) can outlive the grading: "
                           "there is neither a pid namespace nor a cgroup to find them."))
        return out

    def isolation_fix(self) -> str:
        """What makes bubblewrap work here: one sentence ending with the command."""
        if self.system != "Linux":
            return (f"none on {self.os_name or self.system}: bubblewrap needs Linux (its namespaces); grade on a "
                    "Linux machine or in a Linux VM.")
        if not self.bwrap:
            return f"install bubblewrap: `{self.install_command()}`."
        if self.userns_restricted and not self.root:
            return ("this system lets only programs with an AppArmor profile create user namespaces (Ubuntu "
                    f"24.04 and later, Debian 13): give bubblewrap one: `{apparmor_command(self.bwrap)}`.")
        if self.userns_sysctl:
            name, value = self.userns_sysctl, "1" if self.userns_sysctl.startswith("kernel.") else "10000"
            conf = "/etc/sysctl.d/90-user-namespaces.conf"
            return (f"user namespaces are turned off ({name}=0): `echo {name}={value} | sudo tee {conf} "
                    f">/dev/null && sudo sysctl -p {conf}`.")
        if self.container:
            return "containers usually forbid the namespaces bubblewrap needs: grade on the host or in a VM."
        return (f"bubblewrap must be able to make user namespaces here: `{self.bwrap} --unshare-all --ro-bind / / "
                "true` must succeed (ask your administrator).")

    def cgroup_fix(self) -> str:
        """What gives the grader a cgroup here: one sentence ending with the command."""
        if self.system != "Linux":
            return f"none on {self.os_name or self.system}: cgroups are Linux's; grade on Linux for memory limits."
        if self.root:
            if self.hierarchy == "v2":
                return ("let cgroups hand memory and pids to their children: "
                        "`echo '+memory +pids' > /sys/fs/cgroup/cgroup.subtree_control`.")
            if self.container:
                return "this container's cgroups are read-only: grade on the host, or give the container its own."
            return "mount the memory and pids cgroup controllers (cgroup v2 does both) under /sys/fs/cgroup."
        if self.hierarchy == "v2" and self.systemd_run:
            session = (" from a login of your own (a desktop or ssh session: su and sudo have no systemd user "
                       "manager)" if "bus" in self.cgroup_error.lower() else "")
            return (f"start a shell in a systemd scope delegated to you{session}, and grade from it: "
                    f"`{SYSTEMD_DELEGATE}`.")
        if self.hierarchy == "v2":
            return ("root delegates a cgroup to you and moves your shell into it (again after a reboot); run it "
                    f"from the shell you will grade in: `{V2_DELEGATE}`.")
        if self.hierarchy == "v1":
            return ("root delegates a cgroup subtree to you and moves your shell into it (again after a reboot); "
                    f"run it from the shell you will grade in: `{V1_DELEGATE}`.")
        return "this system mounts no cgroup filesystem under /sys/fs/cgroup: grade on one that does."

    def install_command(self) -> str:
        """The command that installs bubblewrap on this distribution."""
        ids = set(self.distro)
        for family, command in ((("debian", "ubuntu"), "sudo apt-get install bubblewrap"),
                                (("fedora", "rhel", "centos"), "sudo dnf install bubblewrap"),
                                (("arch",), "sudo pacman -S bubblewrap"),
                                (("suse", "opensuse"), "sudo zypper install bubblewrap")):
            if ids & set(family):
                return command
        return "sudo apt-get install bubblewrap"


def probe(bwrap: str | None = None) -> Capabilities:
    """Find out what this machine offers; bwrap overrides which bubblewrap is tried. A cgroup v2
    subtree delegated to this user is made ready on the way (see _v2_parent)."""
    bwrap = bwrap or shutil.which("bwrap")
    system = platform.system()
    ns_error = _try_bwrap(bwrap) if bwrap and system == "Linux" else "bubblewrap is not installed"
    cgroup, where, cg_error = _probe_cgroup() if system == "Linux" else (None, "", f"{system} has no cgroups")
    restrict = Path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    version = re.match(r"(\d+)\.(\d+)", platform.release())
    release = _os_release()
    return Capabilities(
        bwrap=bwrap, namespaces=not ns_error, namespaces_error=ns_error,
        cgroup=cgroup, cgroup_error=cg_error, root=os.geteuid() == 0,
        userns_restricted=_read(restrict) == "1",
        system=system, kernel=(int(version[1]), int(version[2])) if system == "Linux" and version else (0, 0),
        hierarchy=_hierarchy(), cgroup_where=where, userns_sysctl=_userns_sysctl(),
        distro=tuple([release.get("ID", "")] + release.get("ID_LIKE", "").split()),
        os_name=release.get("PRETTY_NAME") or ("macOS" if system == "Darwin" else system),
        container=Path("/.dockerenv").exists() or Path("/run/.containerenv").exists(),
        systemd_run=bool(shutil.which("systemd-run")))


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _os_release() -> dict[str, str]:
    found = {}
    for line in _read(Path("/etc/os-release")).splitlines():
        name, _, value = line.partition("=")
        found[name.strip()] = value.strip().strip('"')
    return found


def _userns_sysctl() -> str:
    """The sysctl that turns unprivileged user namespaces off here, if one does."""
    for name in ("kernel.unprivileged_userns_clone", "user.max_user_namespaces"):
        if _read(Path("/proc/sys") / name.replace(".", "/")) == "0":
            return name
    return ""


def _hierarchy() -> str:
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return "v2"
    return "v1" if all(os.path.ismount(CGROUP_ROOT / c) for c in NEED) else ""


def _try_bwrap(bwrap: str) -> str:
    """'' if a sandbox laid out like the real one starts and runs Python as uid 65534, else why not."""
    with tempfile.TemporaryDirectory(prefix="grader-sbx-probe-") as tmp:
        etc = write_etc(Path(tmp), WORKDIR)
        check = f"import os, sys; sys.exit(0 if os.getuid() == 65534 and os.getcwd() == {WORKDIR!r} else 3)"
        argv = bwrap_args(bwrap, etc, {"HOME": WORKDIR}, 16, 16) + [
            "--", sys.executable, "-I", "-S", "-c", check]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{type(exc).__name__}: {exc}"
    return "" if done.returncode == 0 else (done.stderr.strip() or f"exit status {done.returncode}")


PROBE_LIMITS = Limits(memory_mb=256, max_processes=64, cpu_seconds=1, address_space_mb=1, tmp_mb=1, file_mb=1,
                      run_mb=1, run_files=1)


def _probe_cgroup() -> tuple[str | None, str, str]:
    """(kind, where its cgroups go, '') for the first cgroup mechanism that works here, else
    (None, '', why not). Each is tried for real: a cgroup made, limits written, removed."""
    errors = []
    for kind in ("v1", "v2"):
        try:
            group = _Cgroup.create(kind, f"grader-sbx-probe-{secrets.token_hex(4)}", PROBE_LIMITS)
        except OSError as exc:
            errors.append(f"cgroup {kind}: {exc.strerror or exc}")
            continue
        where = ", ".join(str(folder.parent) for folder in group.dirs)
        group.remove()
        return kind, where, ""
    why = _try_systemd()
    if not why:
        return "systemd", "", ""
    return None, "", "; ".join(errors + [why])


def _try_systemd() -> str:
    """'' if `systemd-run --scope` applies MemoryMax and TasksMax here, else why not."""
    if not shutil.which("systemd-run"):
        return "no systemd-run"
    show = 'p=$(sed -n "s/^0:://p" /proc/self/cgroup); cat /sys/fs/cgroup$p/memory.max /sys/fs/cgroup$p/pids.max'
    argv = _systemd_prefix("grader-sbx-probe-" + secrets.token_hex(4), 256, 64) + ["sh", "-c", show]
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
    """This process's cgroup in the hierarchy of a cgroup v1 controller ("" for cgroup v2's)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(",") or (not controller and not names):
            return path
    return "/"


def _v2_parent() -> Path:
    """The cgroup v2 folder this process makes sandbox cgroups in. As root: the root of the
    hierarchy. Otherwise its own cgroup (the one above V2_LEAF once the grader moved there), if it
    was delegated to this user: by systemd (`systemd-run --user --scope -p Delegate=yes`) or by
    root (a folder chowned to the user). The first call makes it ready: the subtree's processes
    move into V2_LEAF, and memory and pids are enabled for its children. OSError if not possible."""
    if not (CGROUP_ROOT / "cgroup.controllers").exists():
        raise OSError(errno.ENOENT, f"no cgroup v2 hierarchy at {CGROUP_ROOT}")
    if os.geteuid() == 0:
        if not NEED <= set((CGROUP_ROOT / "cgroup.subtree_control").read_text().split()):
            raise OSError(0, f"memory and pids are not enabled in {CGROUP_ROOT}/cgroup.subtree_control")
        return CGROUP_ROOT
    own = CGROUP_ROOT / _own_cgroup("").lstrip("/")
    top = own.parent if own.name == V2_LEAF else own
    why = _not_delegated(top)
    if why:
        raise OSError(errno.EACCES, why)
    control = top / "cgroup.subtree_control"
    if not NEED <= set(control.read_text().split()):
        leaf = top / V2_LEAF
        leaf.mkdir(exist_ok=True)
        for pid in (top / "cgroup.procs").read_text().split():
            try:
                (leaf / "cgroup.procs").write_text(pid)
            except ProcessLookupError:  # it ended meanwhile
                pass
        control.write_text(" ".join(f"+{name}" for name in sorted(NEED)))
    return top


def _not_delegated(top: Path) -> str:
    """'' if the cgroup v2 folder `top` is delegated to this user with memory and pids, else why not."""
    if top == CGROUP_ROOT:
        return "your cgroup is the root of the hierarchy, which only root may change"
    owner = top.stat().st_uid
    if owner != os.geteuid():
        return f"your cgroup {top} belongs to uid {owner}: it was not delegated to you"
    for name in ("cgroup.procs", "cgroup.subtree_control"):
        if not os.access(top / name, os.W_OK):
            return f"{top / name} is not writable by you: the cgroup was not delegated to you"
    lacking = NEED - set((top / "cgroup.controllers").read_text().split())
    if lacking:
        return f"your cgroup {top} was not given the {' and '.join(sorted(lacking))} controller(s)"
    unit = next((p for p in [top, *top.parents] if p.name.endswith((".scope", ".service"))), None)
    if unit is not None and not _systemd_delegated(unit):
        return (f"your cgroup is inside systemd's {unit.name}, which systemd manages (not started with "
                "Delegate=yes)")
    return ""


def _systemd_delegated(unit: Path) -> bool:
    """The systemd unit whose cgroup is `unit` was delegated (Delegate=yes)."""
    for attribute in ("user.delegate", "trusted.delegate"):  # set by systemd 251 and later
        try:
            if os.getxattr(unit, attribute) == b"1":
                return True
        except OSError:
            pass
    try:
        shown = subprocess.run(["systemctl", "--user", "show", "-p", "Delegate", "--value", unit.name],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return False
    return shown == "yes"


class _Cgroup:
    """One sandbox's cgroup: v1 (one folder per controller) or v2 (one folder)."""

    def __init__(self, dirs: list[Path]):
        self.dirs = dirs

    @classmethod
    def create(cls, kind: str, name: str, limits: Limits | None) -> _Cgroup:
        """Make it (v1: nested in this process's own cgroups; v2: see _v2_parent) and write the limits."""
        return cls.make(cls.plan(kind, name, limits))

    @staticmethod
    def plan(kind: str, name: str, limits: Limits | None) -> dict[Path, dict[str, int]]:
        """Its folders and, in each, the values to write; nothing made yet."""
        if kind == "v1":
            settings = {
                "memory": {} if limits is None else {"memory.limit_in_bytes": limits.memory_mb * MB,
                                                     "memory.memsw.limit_in_bytes": limits.memory_mb * MB},
                "pids": {} if limits is None else {"pids.max": limits.max_processes}}
            return {CGROUP_ROOT / c / _own_cgroup(c).lstrip("/") / name: s for c, s in settings.items()}
        return {_v2_parent() / name: {} if limits is None else {
            "memory.max": limits.memory_mb * MB, "memory.swap.max": 0, "pids.max": limits.max_processes}}

    @classmethod
    def make(cls, plan: dict[Path, dict[str, int]]) -> _Cgroup:
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
    for folder in _python_dirs():
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


# ----------------------------------------------------------------------------- what a sandbox leaves

def _remove_tree(path: Path) -> None:
    """Remove the folder `path` and all it holds, at any depth, never following a link: each
    folder is opened from its parent's descriptor with O_NOFOLLOW and emptied through its own,
    one descriptor at a time. Folders made unreadable or read-only (mode 000) are opened up first."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return  # gone, or a link or file someone else put there: not ours to follow or remove
    except FileNotFoundError:
        return
    top = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    fd = top
    try:
        fd = _open_dir(top, path.name)
        names, todo = [path.name], [_empty_files(fd)]
        while names:
            if todo[-1]:
                sub = todo[-1].pop()
                try:
                    child = _open_dir(fd, sub)
                except FileNotFoundError:
                    continue
                os.close(fd)
                fd = child
                names.append(sub)
                todo.append(_empty_files(fd))
                continue
            done = names.pop()
            todo.pop()
            up = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd) if names else top
            os.close(fd)
            fd = up
            os.rmdir(done, dir_fd=up)
    finally:
        if fd != top:
            os.close(fd)
        os.close(top)


def _open_dir(parent: int, name: str) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        return os.open(name, flags, dir_fd=parent)
    except PermissionError:  # mode 000: give it back its owner's permissions (the grader's uid)
        handle = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
        try:
            os.chmod(f"/proc/self/fd/{handle}", 0o700)
            return os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=handle)
        finally:
            os.close(handle)


def _empty_files(fd: int) -> list[str]:
    """Unlink all but the subfolders of the folder open as fd; return the subfolders' names."""
    if os.fstat(fd).st_mode & 0o700 != 0o700:
        os.fchmod(fd, 0o700)
    folders = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                folders.append(entry.name)
            else:
                try:
                    os.unlink(entry.name, dir_fd=fd)
                except FileNotFoundError:
                    pass
    return folders


@dataclass
class _Leftovers:
    """What one sandbox makes on the host: its state folder (/tmp/grader-sbx-TOKEN), its socket
    folder in a zygote's folder (warm kernels), its cgroup folders or systemd scope. As its
    manifest records it, so that another process can remove it all."""

    token: str
    state: str
    folders: list[str]
    cgroups: list[str]
    unit: str = ""               # systemd scope, without ".scope"

    def write(self, manifest: Path) -> None:
        """The manifest, atomically (another process may read it at any time)."""
        part = manifest.with_name(f".{manifest.name}.{os.getpid()}.part")
        part.write_text(json.dumps({"state": self.state, "folders": self.folders,
                                    "cgroups": self.cgroups, "unit": self.unit}))
        os.replace(part, manifest)

    @classmethod
    def read(cls, manifest: Path, token: str) -> _Leftovers:
        """A manifest, checked: every path absolute, normalized and named after the sandbox's token."""
        fd = os.open(manifest, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            data = json.loads(f.read(1 << 16))
        kernel = KERNEL_PREFIX + token
        left = cls(token, data["state"], list(data["folders"]), list(data["cgroups"]), data.get("unit") or "")

        def plain(path: str, name: str) -> bool:
            return isinstance(path, str) and os.path.isabs(path) and os.path.normpath(path) == path \
                and os.path.basename(path) == name
        bad = [p for p in [left.state] if not plain(p, STATE_PREFIX + token)]
        bad += [p for p in left.folders if not plain(p, kernel)]
        bad += [p for p in left.cgroups if not plain(p, kernel) or not Path(p).is_relative_to(CGROUP_ROOT)]
        bad += [left.unit] if left.unit not in ("", kernel) else []
        if bad:
            raise ValueError(f"not what a sandbox makes: {bad}")
        return left

    def _cgroup(self) -> _Cgroup:
        root = os.path.realpath(CGROUP_ROOT)
        return _Cgroup([Path(d) for d in self.cgroups if os.path.isdir(d)
                        and Path(os.path.realpath(d)).is_relative_to(root)])

    def pids(self) -> set[int]:
        if self.cgroups:
            return self._cgroup().pids()
        if self.unit:
            return _systemd_pids(self.unit)
        root = _launcher(Path(self.state) / "pid")
        return set() if root is None else {root.pid} | {p.pid for p in root.children(recursive=True)}

    def kill(self) -> int:
        """SIGKILL every process still in the sandbox; return how many."""
        if self.cgroups:
            return self._cgroup().kill()
        if self.unit:
            killed = len(_systemd_pids(self.unit))
            user = [] if os.geteuid() == 0 else ["--user"]
            subprocess.run(["systemctl", *user, "kill", "--signal=SIGKILL", f"{self.unit}.scope"],
                           capture_output=True, timeout=30)
            return killed
        return _kill_tree(_launcher(Path(self.state) / "pid"))

    def remove(self) -> None:
        """Remove the cgroup and the folders (after kill()); OSError listing what could not be."""
        errors = []
        try:
            self._cgroup().remove()
        except OSError as exc:
            errors.append(f"cgroup: {exc}")
        for folder in [*self.folders, self.state]:
            try:
                _remove_tree(Path(folder))
            except OSError as exc:
                errors.append(f"{folder}: {exc}")
        if errors:
            raise OSError(0, "could not remove all the sandbox left: " + "; ".join(errors))


def reap(folder: Path | str) -> int:
    """Kill and remove what the sandboxes whose manifests are in `folder` (their `manifest_dir`)
    made on this machine: processes still in their cgroups, the cgroups, their state and socket
    folders; then each manifest. Return how many processes were killed. For a parent whose
    worker held a Sandbox and was killed: never while a Sandbox recorded there is still in use.
    Idempotent; a manifest whose leftovers cannot all be removed stays, for a later call."""
    folder = Path(folder)
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    killed = 0
    for name in names:
        match = MANIFEST.fullmatch(name)
        if not match:
            continue
        manifest = folder / name
        try:
            left = _Leftovers.read(manifest, match[1])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(f"sandbox.reap: {manifest} ignored ({type(exc).__name__}: {exc})", stacklevel=2)
            continue
        killed += left.kill()
        try:
            left.remove()
        except OSError as exc:
            warnings.warn(f"sandbox.reap: {exc}; kept {manifest}", stacklevel=2)
            continue
        manifest.unlink(missing_ok=True)
    return killed


def _launcher(pid_file: Path):
    """The kernel's first process (the launcher, now bwrap or the kernel), if still running."""
    import psutil

    try:
        proc = psutil.Process(int(pid_file.read_text()))
        # a pid reused by another process would have started after the pid file was written
        return proc if proc.create_time() <= pid_file.stat().st_mtime + 1 else None
    except (OSError, ValueError, psutil.Error):
        return None


def _kill_tree(root) -> int:
    import psutil

    if root is None:
        return 0
    try:
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)
    return len(procs)


def _systemd_pids(unit: str) -> set[int]:
    user = [] if os.geteuid() == 0 else ["--user"]
    done = subprocess.run(["systemctl", *user, "show", "-p", "ControlGroup", "--value", f"{unit}.scope"],
                          capture_output=True, text=True, timeout=30)
    procs = CGROUP_ROOT / done.stdout.strip().lstrip("/") / "cgroup.procs"
    try:
        return {int(p) for p in procs.read_text().split()} if done.stdout.strip() else set()
    except OSError:
        return set()


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
    for folder in [Path("/"), Path.home().resolve(), Path(__file__).resolve().parent, *_python_dirs()]:
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

    def __init__(self, run_dir: Path | str, limits: Limits | None = None, caps: Capabilities | None = None,
                 *, env: dict[str, str] | None = None, binds: dict[str | Path, str | Path] | None = None,
                 files: dict[str | Path, str] | None = None, boot: str | Path | None = None,
                 allow_unsafe: bool = False, zygote: Zygote | None = None,
                 manifest_dir: Path | str | None = None):
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
            _check_workdir([*map(str, _python_dirs()), *self.binds.values()])
        self.state = Path(tempfile.gettempdir()).resolve() / (STATE_PREFIX + token)
        # A warm kernel's socket and connection-file folders are in the zygote's folder, which its
        # fork sees; a cold kernel's in the state folder. Short either way (Unix sockets: 107 bytes).
        share = self.zygote.share / self.kernel_name if self.zygote else None
        self.ipc_dir = (share or self.state) / "ipc"          # read-write inside: the kernel's sockets
        self.conn_dir = (share or self.state) / "conn"        # read-only inside: the connection file
        if len(str(self.ipc_dir / "k-99999")) > 100:
            raise ValueError(f"{self.ipc_dir} is too long a folder for Unix sockets: set TMPDIR shorter")
        self.cgroup: _Cgroup | None = None
        plan = _Cgroup.plan(self.caps.cgroup, self.kernel_name, self.limits) \
            if self.caps.cgroup in ("v1", "v2") else {}
        self._left = _Leftovers(token, str(self.state), [str(share)] if share else [], list(map(str, plan)),
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
            self.cgroup = _Cgroup.make(plan)
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
            argv = _systemd_prefix(self.kernel_name, self.limits.memory_mb, self.limits.max_processes) + argv
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
