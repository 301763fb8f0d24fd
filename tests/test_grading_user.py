"""Grading as an ordinary user: kernels confined in a cgroup subtree delegated to that user, cold
and warm, and the refusal (naming the fix) without one.

Run as root on Linux with bubblewrap, this module does for a fixed test user (TEST_USER, made
once with useradd and kept) what an administrator, or systemd, does for a TA: a cgroup subtree
(cgroup v1: a memory and a pids folder; v2: one folder) chowned to the user, with the user's
process moved into it. A small root launcher moves itself into the subtree, makes the venv's
Python reachable in a mount namespace of its own when it lies under a folder other users may
not enter (such as /root: the host is left as it was), and becomes the user; then a script, as
that user, checks what a TA's grader does: probe.probe() finds the delegated cgroup; a cold and
a warm sandbox start a tiny kernel that runs as nobody, cannot read the user's own files, and is
killed past its memory limit by its own cgroup, made inside the subtree; and without the
subtree, the batch refuses to grade and names the command that fixes it.

Skipped, saying why, where this cannot be done (not root, not Linux, no bubblewrap, no cgroup
root may delegate). About a minute: the warm zygote imports torch, TensorFlow and Xplique once.
"""
from __future__ import annotations

import json
import os
import platform
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from grader.kernel import cgroups, probe, sandbox

TEST_USER = "craft-lab-test"
CAPS = probe.probe() if platform.system() == "Linux" else None


def _why_not() -> str:
    if platform.system() != "Linux":
        return f"{platform.system()}: no namespaces or cgroups to delegate"
    if os.geteuid() != 0:
        return "needs root, to make a test user and delegate a cgroup subtree to it (CI runs the suite as root)"
    if not CAPS.namespaces:
        return f"no bubblewrap sandbox here ({CAPS.namespaces_error})"
    if CAPS.cgroup not in ("v1", "v2"):
        return f"root makes no cgroup here ({CAPS.cgroup_error})"
    if not shutil.which("useradd"):
        return "no useradd to make the test user"
    return ""


pytestmark = [pytest.mark.skipif(bool(_why_not()), reason=_why_not()),
              pytest.mark.slow]  # ~1 min: `make test-quick` leaves it out

# Root's side, before becoming the user: argv: UID GID HOME PROCS_JSON WAYS_JSON NAME -- COMMAND...
LAUNCH = r"""
import ctypes, json, os, sys
uid, gid, home = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
procs, ways, name = json.loads(sys.argv[4]), json.loads(sys.argv[5]), sys.argv[6]
command = sys.argv[8:]
for file in procs:  # into the delegated subtree: what the user starts from here on stays in it
    with open(file, "w") as f:
        f.write(str(os.getpid()))
libc = ctypes.CDLL(None, use_errno=True)
def check(result, what):
    if result != 0:
        raise OSError(ctypes.get_errno(), what)
if ways:  # an empty tmpfs over each folder the user may not enter, with only the needed paths bound back
    check(libc.unshare(0x00020000), "unshare(CLONE_NEWNS)")
    check(libc.mount(None, b"/", None, 16384 | (1 << 18), None), "make / private")
    for blocked, paths in ways.items():
        fds = [os.open(path, os.O_PATH) for path in paths]
        check(libc.mount(b"tmpfs", blocked.encode(), b"tmpfs", 0, b"mode=0755"), "tmpfs on " + blocked)
        for path, fd in zip(paths, fds):
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.makedirs(path, exist_ok=True)
            else:  # a file is bound onto a file
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "a").close()
            check(libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, 4096 | 16384, None), "bind " + path)
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
os.execve(command[0], command, {"PATH": "/usr/bin:/bin", "HOME": home, "USER": name, "LOGNAME": name,
                                "LANG": "C.UTF-8"})
"""

# The user's side: argv: ROOT MODE WORK SECRET; prints one line of JSON.
USER_SIDE = r"""
import dataclasses, json, os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
mode, work, secret = sys.argv[2], Path(sys.argv[3]), sys.argv[4]
from grader import batch
from grader.course import COURSE_FILE
from grader.kernel import probe, sandbox, warm

caps = probe.probe()
out = {"uid": os.getuid(), "cgroup": caps.cgroup, "cgroup_where": caps.cgroup_where, "missing": caps.missing(),
       "cgroup_fix": caps.cgroup_fix(), "hierarchy": caps.hierarchy, "kernel": list(caps.kernel)}
if mode == "plain":
    try:
        batch.sandbox_check(False, caps)
        out["refused"] = ""
    except SystemExit as exc:
        out["refused"] = str(exc)
    print(json.dumps(out))
    sys.exit()

from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError
from nbformat.v4 import new_code_cell, new_notebook
from unittest import mock

CELLS = ["import os\nprint(os.getuid(), os.getgid())",
         f"try:\n    open({secret!r}).read()\n    print('READ')\nexcept OSError as e:\n    print(type(e).__name__)",
         "import numpy as np\nx = np.ones(2 ** 28)\nprint('allocated', x.nbytes)"]

def run(sb):
    nb = new_notebook(cells=[new_code_cell(c) for c in CELLS])
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    seen = {}
    def watch(cell, cell_index, **kw):
        if cell_index == 2:  # the kernel runs: its processes are in the sandbox's cgroup
            seen["pids"] = len(sb.cgroup.pids())
    died = False
    with mock.patch.dict(os.environ, sb.jupyter_env()):
        try:
            NotebookClient(nb, config=sb.config(), timeout=120, allow_errors=True, on_cell_execute=watch,
                           resources={"metadata": {"path": str(sb.run_dir)}}).execute()
        except DeadKernelError:
            died = True
        events = sb.cgroup.dirs[0] / ("memory.oom_control" if caps.cgroup == "v1" else "memory.events")
        oom = next(int(line.split()[1]) for line in events.read_text().splitlines() if line.startswith("oom_kill "))
    texts = ["".join(o.get("text", "") for o in c.outputs if o.output_type == "stream").strip()
             + "".join(f"{o.ename}" for o in c.outputs if o.output_type == "error") for c in nb.cells]
    return {"texts": texts, "died": died, "oom_kills": oom, "pids": seen.get("pids", 0),
            "cgroups": [str(d) for d in sb.cgroup.dirs]}

limits = dataclasses.replace(sandbox.Limits.load(COURSE_FILE), memory_mb=1024)
cold_dir = work / "cold" / "run"
cold_dir.mkdir(parents=True)
with sandbox.Sandbox(cold_dir, limits, caps, env={"OMP_NUM_THREADS": "1"}) as sb:
    out["cold"] = run(sb)
lines = []
(work / "warm").mkdir()
with warm.start([work / "warm"], {"OMP_NUM_THREADS": "1"}, {}, work / "zygote.log", lines.append, limits) as zygote:
    out["warm_lines"] = lines
    if zygote is not None:
        warm_dir = work / "warm" / "job" / "run"
        warm_dir.mkdir(parents=True)
        with sandbox.Sandbox(warm_dir, limits, caps, env={"OMP_NUM_THREADS": "1"}, zygote=zygote) as sb:
            out["warm_fork"] = sb.zygote is not None
            out["warm"] = run(sb)
out["warm_check"] = warm.check(limits, caps)
print(json.dumps(out))
"""


def _test_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", TEST_USER], check=True, capture_output=True)
        return pwd.getpwnam(TEST_USER)


def _can_enter(folder: Path, user: pwd.struct_passwd) -> bool:
    mode = folder.stat()
    if mode.st_uid == user.pw_uid:
        return bool(mode.st_mode & stat.S_IXUSR)
    if mode.st_gid == user.pw_gid:
        return bool(mode.st_mode & stat.S_IXGRP)
    return bool(mode.st_mode & stat.S_IXOTH)


def _ways(paths: list[Path], user: pwd.struct_passwd) -> dict[str, list[str]]:
    """{the highest folder the user may not enter: [the needed paths under it]}.

    A needed folder the user may not enter itself (a clone in `mktemp -d`'s 0700 folder) is
    opened by its entries: a bind keeps a folder's own mode, so its entries are bound instead."""
    paths = [entry for path in paths
             for entry in (sorted(path.iterdir()) if path.is_dir() and not _can_enter(path, user) else [path])]
    ways: dict[str, list[str]] = {}
    for path in paths:
        for folder in [*reversed(path.parents), path]:
            if not _can_enter(folder, user):
                ways.setdefault(str(folder), []).append(str(path))
                break
    for blocked in list(ways):  # one tmpfs per way: none inside another
        if any(blocked != other and Path(blocked).is_relative_to(other) for other in ways):
            ways[next(o for o in ways if o != blocked and Path(blocked).is_relative_to(o))] += ways.pop(blocked)
    return ways


def _delegate(user: pwd.struct_passwd) -> list[Path]:
    """A cgroup subtree for the user, as an administrator would make it: its folders."""
    name = f"craft-lab-test-{secrets.token_hex(4)}"
    if CAPS.cgroup == "v1":
        folders = [cgroups.CGROUP_ROOT / c / cgroups.own_cgroup(c).lstrip("/") / name for c in ("memory", "pids")]
        files = ("cgroup.procs", "tasks")
    else:
        folders = [cgroups.CGROUP_ROOT / name]
        files = ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads")
    for folder in folders:
        folder.mkdir()
        for path in [folder, *(folder / f for f in files)]:
            os.chown(path, user.pw_uid, user.pw_gid)
    return folders


def _remove(folder: Path) -> None:
    """Kill what is left in a cgroup folder and its children, and remove them."""
    for child in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [folder]:
        for _ in range(100):
            pids = (child / "cgroup.procs").read_text().split() if (child / "cgroup.procs").exists() else []
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                child.rmdir()
                break
            except OSError:
                time.sleep(0.1)


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    """Run USER_SIDE as the test user: mode 'delegated' (inside a subtree of its own) or 'plain'."""
    user = _test_user()
    work = Path(tmp_path_factory.mktemp("as-user"))
    base = Path("/tmp") / f"craft-lab-user-{secrets.token_hex(4)}"  # pytest's own folder is root's (0700)
    base.mkdir(mode=0o700)
    os.chown(base, user.pw_uid, user.pw_gid)
    secret = base / "home" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("the user's own file")
    secret.chmod(0o600)
    for path in (secret.parent, secret):
        os.chown(path, user.pw_uid, user.pw_gid)
    needed = [Path(p) for p in {str(d) for d in sandbox.python_dirs()} | {str(ROOT)}]
    ways = _ways(needed, user)
    folders = []

    def run(mode: str) -> dict:
        procs = []
        if mode == "delegated":
            folders.extend(_delegate(user))
            procs = [str(folder / "cgroup.procs") for folder in folders]
        run_dir = base / mode
        run_dir.mkdir()
        os.chown(run_dir, user.pw_uid, user.pw_gid)
        argv = [sys.executable, "-c", LAUNCH, str(user.pw_uid), str(user.pw_gid), str(secret.parent),
                json.dumps(procs), json.dumps(ways), TEST_USER, "--",
                sys.executable, "-c", USER_SIDE, str(ROOT), mode, str(run_dir), str(secret)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        (work / f"{mode}.log").write_text(done.stdout + done.stderr)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines or not lines[-1].startswith("{"):
            if "ModuleNotFoundError" in done.stderr or "Permission denied" in done.stderr[:2000]:
                pytest.skip(f"the test user cannot run this venv's Python here: {done.stderr.strip()[-500:]}")
            pytest.fail(f"as {TEST_USER} ({mode}): exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return json.loads(lines[-1])

    results = {}
    try:
        results["plain"] = run("plain")
        results["delegated"] = run("delegated")
    finally:
        for folder in folders:
            _remove(folder)
        subprocess.run(["rm", "-rf", str(base)])
    results["folders"] = [str(f) for f in folders]
    return results


def test_the_probe_finds_the_cgroup_subtree_delegated_to_the_user(user_run):
    found = user_run["delegated"]
    assert found["uid"] == pwd.getpwnam(TEST_USER).pw_uid != 0
    assert found["missing"] == [] and found["cgroup"] == CAPS.cgroup, found
    assert all(any(where.startswith(folder) for where in found["cgroup_where"].split(", "))
               for folder in user_run["folders"]), (found["cgroup_where"], user_run["folders"])


@pytest.mark.parametrize("kind", ["cold", "warm"])
def test_a_kernel_of_the_user_is_confined_in_the_delegated_subtree(user_run, kind):
    found = user_run["delegated"]
    if kind == "warm":
        if CAPS.cgroup == "v2" and tuple(found["kernel"]) < (5, 16):
            pytest.skip("Linux before 5.16 checks a cgroup v2 move with the mover's namespace: cold kernels")
        assert found["warm_check"] == "", found["warm_check"]
        assert found.get("warm_fork"), found["warm_lines"]
    kernel = found[kind]
    assert kernel["texts"][0] == "65534 65534"  # nobody, not the user
    assert kernel["texts"][1] == "FileNotFoundError"  # the user's own files are not there at all
    assert kernel["pids"] >= 1 and all(any(Path(c).is_relative_to(f) for f in user_run["folders"])
                                       for c in kernel["cgroups"]), kernel
    # 2 GiB past a 1 GiB limit: the sandbox's cgroup killed the kernel (or numpy said MemoryError)
    assert (kernel["died"] and kernel["oom_kills"] >= 1) or "MemoryError" in kernel["texts"][2], kernel
    assert "allocated" not in kernel["texts"][2]


def test_without_a_delegated_subtree_the_batch_refuses_and_names_the_fix(user_run):
    plain = user_run["plain"]
    assert plain["cgroup"] is None and plain["refused"].startswith("Refusing to grade")
    fix = plain["cgroup_fix"]
    command = fix[fix.index("`") + 1: fix.rindex("`")]
    assert command in plain["refused"] and "--allow-unsafe" in plain["refused"]
    if plain["hierarchy"] == "v1":
        assert command == probe.V1_DELEGATE
