"""The OS sandbox around a submission's kernel (grader/sandbox.py), driven through real kernels.

Each limit gets a tiny notebook that tries to break it, run by nbclient (or nbgrader's Execute)
in a Sandbox; the checks are made from the grader's side where they can be (host files, a
loopback server, the cgroup's processes). A few seconds per test; the torch + TensorFlow
import test takes longest (~20 s on 2 busy cores).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
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
from grader.sandbox import COURSE_TOML, Limits, Sandbox, SandboxUnavailable, _python_dirs, probe

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


def limits(**changes) -> Limits:
    return dataclasses.replace(Limits.load(), **changes)


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
    assert dataclasses.asdict(Limits.load()) == section
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
                                 userns_restricted=True, cgroup=None, system="Linux",
                                 namespaces_error="bwrap: setting up uid map: Permission denied",
                                 cgroup_error="no systemd-run")
    with pytest.raises(SandboxUnavailable) as refused:
        Sandbox(run_dir, limits(), ubuntu)
    message = str(refused.value)
    assert "setting up uid map" in message and "apparmor_restrict_unprivileged_userns=0" in message
    assert "no real memory limit" in message and "systemd-run --user --scope" in message
    assert "no limit on the number of processes" in message
    assert "can outlive the grading" in message
    root_no_cgroup = dataclasses.replace(CAPS, namespaces=True, root=True, cgroup=None)
    assert any("RLIMIT_NPROC never applies to root" in m for m in root_no_cgroup.missing())


@needs_cgroup
def test_unsafe_mode_still_applies_what_is_there(run_dir):
    bare = dataclasses.replace(CAPS, bwrap=None, namespaces=False, namespaces_error="not installed")
    with Sandbox(run_dir, limits(cpu_seconds=77), bare, allow_unsafe=True) as sb:
        assert sb.off and sb.off[0].startswith("no isolation")
        out = run(sb, "import os, resource\nprint(os.getuid(), resource.getrlimit(resource.RLIMIT_CPU))",
                  "print(open('/proc/self/cgroup').read())")
    assert out[0] == f"{os.getuid()} (77, 77)"  # not isolated: the grader's own uid
    assert sb.kernel_name in out[1]  # but inside the sandbox's cgroup


# ----------------------------------------------------------------------------- isolation

@needs_bwrap
def test_the_kernel_is_nobody_in_run_dir_with_a_minimal_environment(caps, run_dir):
    with mock.patch.dict(os.environ, {"CRAFT_TEST_SECRET": "s3cret", "JPY_PARENT_PID": "1"}):
        with Sandbox(run_dir, limits(), caps, env={"CRAFT_LAB_OFFLINE": "1"}, allow_unsafe=True) as sb:
            out = run(sb, "import os\nprint(os.getuid(), os.getgid(), os.geteuid())",
                      "print(os.getcwd(), os.environ['HOME'], sorted(os.environ))",
                      "print(len([p for p in os.listdir('/proc') if p.isdigit()]))")
    assert out[0] == "65534 65534 65534"
    assert int(out[2]) < 10 < len(psutil.pids())  # its own pid namespace: the host's processes are unseen
    cwd, home, names = out[1].split(" ", 2)
    assert cwd == home == str(run_dir.resolve())
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
            if not any(d.is_relative_to(p) for d in _python_dirs())][:3]
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
def test_writes_land_only_in_run_dir(caps, run_dir, tmp_path):
    outside = tmp_path / "outside.txt"
    code = ("import os, sys\nresults = []\n"
            f"for path in [{str(outside)!r}, sys.prefix + '/written.txt', {str(ROOT / 'written.txt')!r}]:\n"
            "    try:\n        os.makedirs(os.path.dirname(path), exist_ok=True)\n"
            "        open(path, 'w').write('x')\n        results.append('wrote')\n"
            "    except OSError as e:\n        results.append(type(e).__name__)\n"
            "open('inside.txt', 'w').write('hello')\nprint(results)")
    with Sandbox(run_dir, limits(), caps, allow_unsafe=True) as sb:
        out = run(sb, code)
    assert not outside.exists()  # at most it went to the sandbox's private /tmp
    assert not (Path(sys.prefix) / "written.txt").exists() and not (ROOT / "written.txt").exists()
    assert "OSError" in out[0]  # the venv and the repository are read-only or absent
    assert (run_dir / "inside.txt").read_text() == "hello"


@needs_bwrap
def test_a_deep_run_dir_gets_a_short_socket_folder(caps, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 40)
    deep.mkdir(parents=True)
    with Sandbox(deep, limits(), caps, allow_unsafe=True) as sb:
        assert sb.ipc_dir != sb.run_dir and len(str(sb.ipc_dir)) < 60
        out = run(sb, "import os; print(os.getcwd())")
    assert out[0] == str(deep.resolve())


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
        out = run(sb, code)
    assert out[0].split() == ["EFBIG", "EFBIG"] or out[0].split() == ["EFBIG", "ENOSPC"], out
    assert (run_dir / "big.bin").stat().st_size <= 8 * 2 ** 20


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
        beats = [(run_dir / name).stat().st_mtime for name in ("heartbeat", "heartbeat2")]
        time.sleep(0.5)
        assert [(run_dir / name).stat().st_mtime for name in ("heartbeat", "heartbeat2")] == beats
        assert sb.pids() == set() and not sb.state.exists() and sb.cgroup is None
    assert texts(nb)[1] == "['heartbeat', 'heartbeat2']"
    assert len(running) >= 4  # bwrap, its init, the kernel, the two detached processes
    assert not [p for p in running if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


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
    with Sandbox(run_dir, Limits.load(), used, allow_unsafe=True) as sb:
        out = run(sb, "import torch, torchvision\nimport tensorflow as tf\n"
                      "print(float(tf.reduce_sum(tf.ones((2, 2)))), float(torch.ones(3).sum()))", timeout=180)
    assert out[0] == "4.0 3.0", out


def test_the_batch_refuses_a_machine_missing_a_protection_unless_told_and_then_says_what_is_off(monkeypatch):
    """`python -m grader grade` checks the machine first; --allow-unsafe grades and says what is off."""
    from grader import batch, sandbox

    bare = dataclasses.replace(CAPS, bwrap=None, namespaces=False, system="Linux",
                               namespaces_error="bubblewrap is not installed")
    monkeypatch.setattr(sandbox, "probe", lambda *args, **kwargs: bare)
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
