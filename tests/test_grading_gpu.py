"""A notebook written for a GPU, graded on a CPU-only machine (grader/kernel/boot.py, grader/gpu.py).

(a) the shim, in a fresh Python with GRADER_CUDA_ON_CPU=1 (and without it);
(b) a real CraftTorch run at a tiny size with CUDA hard-coded everywhere, through a Jupyter
    kernel started by kernel_boot.py, as the grader starts it;
(c) gpu_reason on notebooks with and without errors caused by a missing GPU.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook, new_output

from conftest import COURSE, craftlab, reference_answers, run_env
from gpu_sample import gpu_edits
from grader.gpu import gpu_reason
from grader.kernel import boot as kernel_boot
from grader.kernel.boot import CUDA_ON_CPU

BOOT = Path(kernel_boot.__file__).resolve()

# ----------------------------------------------------------------------------- (a) the shim

PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import boot as kernel_boot
kernel_boot.activate()
import torch
from torch import nn
seen = {"available": torch.cuda.is_available()}

def attempt(name, make):
    try:
        seen[name] = make()
    except Exception as exc:
        seen[name] = f"{type(exc).__name__}: {exc}"

seen["device_object"] = str(torch.device("cuda:0"))  # kept as such: only its use moves to the CPU
x = torch.arange(6.0).reshape(2, 3)
made = {
    "to": lambda: x.to("cuda"), "to_index": lambda: x.to("cuda:0"),
    "to_device": lambda: x.to(torch.device("cuda")), "to_kw": lambda: x.to(device="cuda", dtype=torch.float64),
    "cuda": lambda: x.cuda(), "pin_memory": lambda: x.pin_memory(),
    "tensor": lambda: torch.tensor([1.0], device="cuda"), "as_tensor": lambda: torch.as_tensor([1], device="cuda"),
    "zeros": lambda: torch.zeros(2, device="cuda"), "ones": lambda: torch.ones(2, device=torch.device("cuda:0")),
    "empty": lambda: torch.empty(2, device="cuda"), "full": lambda: torch.full((2,), 3.0, device="cuda"),
    "rand": lambda: torch.rand(2, device="cuda"), "randn": lambda: torch.randn(2, device="cuda"),
    "randint": lambda: torch.randint(0, 5, (2,), device="cuda"), "arange": lambda: torch.arange(3, device="cuda"),
    "linspace": lambda: torch.linspace(0, 1, 3, device="cuda"), "zeros_like": lambda: torch.zeros_like(x, device="cuda"),
    "new_zeros": lambda: x.new_zeros(2, device="cuda"), "linear": lambda: nn.Linear(3, 2, device="cuda").weight,
}
for name, make in made.items():
    attempt(name, lambda make=make: str(make().device))

def under_default_device():
    with torch.device("cuda"):
        return str(torch.zeros(1).device)
attempt("with_device", under_default_device)

def same_numbers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(images)
        on_cuda = model.to("cuda")(images.to("cuda"))
        again = model.cuda()(images.cuda())
    return [torch.equal(expected, on_cuda), torch.equal(expected, again),
            str(next(model.parameters()).device)]
attempt("same_numbers", same_numbers)

def moved_copy_is_a_copy():
    a = torch.zeros(3)
    b, c = a.to("cuda"), a.cuda()
    b += 1
    c += 1
    return a.sum().item()
attempt("original_after_inplace", moved_copy_is_a_copy)

def cuda_calls():
    torch.cuda.synchronize(); torch.cuda.empty_cache(); torch.cuda.manual_seed(0); torch.cuda.manual_seed_all(0)
    torch.cuda.reset_peak_memory_stats(); torch.cuda.set_device(0)
    return [torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated(), torch.cuda.current_device(),
            torch.cuda.get_device_name(0), torch.cuda.device_count()]
attempt("cuda_calls", cuda_calls)
print(json.dumps(seen))
"""


def probe(shim: bool) -> tuple[dict, str]:
    env = run_env()
    env.pop(CUDA_ON_CPU, None)
    if shim:
        env[CUDA_ON_CPU] = "1"
    done = subprocess.run([sys.executable, "-c", PROBE, str(BOOT.parent)], env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    if seen["available"] is True:
        pytest.skip("this machine has a GPU: the shim stays off, by design")
    return seen, done.stderr


@pytest.fixture(scope="module")
def with_shim():
    return probe(shim=True)


@pytest.fixture(scope="module")
def without_shim():
    return probe(shim=False)


def test_shim_moves_cuda_requests_to_the_cpu(with_shim):
    seen, _ = with_shim
    places = ("to", "to_index", "to_device", "to_kw", "cuda", "pin_memory", "tensor", "as_tensor", "zeros",
              "ones", "empty", "full", "rand", "randn", "randint", "arange", "linspace", "zeros_like",
              "new_zeros", "linear", "with_device")
    assert {name: seen[name] for name in places} == {name: "cpu" for name in places}


def test_shim_computes_the_same_numbers_and_copies_like_a_gpu(with_shim):
    seen, _ = with_shim
    assert seen["same_numbers"] == [True, True, "cpu"]
    assert seen["original_after_inplace"] == 0.0, "a tensor moved 'to CUDA' must be a copy"


def test_shim_keeps_cuda_unavailable_and_answers_torch_cuda_calls(with_shim):
    seen, stderr = with_shim
    assert seen["available"] is False
    assert seen["device_object"] == "cuda:0", "str(torch.device('cuda')) must stay what it is on a GPU"
    assert seen["cuda_calls"] == [0, 0, 0, kernel_boot.DEVICE_NAME, 0]
    assert stderr == ""


def test_shim_is_off_without_the_variable(without_shim):
    seen, _ = without_shim
    for name in ("to", "cuda", "zeros", "linear", "cuda_calls"):
        assert "NVIDIA" in str(seen[name]) or "CUDA" in str(seen[name]), (name, seen[name])


def test_kernel_boot_imports_only_the_standard_library():
    """It is bound read-only into the sandbox, without the repository: stdlib only, torch lazily."""
    tree = ast.parse(BOOT.read_text())
    top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = {alias.name.split(".")[0] for node in top if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module.split(".")[0] for node in top if isinstance(node, ast.ImportFrom)}
    assert names - {"__future__"} <= set(sys.stdlib_module_names), names
    everywhere = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(m.startswith(("grader", ".")) or m == "" for m in everywhere), everywhere


# ----------------------------------------------------------------------------- (b) a real kernel

GPU_CELLS = [
    # 0: the shim arrives with torch, silently (no stderr), in the cell's own kernel
    "import sys\n"
    "print('torch before:', 'torch' in sys.modules, '; grader on path:', any(p.endswith('grader') for p in sys.path))\n"
    "import torch\n"
    "print('moved to', torch.ones(2).to('cuda').device, '; available', torch.cuda.is_available())",
    # 1: the lab's set-up
    "import os\nimport numpy as np\nimport torch.nn as nn\nfrom torchvision import transforms\n"
    "import craftlab\ncraftlab.keep_stderr_clean()\n"
    "from xplique.concepts import CraftTorch\n"
    "device = craftlab.pick_device()\nprint('device', device)",
    # 2: model, split and images, moved to CUDA the ways students do
    "model = craftlab.load_resnet50().to(torch.device('cuda:0')).eval()\n"
    "g, h = craftlab.reference_split(model)\ng, h = g.cuda(), h.to('cuda')\n"
    "images = craftlab.load_rabbits()\n"
    "transform = transforms.Compose([transforms.ToPILImage(), transforms.Resize(256), transforms.ToTensor()])\n"
    "x = torch.stack([transform(img) for img in images])",
    # 3: CRAFT on 'cuda'
    "craft = CraftTorch(g, h, number_of_concepts=3, patch_size=80, batch_size=64, device='cuda')\n"
    "torch.cuda.empty_cache()\nnp.random.seed(0)\n"
    "crops, u, w = craft.fit(x, class_id=330)\ntorch.cuda.synchronize()\n"
    "print('fit', tuple(crops.shape), u.shape, w.shape)",
    # 4: importances, and h on a tensor created on 'cuda' gives what it gives on the CPU
    "importances = craft.estimate_importance(nb_design=4)\n"
    "assert importances.shape == (3,) and np.isfinite(importances).all()\n"
    "with torch.no_grad():\n"
    "    same = torch.equal(h(torch.ones(1, 2048, 8, 8, device='cuda')), h.cpu()(torch.ones(1, 2048, 8, 8)))\n"
    "print('importances', importances.shape, 'same', same)",
]


def run_in_boot_kernel(tmp_path, monkeypatch, cells: list[str], shim: bool):
    """Execute cells in a kernel started, as the grader does, by kernel_boot.py."""
    spec = tmp_path / "kernels" / "craft-lab-boot"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, str(BOOT), "-f", "{connection_file}"],
        "display_name": "CRAFT lab grading", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    env = run_env(n_images=2)
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(COURSE.source_dir))
    env.pop(CUDA_ON_CPU, None)
    if shim:  # as the grading environment does: the CPU stands in for CUDA, the lab's device is 'cuda'
        env.update({CUDA_ON_CPU: "1", craftlab.DEVICE_VAR: "cuda"})
    nb = new_notebook(cells=[new_code_cell(source) for source in cells])
    for i, cell in enumerate(nb.cells):
        cell.metadata["nbgrader"] = {"grade_id": f"gpu_cell_{i}", "grade": False, "solution": True}
    client = NotebookClient(nb, kernel_name="craft-lab-boot", timeout=300, allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)
    return nb


def text_of(cell, stream: str = "stdout") -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == stream)


def test_craft_with_cuda_hard_coded_runs_in_the_grading_kernel(tmp_path, monkeypatch, without_shim):
    nb = run_in_boot_kernel(tmp_path, monkeypatch, GPU_CELLS, shim=True)
    errors = [(i, o.ename, o.evalue) for i, c in enumerate(nb.cells) for o in c.outputs if o.output_type == "error"]
    assert errors == []
    assert [text_of(c, "stderr") for c in nb.cells] == [""] * len(nb.cells)
    out = [text_of(c) for c in nb.cells]
    assert "torch before: False ; grader on path: False" in out[0], "torch must come with the notebook"
    assert "moved to cpu ; available False" in out[0]
    assert "device cuda" in out[1] and kernel_boot.DEVICE_NAME in out[1]
    assert "fit (18, 3, 80, 80) (18, 3) (3, 2048)" in out[3]
    assert "importances (3,) same True" in out[4]
    assert gpu_reason(nb) is None


def test_without_the_shim_the_same_cell_fails_with_a_note_saying_why(tmp_path, monkeypatch, without_shim):
    nb = run_in_boot_kernel(tmp_path, monkeypatch, GPU_CELLS[:1] + ["print('after')"], shim=False)
    assert [o.output_type for o in nb.cells[0].outputs][-1] == "error"
    reason = gpu_reason(nb)
    assert reason and reason.startswith("errors name CUDA or a GPU, which the grader does not have: gpu_cell_0 (RuntimeError:")
    assert "NVIDIA" in reason and "points from gpu_cell_0 on may be missing" in reason


# ----------------------------------------------------------------------------- (c) gpu_reason

def notebook(*outputs_per_cell, graded=False):
    cells = []
    for i, outputs in enumerate(outputs_per_cell):
        cell = new_code_cell("pass", outputs=list(outputs))
        cell.metadata["nbgrader"] = {"grade_id": f"c{i}", "grade": graded, "solution": not graded}
        cells.append(cell)
    return new_notebook(cells=cells)


def error(ename, evalue):
    return new_output("error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


@pytest.mark.parametrize("ename, evalue", [
    ("RuntimeError", "Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU"),
    ("AssertionError", "Torch not compiled with CUDA enabled"),
    ("RuntimeError", "CUDA error: no kernel image is available for execution on the device"),
    ("RuntimeError", "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!"),
    ("RuntimeError", "Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False."),
    ("AssertionError", "device is 'cpu'; pass device='cuda'."),
])
def test_gpu_reason_names_the_first_cell_that_needed_a_gpu(ename, evalue):
    nb = notebook([], [error(ename, evalue)], [error("NameError", "name 'crops' is not defined")])
    reason = gpu_reason(nb)
    assert reason == (f"errors name CUDA or a GPU, which the grader does not have: c1 ({ename}: {evalue}); if this "
                      "notebook needs a GPU, points from c1 on may be missing: grade it again on a GPU")


@pytest.mark.parametrize("ename, evalue", [
    ("NameError", "name 'crops' is not defined"),
    ("AssertionError", "W has shape (10, 1024); expected (10, 2048)."),
    ("NotRun", "not run: the kernel died in answer_fit"),
    ("KernelDied", "the kernel died while running this cell (os._exit, a crash, or out of memory)"),
])
def test_gpu_reason_leaves_other_errors_alone(ename, evalue):
    assert gpu_reason(notebook([error(ename, evalue)])) is None
    assert gpu_reason(notebook()) is None


def test_gpu_reason_counts_stderr_only_in_graded_cells():
    warning = new_output("stream", name="stderr", text="UserWarning: CUDA is not available. Disabling autocast.\n")
    assert gpu_reason(notebook([warning])) is None
    reason = gpu_reason(notebook([warning], graded=True))
    assert reason and "c0 (stderr: UserWarning: CUDA is not available" in reason


def test_gpu_reason_names_at_most_three_cells():
    nb = notebook(*[[error("RuntimeError", "CUDA error: out of memory")]] * 5)
    reason = gpu_reason(nb)
    assert reason.count("CUDA error") == 3 and "and 2 more cell(s)" in reason


# ----------------------------------------------------------------------------- the GPU sample

def test_gpu_sample_hard_codes_cuda_wherever_the_answers_used_device():
    import nbformat

    code = {c.id for c in nbformat.read(COURSE.source_notebook, as_version=4).cells if c.cell_type == "code"}
    reference = {cid: src for cid, src in reference_answers().items() if cid in code}  # not the written answers
    edited = gpu_edits(reference)
    used_device = {cid for cid, src in reference.items() if _reads(src, "device")}
    assert used_device and not any(_reads(src, "device") for src in edited.values())
    assert all("cuda" in edited[cid] for cid in used_device)
    assert {cid for cid in reference if edited[cid] != reference[cid]} >= used_device
    with pytest.raises(ValueError, match="answer_craft"):
        gpu_edits(dict(reference, answer_craft="craft = None"))


def _reads(source: str, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(ast.parse(source)))


EAGER_PROBE = r"""
import sys
sys.path.insert(0, sys.argv[1])
import boot as kernel_boot
kernel_boot.activate()
import tensorflow as tf
print(tf.config.functions_run_eagerly())
"""


@pytest.mark.parametrize("asked", [True, False], ids=["grading", "plain"])
def test_the_grading_kernel_runs_tensorflow_functions_eagerly_only_when_asked(asked):
    """TF_EAGER (set by course.grading_env for the grading kernel): Xplique's tiny jit-compiled
    Sobol estimators run eagerly instead of being compiled by XLA for every new shape."""
    from grader.kernel.boot import TF_EAGER

    env = {k: v for k, v in run_env().items() if k != TF_EAGER} | ({TF_EAGER: "1"} if asked else {})
    done = subprocess.run([sys.executable, "-c", EAGER_PROBE, str(BOOT.parent)], env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(asked)
