"""Warm kernels (grader/kernel/zygote.py, grader/kernel/warm.py): forks of one pre-imported process, each as
confined as a cold sandboxed kernel.

The sandbox's own tests (test_grading_sandbox.py) run here a second time with every Sandbox
made a fork of a zygote: same user, same invisible files, same read-only places, no network,
the same memory, process, CPU-time, file and working-folder limits, nothing on the host,
nothing left after cleanup or after reap(). Then what only forks can get wrong: two kernels of
one zygote seeing each other, undoing the mounts, sharing random state, losing inline figures,
the CUDA stand-in, a zygote that cannot start, a batch killed with its zygote running.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import psutil
import pytest
from nbclient import NotebookClient

import test_grading_sandbox as cold
from conftest import COURSE, ROOT
from grader import lab
from grader.kernel import warm
from grader.kernel.boot import CUDA_ON_CPU, TF_EAGER
from grader.kernel.probe import probe
from grader.kernel.sandbox import Limits, Sandbox
from test_grading_sandbox import (  # noqa: F401  (run again below, with warm kernels)
    host_files,
    limits,
    run,
    run_or_die,
    test_a_cell_over_the_time_limit_is_interrupted_under_nbgrader_execute,
    test_a_fork_storm_hits_the_process_limit,
    test_cpu_time_past_the_limit_kills_the_kernel,
    test_detached_processes_are_dead_after_cleanup,
    test_file_size_and_private_tmp_size_are_capped,
    test_files_outside_run_dir_are_invisible,
    test_memory_past_the_cgroup_limit_kills_the_kernel_not_the_grader,
    test_no_network_not_even_the_graders_loopback,
    test_reap_removes_what_a_killed_holder_of_a_sandbox_left,
    test_the_connection_file_and_sockets_are_in_a_short_folder_outside_the_cwd,
    test_the_helper_files_are_read_only_in_the_working_folder,
    test_the_kernel_is_nobody_in_its_private_folder_with_a_minimal_environment,
    test_the_working_folder_is_bounded_by_run_mb,
    test_torch_and_tensorflow_import_with_the_default_limits,
    test_twenty_thousand_files_in_the_cwd_leave_nothing_on_the_host,
    test_writes_land_only_in_the_private_folders_and_never_on_the_host,
)

CAPS = probe()
DATA = Path(tempfile.gettempdir()) / f"craft-warm-data-{os.getpid()}"
pytestmark = pytest.mark.skipif(bool(warm.unavailable(CAPS)), reason=f"no warm kernels here: "
                                f"{warm.unavailable(CAPS)} (the batch then starts cold kernels)")


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    """One zygote for the module, as a batch has one: its root holds every test's run_dir."""
    root = tmp_path_factory.mktemp("warm-work")
    DATA.mkdir(exist_ok=True)  # as online grading binds data/; here under /tmp
    (DATA / "rabbit.txt").write_text("images")
    data = DATA
    lines = []
    with warm.start([root], {"CRAFT_LAB_OFFLINE": "1", "OMP_NUM_THREADS": "1", CUDA_ON_CPU: "1"}, {data: data},
                    root.parent / "zygote.log", lines.append, Limits.load(COURSE.file), lab.load(COURSE).PRELOAD) as z:
        assert z is not None, lines
        yield z
    shutil.rmtree(DATA, ignore_errors=True)


@pytest.fixture
def caps():
    return CAPS


@pytest.fixture
def zygote_folder(zygote):
    return zygote.folder


@pytest.fixture
def run_dir(zygote, request):
    folder = Path(zygote.roots[0]) / request.node.name.replace("[", "-").replace("]", "") / "run"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(autouse=True)
def warm_sandboxes(zygote, monkeypatch):
    """Every Sandbox made in the borrowed tests is a fork of the zygote (where one can be)."""
    made = []

    class WarmSandbox(Sandbox):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{"zygote": zygote, **kwargs})
            made.append(self)

    monkeypatch.setattr(cold, "Sandbox", WarmSandbox)
    yield made
    assert all(sb.zygote is zygote for sb in made if sb.caps.cgroup in ("v1", "v2")), \
        "a sandbox that could be warm started cold"


def sandbox(zygote, run_dir, **env) -> Sandbox:
    return Sandbox(run_dir, limits(), CAPS, env={"OMP_NUM_THREADS": "1", **env}, zygote=zygote)


def test_a_warm_kernel_is_a_client_of_the_zygote_and_imports_nothing(zygote, run_dir):
    with sandbox(zygote, run_dir, **{TF_EAGER: "1"}) as sb:
        assert "client" in sb.kernel_argv() and str(zygote.socket) in sb.kernel_argv()
        out = run(sb, "import sys\nprint('torch' in sys.modules, 'tensorflow' in sys.modules)",
                  "import time\nt = time.monotonic()\nimport torch, tensorflow, xplique.concepts\n"
                  "print(time.monotonic() - t < 1, tensorflow.config.functions_run_eagerly())")
    assert out == ["True True", "True True"]  # and kernel_boot's settings applied to the imported TensorFlow


def test_two_kernels_of_one_zygote_cannot_see_each_other(zygote, tmp_path):
    base = Path(zygote.roots[0]) / "pair"
    first, second = base / "a" / "run", base / "b" / "run"
    for folder in (first, second):
        folder.mkdir(parents=True)
    (base / "a" / "gradebook.db").write_text("not for students")
    leave = ("import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
             "start_new_session=True)\nimport time; time.sleep(1)\nprint('left')")
    look = ("import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
            "cmds = [open(f'/proc/{p}/cmdline').read() for p in pids]\n"
            f"print(len(pids), any('sleep' in c for c in cmds), os.path.exists({str(first)!r}), "
            f"os.path.exists({str(base / 'a' / 'gradebook.db')!r}), os.path.exists({str(base)!r}), "
            f"sorted(os.listdir({str(zygote.share)!r})))")
    nb = cold.notebook(leave)
    with sandbox(zygote, first) as a, sandbox(zygote, second) as b:
        client = NotebookClient(nb, config=a.config(), timeout=30, resources={"metadata": {"path": str(first)}})
        with mock.patch.dict(os.environ, a.jupyter_env()), client.setup_kernel():
            client.execute_cell(nb.cells[0], 0)  # a's kernel stays up, with its process, while b runs
            assert any("sleep" in " ".join(p.cmdline()) for p in map(psutil.Process, a.pids()))
            out = run(b, look)
    assert cold.texts(nb) == ["left"]
    count, sees_sleep, sees_a, sees_book, sees_base, listing = out[0].split(" ", 5)
    assert int(count) < 10 and sees_sleep == "False" and sees_a == "False" and sees_book == "False", out
    assert sees_base == "False", out  # nothing of the batch's work folder
    assert listing == f"[{b.kernel_name!r}]", out  # of the kernels' socket folders, only its own


def test_the_hidden_folders_cannot_be_uncovered(zygote, run_dir):
    with sandbox(zygote, run_dir) as sb:
        out = run(sb, "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                      f"print(libc.umount2({zygote.roots[0]!r}.encode(), 2), ctypes.get_errno())",
                  f"print(os.listdir({warm.HOSTPROC!r}))",
                  "print(sorted({l.split()[1] for l in open('/proc/self/status') if l.startswith('Cap')}))")
    assert out[0] == "-1 1"   # EPERM: no capability left to unmount with
    assert out[1] == "[]"     # the host's /proc the zygote keeps is an empty tmpfs here
    assert out[2] == "['0000000000000000']"


def test_each_kernel_starts_with_fresh_random_state_and_its_thread_count(zygote, tmp_path):
    draws = []
    for name in ("r1", "r2"):
        folder = Path(zygote.roots[0]) / name / "run"
        folder.mkdir(parents=True)
        with sandbox(zygote, folder) as sb:
            draws.append(run(sb, "import numpy as np, random, torch\n"
                                 "print(np.random.rand(), random.random(), float(torch.rand(1)), "
                                 "torch.get_num_threads())")[0].split())
    assert all(a != b for a, b in zip(draws[0][:3], draws[1][:3])), draws  # unseeded draws differ
    assert draws[0][3] == draws[1][3] == "1"


def test_inline_figures_and_the_cuda_stand_in_work_in_a_warm_kernel(zygote, run_dir):
    nb = cold.notebook("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()",
                       "import torch\nprint(torch.ones(2, device='cuda').sum().item(), torch.cuda.get_device_name())")
    with sandbox(zygote, run_dir, **{CUDA_ON_CPU: "1"}) as sb, mock.patch.dict(os.environ, sb.jupyter_env()):
        NotebookClient(nb, config=sb.config(), timeout=60, allow_errors=True,
                       resources={"metadata": {"path": str(run_dir)}}).execute()
    assert any("image/png" in out.get("data", {}) for out in nb.cells[0].outputs), nb.cells[0].outputs
    assert cold.texts(nb)[1].startswith("2.0 CPU standing in for CUDA"), cold.texts(nb)


def test_a_zygote_that_cannot_start_leaves_the_batch_on_cold_kernels(tmp_path, monkeypatch):
    lines = []
    monkeypatch.setattr(warm, "_command", functools.partial(_broken_command, warm._command))
    started = time.monotonic()
    with warm.start([tmp_path], {}, {}, tmp_path / "zygote.log", lines.append, Limits.load(COURSE.file)) as z:
        assert z is None
    assert any("Warm kernels off" in line and "start cold" in line for line in lines), lines
    assert time.monotonic() - started < 60


def _broken_command(real, *args, **kwargs):
    argv = real(*args, **kwargs)
    return argv[: argv.index("serve") - 1] + ["-c", "raise SystemExit('broken on purpose')"]


def test_read_only_binds_under_tmp_stay_visible_and_read_only(zygote, run_dir):
    """The kernel's fresh /tmp must not hide what the zygote's sandbox binds there (a venv, data/)."""
    path = DATA / "rabbit.txt"
    with sandbox(zygote, run_dir) as sb:
        out = run(sb, f"print(open({str(path)!r}).read())",
                  f"try:\n    open({str(path)!r}, 'a').write('x')\n    print('wrote')\n"
                  "except OSError as e:\n    print(type(e).__name__)")
    assert out == ["images", "OSError"] and path.read_text() == "images"


def test_the_number_of_files_in_a_warm_kernels_working_folder_is_bounded(zygote, run_dir):
    code = ("import errno, os\nn = 0\ntry:\n    for n in range(1000):\n        open(f'f{n}', 'w').close()\n"
            "except OSError as e:\n    print(n, errno.errorcode[e.errno])")
    with Sandbox(run_dir, limits(run_files=100), CAPS, env={"OMP_NUM_THREADS": "1"}, zygote=zygote) as sb:
        out = run(sb, code)
    made, error = out[0].split()
    assert error == "ENOSPC" and 90 <= int(made) < 100, out  # nr_inodes: the folder itself counts
    assert host_files(run_dir) == []


FAKE_BATCH = """\
import json, sys, time
sys.path.insert(0, {root!r})
from grader.kernel import warm
from grader.kernel.sandbox import Limits

real = warm._command

def fake(*args, **kwargs):  # the zygote's real sandbox, running a stand-in that only makes the socket
    argv = real(*args, **kwargs)
    return argv[: argv.index("serve") - 1] + [
        "-c", "import socket, sys, time; socket.socket(socket.AF_UNIX).bind(sys.argv[1]); time.sleep(600)",
        argv[argv.index("serve") + 1]]

warm._command = fake
with warm.start([{root_dir!r}], {{}}, {{}}, {log!r}, print, Limits.load({course!r})) as zygote:
    print(json.dumps({{"folder": str(zygote.folder)}}), flush=True)
    time.sleep(600)
"""


def test_a_killed_batch_leaves_no_zygote_running_and_the_next_start_removes_its_folder(zygote, tmp_path):
    """SIGKILL of the batch process: bubblewrap's --die-with-parent ends the zygote at once; its
    folder stays (nothing of the batch runs any more) until the next warm.start() sweeps it."""
    (tmp_path / "work").mkdir()
    script = FAKE_BATCH.format(root=str(ROOT), course=str(COURSE.file), root_dir=str(tmp_path / "work"), log=str(tmp_path / "z.log"))
    batch = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        line = ""
        while not line.startswith("{"):
            line = batch.stdout.readline()
            assert line or batch.poll() is None, batch.stderr.read()[-3000:]
        folder = Path(json.loads(line)["folder"])
        running = [p for p in psutil.process_iter(["cmdline"]) if str(folder) in " ".join(p.info["cmdline"] or [])]
        assert running  # bubblewrap and the stand-in zygote
    finally:
        batch.send_signal(signal.SIGKILL)
        batch.wait()
    gone, alive = psutil.wait_procs(running, timeout=10)
    assert not alive, alive
    assert folder.is_dir() and (folder / warm.OWNER).exists()
    removed = warm._remove_stale(Path(tempfile.gettempdir()))
    assert folder in removed and not folder.exists()
    assert zygote.folder.exists() and zygote.folder not in removed  # a running batch's zygote stays
