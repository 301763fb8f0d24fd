"""The cgroup plumbing of a kernel's sandbox: where this process may make cgroups, and one sandbox's cgroup.

    group = Cgroup.create("v2", name, limits)    # its folder(s) made, the memory and pids limits written
    group.procs_files                             # where the kernel's first process writes its pid
    group.kill(); group.remove()

cgroup v1 (a folder per controller, nested in this process's own cgroups) or v2 (one folder: in
the root of the hierarchy as root, else in a subtree delegated to this user, made ready by
v2_parent()); without either, a systemd scope per kernel (systemd_prefix()).
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import MB

if TYPE_CHECKING:  # sandbox.py imports this module
    from .sandbox import Limits

CGROUP_ROOT = Path("/sys/fs/cgroup")
NEED = frozenset({"memory", "pids"})     # the cgroup controllers a sandbox uses
# cgroup v2 hands controllers only to the children of a cgroup without processes: in a subtree
# delegated to an ordinary user, the grader first moves the subtree's processes into this child.
V2_LEAF = "grader"


def systemd_prefix(unit: str, memory_mb: int, tasks: int) -> list[str]:
    """What runs a command in a new systemd scope `unit` with these limits (root's systemd, else the user's)."""
    user = [] if os.geteuid() == 0 else ["--user"]
    return ["systemd-run", *user, "--scope", "--quiet", "--collect", f"--unit={unit}",
            "-p", f"MemoryMax={memory_mb}M", "-p", "MemorySwapMax=0", "-p", f"TasksMax={tasks}", "--"]


def own_cgroup(controller: str) -> str:
    """This process's cgroup in the hierarchy of a cgroup v1 controller ("" for cgroup v2's)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(",") or (not controller and not names):
            return path
    return "/"


def v2_parent() -> Path:
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
    own = CGROUP_ROOT / own_cgroup("").lstrip("/")
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
    if unit is not None and not systemd_delegated(unit):
        return (f"your cgroup is inside systemd's {unit.name}, which systemd manages (not started with "
                "Delegate=yes)")
    return ""


def systemd_delegated(unit: Path) -> bool:
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


class Cgroup:
    """One sandbox's cgroup: v1 (one folder per controller) or v2 (one folder)."""

    def __init__(self, dirs: list[Path]):
        self.dirs = dirs

    @classmethod
    def create(cls, kind: str, name: str, limits: Limits | None) -> Cgroup:
        """Make it (v1: nested in this process's own cgroups; v2: see v2_parent) and write the limits."""
        return cls.make(cls.plan(kind, name, limits))

    @staticmethod
    def plan(kind: str, name: str, limits: Limits | None) -> dict[Path, dict[str, int]]:
        """Its folders and, in each, the values to write; nothing made yet."""
        if kind == "v1":
            settings = {
                "memory": {} if limits is None else {"memory.limit_in_bytes": limits.memory_mb * MB,
                                                     "memory.memsw.limit_in_bytes": limits.memory_mb * MB},
                "pids": {} if limits is None else {"pids.max": limits.max_processes}}
            return {CGROUP_ROOT / c / own_cgroup(c).lstrip("/") / name: s for c, s in settings.items()}
        return {v2_parent() / name: {} if limits is None else {
            "memory.max": limits.memory_mb * MB, "memory.swap.max": 0, "pids.max": limits.max_processes}}

    @classmethod
    def make(cls, plan: dict[Path, dict[str, int]]) -> Cgroup:
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


def systemd_pids(unit: str) -> set[int]:
    """Host pids of the processes in the systemd scope `unit`."""
    user = [] if os.geteuid() == 0 else ["--user"]
    done = subprocess.run(["systemctl", *user, "show", "-p", "ControlGroup", "--value", f"{unit}.scope"],
                          capture_output=True, text=True, timeout=30)
    procs = CGROUP_ROOT / done.stdout.strip().lstrip("/") / "cgroup.procs"
    try:
        return {int(p) for p in procs.read_text().split()} if done.stdout.strip() else set()
    except OSError:
        return set()

