"""What the CRAFT lab's kernels need from the engine: the lab's variables, the data they may read,
what is fetched once before an online batch, and the libraries worth importing ahead of time.

The lab's settings (offline mode, number of images, data folder, device) are defined once, in
its helper module craftlab.py (`Settings`, `VARIABLES`); this module hands them to the engine.
"""
from __future__ import annotations

import sys
from pathlib import Path

SUPPORT_FILES = ("craftlab.py",)   # from the source folder, into every kernel's working folder
MIN_IMAGES = 2                     # CRAFT's NMF needs at least as many crops (9 per image) as concepts (10)
# Imported once by the batch's zygote (warm kernels): what the lab's set-up cell imports.
PRELOAD = ("numpy", "torch", "torch.nn", "torchvision", "torchvision.models", "torchvision.transforms",
           "tensorflow", "xplique", "xplique.concepts", "sklearn.decomposition", "matplotlib",
           "matplotlib.pyplot", "PIL.Image")
LIBRARIES = "torch, TensorFlow and Xplique"   # what a cold kernel imports itself (said on screen)


def helper(source_dir: Path):
    """The lab's helper module, craftlab.py (kit code, not student code), from the source folder."""
    folder = str(source_dir)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import craftlab

    return craftlab


def variables(source_dir: Path) -> tuple[str, ...]:
    """The names of the lab's own variables: only the engine's values of them reach a kernel."""
    return helper(source_dir).VARIABLES


def kernel_env(source_dir: Path, data_dir: Path, *, online: bool, n_images: int, gpu: bool) -> dict[str, str]:
    """The lab's variables for a grading or recording kernel: offline unless `online` (then the
    images are cached in data_dir), n_images images, the device "cuda" on a (stand-in) GPU runtime."""
    craftlab = helper(source_dir)
    settings = craftlab.Settings(offline=not online, n_images=n_images, data_dir=data_dir if online else None,
                                 device="cuda" if gpu else None)
    return settings.to_env()


def read_only(source_dir: Path, environ) -> tuple[dict[str, str], dict[Path, Path]]:
    """(variables, read-only binds) a kernel needs besides the lab's settings: online, the images
    and the weights the batch fetched (a kernel has no network)."""
    from pathlib import Path as P

    settings = helper(source_dir).Settings.from_env(environ)
    if settings.offline:
        return {}, {}
    torch_home = P(environ.get("TORCH_HOME") or P.home() / ".cache" / "torch")
    return {"TORCH_HOME": str(torch_home)}, {settings.data_dir: settings.data_dir, torch_home: torch_home}


def describe(source_dir: Path, environ) -> str:
    settings = helper(source_dir).Settings.from_env(environ)
    return f"offline={settings.offline}, {settings.n_images} images"


def prefetch(source_dir: Path, environ, echo) -> None:
    """Online grading: download the images and the pretrained weights once, before the workers start."""
    craftlab = helper(source_dir)
    settings = craftlab.Settings.from_env(environ)
    echo(f"Online: caching rabbit.npz in {settings.data_dir} and the ResNet50 weights once...")
    try:
        craftlab.load_rabbits(settings)
        craftlab.load_resnet50(settings)
    except Exception as exc:
        raise SystemExit(f"Online grading needs the images and the weights, and getting them failed "
                         f"({type(exc).__name__}: {exc}). Fix the connection, or grade offline "
                         "(without --online).") from exc
