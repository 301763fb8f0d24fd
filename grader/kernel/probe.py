"""What this machine offers a kernel's sandbox, and for each protection it lacks, the command that brings it.

    caps = probe()           # bubblewrap, the cgroup mechanism, the system: each tried for real
    caps.protections()       # each protection a kernel gets, on or off, and by what
    caps.gaps()              # each one that is off here, with its fix for this system

Sandbox (sandbox.py) refuses to start where a protection is missing unless told; the doctor
(grader/doctor.py) and each batch print the same facts.
"""
from __future__ import annotations

import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import MB
from .cgroups import CGROUP_ROOT, NEED, Cgroup, systemd_prefix
from .sandbox import WORKDIR, Limits, bwrap_args, write_etc

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
    subtree delegated to this user is made ready on the way (see cgroups.v2_parent)."""
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
            group = Cgroup.create(kind, f"grader-sbx-probe-{secrets.token_hex(4)}", PROBE_LIMITS)
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
    argv = systemd_prefix("grader-sbx-probe-" + secrets.token_hex(4), 256, 64) + ["sh", "-c", show]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"systemd-run: {exc}"
    if done.stdout.split() == [str(256 * MB), "64"]:
        return ""
    said = done.stderr.strip().splitlines()
    return "systemd-run --scope did not apply MemoryMax and TasksMax" + (f" ({said[-1]})" if said else "")
