"""What the CRAFT lab's task modules share: the context a rule sees, checks, comparisons, and the
trusted arithmetic done in the worker (numpy and PIL only: no student code, no kernel).

A rule (tasks/*.py) reads the student's evidence `c.s`, the reference run's `c.r`, what replays
recomputed from the student's own data `c.x`, and the figures the notebooks displayed; it returns
a Verdict of Checks whose Basis says what each one compared with (grader/verdicts.py).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from grader.evidence import ERROR_PREFIX
from grader.evidence import Displayed as Shown
from grader.verdicts import Basis, Check, Verdict

from . import kernel

REFERENCE, RECOMPUTED, SHOWN, OWN, KERNEL = (Basis.REFERENCE, Basis.RECOMPUTED, Basis.SHOWN, Basis.OWN,
                                             Basis.KERNEL)

# The lab's constants, as the notebook and craftlab.py set them (tests keep them equal). The
# grader uses these, never the kernel's, which an answer cell could rebind.
SEED = 0                       # craftlab.SEED: np.random.seed(SEED) before each fit
RABBIT_CLASS = 330             # craftlab.RABBIT_CLASS
N_SUB = 3                      # sub-concepts per parent concept (gf_recursion_setup)
MIN_SUB_CROPS = 6              # crops selected at least (gf_recursion_setup)
TRANSFORM_SIDE = 256           # Resize(256) + CenterCrop(256)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# Tolerances. The hidden tests' own limits where they have one. Two processes running the same
# code on the same inputs with the same thread counts give bitwise equal results (measured); a
# comparison across processes gets SAME x scale on top of the hidden test's limit. A wrong
# answer is >= 1e-2 of the scale off (most are O(1)). NMF is chaotic (a 1e-6 change of its input
# moves U by up to 47%), so its factors are compared only with a computation from bitwise the
# same inputs and thread counts: the reference run's when the student's inputs are those, else
# a replay's on the student's own.
SAME = 1e-4                    # relative to max |expected|: "the same computation"
G_ATOL = 1e-5                  # g3 vs the first 7 children (hidden: allclose atol 1e-5)
LOGIT_GAP = 1e-4               # h(g(x)) vs model(x), hidden tests of check_h and gf_check_split3
TRANSFORM_GAP = 1e-3           # transform(img) vs PIL bilinear + Normalize, hidden check_transform
PREPROCESS = dict(rtol=1e-5, atol=1e-8)   # torch.allclose defaults, hidden check_preprocess
NMF_REL = 1e-3                 # U, W vs the expected ones, relative to max |expected|
IMPORTANCE_REL = 1e-3          # Sobol indices: rtol and atol (x max |expected|), hidden gf_check_local
SENSITIVITY = dict(rtol=1e-5, atol=1e-8)  # np.allclose defaults: importances vs craft.sensitivity
CURVE = dict(rtol=1e-3, atol=1e-3)        # deletion curves, hidden gf_check_deletion/_random
CURVE_ENDS = 1e-3              # all-deleted value, and spread of the random curves' ends (visible)
AUC = dict(rtol=1e-6, atol=1e-6)          # hidden gf_check_auc
AUC_RANGE = 1e-6               # visible gf_check_auc
RESIZE_ATOL = 1e-5             # sub_crops vs bilinear resize of crops[sub_idx], hidden gf_check_recursion_fit
FIGURE_MEAN_GAP = 1.0          # figures: mean |pixel difference| (0-255) for "the same figure"
FIGURE_FAR = 0.005             # ... and at most this share of pixels off by more than FIGURE_FAR_GAP
FIGURE_FAR_GAP = 48


# ----------------------------------------------------------------------------- evidence access

class Missing(LookupError):
    """A value a check needs was not captured, or not recomputed (the reason is in the message)."""


class Run:
    """One source of values by name: a student's evidence, the reference's, or replayed values."""

    def __init__(self, arrays: dict[str, np.ndarray], who: str):
        self.arrays, self.who = arrays, who

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            error = self.arrays.get(ERROR_PREFIX + name)
            if error is None and "." in name:
                error = self.arrays.get(ERROR_PREFIX + name.split(".", 1)[0])
            raise Missing(f"{self.who} {name}" + (f" ({error})" if error is not None else ""))
        return self.arrays[name]

    def has(self, name: str) -> bool:
        return name in self.arrays


@dataclass
class Ctx:
    s: Run                                             # the student's evidence
    r: Run                                             # the reference run's
    x: Run = field(default_factory=lambda: Run({}, "recomputed"))  # replays on the student's data
    shown: dict[str, Shown] = field(default_factory=dict)          # the student's notebook, by cell
    ref_shown: dict[str, Shown] = field(default_factory=dict)      # the reference's notebook, by cell
    x_figures: dict[str, list[bytes]] = field(default_factory=dict)  # figures replays drew, by request
    seed: int = 0                                      # the batch's secret probe seed
    verdicts: dict[str, Verdict] = field(default_factory=dict)     # decided so far, in notebook order


Outcome = bool | tuple


def check(name: str, visible: bool, basis: Basis, test: Callable[[], Outcome]) -> Check:
    """Run one test; a missing or malformed value fails it, with the reason."""
    try:
        outcome = test()
    except Missing as exc:
        return Check(name, False, visible, basis, f"missing: {exc}")
    except Exception as exc:  # a malformed value: wrong shape, dtype, type
        return Check(name, False, visible, basis, f"unusable: {type(exc).__name__}: {exc}"[:300])
    ok, detail = outcome if isinstance(outcome, tuple) else (outcome, "")
    return Check(name, bool(ok), visible, basis, detail)


def holds(test: Callable[[], Outcome]) -> tuple[bool, str]:
    """A predicate over values, False (with why) when it cannot be evaluated."""
    try:
        outcome = test()
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return outcome if isinstance(outcome, tuple) else (outcome, "")


def passed(c: Ctx, grade_id: str) -> bool:
    verdict = c.verdicts.get(grade_id)
    return bool(verdict and verdict.passed)


# ----------------------------------------------------------------------------- comparisons

def show(value) -> str:
    value = np.asarray(value)
    if value.dtype.kind == "U":
        text = str(value.tolist())
        return text if len(text) <= 80 else text[:77] + "..."
    return str(value.tolist()) if value.size <= 12 else f"array{value.shape}"


def equal(got, expected, what: str) -> tuple[bool, str]:
    got, expected = np.asarray(got), np.asarray(expected)
    return bool(got.shape == expected.shape and np.array_equal(got, expected)), \
        f"{what}: {show(got)}, expected {show(expected)}"


def identical(got, expected) -> bool:
    """Bitwise the same values (what a chaotic computation such as NMF needs to repeat itself)."""
    got, expected = np.asarray(got), np.asarray(expected)
    return got.shape == expected.shape and got.dtype == expected.dtype and np.array_equal(got, expected)


def true(value, what: str) -> tuple[bool, str]:
    return bool(np.asarray(value).shape == () and bool(value)), f"{what}: {show(value)}"


def max_gap(got, expected) -> float:
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape:
        raise ValueError(f"shape {got.shape}, expected {expected.shape}")
    return float(np.abs(got - expected).max()) if got.size else 0.0


def gap_below(got, expected, limit: float, what: str) -> tuple[bool, str]:
    gap = max_gap(got, expected)
    return gap < limit, f"{what}: max gap {gap:.3g} (limit {limit:.3g})"


def close(got, expected, what: str, rtol: float, atol: float) -> tuple[bool, str]:
    gap = max_gap(got, expected)
    ok = bool(np.allclose(np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                          rtol=rtol, atol=atol))
    return ok, f"{what}: max gap {gap:.3g} (rtol {rtol:g}, atol {atol:.3g})"


def same(got, expected, rel: float = SAME) -> bool:
    """Equal to the expected values up to `rel` of their scale (shapes must match)."""
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        return False
    if expected.dtype.kind in "biuU" or got.dtype.kind in "bU":
        return bool(np.array_equal(got, expected))
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    return max_gap(got, expected) <= rel * max(scale, 1e-30)


def same_as(got, expected, what: str, rel: float = SAME) -> tuple[bool, str]:
    return same(got, expected, rel), f"{what}: max gap {max_gap(got, expected):.3g} (limit {rel:g} x scale)"


def with_scale(limit: float, expected) -> float:
    """A hidden test's limit plus SAME x scale: the expectation was computed in another process."""
    return limit + SAME * float(np.abs(np.asarray(expected, dtype=np.float64)).max())


def finite(value, what: str) -> tuple[bool, str]:
    value = np.asarray(value)
    return bool(value.dtype.kind in "biuf" and np.isfinite(value).all()), f"{what} finite"


def is_permutation(order, r: int, what: str) -> tuple[bool, str]:
    order = np.asarray(order)
    ok = order.ndim == 1 and order.dtype.kind in "iu" and sorted(order.tolist()) == list(range(r))
    return ok, f"{what}: {show(order)}, expected each of 0..{r - 1} once"


def decreasing(values, order, what: str, tolerance: float = 0.0) -> tuple[bool, str]:
    ranked = np.asarray(values, dtype=np.float64)[np.asarray(order, dtype=int)]
    return bool(np.all(np.diff(ranked) <= tolerance)), f"{what}: {show(ranked)}"


def importance_close(got, expected, what: str) -> tuple[bool, str]:
    scale = float(np.abs(np.asarray(expected, dtype=np.float64)).max())
    return close(got, expected, what, rtol=IMPORTANCE_REL, atol=IMPORTANCE_REL * scale)


def seeded_state(seed: int = SEED) -> np.ndarray:
    """numpy's global generator state right after np.random.seed(seed), as the captures send it."""
    state = np.random.RandomState(seed).get_state()
    return np.concatenate([np.asarray(state[1], dtype=np.int64), np.asarray(state[2:4], dtype=np.int64)])


def seeded(state) -> tuple[bool, str]:
    ok = same(state, seeded_state())
    return ok, f"numpy's state when fit started is{'' if ok else ' not'} np.random.seed({SEED})'s (kit recorder)"


def expected_from(c: Ctx, reference_same: bool, name: str, replayed: str):
    """The trusted expectation: the reference run's `name` when the student's inputs were the
    reference's, else the replay's `replayed` value on the student's own inputs. (value, basis)."""
    return (c.r(name), REFERENCE) if reference_same else (c.x(replayed), RECOMPUTED)


# ----------------------------------------------------------------------------- trusted arithmetic

def transform_expected(images: np.ndarray) -> np.ndarray:
    """What hidden check_transform compares with: PIL bilinear resize to 256x256, /255, ImageNet Normalize."""
    from PIL import Image

    out = []
    for img in np.asarray(images):
        pil = Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)).resize(
            (TRANSFORM_SIDE, TRANSFORM_SIDE), Image.BILINEAR)
        x = np.asarray(pil, dtype=np.float32) / np.float32(255)
        out.append(((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))
    return np.stack(out)


def secret_images(seed: int) -> np.ndarray:
    return kernel.secret_images_array(seed)


def crops_of(images: np.ndarray, patch: int) -> np.ndarray:
    """CraftTorch's crops: windows of `patch` pixels, stride int(0.8 * patch), image by image,
    row by row (torch.nn.functional.unfold's order)."""
    images = np.asarray(images)
    n, channels, side = images.shape[0], images.shape[1], images.shape[-1]
    stride = int(0.8 * patch)
    starts = range(0, side - patch + 1, stride)
    return np.stack([images[i, :, y:y + patch, x:x + patch] for i in range(n) for y in starts for x in starts]) \
        .reshape(-1, channels, patch, patch)


def n_crops(n_images: int, side: int, patch: int) -> int:
    return n_images * ((side - patch) // int(0.8 * patch) + 1) ** 2


def resize_bilinear(x, side: int) -> np.ndarray:
    """torch.nn.functional.interpolate(x, size=side, mode="bilinear", align_corners=False) on
    (..., H, W) arrays, in numpy: how CraftTorch resizes crops, and how Task G4 resizes them."""
    x = np.asarray(x, dtype=np.float64)

    def taps(n_in: int):
        src = np.maximum((np.arange(side) + 0.5) * (n_in / side) - 0.5, 0.0)
        low = np.minimum(np.floor(src).astype(int), n_in - 1)
        return low, np.minimum(low + 1, n_in - 1), src - low
    r0, r1, rw = taps(x.shape[-2])
    c0, c1, cw = taps(x.shape[-1])
    rows = x[..., r0, :] * (1 - rw)[:, None] + x[..., r1, :] * rw[:, None]
    return rows[..., c0] * (1 - cw) + rows[..., c1] * cw


def deletion_curve(u: np.ndarray, w: np.ndarray, order, fc_w: np.ndarray, fc_b) -> np.ndarray:
    """curve[k]: class logit averaged over the images with the first k concepts of order deleted.

    h is avgpool -> flatten -> model.fc (linear), so the logit of U.W is
    mean_xy(U) . (W @ fc_w) + fc_b, and deleting a concept removes its term.
    """
    u = np.asarray(u, dtype=np.float64)
    terms = u.reshape(-1, u.shape[-1]).mean(axis=0) * (np.asarray(w, np.float64) @ np.asarray(fc_w, np.float64))
    order = np.asarray(order, dtype=int)
    kept = np.ones(len(terms), dtype=bool)
    curve = [terms.sum()]
    for concept in order:
        kept[concept] = False
        curve.append(terms[kept].sum())
    return np.asarray(curve) + float(fc_b)


def random_orders(r: int, count: int) -> np.ndarray:
    """The orders gf_deletion_setup draws: np.random.default_rng(SEED).permutation(r), count times."""
    rng = np.random.default_rng(SEED)
    return np.stack([rng.permutation(r) for _ in range(count)])


def recursion_selection(u, importances, min_crops: int = MIN_SUB_CROPS) -> tuple[int, np.ndarray]:
    """Task G4's parent concept and sub_idx: the crops the most important concept dominates,
    by decreasing coefficient, then the others by decreasing coefficient, `min_crops` at least."""
    u = np.asarray(u, dtype=np.float64)
    parent = int(np.argmax(np.asarray(importances)))
    dominated = u.argmax(axis=1) == parent
    ranked = np.lexsort((-u[:, parent], ~dominated))
    return parent, ranked[:max(int(dominated.sum()), min_crops)]


# ----------------------------------------------------------------------------- figures

def pixels(png: bytes) -> np.ndarray:
    """A PNG as an RGB float array over white (what a reader sees)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        if image.width * image.height > 40_000_000:
            raise ValueError(f"{image.width}x{image.height} pixels: too large for a figure")
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
    alpha = rgba[..., 3:] / 255.0
    return rgba[..., :3] * alpha + 255.0 * (1 - alpha)


def same_figure(got: bytes, expected: bytes) -> bool:
    """The same picture, up to a few pixels of rendering noise: same size, almost every pixel equal."""
    try:
        a, b = pixels(got), pixels(expected)
    except Exception:
        return False
    if a.shape != b.shape:
        return False
    gap = np.abs(a - b).max(axis=-1)
    return float(gap.mean()) <= FIGURE_MEAN_GAP and float((gap > FIGURE_FAR_GAP).mean()) <= FIGURE_FAR


def figures_match(got: list[bytes], expected: list[bytes], what: str) -> tuple[bool, str]:
    """Every expected figure is among the displayed ones (each displayed figure counts once)."""
    if not expected:
        raise Missing(f"no expected figure for {what}")
    left, unmatched = list(got), 0
    for want in expected:
        hit = next((i for i, png in enumerate(left) if same_figure(png, want)), None)
        if hit is None:
            unmatched += 1
        else:
            left.pop(hit)
    return unmatched == 0, (f"{what}: {len(expected) - unmatched} of {len(expected)} expected figures displayed "
                            f"({len(got)} figures in the cells)")
