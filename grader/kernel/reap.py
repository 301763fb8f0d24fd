"""What a kernel's sandbox leaves on the host, and removing it all, from the sandbox's own
process or from another one after that process was killed.

Before making anything, a Sandbox (sandbox.py) records what it will make (its state folder, its
socket folder in a zygote's folder, its cgroup folders or systemd scope: Leftovers) in a
manifest in its manifest_dir. Its cleanup, and reap(manifest_dir) in the parent of a worker
killed at its time limit, kill what still runs there and remove it all, never following a link
the kernel could have planted (remove_tree).
"""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from .cgroups import CGROUP_ROOT, Cgroup, systemd_pids

# Names of what one sandbox makes on the host, all from one random token: its kernel (and
# cgroup, systemd scope, socket folder in a zygote's folder), its state folder in /tmp, its manifest.
TOKEN = re.compile(r"[0-9a-f]{12}")
KERNEL_PREFIX, STATE_PREFIX = "grader-sandbox-", "grader-sbx-"
MANIFEST = re.compile(rf"{KERNEL_PREFIX}({TOKEN.pattern})\.json")


def remove_tree(path: Path) -> None:
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
class Leftovers:
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
    def read(cls, manifest: Path, token: str) -> Leftovers:
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

    def _cgroup(self) -> Cgroup:
        root = os.path.realpath(CGROUP_ROOT)
        return Cgroup([Path(d) for d in self.cgroups if os.path.isdir(d)
                        and Path(os.path.realpath(d)).is_relative_to(root)])

    def pids(self) -> set[int]:
        if self.cgroups:
            return self._cgroup().pids()
        if self.unit:
            return systemd_pids(self.unit)
        root = _launcher(Path(self.state) / "pid")
        return set() if root is None else {root.pid} | {p.pid for p in root.children(recursive=True)}

    def kill(self) -> int:
        """SIGKILL every process still in the sandbox; return how many."""
        if self.cgroups:
            return self._cgroup().kill()
        if self.unit:
            killed = len(systemd_pids(self.unit))
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
                remove_tree(Path(folder))
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
            left = Leftovers.read(manifest, match[1])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(f"reap: {manifest} ignored ({type(exc).__name__}: {exc})", stacklevel=2)
            continue
        killed += left.kill()
        try:
            left.remove()
        except OSError as exc:
            warnings.warn(f"reap: {exc}; kept {manifest}", stacklevel=2)
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
