"""The grading kernel's entry point: `python boot.py -f {connection_file}`.

It starts an IPython kernel exactly as `python -m ipykernel_launcher -f ...` does. When the
grading environment sets GRADER_CUDA_ON_CPU=1 and torch finds no GPU, it first makes the
CPU stand in for CUDA, so that a notebook written on a Colab GPU runtime (device='cuda',
.cuda(), .to('cuda'), torch.device('cuda:0'), a library object given device='cuda',
torch.cuda.synchronize(), ...) computes on the CPU what it would on the GPU, instead of
failing with "Found no NVIDIA driver" and losing the points of every cell after it.

Standalone on purpose: it is bound read-only into the grading sandbox, so it imports only the
standard library, and torch only once the notebook imports it (an import hook: kernels that
never import torch pay nothing).

What the shim covers (from the moment torch is imported, in the thread that imports it):
- any torch function or Tensor method given a CUDA device: "cuda", "cuda:0",
  torch.device("cuda"), as an argument or a keyword (Tensor.to, factory functions such as
  torch.tensor / as_tensor / zeros / ones / empty / full / rand / randn / randint / arange /
  linspace / *_like / Tensor.new_*, nn.Module.to, modules built with device="cuda",
  `with torch.device("cuda"):`, torch.set_default_device("cuda")): the CPU is used instead.
  torch.device("cuda") objects themselves stay CUDA devices (str() gives "cuda", as on a GPU);
- Tensor.cuda() and nn.Module.cuda(), Tensor.pin_memory(): CPU copies. Moving a tensor "to
  CUDA" always copies it, as it would from the CPU to a GPU, so changing the result in place
  leaves the original alone;
- torch.cuda.synchronize / ipc_collect / set_device / reset_peak_memory_stats /
  reset_max_memory_allocated / reset_accumulated_memory_stats: no-ops;
  current_device() -> 0; get_device_name() -> DEVICE_NAME; memory_summary() -> a line.
  (empty_cache, manual_seed, manual_seed_all, seed, seed_all, memory_allocated,
  max_memory_allocated, memory_reserved, max_memory_reserved, memory_stats already run
  quietly without a GPU: left alone.)
torch.cuda.is_available() stays False and device_count() 0: code that picks its device by
availability gets the CPU, and libraries never take CUDA-only paths. A lab whose own `device`
should be "cuda", as on a Colab GPU, sets it through its own settings in the grading environment
(grader/lab.py, kernel_env(gpu=True)).

What it does not cover (such a notebook still fails or differs; grader/gpu.py flags the
CUDA errors in a note): a device given as a bare index (device=0, .to(0)); torch.load with
map_location="cuda"; torch.Generator(device="cuda"); torch.cuda.Stream / Event /
get_device_properties / mem_get_info / get_rng_state; legacy torch.cuda.FloatTensor types;
torch threads other than the one that imported torch. Tensors report device "cpu" and
is_cuda False, so code that tests for a GPU tensor, or calls .numpy() on one, behaves as on a
CPU; torch.autocast("cuda") warns and is disabled, as on any CPU. Random numbers drawn "on
CUDA" come from the CPU generator (the numbers differ from a GPU's anyway).

With GRADER_TF_EAGER=1 (TF_EAGER, also set for grading), TensorFlow runs its tf.functions
eagerly once it is imported: no XLA compilation of a library's tiny jit-compiled functions.

It writes nothing to stderr (nbgrader scores 0 for a graded cell that does). If the shim
cannot be installed it says so on stdout and the notebook runs without it.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
from pathlib import Path

CUDA_ON_CPU = "GRADER_CUDA_ON_CPU"  # set to 1 in the grading environment to turn the shim on
# Set to 1 in the grading environment: TensorFlow runs its tf.functions eagerly. A tiny
# tf.function(jit_compile=True) on arrays of a few hundred numbers makes XLA compile each shape again
# (2 s for the first, 0.1-0.2 s for later ones) to run what takes 5 ms eagerly.
# The results are the same up to float rounding, and the batch's reference run uses it too.
TF_EAGER = "GRADER_TF_EAGER"
DEVICE_NAME = "CPU standing in for CUDA (the grader has no GPU)"
_CUDA = re.compile(r"cuda(:\d+)?")
_NOOPS = ("synchronize", "ipc_collect", "set_device", "reset_peak_memory_stats",
          "reset_max_memory_allocated", "reset_accumulated_memory_stats")


def wanted(env=None, name: str = CUDA_ON_CPU) -> bool:
    """Whether the environment asks for the CPU to stand in for CUDA (or for `name`)."""
    value = (os.environ if env is None else env).get(name, "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _cpu_for_cuda_mode(torch):
    """A TorchFunctionMode that rewrites CUDA devices to the CPU in every torch call."""
    from torch.overrides import TorchFunctionMode

    def is_cuda(value) -> bool:
        if isinstance(value, torch.device):
            return value.type == "cuda"
        return isinstance(value, str) and _CUDA.fullmatch(value) is not None

    class CpuForCuda(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.device:  # torch.device("cuda") itself stays a CUDA device
                return func(*args, **kwargs)
            if func is torch.Tensor.cuda:
                return args[0].to("cpu", copy=True)
            if func is torch.Tensor.pin_memory:
                return args[0].clone()
            moved = any(map(is_cuda, args)) or any(map(is_cuda, kwargs.values()))
            if moved:
                args = tuple("cpu" if is_cuda(a) else a for a in args)
                kwargs = {k: "cpu" if is_cuda(v) else v for k, v in kwargs.items()}
                if func is torch.Tensor.to:
                    kwargs["copy"] = True  # a move to a GPU copies; keep that
            return func(*args, **kwargs)

    return CpuForCuda()


def install(torch) -> bool:
    """Make the CPU stand in for CUDA in this thread; False (and nothing done) if CUDA is there."""
    if torch.cuda.is_available():
        return False
    _cpu_for_cuda_mode(torch).__enter__()  # stays on the mode stack for the kernel's lifetime
    for name in _NOOPS:
        setattr(torch.cuda, name, lambda *args, **kwargs: None)
    torch.cuda.current_device = lambda: 0
    torch.cuda.get_device_name = lambda device=None: DEVICE_NAME
    torch.cuda.memory_summary = lambda device=None, abbreviated=False: f"{DEVICE_NAME}: no CUDA memory"
    return True


def _install_quietly(torch) -> None:
    try:
        install(torch)
    except Exception as exc:  # never break the kernel: the notebook runs as it would without
        print(f"[grader] the CPU could not stand in for CUDA ({type(exc).__name__}: {exc})")


def _eager_quietly(tensorflow) -> None:
    try:
        tensorflow.config.run_functions_eagerly(True)
    except Exception as exc:  # only slower without it
        print(f"[grader] TensorFlow keeps compiling its functions ({type(exc).__name__}: {exc})")


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs then(module) right after `import <name>` has finished, then steps aside."""

    def __init__(self, name: str, then):
        self.name, self.then = name, then

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def exec_then(module):
                exec_module(module)
                self.then(module)

            spec.loader.exec_module = exec_then
        return spec


def _after_import(name: str, then) -> None:
    """then(module) once `name` is imported: at once if it already is (a warm kernel)."""
    if name in sys.modules:
        then(sys.modules[name])
    else:
        sys.meta_path.insert(0, _AfterImport(name, then))


def activate() -> None:
    """Arrange for what the environment asks: the CUDA stand-in, TensorFlow's eager functions."""
    if wanted():
        _after_import("torch", _install_quietly)
    if wanted(name=TF_EAGER):
        _after_import("tensorflow", _eager_quietly)


def main() -> None:
    # As ipykernel_launcher: keep this file's folder (and the cwd) off sys.path while loading;
    # the kernel puts the cwd back (InteractiveShellApp.init_path).
    if sys.path and (sys.path[0] in ("", os.getcwd())
                     or Path(sys.path[0]).resolve() == Path(__file__).resolve().parent):
        del sys.path[0]
    activate()
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()


if __name__ == "__main__":
    main()
