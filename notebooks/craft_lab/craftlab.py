"""Support code for the CRAFT lab notebook.

The notebook imports this module for everything that is not the lesson itself:
where the data and the weights come from (online or offline), which device to use,
progress output during the long steps, and the records the graded checks read.

Settings come from environment variables, so the same notebook runs in Colab, on a
laptop, in CI and under the autograder:

  CRAFT_LAB_OFFLINE=1      no downloads: seeded random ResNet50 weights and a generated
                           stand-in for the rabbit images. Every result says so.
  CRAFT_LAB_N_IMAGES=k     use only the first k images (grading mode, quick runs).
  CRAFT_LAB_DATA_DIR=dir   where rabbit.npz is cached (default: the kit's data/ folder,
                           or the current folder outside the kit, e.g. in Colab).
  CRAFT_LAB_RABBIT_URL=u   download rabbit.npz from u instead (a mirror, or a test server).
  CRAFT_LAB_RABBIT_SHA256  expected SHA-256 of rabbit.npz, checked when set.
  CRAFT_LAB_DEVICE=cpu     force a device instead of picking CUDA when it is there.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEED = 0
RABBIT_CLASS = 330  # ImageNet class "wood rabbit, cottontail"
RABBIT_URL = "https://share.deel.ai/s/fq78w4E2GTrQ54S/download"
RABBIT_FILE = "rabbit.npz"
RABBIT_KEY = "arr_0"
IMAGE_SHAPE = (224, 224, 3)
FULL_SIZE = 300  # images in rabbit.npz
WEIGHTS_NAME = "IMAGENET1K_V1"  # what resnet50(pretrained=True) meant; "DEFAULT" is V2
OFFLINE_BANNER = (
    "OFFLINE MODE: random ResNet50 weights and synthetic images. Shapes and code paths are "
    "real; concepts, importances and maps are NOT meaningful."
)


class LabDataError(RuntimeError):
    """The rabbit images could not be fetched or are not what the lab expects."""


# The environment variables this module reads: each name is written here and nowhere else
# (the grader builds a kernel's environment with Settings.to_env).
OFFLINE_VAR = "CRAFT_LAB_OFFLINE"
N_IMAGES_VAR = "CRAFT_LAB_N_IMAGES"
DATA_DIR_VAR = "CRAFT_LAB_DATA_DIR"
RABBIT_URL_VAR = "CRAFT_LAB_RABBIT_URL"
RABBIT_SHA256_VAR = "CRAFT_LAB_RABBIT_SHA256"
DEVICE_VAR = "CRAFT_LAB_DEVICE"
VARIABLES = (OFFLINE_VAR, N_IMAGES_VAR, DATA_DIR_VAR, RABBIT_URL_VAR, RABBIT_SHA256_VAR, DEVICE_VAR)


@dataclass(frozen=True)
class Settings:
    offline: bool = False
    n_images: int | None = None
    data_dir: Path | None = None     # None: default_data_dir()
    rabbit_url: str = RABBIT_URL
    rabbit_sha256: str | None = None
    device: str | None = None
    timeout: float = 60.0
    retries: int = 3

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        env = os.environ if env is None else env
        n = env.get(N_IMAGES_VAR, "").strip()
        if n and (not n.isdigit() or int(n) < 1):
            raise ValueError(
                f"{N_IMAGES_VAR}={n!r} is not a positive whole number. "
                "Set it to how many images to use (e.g. 8), or unset it to use all of them."
            )
        return cls(
            offline=env.get(OFFLINE_VAR, "").strip().lower() in {"1", "true", "yes", "on"},
            n_images=int(n) if n else None,
            data_dir=Path(env[DATA_DIR_VAR]) if env.get(DATA_DIR_VAR) else default_data_dir(),
            rabbit_url=env.get(RABBIT_URL_VAR, RABBIT_URL),
            rabbit_sha256=env.get(RABBIT_SHA256_VAR) or None,
            device=env.get(DEVICE_VAR) or None,
        )

    def to_env(self) -> dict[str, str]:
        """The variables that make Settings.from_env() give these settings back (unset ones omitted)."""
        values = {OFFLINE_VAR: "1" if self.offline else None,
                  N_IMAGES_VAR: str(self.n_images) if self.n_images else None,
                  DATA_DIR_VAR: str(self.data_dir) if self.data_dir else None,
                  RABBIT_URL_VAR: self.rabbit_url if self.rabbit_url != RABBIT_URL else None,
                  RABBIT_SHA256_VAR: self.rabbit_sha256, DEVICE_VAR: self.device}
        return {name: value for name, value in values.items() if value is not None}


def default_data_dir() -> Path:
    """The kit's data/ folder when running inside the kit's repository, else the current folder."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "grader" / "course.toml").is_file() and (folder / "data").is_dir():
            return folder / "data"
    return Path(".")


def in_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


# ----------------------------------------------------------------------------- runtime

def pick_device(settings: Settings | None = None) -> str:
    """'cuda' when a GPU is there (or CRAFT_LAB_DEVICE says so), else 'cpu', with a note."""
    import torch

    settings = settings or Settings.from_env()
    if settings.device:
        device = settings.device
    else:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        print(f"Device: {device} ({torch.cuda.get_device_name(0)})")
    else:
        hint = (" In Colab: Runtime > Change runtime type > GPU, then run from the top."
                if in_colab() else "")
        print(f"Device: cpu. No GPU: the full-size fit takes ~15-20 min instead of ~1 min.{hint}")
    return device


# Warnings the student cannot act on: shown once per kernel, with what they mean, then hidden.
RETRACING = "TensorFlow retracing"
SHOWN_ONCE = {
    "ConvergenceWarning": (
        "This is scikit-learn's NMF inside Xplique's CRAFT stopping at its built-in cap of 200 "
        "iterations; the cap cannot be changed from CraftTorch and the concepts are still usable, "
        "so it is harmless here. Shown once: further ConvergenceWarnings are hidden."),
    RETRACING: (
        "This is TensorFlow compiling part of Xplique's Sobol importance estimation once more: "
        "estimate_importance builds a new estimator at every call, and TensorFlow warns once it "
        "has compiled the same function several times. It costs a fraction of a second and changes no result, so it is "
        "harmless here. Shown once: further retracing warnings are hidden."),
}
_shown_once: set[str] = set()


def _show(name: str, message) -> None:
    """Print a warning on stdout; those of SHOWN_ONCE only the first time, with their meaning."""
    if name in SHOWN_ONCE:
        if name in _shown_once:
            return
        _shown_once.add(name)
        print(f"[warning] {name}: {message}\n          {SHOWN_ONCE[name]}", file=sys.stdout)
        return
    print(f"[warning] {name}: {message}", file=sys.stdout)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """warnings.showwarning for the notebook: on stdout (see keep_stderr_clean), and the
    warnings of SHOWN_ONCE only the first time, with one sentence on what they mean.
    Every other warning is shown as Python's filters decide (they may be actionable)."""
    _show(category.__name__, message)


class TensorFlowRetracing(logging.Filter):
    """On TensorFlow's Python logger: its "triggered tf.function retracing" warning goes through
    _show (first sentence, explained once, then hidden); every other record passes unchanged."""

    MARK = "triggered tf.function retracing"

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if self.MARK not in text:
            return True
        _show(RETRACING, text.split(". ")[0] + ".")
        return False


def keep_stderr_clean() -> None:
    """Send the notebook's warnings and library logs to stdout instead of stderr.

    nbgrader gives 0 points to a graded cell that writes anything to stderr, and benign
    messages would do that: scikit-learn's NMF ConvergenceWarning, deprecation warnings,
    and TensorFlow/XLA's C++ logs (which ignore TF_CPP_MIN_LOG_LEVEL for some lines).
    You still see them in the cell output (show_warning); the ones in SHOWN_ONCE, which
    the student cannot act on, only once (TensorFlow's retracing warning, a log record rather
    than a Python warning, through the TensorFlowRetracing filter). Errors still show as errors.
    """
    warnings.showwarning = show_warning
    tf_logger = logging.getLogger("tensorflow")  # the logger tf.get_logger() returns
    if not any(type(f).__name__ == TensorFlowRetracing.__name__ for f in tf_logger.filters):
        tf_logger.addFilter(TensorFlowRetracing())
    try:  # absl (TensorFlow's Python logger) writes to stderr
        import absl.logging
        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass
    sys.stderr.flush()
    sys.stderr = sys.stdout
    try:  # C and C++ code writes to file descriptor 2 directly
        sys.stdout.flush()
        os.dup2(sys.__stdout__.fileno() if sys.__stdout__ else 1, 2)
    except (OSError, ValueError, AttributeError):
        pass


XLA_NOTE = ("TensorFlow's start-up log, printed while it compiled Xplique's Sobol estimator "
            "once (with XLA), so that the cells that compute importances stay quiet. "
            "Information only: nothing to do.")


def warm_up_tensorflow() -> None:
    """Compile Xplique's Sobol estimator once, now, with a tiny input.

    The first XLA compilation makes TensorFlow's C++ code log a few lines (an absl
    "WARNING: All log messages before absl::InitializeLog() ..." and "Compiled cluster using
    XLA!"): they are caught here and shown indented under XLA_NOTE, so that the student sees
    what they are, and they stay out of the cells that compute importances.
    """
    from xplique.attributions.global_sensitivity_analysis import (HaltonSequenceRS,
                                                                  JansenEstimator)

    def compile_once():
        masks = HaltonSequenceRS()(2, nb_design=4)
        JansenEstimator()(masks, np.zeros(len(masks), dtype=np.float32), 4)

    try:  # C++ logs go to file descriptor 2: point it at a file for the duration
        sys.stdout.flush()
        sys.stderr.flush()
        log = tempfile.TemporaryFile()
    except (OSError, ValueError, AttributeError):  # nowhere to write it: compile without catching
        compile_once()
        return
    with log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            compile_once()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            lines = log.read().decode("utf-8", "replace").splitlines()
    lines = [line for line in lines if line.strip()]
    if lines:
        print(f"[log] {XLA_NOTE}\n" + "\n".join(f"      {line}" for line in lines))


def remind_if_offline(settings: Settings | None = None) -> None:
    """Print the offline banner again next to results, so nobody mistakes them for real ones."""
    if (settings or Settings.from_env()).offline:
        print(OFFLINE_BANNER)


def require(namespace: dict, *names: str, task: str, cell: str = "answer cell") -> None:
    """Stop a cell at once, saying which earlier cell to run, when one of `names` is missing.

    The notebook's check cells start with it, e.g. `craftlab.require(globals(), "g", "h",
    task="Task 2")`: a check run before its task's answer (or with the answer left blank)
    then fails with "g is not defined: run Task 2's answer cell first (it defines g and h)"
    instead of a bare NameError. A name bound to None counts as missing: the locked cell after
    Task 2 sets g and h to None when the answer left them undefined. Raises AssertionError,
    what a failed check raises.
    """
    __tracebackhide__ = True  # IPython: show the cell's line, not this function's
    for name in names:
        if namespace.get(name) is None:
            state = "is None" if name in namespace else "is not defined"
            listing = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
            raise AssertionError(f"{name} {state}: run {task}'s {cell} first (it defines {listing}).")


# ----------------------------------------------------------------------------- data

def make_fixture(n: int = FULL_SIZE, seed: int = SEED) -> np.ndarray:
    """Synthetic stand-in for rabbit.npz: n uint8 images of shape (224, 224, 3).

    Smooth colour blobs on a gradient, so crops differ from each other and the NMF has
    structure to find. Not rabbits: used in offline mode and tests only.
    """
    rng = np.random.default_rng(seed)
    h, w, _ = IMAGE_SHAPE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, *IMAGE_SHAPE), dtype=np.uint8)
    for i in range(n):
        img = rng.uniform(40, 120, size=3)[None, None, :] * (0.5 + xx[..., None] / (2 * w))
        for _ in range(rng.integers(2, 5)):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            r = rng.uniform(15, 60)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img = img + blob[..., None] * rng.uniform(-80, 135, size=3)[None, None, :]
        img += rng.normal(0, 6, size=img.shape)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def validate_rabbits(path: Path, expected_sha256: str | None = None) -> np.ndarray:
    """Load rabbit.npz and check it is what the lab expects; raise LabDataError if not.

    Reading the whole array also checks the zip's CRC, so a corrupted download is caught
    here even when its size is right.
    """
    path = Path(path)
    fix = (f"Delete {path} and run the cell again to download it anew, or set "
           f"{OFFLINE_VAR}=1 to continue with synthetic images.")
    if expected_sha256:
        got = sha256_of(path)
        if got != expected_sha256.lower():
            raise LabDataError(f"{path} has SHA-256 {got}, expected {expected_sha256}. {fix}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if RABBIT_KEY not in npz.files:
                raise LabDataError(f"{path} has arrays {npz.files}, expected one named "
                                   f"{RABBIT_KEY!r}. {fix}")
            images = npz[RABBIT_KEY]
    except LabDataError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError, EOFError, OSError...
        raise LabDataError(f"{path} is not a readable .npz file ({type(exc).__name__}: "
                           f"{exc}). {fix}") from exc
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise LabDataError(f"{path} holds an array of {images.dtype} {images.shape}, expected "
                           f"uint8 (N, {', '.join(map(str, IMAGE_SHAPE))}). {fix}")
    return images


def download(url: str, dest: Path, *, timeout: float = 60.0, retries: int = 3,
             backoff: float = 2.0, quiet: bool = False) -> Path:
    """Download url to dest atomically, with retries, a timeout and a size check.

    Writes to dest + '.part' and renames only once the byte count matches the
    server's Content-Length, so an interrupted download never leaves a file that
    looks complete. Raises LabDataError after `retries` failed attempts.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error = None
    for attempt in range(1, retries + 1):
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "craft-lab"})
            with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as f:
                total = response.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                received, shown, started = 0, 0.0, time.monotonic()
                while True:
                    block = response.read(1 << 20)
                    if not block:
                        break
                    f.write(block)
                    received += len(block)
                    now = time.monotonic()
                    if not quiet and now - shown >= 2.0:
                        shown = now
                        of = f" of {total / 2**20:.1f}" if total else ""
                        print(f"  downloaded {received / 2**20:.1f}{of} MiB "
                              f"({now - started:.0f} s)", flush=True)
            if total is not None and received != total:
                raise LabDataError(f"got {received} bytes, the server announced {total}")
            if received == 0:
                raise LabDataError("the server sent an empty file")
            os.replace(part, dest)
            return dest
        except (urllib.error.URLError, http.client.HTTPException, OSError, LabDataError,
                ValueError) as exc:
            last_error = exc
            part.unlink(missing_ok=True)
            if not quiet:
                print(f"  attempt {attempt}/{retries} failed: {exc}", flush=True)
            if attempt < retries:
                time.sleep(backoff * attempt)
    raise LabDataError(
        f"Could not download {url} after {retries} attempts (last error: {last_error}). "
        f"Check the internet connection and run the cell again; or download the file by hand "
        f"and save it as {dest}; or set {OFFLINE_VAR}=1 to continue with synthetic images."
    )


def load_rabbits(settings: Settings | None = None) -> np.ndarray:
    """The lab's images as a (N, 224, 224, 3) uint8 array, N = CRAFT_LAB_N_IMAGES or 300."""
    settings = settings or Settings.from_env()
    if settings.offline:
        n = settings.n_images or FULL_SIZE
        images = make_fixture(n)
        print(OFFLINE_BANNER)
        print(f"OFFLINE MODE: {n} synthetic images (seed {SEED}) stand in for rabbit.npz.")
    else:
        path = (settings.data_dir or default_data_dir()) / RABBIT_FILE
        if path.exists():
            print(f"Using the cached {path}")
        else:
            print(f"Downloading {RABBIT_FILE} (43 MiB) from {settings.rabbit_url}")
            download(settings.rabbit_url, path, timeout=settings.timeout, retries=settings.retries)
        images = validate_rabbits(path, settings.rabbit_sha256)
        print(f"rabbit.npz: {len(images)} images, SHA-256 {sha256_of(path)[:16]}...")
        if settings.n_images:
            images = images[: settings.n_images]
    if settings.n_images and len(images) < settings.n_images:
        print(f"Note: {N_IMAGES_VAR}={settings.n_images}, but only {len(images)} images exist.")
    if settings.n_images:
        print(f"Using the first {len(images)} images ({N_IMAGES_VAR}={settings.n_images}).")
    return images


# ----------------------------------------------------------------------------- model

def load_resnet50(settings: Settings | None = None):
    """torchvision's ResNet50 with the pinned IMAGENET1K_V1 weights (or, offline, seeded random ones).

    The model comes back exactly as torchvision builds it: on the CPU and in *train*
    mode. Choosing the mode is part of the lab.
    """
    import torch
    from torchvision import models

    settings = settings or Settings.from_env()
    if settings.offline:
        torch.manual_seed(SEED)
        model = models.resnet50(weights=None)
        print(f"OFFLINE MODE: ResNet50 with random weights (torch seed {SEED}), not ImageNet's.")
    else:
        weights = models.ResNet50_Weights[WEIGHTS_NAME]
        model = models.resnet50(weights=weights)
        print(f"ResNet50 with pretrained weights ResNet50_Weights.{WEIGHTS_NAME} "
              f"(ImageNet top-1 {weights.meta['_metrics']['ImageNet-1K']['acc@1']}%).")
    return model


def batchnorm_snapshot(model) -> dict:
    """Copies of every BatchNorm running statistic, to tell later whether they moved."""
    return {name: value.detach().clone() for name, value in model.state_dict().items()
            if name.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def batchnorm_changes(model, snapshot: dict) -> list[str]:
    """Names of the BatchNorm statistics that differ from `snapshot`."""
    state = model.state_dict()
    return [name for name, before in snapshot.items()
            if not (state[name].cpu() == before.cpu()).all()]


def reference_split(model, layers: int = 8):
    """The split the lab asks for: g = the first `layers` children (8: up to layer4, 7: up to
    layer3); h = the rest (layer4 when cut after layer3), pooling, flatten, model.fc."""
    from torch import nn

    children = list(model.children())
    return (nn.Sequential(*children[:layers]),
            nn.Sequential(*children[layers:8], model.avgpool, nn.Flatten(), model.fc))


def split_problem(model, g, h, layers: int = 8) -> str | None:
    """Why (g, h) is not a valid split of model after `layers` children, or None when g is those
    children and h(g(x)) == model(x)."""
    import copy

    import torch

    if g is None or h is None:
        return "g or h is not defined"
    try:
        model_c, g_c, h_c = copy.deepcopy((model, g, h))
        for module in (model_c, g_c, h_c):
            module.eval()
        ref_g, _ = reference_split(model_c, layers)
        device = next(model_c.parameters()).device
        side = 256 if layers == 8 else 128
        probe = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(SEED)).to(device)
        with torch.no_grad():
            latent, expected = g_c(probe), ref_g(probe)
            if latent.shape != expected.shape or not torch.equal(latent, expected):
                return f"g(x) has shape {tuple(latent.shape)} or values unlike the first {layers} children"
            gap = (h_c(expected) - model_c(probe)).abs().max().item()
    except Exception as exc:  # a broken answer: any error means "not valid"
        return f"{type(exc).__name__}: {exc}"
    return None if gap < 1e-4 else f"h(g(x)) differs from model(x) by up to {gap:.3g}"


def continue_with_valid_split(model, g, h, layers: int = 8):
    """Return the (g, h) the rest of the notebook should use.

    Under nbgrader autograde, a wrong split is replaced by the reference one, so that
    each later task is graded on its own and a mistake in the split costs only its own
    points. Everywhere else your split is kept as it is, with a warning if it is wrong.
    """
    names = ("g", "h") if layers == 8 else (f"g{layers - 4}", f"h{layers - 4}")
    problem = split_problem(model, g, h, layers)
    if problem is None:
        print(f"Split OK: {names[1]}({names[0]}(x)) == model(x).")
        return g, h
    if os.environ.get("NBGRADER_EXECUTION") == "autograde":
        print(f"Grader: your split is not valid ({problem}). The next tasks run with the "
              f"reference {names[0]} and {names[1]}, so they are graded on their own; this task keeps its score.")
        return reference_split(model, layers)
    print(f"WARNING: your split is not valid ({problem}). Fix it before going on: "
          "the next steps would explain the wrong function.")
    return g, h


# ----------------------------------------------------------------------------- records

class Recorder:
    """Watches CraftTorch while the notebook runs: progress output and facts for the checks.

    - prints progress during fit() and estimate_importance(), which run for minutes;
    - records the state of numpy's global random generator when fit() starts
      (its NMF has no random_state of its own: seeding is what makes W repeatable);
    - records which plot methods were called, and whether their images were CPU tensors.
    """

    PLOTS = ("plot_image_concepts", "plot_concepts_importances",
             "plot_concepts_crops", "plot_concept_attribution_maps")

    def __init__(self, every_s: float = 10.0):
        self.every_s = every_s
        self.fit_rng_states: list = []
        self.plot_calls: list[tuple[str, bool, int]] = []  # (method, images on CPU, how many)

    def fit_was_seeded_with(self, seed: int = SEED) -> bool:
        if not self.fit_rng_states:
            return False
        expected = np.random.RandomState(seed).get_state()
        got = self.fit_rng_states[-1]
        return got[0] == expected[0] and np.array_equal(got[1], expected[1]) and got[2:] == expected[2:]

    def plotted(self, name: str) -> bool:
        return any(call[0] == name for call in self.plot_calls)

    def images_plotted(self, name: str) -> int:
        """The most images passed in one call of plot method `name` (0 if never called)."""
        return max((call[2] for call in self.plot_calls if call[0] == name), default=0)

    def _progress(self, label: str, total: int, unit: str):
        state = {"done": 0, "shown": time.monotonic(), "start": time.monotonic()}

        def hook(module, inputs, output):
            state["done"] += len(inputs[0])
            now = time.monotonic()
            if now - state["shown"] >= self.every_s or state["done"] >= total:
                state["shown"] = now
                pct = 100 * min(state["done"], total) / max(total, 1)
                print(f"  {label}: {min(state['done'], total)}/{total} {unit} ({pct:.0f}%), "
                      f"{now - state['start']:.0f} s", flush=True)
        return hook

    def attach(self, craft_class) -> "Recorder":
        recorder = self
        original_fit = craft_class.fit
        original_importance = craft_class.estimate_importance

        def fit(self, inputs, class_id=0):
            recorder.fit_rng_states.append(np.random.get_state())
            side = inputs.shape[-1]
            stride = int(self.patch_size * 0.80)
            per_side = (side - self.patch_size) // stride + 1
            total = len(inputs) * per_side * per_side
            print(f"CRAFT fit: {total} crops of {self.patch_size}x{self.patch_size} through g, then NMF "
                  f"into {self.number_of_concepts} concepts")
            handle = self.input_to_latent_model.register_forward_hook(
                recorder._progress("g on crops", total, "crops"))
            started = time.monotonic()
            try:
                return original_fit(self, inputs, class_id)
            finally:
                handle.remove()
                print(f"CRAFT fit done in {time.monotonic() - started:.0f} s")

        def estimate_importance(self, inputs=None, nb_design=32):
            n = len(self.factorization.inputs) if inputs is None else (
                1 if len(inputs.shape) == 3 else len(inputs))
            per_image = nb_design * (self.number_of_concepts + 2)
            handle = self.latent_to_logit_model.register_forward_hook(
                recorder._progress("h on perturbed concepts", n * per_image, "evaluations"))
            started = time.monotonic()
            try:
                return original_importance(self, inputs, nb_design)
            finally:
                handle.remove()
                print(f"Sobol importances for {n} image(s) done in {time.monotonic() - started:.0f} s")

        craft_class.fit = fit
        craft_class.estimate_importance = estimate_importance
        for name in self.PLOTS:
            craft_class_method = getattr(craft_class, name)
            setattr(craft_class, name, self._record_plot(name, craft_class_method))
        return self

    def _record_plot(self, name, method):
        recorder = self

        def wrapper(self, *args, **kwargs):
            images = args[0] if args else kwargs.get("img", kwargs.get("images"))
            on_cpu = getattr(getattr(images, "device", None), "type", "cpu") == "cpu"
            shape = getattr(images, "shape", ())
            count = 0 if images is None else (shape[0] if len(shape) == 4 else 1)
            recorder.plot_calls.append((name, on_cpu, count))
            return method(self, *args, **kwargs)

        wrapper.__name__ = name
        wrapper.__doc__ = method.__doc__
        return wrapper


def instrument(craft_class) -> Recorder:
    """Attach a Recorder to the CraftTorch class (idempotent per kernel)."""
    existing = getattr(craft_class, "_craft_lab_recorder", None)
    if existing is not None:
        return existing
    recorder = Recorder().attach(craft_class)
    craft_class._craft_lab_recorder = recorder
    return recorder
