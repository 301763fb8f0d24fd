"""The OS sandbox around a submission's kernel (grader/kernel/sandbox.py; probe.py and reap.py), driven
through real kernels.

Each limit gets a tiny notebook that tries to break it, run by nbclient (or nbgrader's Execute)
in a Sandbox; the checks are made from the grader's side where they can be (host files, a
loopback server, the cgroup's processes). A few seconds per test; the torch + TensorFlow
import test takes longest (~20 s on 2 busy cores).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from unittest import mock

import psutil
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError
from nbformat.v4 import new_code_cell, new_notebook

from conftest import ROOT
from grader.course import COURSE_FILE as COURSE_TOML
from grader.kernel.probe import probe
from grader.kernel.reap import reap
from grader.kernel.sandbox import (
    WORKDIR,
    Limits,
    Sandbox,
    SandboxUnavailable,
    python_dirs,
)

CAPS = probe()
needs_bwrap = pytest.mark.skipif(CAPS.bwrap is None, reason="bubblewrap is not installed here "
                                 "(apt-get install bubblewrap); CI installs it")
needs_cgroup = pytest.mark.skipif(CAPS.cgroup not in ("v1", "v2"), reason="no cgroup this process can "
                                  f"create here ({CAPS.cgroup_error}); the rlimit fallback is tested instead")


@pytest.fixture
def caps():
    """This machine's capabilities; bubblewrap installed but not starting is a failure, not a skip."""
    if not CAPS.namespaces:
        pytest.fail("bubblewrap is installed but no sandbox starts:\n" + "\n".join(CAPS.missing()))
    return CAPS


@pytest.fixture
def run_dir(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    return folder


@pytest.fixture
def zygote_folder():
    """The warm-kernel zygote a sandbox made in another process uses: none here (cold kernels);
    test_grading_warm.py gives its own."""
    return None


def helper_file(tmp_path) -> Path:
    """A stand-in for the lab's helper module (craftlab.py)."""
    helper = tmp_path / "kit" / "helper.py"
    helper.parent.mkdir(exist_ok=True)
    helper.write_text("ANSWER = 42\n")
    return helper


def host_files(*folders: Path) -> list[Path]:
    """Everything in these host folders, at any depth."""
    return [Path(top) / name for folder in folders if folder.exists()
            for top, dirs, names in os.walk(folder) for name in dirs + names]


def limits(**changes) -> Limits:
    return dataclasses.replace(Limits.load(COURSE_TOML), **changes)


def notebook(*sources):
    nb = new_notebook(cells=[new_code_cell(source) for source in sources])
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def texts(nb) -> list[str]:
    """Per cell: its stdout, then 'Ename: evalue' for an error."""
    out = []
    for cell in nb.cells:
        parts = [o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout"]
        parts += [f"{o.ename}: {o.evalue}" for o in cell.outputs if o.output_type == "error"]
        out.append("".join(parts).strip())
    return out


def run(sb: Sandbox, *sources, timeout=60) -> list[str]:
    """Run the cells in the sandbox's kernel with nbclient; the texts of their outputs."""
    nb = notebook(*sources)
    with mock.patch.dict(os.environ, sb.jupyter_env()):
        NotebookClient(nb, config=sb.config(), timeout=timeout, allow_errors=True,
                       resources={"metadata": {"path": str(sb.run_dir)}}).execute()
    return texts(nb)


def run_or_die(sb: Sandbox, *sources, timeout=60) -> list[str] | str:
    try:
        return run(sb, *sources, timeout=timeout)
    except DeadKernelError:
        return "kernel died"


# ----------------------------------------------------------------------------- settings and probe

def test_limits_come_from_the_sandbox_section_of_course_toml(tmp_path):
    with open(COURSE_TOML, "rb") as f:
        section = tomllib.load(f)["sandbox"]
    assert dataclasses.asdict(Limits.load(COURSE_TOML)) == section
    bad = tmp_path / "course.toml"
    bad.write_text("[sandbox]\nmemory_mb = 1024\nswap_mb = 3\n")
    with pytest.raises(ValueError, match="unknown \\['swap_mb'\\].*max_processes"):
        Limits.load(bad)


def expected_cgroup() -> str | None:
    """v1 or v2 as root, by looking at the cgroup filesystems (not by sandbox.py's code)."""
    if os.geteuid() != 0:
        return None
    v1 = all(os.path.ismount(f"/sys/fs/cgroup/{c}") and os.access(f"/sys/fs/cgroup/{c}", os.W_OK)
             for c in ("memory", "pids"))
    control = Path("/sys/fs/cgroup/cgroup.subtree_control")
    v2 = control.exists() and {"memory", "pids"} <= set(control.read_text().split())
    return "v1" if v1 else "v2" if v2 else None


@needs_bwrap
def test_probe_reports_this_machine():
    assert CAPS.bwrap == shutil.which("bwrap")
    if shutil.which("unshare") and not os.stat(CAPS.bwrap).st_mode & 0o4000:  # not setuid
        plain = subprocess.run(["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork",
                                "--mount", "true"], capture_output=True)
        assert CAPS.namespaces == (plain.returncode == 0), plain.stderr
    if expected_cgroup():
        assert CAPS.cgroup == expected_cgroup()
    assert (CAPS.missing() == []) == (CAPS.namespaces and bool(CAPS.cgroup) and CAPS.process_limit)
    broken = probe(bwrap="/bin/false")
    assert not broken.namespaces and broken.namespaces_error
    assert broken.missing()[0].startswith("no isolation")


def test_a_machine_without_bubblewrap_is_refused_with_what_to_install(run_dir):
    bare = dataclasses.replace(CAPS, bwrap=None, namespaces=False, system="Linux",
                               namespaces_error="bubblewrap is not installed")
    with pytest.raises(SandboxUnavailable) as refused:
        Sandbox(run_dir, limits(), bare)
    assert "no isolation" in str(refused.value)
    assert "apt-get install bubblewrap" in str(refused.value)
    assert "allow_unsafe=True" in str(refused.value)
    mac = dataclasses.replace(bare, system="Darwin", cgroup=None, root=False, cgroup_error="Darwin has no cgroups")
    said = " ".join(mac.missing())
    assert "needs Linux" in said and "macOS does not enforce" in said and "can outlive" in said


def test_ubuntu_apparmor_restriction_and_missing_cgroup_are_explained(run_dir):
    ubuntu = dataclasses.replace(CAPS, bwrap="/usr/bin/bwrap", namespaces=False, root=False,
                                 userns_restricted=True, cgroup=None, system="Linux", hierarchy="v2",
                                 systemd_run=True, namespaces_error="bwrap: setting up uid map: Permission denied",
                                 cgroup_error="systemd-run --scope did not apply MemoryMax and TasksMax")
    with pytest.raises(SandboxUnavailable) as refused:
        Sandbox(run_dir, limits(), ubuntu)
    message = str(refused.value)
    assert "setting up uid map" in message and "apparmor_parser -r /etc/apparmor.d/bwrap" in message
    assert "no real memory limit" in message and "systemd-run --user --scope -p Delegate=yes" in message
    assert "no limit on the number of processes" in message
    assert "can outlive the grading" in message
    root_no_cgroup = dataclasses.replace(CAPS, namespaces=True, root=True, cgroup=None)
    assert any("RLIMIT_NPROC never applies to root" in m for m in root_no_cgroup.missing())


@needs_cgroup
def test_unsafe_mode_still_applies_what_is_there(run_dir, tmp_path):
    bare = dataclasses.replace(CAPS, bwrap=None, namespaces=False, namespaces_error="not installed")
    with Sandbox(run_dir, limits(cpu_seconds=77), bare, files={helper_file(tmp_path): "helper.py"},
                 allow_unsafe=True) as sb:
        assert sb.off and sb.off[0].startswith("no isolation")
        assert any(line.startswith("no private working folder") for line in sb.off)
        out = run(sb, "import os, resource\nprint(os.getuid(), resource.getrlimit(resource.RLIMIT_CPU))",
                  "print(open('/proc/self/cgroup').read())",
                  "import helper\nprint(os.getcwd(), helper.ANSWER)\nopen('left.txt', 'w').write('x')")
    assert out[0] == f"{os.getuid()} (77, 77)"  # not isolated: the grader's own uid
    assert sb.kernel_name in out[1]  # but inside the sandbox's cgroup
    assert out[2] == f"{run_dir.resolve()} 42" and sb.cwd == str(run_dir.resolve())
    assert (run_dir / "left.txt").exists()  # no tmpfs: the host folder, as said in `off`


# ----------------------------------------------------------------------------- isolation

@needs_bwrap
def test_the_kernel_is_nobody_in_its_private_folder_with_a_minimal_environment(caps, run_dir):
    with mock.patch.dict(os.environ, {"CRAFT_TEST_SECRET": "s3cret", "JPY_PARENT_PID": "1"}):
        with Sandbox(run_dir, limits(), caps, env={"CRAFT_LAB_OFFLINE": "1"}, allow_unsafe=True) as sb:
            out = run(sb, "import os\nprint(os.getuid(), os.getgid(), os.geteuid())",
                      "print(os.getcwd(), os.environ['HOME'], sorted(os.environ))",
                      "print(len([p for p in os.listdir('/proc') if p.isdigit()]))")
    assert out[0] == "65534 65534 65534"
    assert int(out[2]) < 10 < len(psutil.pids())  # its own pid namespace: the host's processes are unseen
    cwd, home, names = out[1].split(" ", 2)
    assert cwd == home == sb.cwd == WORKDIR
    assert "CRAFT_LAB_OFFLINE" in names
    assert "CRAFT_TEST_SECRET" not in names and "JPY_PARENT_PID" not in names


@needs_bwrap
def test_no_network_not_even_the_graders_loopback(caps, run_dir):
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = ("import socket\ntry:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=5)\n    print('connected')\n"
            "except OSError as e:\n    print(type(e).__name__)")
    with server, Sandbox(run_dir, limits(), caps, allow_unsafe=True) as sb:
        out = run(sb, code)
        with pytest.raises(socket.timeout):
            server.accept()
    assert out[0] == "ConnectionRefusedError"


@needs_bwrap
def test_files_outside_run_dir_are_invisible(caps, run_dir, tmp_path):
    marker = tmp_path / "outside" / "marker.txt"
    marker.parent.mkdir()
    marker.write_text("secret")
    home = [p for p in sorted(Path.home().iterdir())  # the home's own files (not the way to a bound Python)
            if not any(d.is_relative_to(p) for d in python_dirs())][:3]
    targets = [marker, ROOT / "solutions", ROOT / "grader" / "course.toml", ROOT / "README.md", *home]
    assert all(t.exists() for t in targets)
    code = ("import os\nfor path in %r:\n    try:\n        os.listdir(path) if os.path.isdir(path) "
            "else open(path).read()\n        print('READ', path)\n    except OSError as e:\n"
            "        print(type(e).__name__)" % [str(t) for t in targets])
    with Sandbox(run_dir, limits(), caps, allow_unsafe=True) as sb:
        out = run(sb, code, "import numpy; print('venv ok')")
    assert "READ" not in out[0] and len(out[0].splitlines()) == len(targets)
    assert out[1] == "venv ok"


@needs_bwrap
def test_writes_land_only_in_the_private_folders_and_never_on_the_host(caps, run_dir, tmp_path):
    outside = tmp_path / "outside.txt"
    code = ("import os, sys\nresults = []\n"
            f"for path in [{str(outside)!r}, sys.prefix + '/written.txt', {str(ROOT / 'written.txt')!r}, "
            f"{str(run_dir / 'written.txt')!r}]:\n"
            "    try:\n        os.makedirs(os.path.dirname(path), exist_ok=True)\n"
            "        open(path, 'w').write('x')\n        results.append('wrote')\n"
            "    except OSError as e:\n        results.append(type(e).__name__)\n"
            "open('inside.txt', 'w').write('hello')\nopen('/tmp/t.txt', 'w').write('tmp')\n"
            "os.makedirs(os.path.expanduser('~/.cache/x'))\n"
            "print(*results, open('inside.txt').read(), open('/tmp/t.txt').read())")
    before = set(os.listdir(tempfile.gettempdir()))
    with Sandbox(run_dir, limits(), caps, allow_unsafe=True) as sb:
        out = run(sb, code)
        during = host_files(run_dir, sb.ipc_dir, sb.conn_dir)
    words = out[0].split()
    assert words[1] == "OSError", out  # the venv: read-only
    # the repository: read-only or absent; where it lies under /tmp (a clone there), its path is a
    # folder of the sandbox's own /tmp, so the write lands there and never on the host (below)
    assert words[2] == ("wrote" if ROOT.is_relative_to("/tmp") else "OSError"), out
    assert words[4:] == ["hello", "tmp"], out         # the working folder and /tmp: private
    assert not outside.exists()  # at most it went to the sandbox's private /tmp (cold) or nowhere (warm)
    assert not (Path(sys.prefix) / "written.txt").exists() and not (ROOT / "written.txt").exists()
    assert host_files(run_dir) == [] and not any("inside" in p.name or p.name == ".cache" for p in during)
    assert not {"t.txt", "inside.txt"} & set(os.listdir(tempfile.gettempdir())) - before


@needs_bwrap
def test_the_connection_file_and_sockets_are_in_a_short_folder_outside_the_cwd(caps, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 40)
    deep.mkdir(parents=True)
    with Sandbox(deep, limits(), caps, allow_unsafe=True) as sb:
        assert len(str(sb.ipc_dir)) < 80 and len(str(sb.conn_dir)) < 80
        out = run(sb, "import os\nfrom ipykernel import get_connection_file\nfile = get_connection_file()\n"
                      "print(os.getcwd(), sorted(os.listdir('.')), file)",
                      "try:\n    open(os.path.join(os.path.dirname(file), 'x'), 'w')\n    print('wrote')\n"
                      "except OSError as e:\n    print(type(e).__name__)",
                      "import json\nip = json.load(open(file))['ip']\n"
                      "print(os.path.dirname(ip), *sorted(os.listdir(os.path.dirname(ip))))")
    cwd, listing, file = out[0].split(" ", 2)
    ipc, *sockets = out[2].split()
    assert cwd == WORKDIR and listing == "[]"
    assert file == str(sb.conn_dir / "kernel.json") and not file.startswith(WORKDIR)
    assert out[1] == "OSError"  # the connection file's folder is read-only inside
    assert ipc == str(sb.ipc_dir) and not ipc.startswith(WORKDIR), out
    assert sockets == [f"k-{n}" for n in range(1, 6)], out  # the host folder where the client connects
    assert host_files(deep) == []


@needs_bwrap
def test_the_helper_files_are_read_only_in_the_working_folder(caps, run_dir, tmp_path):
    helper = helper_file(tmp_path)
    code = ("import os\nresults = []\nfor change in (lambda: open('helper.py', 'a').write('#'),\n"
            "               lambda: os.remove('helper.py'), lambda: os.rename('helper.py', 'h.py')):\n"
            "    try:\n        change()\n        results.append('changed')\n"
            "    except OSError as e:\n        results.append(type(e).__name__)\nprint(results)")
    with Sandbox(run_dir, limits(), caps, files={helper: "helper.py"}, allow_unsafe=True) as sb:
        out = run(sb, "import helper\nprint(helper.ANSWER)", code)
    assert out[0] == "42"
    assert "changed" not in out[1] and helper.read_text() == "ANSWER = 42\n", out
    assert host_files(run_dir) == []


@needs_bwrap
def test_the_working_folder_is_bounded_by_run_mb(caps, run_dir):
    code = ("import errno\nfor path in ['big.bin', '/tmp/big.bin']:\n    try:\n"
            "        with open(path, 'wb') as f:\n            f.write(bytes(16 * 2 ** 20))\n        print('wrote')\n"
            "    except OSError as e:\n        print(errno.errorcode[e.errno])")
    with Sandbox(run_dir, limits(run_mb=8, file_mb=64), caps, allow_unsafe=True) as sb:
        out = run_or_die(sb, code, "import os\nprint(os.path.getsize('big.bin') <= 8 * 2 ** 20)")
        during = host_files(run_dir, sb.ipc_dir)
    assert out == "kernel died" or out[0].split() == ["ENOSPC", "wrote"], out  # /tmp has its own size
    assert out == "kernel died" or out[1] == "True"
    assert host_files(run_dir) == [] and not any(p.name == "big.bin" for p in during)


@needs_bwrap
def test_twenty_thousand_files_in_the_cwd_leave_nothing_on_the_host(caps, run_dir):
    code = ("import os\nos.makedirs('a/b')\nfor i in range(20000):\n"
            "    open(f'a/b/f{i}' if i % 2 else f'f{i}', 'w').close()\n"
            "print(len(os.listdir('.')), len(os.listdir('a/b')))")
    with Sandbox(run_dir, limits(run_files=30000), caps, allow_unsafe=True) as sb:
        out = run(sb, code, timeout=120)
        during = host_files(run_dir, sb.ipc_dir, sb.conn_dir, sb.state)
    assert out[0] == "10001 10000", out  # 10000 files and the folder a
    assert len(during) < 50 and host_files(run_dir) == []
    assert not sb.state.exists() and not sb.ipc_dir.exists()


HOLDER = """\
import json, os, sys, time
sys.path.insert(0, {root!r})
from jupyter_client import KernelManager
from grader.kernel.probe import probe
from grader.kernel.sandbox import Limits, Sandbox
from grader.kernel.warm import Zygote

folder = {folder!r}
zygote = Zygote.from_env({{"GRADER_ZYGOTE": {zygote!r}}}) if {zygote!r} else None
sb = Sandbox(os.path.join(folder, "run"), Limits.load({course!r}), probe(), allow_unsafe=True, zygote=zygote,
             env={{"OMP_NUM_THREADS": "1"}}, manifest_dir=folder)
os.environ.update(sb.jupyter_env())
km = KernelManager(config=sb.config(), kernel_name=sb.kernel_name)
km.start_kernel(cwd=str(sb.run_dir))
client = km.client()
client.start_channels()
client.wait_for_ready(timeout=120)
reply = client.execute_interactive(
    "import subprocess, sys, os\\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\\n"
    "os.makedirs('deep/' * 50)\\n"
    "ipc = os.path.dirname(__import__('json').load(open(__import__('ipykernel').get_connection_file()))['ip'])\\n"
    "os.symlink({outside!r}, os.path.join(ipc, 'link'))\\n"
    "os.makedirs(os.path.join(ipc, 'deep/' * 300))", timeout=60)
assert reply["content"]["status"] == "ok", reply["content"]
with open(os.path.join(folder, "info.part"), "w") as f:
    json.dump({{"state": str(sb.state), "ipc": str(sb.ipc_dir), "cgroups": [str(d) for d in sb.cgroup.dirs],
               "pids": sorted(sb.pids()), "zygote": sb.zygote is not None}}, f)
os.rename(os.path.join(folder, "info.part"), os.path.join(folder, "info.json"))
time.sleep(600)
"""


@needs_bwrap
@needs_cgroup
def test_reap_removes_what_a_killed_holder_of_a_sandbox_left(caps, tmp_path, zygote_folder):
    """The process holding a started Sandbox is SIGKILLed (a worker past its time limit): its
    cleanup never runs. reap(manifest_dir) from the parent kills and removes all it left."""
    folder = tmp_path / "job"
    folder.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the sandbox's")
    script = HOLDER.format(root=str(ROOT), course=str(COURSE_TOML), folder=str(folder), zygote=str(zygote_folder or ""), outside=str(outside))
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not (folder / "info.json").exists():
            assert holder.poll() is None, holder.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the kernel did not start"
            time.sleep(0.2)
        info = json.loads((folder / "info.json").read_text())
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert info["zygote"] == bool(zygote_folder)
    assert len(info["pids"]) >= 2 and info["cgroups"]
    manifests = [p for p in folder.iterdir() if p.name.startswith("grader-sandbox-")]
    assert len(manifests) == 1
    # What the killed holder left (no cleanup ran): the test would fail here without reap().
    assert Path(info["state"]).is_dir() and Path(info["ipc"]).is_dir()
    assert all(Path(d).is_dir() for d in info["cgroups"])
    killed = reap(folder)
    assert not Path(info["state"]).exists() and not Path(info["ipc"]).exists()
    assert not any(Path(d).exists() for d in info["cgroups"])
    assert not list(Path(tempfile.gettempdir()).glob(Path(info["state"]).name + "*"))
    assert not [p for p in info["pids"] if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not manifests[0].exists() and (outside / "keep.txt").read_text() == "not the sandbox's"
    assert killed >= 0 and reap(folder) == 0  # idempotent
    if zygote_folder:  # the warm kernel outlived its holder: reap() had to kill it
        assert killed >= 2


def test_reap_removes_only_what_a_sandbox_makes_and_follows_no_link(tmp_path):
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "keep.txt").write_text("keep")
    token = "0123456789ab"
    state = tmp_path / f"grader-sbx-{token}"
    (state / "ipc" / "a").mkdir(parents=True)
    (state / "ipc" / "a" / "to-victim").symlink_to(victim)           # links the kernel could plant
    (state / "ipc" / "file-link").symlink_to(victim / "sub" / "keep.txt")
    (state / "ipc" / "a").chmod(0)
    job = tmp_path / "job"
    job.mkdir()
    manifest = job / f"grader-sandbox-{token}.json"
    good = {"state": str(state), "folders": [], "cgroups": [], "unit": ""}
    bad = [{**good, "state": str(victim)},                                          # not named after the token
           {**good, "folders": [str(tmp_path / "x" / ".." / f"grader-sandbox-{token}")]},  # not normalized
           {**good, "cgroups": [str(tmp_path / f"grader-sandbox-{token}")]}]          # not a cgroup
    for record in bad:
        manifest.write_text(json.dumps(record))
        with pytest.warns(UserWarning, match="not what a sandbox makes"):
            assert reap(job) == 0
        assert state.exists() and manifest.exists()
    manifest.unlink()
    (tmp_path / "elsewhere.json").write_text(json.dumps(good))
    manifest.symlink_to(tmp_path / "elsewhere.json")  # a manifest that is a link is not read
    with pytest.warns(UserWarning, match="ignored"):
        reap(job)
    assert state.exists()
    manifest.unlink()
    manifest.write_text(json.dumps(good))
    assert reap(job) == 0 and reap(job) == 0
    assert not state.exists() and not list(job.iterdir())
    assert (victim / "sub" / "keep.txt").read_text() == "keep"


WORKER = """\
import json, os, sys
sys.path.insert(0, {root!r})
from grader.kernel.probe import probe
from grader.kernel.sandbox import Limits, Sandbox
job = {job!r}
sb = Sandbox(os.path.join(job, "run"), Limits.load({course!r}), probe(), allow_unsafe=True, manifest_dir=job)
json.dump({{"state": str(sb.state), "cgroups": [str(d) for d in (sb.cgroup.dirs if sb.cgroup else [])]}},
          open(os.path.join(job, "info.json"), "w"))
os.kill(os.getpid(), 9)
"""


@needs_bwrap
def test_run_job_reaps_the_sandbox_of_a_killed_worker(caps, tmp_path):
    from grader import runner

    job = tmp_path / "job"
    job.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT), course=str(COURSE_TOML), job=str(job)))
    result = runner.run_job(job, dict(os.environ), 120, argv=[sys.executable, str(script)])
    assert "killed by signal 9" in result.reason, result
    info = json.loads((job / "info.json").read_text())
    assert not Path(info["state"]).exists() and not any(Path(d).exists() for d in info["cgroups"])
    assert not [p for p in job.iterdir() if p.name.startswith("grader-sandbox-")]


BOOT = """\
import os
os.environ["CRAFT_BOOTED"] = "yes"
from ipykernel import kernelapp
kernelapp.launch_new_instance()
"""


@needs_bwrap
@pytest.mark.parametrize("isolated", [True, False], ids=["bwrap", "unsafe-without-bwrap"])
def test_a_boot_script_bound_read_only_starts_the_kernel(caps, run_dir, tmp_path, isolated):
    boot = tmp_path / "kit" / "boot.py"
    boot.parent.mkdir()
    boot.write_text(BOOT)
    used = caps if isolated else dataclasses.replace(caps, bwrap=None, namespaces=False)
    with Sandbox(run_dir, limits(), used, binds={boot.parent: "/opt/kit"}, boot="/opt/kit/boot.py",
                 allow_unsafe=True) as sb:
        assert "/opt/kit/boot.py" in sb.kernel_argv() if isolated else str(boot) in sb.kernel_argv()
        change = ("try:\n    open('/opt/kit/boot.py', 'a').write('# changed')\nexcept OSError as e:\n"
                  "    print(type(e).__name__)")  # only where /opt/kit is the read-only bind
        out = run(sb, "import os\nprint(os.environ.get('CRAFT_BOOTED'))", *([change] if isolated else []))
    assert out[0] == "yes"
    assert not isolated or (out[1] == "OSError" and boot.read_text() == BOOT)


def test_a_run_dir_holding_the_venv_or_the_repository_is_refused(tmp_path):
    for folder in (ROOT, Path(sys.prefix), Path("/")):
        with pytest.raises(ValueError, match="contains"):
            Sandbox(folder, limits(), CAPS, allow_unsafe=True)


# ----------------------------------------------------------------------------- resource limits

ALLOCATE_2G = "import numpy as np\nx = np.ones(2 ** 28)\nprint('allocated', x.nbytes)"


@needs_bwrap
@needs_cgroup
def test_memory_past_the_cgroup_limit_kills_the_kernel_not_the_grader(caps, run_dir):
    with Sandbox(run_dir, limits(memory_mb=1024), caps) as sb:
        out = run_or_die(sb, ALLOCATE_2G)
        events = sb.cgroup.dirs[0] / ("memory.oom_control" if caps.cgroup == "v1" else "memory.events")
        oom_kills = next(int(line.split()[1]) for line in events.read_text().splitlines()
                         if line.startswith("oom_kill "))
    assert out == "kernel died" or "MemoryError" in out[0], out
    assert out != "kernel died" or oom_kills >= 1  # it was the sandbox's cgroup that killed it
    assert psutil.Process().is_running()


@needs_bwrap
def test_memory_without_cgroup_is_capped_as_address_space(caps, run_dir):
    no_cgroup = dataclasses.replace(caps, cgroup=None)
    with Sandbox(run_dir, limits(address_space_mb=1536), no_cgroup, allow_unsafe=True) as sb:
        assert any("no real memory limit" in m for m in sb.off)
        out = run(sb, ALLOCATE_2G, "print('still alive')")
    assert "MemoryError" in out[0] and "allocated" not in out[0]
    assert out[1] == "still alive"


FORK_STORM = """\
import os, time
pids, error = [], None
for i in range(100):
    try:
        pid = os.fork()
    except OSError as e:
        error = e
        break
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print(len(pids), type(error).__name__)"""


@needs_bwrap
@pytest.mark.parametrize("mechanism", ["cgroup", "rlimit"])
def test_a_fork_storm_hits_the_process_limit(caps, run_dir, mechanism):
    if mechanism == "cgroup" and caps.cgroup is None:
        pytest.skip(f"no cgroup here ({caps.cgroup_error})")
    if mechanism == "rlimit" and caps.root:
        pytest.skip("RLIMIT_NPROC never applies to root's processes (missing() says so; tested above)")
    used = caps if mechanism == "cgroup" else dataclasses.replace(caps, cgroup=None)
    with Sandbox(run_dir, limits(max_processes=40), used, allow_unsafe=True) as sb:
        out = run(sb, FORK_STORM)
    forked, error = out[0].split()
    assert error == "BlockingIOError" and int(forked) < 40, out
    assert subprocess.run(["true"]).returncode == 0  # the grader still starts processes


@needs_bwrap
def test_cpu_time_past_the_limit_kills_the_kernel(caps, run_dir):
    started = time.monotonic()
    with Sandbox(run_dir, limits(cpu_seconds=3), caps, allow_unsafe=True) as sb:
        out = run_or_die(sb, "import time\nt = time.time()\nwhile time.time() - t < 40:\n    pass\nprint('done')",
                         timeout=60)
    assert out == "kernel died"
    assert time.monotonic() - started < 35


@needs_bwrap
def test_file_size_and_private_tmp_size_are_capped(caps, run_dir):
    code = ("import errno\nfor path in ['big.bin', '/tmp/big.bin']:\n    try:\n"
            "        with open(path, 'wb') as f:\n            f.write(bytes(16 * 2 ** 20))\n        print('wrote')\n"
            "    except OSError as e:\n        print(errno.errorcode[e.errno])")
    with Sandbox(run_dir, limits(file_mb=8, tmp_mb=12), caps, allow_unsafe=True) as sb:
        out = run(sb, code, "import os\nprint(os.path.getsize('big.bin') <= 8 * 2 ** 20)")
    assert out[0].split() == ["EFBIG", "EFBIG"] or out[0].split() == ["EFBIG", "ENOSPC"], out
    assert out[1] == "True" and host_files(run_dir) == []


# ----------------------------------------------------------------------------- processes

DETACH = """\
import os, subprocess, sys
beat = ("import os, time\\nwhile True:\\n    open('heartbeat', 'a').close()\\n"
        "    os.utime('heartbeat')\\n    time.sleep(0.05)")
subprocess.Popen([sys.executable, '-c', beat], start_new_session=True, env=dict(), cwd=os.getcwd(),
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
if os.fork() == 0:  # and a double fork into a new session
    os.setsid()
    if os.fork() == 0:
        os.execve(sys.executable, [sys.executable, '-c', beat.replace('heartbeat', 'heartbeat2')], dict())
    os._exit(0)
"""


@needs_bwrap
def test_detached_processes_are_dead_after_cleanup(caps, run_dir):
    nb = notebook(DETACH, "import time, os\ntime.sleep(1)\nprint(sorted(f for f in os.listdir() if 'heart' in f))")
    with Sandbox(run_dir, limits(), caps, allow_unsafe=True) as sb:
        client = NotebookClient(nb, config=sb.config(), timeout=30, resources={"metadata": {"path": str(run_dir)}})
        with mock.patch.dict(os.environ, sb.jupyter_env()), client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
            running = sb.pids()
        sb.cleanup()
        assert sb.pids() == set() and not sb.state.exists() and sb.cgroup is None
    assert texts(nb)[1] == "['heartbeat', 'heartbeat2']"
    assert len(running) >= 4  # bwrap, its init, the kernel, the two detached processes
    assert not [p for p in running if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert host_files(run_dir) == []  # the heartbeats were in the kernel's private folder


@needs_bwrap
def test_a_cell_over_the_time_limit_is_interrupted_under_nbgrader_execute(caps, run_dir):
    from nbgrader.preprocessors import Execute

    nb = notebook("x = 1", "while True:\n    pass", "print(x + 1)")
    with Sandbox(run_dir, limits(), caps, allow_unsafe=True) as sb:
        with mock.patch.dict(os.environ, sb.jupyter_env()):
            Execute(config=sb.config(), timeout=3).preprocess(nb, {"metadata": {"path": str(run_dir)}})
    out = texts(nb)
    assert "CellTimeoutError" in out[1] and out[2] == "2", out  # interrupted, and the kernel lived on


@needs_bwrap
@pytest.mark.parametrize("mechanism", ["cgroup", "rlimit"])
def test_torch_and_tensorflow_import_with_the_default_limits(caps, run_dir, mechanism):
    if mechanism == "cgroup" and caps.cgroup is None:
        pytest.skip(f"no cgroup here ({caps.cgroup_error})")
    used = caps if mechanism == "cgroup" else dataclasses.replace(caps, cgroup=None)  # RLIMIT_AS instead
    with Sandbox(run_dir, Limits.load(COURSE_TOML), used, allow_unsafe=True) as sb:
        out = run(sb, "import torch, torchvision\nimport tensorflow as tf\n"
                      "print(float(tf.reduce_sum(tf.ones((2, 2)))), float(torch.ones(3).sum()))", timeout=180)
    assert out[0] == "4.0 3.0", out


def test_the_batch_refuses_a_machine_missing_a_protection_unless_told_and_then_says_what_is_off(monkeypatch):
    """`python -m grader grade` checks the machine first; --allow-unsafe grades and says what is off."""
    from grader import batch
    from grader.kernel import probe as probing

    bare = dataclasses.replace(CAPS, bwrap=None, namespaces=False, system="Linux",
                               namespaces_error="bubblewrap is not installed")
    monkeypatch.setattr(probing, "probe", lambda *args, **kwargs: bare)
    with pytest.raises(SystemExit) as refused:
        batch.sandbox_check(allow_unsafe=False)
    assert "Refusing to grade" in str(refused.value) and "--allow-unsafe" in str(refused.value)
    assert "apt-get install bubblewrap" in str(refused.value)
    off = batch.sandbox_check(allow_unsafe=True)
    assert off and off == tuple(bare.missing())
    settings = batch.Settings(2, 60, 600, 1, 1, off)
    lines = batch.unsafe_lines(settings)
    assert "Protections that were OFF" in lines[1] and all(f"- {line}" in lines for line in off)
    assert batch.unsafe_lines(dataclasses.replace(settings, protections_off=())) == []
