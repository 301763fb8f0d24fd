"""The trusted verifier: each graded cell's points from the artefacts of the student's run and
of a trusted reference run, never from a verdict of the student's kernel.

verify() mirrors what each graded cell's visible and hidden tests check, on the artefacts
grader/artefacts.py captures. Each Check says where its expectation comes from (`mode`):

  reference    the trusted reference run, same probe, same images, same environment;
  own          the student's own artefacts, with the arithmetic done here: used where an
               earlier answer differs from the reference ("no double penalty": later cells
               are judged on the student's own settings), and for properties that are
               relations between the student's values (shapes, orders, areas);
  kernel       a fact only the kernel can report (object identity, the kit's recorder,
               training flags): read as the kernel reported it;
  notebook     the executed notebook's outputs (figures shown).

`visible` says whether a visible test in the notebook checks the same property. decide()
turns verdicts into points (all or nothing per cell, as nbgrader does) and flags a cell whose
in-kernel score was full while a visible-level property fails here: possible tampering.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np

from . import artefacts
from .course import lab_module

REFERENCE, OWN, KERNEL, NOTEBOOK = "reference", "own", "kernel", "notebook"

SEED = lab_module().SEED       # np.random.seed(SEED) before each fit (the lab's seed, from craftlab)
TRANSFORM_SIDE = 256           # Resize(256) + CenterCrop(256)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PLOTS = ("plot_image_concepts", "plot_concepts_importances", "plot_concepts_crops",
         "plot_concept_attribution_maps")
PLOT_CELLS = ("answer_plot_image", "answer_plot_importances", "answer_plot_crops", "answer_plot_maps")
LOCAL_PLOT_CELLS = ("gf_answer_local", "gf_answer_local_plot")
MAX_MAP_IMAGES = 20

# Tolerances. The hidden tests' own limits where they have one. A comparison with the reference
# crosses two processes (student run, reference run) that run the same code on the same inputs:
# measured, they are bitwise equal when both use the same thread settings (the grader's rule),
# and differ by up to 1.3e-6 of the scale (g's activations; logits 3.4e-7) when one kernel runs
# torch with 1 thread and the other with 2. Such comparisons get SAME x scale on top of the
# hidden test's limit. A wrong answer is >= 1e-2 of the scale off (most are O(1)).
# NMF is chaotic: a 1e-6 change of its input moves U by up to 47% and W by 5% (measured,
# 1 vs 2 threads), so U and W are compared with the reference only when the student's kernel
# ran torch with the reference's thread count (*.threads), and otherwise judged on their own.
SAME = 1e-4                    # relative to max |reference|: "the same computation as the reference"
G_ATOL = 1e-5                  # g3 vs the first 7 children (hidden: allclose atol 1e-5; g: torch.equal)
LOGIT_GAP = 1e-4               # h(g(x)) vs model(x), hidden tests of check_h and gf_check_split3
TRANSFORM_GAP = 1e-3           # transform(img) vs PIL bilinear + Normalize, hidden check_transform
PREPROCESS = dict(rtol=1e-5, atol=1e-8)   # torch.allclose defaults, hidden check_preprocess
NMF_REL = 1e-3                 # U, W vs the reference's, relative to max |reference|: an unseeded fit is O(1) off
IMPORTANCE_REL = 1e-3          # Sobol indices: rtol and atol (x max |expected|), hidden gf_check_local
SENSITIVITY = dict(rtol=1e-5, atol=1e-8)  # np.allclose defaults: importances vs craft.sensitivity
CURVE = dict(rtol=1e-3, atol=1e-3)        # deletion curves, hidden gf_check_deletion/_random
CURVE_ENDS = 1e-3              # all-deleted value, and spread of the random curves' ends (visible)
AUC = dict(rtol=1e-6, atol=1e-6)          # hidden gf_check_auc
AUC_RANGE = 1e-6               # visible gf_check_auc
RESIZE_ATOL = 1e-5             # sub_crops vs bilinear resize of crops[sub_idx], hidden gf_check_recursion_fit

# Task G4's constants, as the locked cell gf_recursion_setup sets them (a test keeps them equal):
# the grader uses these, never the kernel's, which an answer cell could rebind.
N_SUB = 3                      # sub-concepts per parent concept
MIN_SUB_CROPS = 6              # crops selected at least


# ----------------------------------------------------------------------------- results

@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    visible: bool              # a visible test in the notebook checks the same property
    mode: str                  # REFERENCE, OWN, KERNEL or NOTEBOOK
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    grade_id: str
    checks: tuple[Check, ...]
    basis: str = ""            # what later values were compared with, when that was a choice

    @property
    def passed(self) -> bool:
        return all(check.ok for check in self.checks)

    def failed(self, visible: bool | None = None) -> list[Check]:
        return [c for c in self.checks if not c.ok and (visible is None or c.visible == visible)]

    def to_dict(self) -> dict:
        return {"grade_id": self.grade_id, "passed": self.passed, "basis": self.basis,
                "checks": [c.to_dict() for c in self.checks]}


@dataclass(frozen=True)
class Evidence:
    """A cell whose visible tests passed in the kernel while the same property fails here."""
    grade_id: str
    in_kernel: float
    checks: tuple[Check, ...]

    def summary(self) -> str:
        failed = "; ".join(f"{c.name} ({c.mode}): {c.detail}" for c in self.checks)
        return f"{self.grade_id}: passed in the kernel ({self.in_kernel:g} points), but {failed}"

    def to_dict(self) -> dict:
        return {"grade_id": self.grade_id, "in_kernel": self.in_kernel,
                "checks": [c.to_dict() for c in self.checks], "summary": self.summary()}


# ----------------------------------------------------------------------------- reading artefacts

class Missing(LookupError):
    """An artefact the check needs was not captured (the reason is in the message)."""


class UnknownArtefact(KeyError):
    """A name that artefacts.CAPTURE_POINTS does not declare: a bug in this module."""


class Run:
    """One run's artefacts, read by their declared names."""

    def __init__(self, arrays: dict[str, np.ndarray], who: str):
        self.arrays, self.who = arrays, who

    def __call__(self, name: str) -> np.ndarray:
        if name not in artefacts.NAMES:
            raise UnknownArtefact(name)
        if name not in self.arrays:
            error = self.arrays.get(artefacts.ERROR_PREFIX + name)
            raise Missing(f"{self.who} {name}" + (f" ({error})" if error is not None else ""))
        return self.arrays[name]


@dataclass
class Ctx:
    s: Run                     # the student's artefacts
    r: Run                     # the reference's
    plots: dict[str, artefacts.Shown] = field(default_factory=dict)  # the student's executed notebook


Outcome = bool | tuple  # ok, or (ok, detail)


def _check(name: str, visible: bool, mode: str, test: Callable[[], Outcome]) -> Check:
    """Run one test; a missing or malformed artefact fails it, with the reason."""
    try:
        outcome = test()
    except UnknownArtefact:
        raise
    except Missing as exc:
        return Check(name, False, visible, mode, f"missing: {exc}")
    except Exception as exc:  # a malformed artefact: wrong shape, dtype, type
        return Check(name, False, visible, mode, f"unusable: {type(exc).__name__}: {exc}"[:300])
    ok, detail = outcome if isinstance(outcome, tuple) else (outcome, "")
    return Check(name, bool(ok), visible, mode, detail)


def _holds(test: Callable[[], Outcome]) -> tuple[bool, str]:
    """A predicate over artefacts, False (with why) when it cannot be evaluated."""
    try:
        outcome = test()
    except UnknownArtefact:
        raise
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return (outcome if isinstance(outcome, tuple) else (outcome, ""))


# ----------------------------------------------------------------------------- comparisons

def _show(value) -> str:
    value = np.asarray(value)
    return str(value.tolist()) if value.size <= 12 else f"array{value.shape}"


def _equal(got, expected, what: str) -> tuple[bool, str]:
    got, expected = np.asarray(got), np.asarray(expected)
    return bool(got.shape == expected.shape and np.array_equal(got, expected)), \
        f"{what}: {_show(got)}, expected {_show(expected)}"


def _bn_unchanged(got, expected) -> tuple[bool, str]:
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        return False, f"{got.shape[0] if got.ndim else 0} BatchNorm statistics, expected {expected.shape[0]}"
    changed = int((got != expected).any(axis=-1).sum())
    return changed == 0, f"{changed} of {len(expected)} BatchNorm statistics differ from the model as loaded"


def _true(value, what: str) -> tuple[bool, str]:
    return bool(np.asarray(value).shape == () and bool(value)), f"{what}: {_show(value)}"


def _max_gap(got, expected) -> float:
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape:
        raise ValueError(f"shape {got.shape}, expected {expected.shape}")
    return float(np.abs(got - expected).max()) if got.size else 0.0


def _gap_below(got, expected, limit: float, what: str) -> tuple[bool, str]:
    gap = _max_gap(got, expected)
    return gap < limit, f"{what}: max gap {gap:.3g} (limit {limit:g})"


def _close(got, expected, what: str, rtol: float, atol: float) -> tuple[bool, str]:
    gap = _max_gap(got, expected)
    ok = bool(np.allclose(np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                          rtol=rtol, atol=atol))
    return ok, f"{what}: max gap {gap:.3g} (rtol {rtol:g}, atol {atol:.3g})"


def _same(got, expected, rel: float = SAME) -> bool:
    """Equal to the reference up to `rel` of its scale (shapes must match)."""
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        return False
    if expected.dtype.kind in "biuU":
        return bool(np.array_equal(got, expected))
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    return _max_gap(got, expected) <= rel * max(scale, 1e-30)


def _same_as(got, expected, what: str, rel: float = SAME) -> tuple[bool, str]:
    return _same(got, expected, rel), f"{what}: max gap {_max_gap(got, expected):.3g} (limit {rel:g} x scale)"


def _limit(limit: float, mode: str, expected) -> float:
    """A hidden test's limit, plus SAME x scale when the expectation comes from the other process."""
    if mode != REFERENCE:
        return limit
    return limit + SAME * float(np.abs(np.asarray(expected, dtype=np.float64)).max())


def _finite(value, what: str) -> tuple[bool, str]:
    value = np.asarray(value)
    return bool(value.dtype.kind in "biuf" and np.isfinite(value).all()), f"{what} finite"


def _is_permutation(order, r: int, what: str) -> tuple[bool, str]:
    order = np.asarray(order)
    ok = order.ndim == 1 and order.dtype.kind in "iu" and sorted(order.tolist()) == list(range(r))
    return ok, f"{what}: {_show(order)}, expected each of 0..{r - 1} once"


def _decreasing(values, order, what: str, tolerance: float = 0.0) -> tuple[bool, str]:
    ranked = np.asarray(values, dtype=np.float64)[np.asarray(order, dtype=int)]
    return bool(np.all(np.diff(ranked) <= tolerance)), f"{what}: {_show(ranked)}"


def _seeded(state) -> tuple[bool, str]:
    ok = _same(state, _seeded_state())
    return ok, f"numpy's state when fit started is{'' if ok else ' not'} np.random.seed({SEED})'s (kit recorder)"


def _n_crops(n_images: int, side: int, patch: int) -> int:
    return n_images * ((side - patch) // int(0.8 * patch) + 1) ** 2


def _crop_windows(rows: np.ndarray, patch: int) -> np.ndarray:
    """The first crop of image 0 and the last crop of image N-1 (CraftTorch's unfold order)."""
    side = rows.shape[-1]
    stride = int(0.8 * patch)
    last = ((side - patch) // stride) * stride
    return np.stack([rows[0][:, :patch, :patch], rows[-1][:, last:last + patch, last:last + patch]])


def _seeded_state(seed: int = SEED) -> np.ndarray:
    state = np.random.RandomState(seed).get_state()
    return np.concatenate([np.asarray(state[1], dtype=np.int64), np.asarray(state[2:4], dtype=np.int64)])


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


def deletion_curve(u: np.ndarray, w: np.ndarray, order, fc_w: np.ndarray, fc_b) -> np.ndarray:
    """curve[k]: class logit averaged over the images with the first k concepts of order deleted.

    h is avgpool -> flatten -> model.fc (linear), so the logit of U·W is
    mean_xy(U) · (W @ fc_w) + fc_b, and deleting a concept removes its term.
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


def recursion_selection(u, importances, min_crops: int = MIN_SUB_CROPS) -> tuple[int, np.ndarray]:
    """Task G4's parent concept and sub_idx: the crops the most important concept dominates,
    by decreasing coefficient, then the others by decreasing coefficient, `min_crops` at least."""
    u = np.asarray(u, dtype=np.float64)
    parent = int(np.argmax(np.asarray(importances)))
    dominated = u.argmax(axis=1) == parent
    ranked = np.lexsort((-u[:, parent], ~dominated))
    return parent, ranked[:max(int(dominated.sum()), min_crops)]


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


def random_orders(r: int, count: int) -> np.ndarray:
    """The orders gf_deletion_setup draws: np.random.default_rng(SEED).permutation(r), count times."""
    rng = np.random.default_rng(SEED)
    return np.stack([rng.permutation(r) for _ in range(count)])


# ----------------------------------------------------------------------------- same as the reference?

def _model_same(c: Ctx, group: str) -> tuple[bool, str]:
    return _holds(lambda: (_same(c.s(f"{group}.model"), c.r(f"{group}.model")),
                           "model(probe) differs from the reference's (the model was changed)"))


def _fit_inputs_same(c: Ctx, group: str, settings: Callable[[Run], tuple]) -> tuple[bool, str]:
    """Did this fit start from exactly what the reference's did (settings, images, model state, g)?"""
    def test():
        for label, got, expected, rel in (
                ("settings", settings(c.s), settings(c.r), 0),
                ("torch threads", c.s(f"{group}.threads"), c.r(f"{group}.threads"), 0),
                ("images_preprocessed", c.s("preprocess.rows"), c.r("preprocess.rows"), SAME),
                ("number of images", c.s("preprocess.shape"), c.r("preprocess.shape"), 0),
                ("BatchNorm statistics", c.s(f"{group}.bn"), c.r(f"{group}.bn"), 0),
                ("g's channels", c.s(f"{group}.channels"), c.r(f"{group}.channels"), 0)):
            if not _same(got, expected, rel):
                shown = (got, expected) if isinstance(got, tuple) else (_show(got), _show(expected))
                return False, f"{label} differ from the reference's: {shown[0]} vs {shown[1]}"
        return True, ""
    return _holds(test)


def _craft_settings(run: Run) -> tuple:
    return tuple(np.asarray(run(f"craft.{k}")).item() for k in ("concepts", "patch", "batch", "device"))


def _craft3_settings(run: Run) -> tuple:
    return (*np.asarray(run("fit3.settings")).tolist(), np.asarray(run("fit3.device")).item())


def _fit_same(c: Ctx) -> tuple[bool, str]:
    """craft's fit (and so U_images, importances, local importances) comparable with the reference?"""
    same, why = _fit_inputs_same(c, "fit", _craft_settings)
    if not same:
        return same, why
    return _holds(lambda: (_same(c.s("fit.u"), c.r("fit.u"), NMF_REL) and _same(c.s("fit.w"), c.r("fit.w"), NMF_REL),
                           "U or W differ from the reference's"))


def _basis(same: bool, why: str) -> tuple[str, str]:
    return (REFERENCE, "compared with the reference run") if same else (OWN, f"own values: {why}")


# ----------------------------------------------------------------------------- the graded cells

def check_eval(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    return Verdict("check_eval", (
        _check("model.training is False", True, KERNEL,
               lambda: _equal(s("eval.model_training"), False, "model.training")),
        _check("every sub-module in eval mode", True, KERNEL,
               lambda: _equal(s("eval.modules_training"), 0, "modules in training mode")),
        _check("BatchNorm statistics unchanged", False, REFERENCE,
               lambda: _bn_unchanged(s("eval.bn"), r("eval.bn"))),
    ))


def check_g(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    mode, basis = _basis(*_model_same(c, "split"))
    expected = (lambda: r("split.g")) if mode == REFERENCE else (lambda: s("split.first8"))
    return Verdict("check_g", (
        _check("g is a torch module", True, KERNEL,
               lambda: _true(s("split.g_is_module"), "isinstance(g, nn.Module)")),
        _check("g(x) shape", True, REFERENCE,
               lambda: _equal(s("split.g").shape, r("split.g").shape, "g(probe).shape")),
        _check("g equals the first 8 children", False, mode,
               lambda: _same_as(s("split.g"), expected(), "g(probe) vs the first 8 children",
                                SAME if mode == REFERENCE else 0.0)),
        _check("g(x) >= 0", False, OWN,
               lambda: (float(np.min(s("split.g"))) >= 0, f"min {float(np.min(s('split.g'))):.3g}")),
    ), basis)


def check_h(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    mode, basis = _basis(*_model_same(c, "split"))
    expected = (lambda: r("split.model")) if mode == REFERENCE else (lambda: s("split.model"))
    return Verdict("check_h", (
        _check("h is a torch module", True, KERNEL,
               lambda: _true(s("split.h_is_module"), "isinstance(h, nn.Module)")),
        _check("h(latent) shape", True, REFERENCE,
               lambda: _equal(s("split.h").shape, r("split.model").shape, "h(latent).shape")),
        _check("h(g(x)) == model(x)", False, mode, lambda: _gap_below(
            s("split.h"), expected(), _limit(LOGIT_GAP, mode, expected()), "logits")),
    ), basis)


def check_transform(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    same, why = _holds(lambda: (_same(s("transform.images"), r("transform.images")),
                                "images differ from the reference's"))
    mode, basis = _basis(same, why)
    return Verdict("check_transform", (
        _check("transform returns a tensor", True, KERNEL,
               lambda: _true(s("transform.is_tensor"), "is a torch.Tensor")),
        _check("transform(image) shape", True, REFERENCE,
               lambda: _equal(s("transform.shape"), r("transform.shape"), "shape")),
        _check("transform(image) dtype", True, REFERENCE,
               lambda: _equal(s("transform.dtype"), r("transform.dtype"), "dtype")),
        _check("Resize, CenterCrop, Normalize", False, mode,
               lambda: _gap_below(s("transform.out"), transform_expected(s("transform.images")), TRANSFORM_GAP,
                                  "transform(images[:3]) vs PIL + Normalize")),
    ), basis)


def check_preprocess(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    same, why = _holds(lambda: (_same(s("preprocess.transformed"), r("preprocess.transformed")),
                                "the transform differs from the reference's"))
    mode, basis = _basis(same, why)
    expected = (lambda: r("preprocess.rows")) if same else (lambda: s("preprocess.transformed"))

    def shape():
        want = (int(s("preprocess.n_images")), *s("preprocess.transformed").shape[1:])
        return _equal(s("preprocess.shape"), want, "images_preprocessed.shape")
    return Verdict("check_preprocess", (
        _check("one tensor", True, KERNEL, lambda: _true(s("preprocess.is_tensor"), "is a torch.Tensor")),
        _check("shape (N, *transform shape)", True, OWN, shape),
        _check("on the CPU", True, KERNEL, lambda: _equal(s("preprocess.device"), "cpu", "device")),
        _check("rows 0 and N-1 are transform(images[i])", False, mode,
               lambda: _close(s("preprocess.rows"), expected(), "rows 0, N-1", **PREPROCESS)),
    ), basis)


def check_craft(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    def setting(key: str, what: str) -> Check:
        return _check(what, True, REFERENCE, lambda: _equal(s(f"craft.{key}"), r(f"craft.{key}"), what))

    return Verdict("check_craft", (
        _check("a CraftTorch", True, KERNEL, lambda: _true(s("craft.is_craft"), "isinstance(craft, CraftTorch)")),
        setting("concepts", "number_of_concepts"),
        setting("patch", "patch_size"),
        setting("batch", "batch_size"),
        _check("device", True, REFERENCE,
               lambda: _equal(s("craft.device"), r("craft.kernel_device"), "craft.device")),
        _check("uses g", False, KERNEL, lambda: _true(s("craft.uses_g"), "input_to_latent_model is g")),
        _check("uses h", False, KERNEL, lambda: _true(s("craft.uses_h"), "latent_to_logit_model is h")),
    ))


def _fit_checks(c: Ctx, group: str, r_of: Callable[[], int], patch_of: Callable[[], int], exact: bool,
                u: str, w: str) -> list[Check]:
    """The checks check_fit and gf_check_fit3 share: shapes from the student's own settings,
    a seeded fit, the rabbit class, the right inputs, non-negative factors."""
    s, r = c.s, c.r

    def n_crops():
        shape = s("preprocess.shape")
        return _n_crops(int(shape[0]), int(shape[-1]), patch_of())

    checks = [
        _check("crops shape", True, OWN, lambda: _equal(
            s(f"{group}.crops_shape"), (n_crops(), 3, patch_of(), patch_of()), "crops.shape")),
        _check("U shape", True, OWN, lambda: _equal(s(u).shape, (n_crops(), r_of()), "U.shape")),
        _check("W shape", True, OWN, lambda: _equal(s(w).shape, (r_of(), int(s(f"{group}.channels"))), "W.shape")),
        _check("numpy seeded right before fit", True, KERNEL, lambda: _seeded(s(f"{group}.rng"))),
    ]
    if exact:
        checks.append(_check("U and W equal the reference's (seeded fit, same inputs)", True, REFERENCE, lambda: (
            _same(s(u), r(u), NMF_REL) and _same(s(w), r(w), NMF_REL),
            f"max gap U {_max_gap(s(u), r(u)):.3g}, W {_max_gap(s(w), r(w)):.3g} (limit {NMF_REL:g} x scale)")))
    checks += [
        _check("fitted for the rabbit class", False, REFERENCE,
               lambda: _equal(s(f"{group}.class_id"), r(f"{group}.class_id"), "class_id")),
        _check("fitted on images_preprocessed", False, OWN, lambda: (
            np.array_equal(s(f"{group}.crops_ends"), _crop_windows(s("preprocess.rows"), patch_of())),
            "first and last crops vs images_preprocessed[0], [N-1]")),
        _check("U and W non-negative", False, OWN, lambda: (
            bool((np.asarray(s(u)) >= 0).all() and (np.asarray(s(w)) >= 0).all()), "min of U and W")),
    ]
    return checks


def check_fit(c: Ctx) -> Verdict:
    s = c.s
    same, why = _fit_inputs_same(c, "fit", _craft_settings)
    _, basis = _basis(same, why)
    checks = _fit_checks(c, "fit", lambda: int(s("craft.concepts")), lambda: int(s("craft.patch")), same,
                         "fit.u", "fit.w")
    return Verdict("check_fit", tuple(checks), basis)


def check_model_untouched(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    return Verdict("check_model_untouched", (
        _check("model.training is False after the fit", True, KERNEL,
               lambda: _equal(s("fit.model_training"), False, "model.training")),
        _check("BatchNorm statistics unchanged by the fit", True, REFERENCE,
               lambda: _bn_unchanged(s("fit.bn"), r("fit.bn"))),
        _check("every sub-module in eval mode", False, KERNEL,
               lambda: _equal(s("fit.modules_training"), 0, "modules in training mode")),
    ))


def _importance_close(got, expected, what: str) -> tuple[bool, str]:
    scale = float(np.abs(np.asarray(expected, dtype=np.float64)).max())
    return _close(got, expected, what, rtol=IMPORTANCE_REL, atol=IMPORTANCE_REL * scale)


def check_importance(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    same, why = _fit_same(c)
    _, basis = _basis(same, why)
    checks = [
        _check("an ndarray", True, KERNEL,
               lambda: _true(s("importance.is_ndarray"), "isinstance(importances, np.ndarray)")),
        _check("one per concept", True, OWN, lambda: _equal(
            s("importance.value").shape, (int(s("importance.concepts")),), "importances.shape")),
        _check("finite", True, OWN, lambda: _finite(s("importance.value"), "importances")),
        _check("craft.sensitivity set", True, KERNEL,
               lambda: (s("importance.sensitivity") is not None, "craft.sensitivity.importances")),
        _check("the global importances of craft", False, OWN, lambda: _close(
            s("importance.value"), s("importance.sensitivity"), "importances vs craft.sensitivity", **SENSITIVITY)),
    ]
    if same:
        checks.append(_check("equal the reference's global importances", False, REFERENCE,
                             lambda: _importance_close(s("importance.value"), r("importance.value"), "importances")))
    return Verdict("check_importance", tuple(checks), basis)


def _calls_per_cell(c: Ctx, starts: tuple[str, ...], names: str) -> list[int]:
    """How many plot calls the kit's recorder saw during each cell, from its call count
    before the first cell and after each one (the last from the length of `names`)."""
    bounds = [int(c.s(name)) for name in starts] + [len(np.atleast_1d(c.s(names)))]
    if any(b < a for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"the recorder's call list shrank: {bounds}")
    return [b - a for a, b in zip(bounds, bounds[1:])]


def _figures_where_plotted(c: Ctx, cells: tuple[str, ...], starts: tuple[str, ...], names: str) -> tuple[bool, str]:
    """Every cell in which the recorder saw a plot call shows a figure, or stopped on an error
    (a call that raised is still a call to the visible test). Not one figure per call:
    plot_image_concepts calls plot_concepts_importances itself, and both are recorded."""
    calls = _calls_per_cell(c, starts, names)
    shown = [c.plots.get(cell, artefacts.Shown()) for cell in cells]
    bare = [f"{cell}: {n} plot calls, no figure, no error" for cell, n, out in zip(cells, calls, shown)
            if n and out.figures < 1 and not out.error]
    return not bare, "; ".join(bare) or f"plot calls per cell {calls}"


PLOT_STARTS = ("plots_start.calls", "plot_image.calls", "plot_importances.calls", "plot_crops.calls")
LOCAL_STARTS = ("local_start.calls", "local_answer.calls")


def check_plots(c: Ctx) -> Verdict:
    s = c.s
    names = lambda: [str(n) for n in np.atleast_1d(s("plots.names")).tolist()]  # noqa: E731

    def made_in_plot_cells():
        made = names()[int(s(PLOT_STARTS[0])):]
        missing = [p for p in PLOTS if p not in made]
        return not missing, f"not called in the plot cells: {missing}"

    def most_images(name):
        counts = np.atleast_1d(s("plots.counts")).tolist()
        return max((n for m, n in zip(names(), counts) if m == name), default=0)

    on_cpu = lambda: np.atleast_1d(s("plots.on_cpu")).astype(bool).tolist()  # noqa: E731
    expected_maps = lambda: min(MAX_MAP_IMAGES, int(s("plots.n_images")))  # noqa: E731
    return Verdict("check_plots", (
        _check("the four plot methods called", True, KERNEL, made_in_plot_cells),
        _check("images on the CPU", True, KERNEL, lambda: (all(on_cpu()), f"on CPU: {on_cpu()}")),
        _check("a figure where a plot was made", True, NOTEBOOK,
               lambda: _figures_where_plotted(c, PLOT_CELLS, PLOT_STARTS, "plots.names")),
        _check("attribution maps of the first 20 images", False, KERNEL, lambda: (
            most_images(PLOTS[3]) >= expected_maps(), f"{most_images(PLOTS[3])} images, expected {expected_maps()}")),
        _check("plot_image_concepts of one image", False, KERNEL,
               lambda: (most_images(PLOTS[0]) == 1, f"{most_images(PLOTS[0])} images")),
    ))


def gf_check_split3(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    mode, basis = _basis(*_model_same(c, "split3"))
    first7 = (lambda: r("split3.first7")) if mode == REFERENCE else (lambda: s("split3.first7"))
    model = (lambda: r("split3.model")) if mode == REFERENCE else (lambda: s("split3.model"))
    return Verdict("gf_check_split3", (
        _check("g3 and h3 are torch modules", True, KERNEL, lambda: _true(
            bool(s("split3.g_is_module")) and bool(s("split3.h_is_module")), "both nn.Module")),
        _check("g3(x) shape", True, REFERENCE,
               lambda: _equal(s("split3.g").shape, r("split3.g").shape, "g3(probe).shape")),
        _check("h3(g3(x)) shape", True, REFERENCE,
               lambda: _equal(s("split3.h").shape, r("split3.model").shape, "shape")),
        _check("g3 equals the first 7 children", False, mode,
               lambda: _gap_below(s("split3.g"), first7(), _limit(G_ATOL, mode, first7()),
                                  "g3(probe) vs the first 7 children")),
        _check("h3(g3(x)) == model(x)", False, mode, lambda: _gap_below(
            s("split3.h"), model(), _limit(LOGIT_GAP, mode, model()), "logits")),
    ), basis)


def gf_check_fit3(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    same, why = _fit_inputs_same(c, "fit3", _craft3_settings)
    same_g3, why_g3 = _holds(lambda: (_same(s("split3.g"), r("split3.g")), "g3 differs from the reference's"))
    exact = same and same_g3
    _, basis = _basis(exact, why if not same else why_g3)
    h3_valid, _ = _holds(lambda: _gap_below(s("split3.h"), s("split3.model"), LOGIT_GAP, ""))
    settings = lambda: np.asarray(s("fit3.settings")).tolist()  # noqa: E731
    checks = [
        _check("a CraftTorch", True, KERNEL, lambda: _true(s("fit3.is_craft"), "isinstance(craft3, CraftTorch)")),
        _check("a new CraftTorch", True, KERNEL, lambda: _true(s("fit3.distinct"), "craft3 is not craft")),
        _check("10 concepts, patch 80, batch 64", True, REFERENCE,
               lambda: _equal(s("fit3.settings"), r("fit3.settings"), "(concepts, patch, batch)")),
        *_fit_checks(c, "fit3", lambda: int(settings()[0]), lambda: int(settings()[1]), exact, "fit3.u", "fit3.w"),
        _check("importances3 an ndarray", True, KERNEL,
               lambda: _true(s("fit3.is_ndarray"), "isinstance(importances3, np.ndarray)")),
        _check("importances3 one per concept", True, OWN,
               lambda: _equal(s("fit3.importances").shape, (int(settings()[0]),), "importances3.shape")),
        _check("importances3 finite", True, OWN, lambda: _finite(s("fit3.importances"), "importances3")),
        _check("craft3.sensitivity set", True, KERNEL, lambda: (s("fit3.sensitivity") is not None, "")),
        _check("uses g3 and h3", False, KERNEL, lambda: _true(s("fit3.uses_split3"), "craft3 uses g3, h3")),
        _check("device", False, REFERENCE, lambda: _equal(s("fit3.device"), r("fit3.device"), "craft3.device")),
        _check("the global importances of craft3", False, OWN, lambda: _close(
            s("fit3.importances"), s("fit3.sensitivity"), "importances3 vs craft3.sensitivity", **SENSITIVITY)),
    ]
    if exact and h3_valid:
        checks.append(_check("importances3 equal the reference's", False, REFERENCE,
                             lambda: _importance_close(s("fit3.importances"), r("fit3.importances"), "importances3")))
    return Verdict("gf_check_fit3", tuple(checks), basis)


def gf_check_local(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    same, why = _fit_same(c)
    mode = REFERENCE if same else KERNEL
    basis = "compared with the reference run" if same else f"compared with the kernel's recomputation: {why}"
    expected = (lambda: r("local.value")) if same else (lambda: s("local.expected"))
    tolerance = lambda: IMPORTANCE_REL * float(np.abs(expected()).max())  # noqa: E731
    r_of = lambda: int(s("local.concepts"))  # noqa: E731
    return Verdict("gf_check_local", (
        _check("an ndarray", True, KERNEL,
               lambda: _true(s("local.is_ndarray"), "isinstance(local_importances, np.ndarray)")),
        _check("one per concept", True, OWN,
               lambda: _equal(s("local.value").shape, (r_of(),), "local_importances.shape")),
        _check("finite", True, OWN, lambda: _finite(s("local.value"), "local_importances")),
        _check("local_order a permutation", True, OWN,
               lambda: _is_permutation(s("local.order"), r_of(), "local_order")),
        _check("local_order most important first", True, OWN,
               lambda: _decreasing(s("local.value"), s("local.order"), "local_importances[local_order]")),
        _check("plot_image_concepts called after", True, KERNEL, lambda: (
            PLOTS[0] in [str(n) for n in np.atleast_1d(s("local.names")).tolist()[int(s(LOCAL_STARTS[0])):]],
            "plots made after gf_local_before")),
        _check("a figure where a plot was made", True, NOTEBOOK,
               lambda: _figures_where_plotted(c, LOCAL_PLOT_CELLS, LOCAL_STARTS, "local.names")),
        _check("the importances of image 0", False, mode,
               lambda: _importance_close(s("local.value"), expected(), "local_importances")),
        _check("local_order ranks image 0's importances", False, mode,
               lambda: _decreasing(expected(), s("local.order"), "expected[local_order]", tolerance())),
    ), basis)


def _deletion_basis(c: Ctx):
    """U_images, W and the classifier row the curves are recomputed from, and the mode."""
    same, why = _fit_same(c)
    if same:
        same, why = _holds(lambda: (_same(c.s("setup.u_images"), c.r("setup.u_images"), NMF_REL),
                                    "U_images differ from the reference's"))
    run = c.r if same else c.s
    mode, basis = _basis(same, why)
    inputs = lambda: (run("setup.u_images"), run("deletion.w"), c.r("split.fc_w"), c.r("split.fc_b"))  # noqa: E731
    return inputs, mode, basis


def gf_check_deletion(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    inputs, mode, basis = _deletion_basis(c)
    r_of = lambda: int(s("deletion.concepts"))  # noqa: E731
    return Verdict("gf_check_deletion", (
        _check("deletion_order a permutation", True, OWN,
               lambda: _is_permutation(s("deletion.order"), r_of(), "deletion_order")),
        _check("r + 1 points", True, OWN,
               lambda: _equal(np.shape(s("deletion.curve")), (r_of() + 1,), "deletion_curve.shape")),
        _check("finite", True, OWN, lambda: _finite(s("deletion.curve"), "deletion_curve")),
        _check("everything deleted gives h(0)", True, REFERENCE, lambda: _gap_below(
            s("deletion.curve")[-1], r("split.fc_b"), CURVE_ENDS, "deletion_curve[-1] vs fc bias")),
        _check("order of decreasing importance", False, OWN,
               lambda: _decreasing(s("deletion.importances"), s("deletion.order"), "importances[deletion_order]")),
        _check("the deletion curve of deletion_order", False, mode, lambda: _close(
            s("deletion.curve"), deletion_curve(*inputs()[:2], s("deletion.order"), *inputs()[2:]),
            "deletion_curve vs recomputed", **CURVE)),
    ), basis)


def gf_check_random(c: Ctx) -> Verdict:
    s = c.s
    inputs, mode, basis = _deletion_basis(c)
    r_of = lambda: int(s("deletion.concepts"))  # noqa: E731
    curves = lambda: np.asarray(s("deletion.random_curves"), dtype=np.float64)  # noqa: E731

    def expected():
        u, w, fc_w, fc_b = inputs()
        return np.stack([deletion_curve(u, w, order, fc_w, fc_b)
                         for order in random_orders(r_of(), len(s("setup.random_orders")))])
    return Verdict("gf_check_random", (
        _check("one curve per random order", True, OWN, lambda: _equal(
            np.shape(s("deletion.random_curves")), (len(s("setup.random_orders")), r_of() + 1),
            "random_curves.shape")),
        _check("finite", True, OWN, lambda: _finite(s("deletion.random_curves"), "random_curves")),
        _check("same start and same end", True, OWN, lambda: (
            np.ptp(curves()[:, 0]) < CURVE_ENDS and np.ptp(curves()[:, -1]) < CURVE_ENDS,
            f"spread of starts {np.ptp(curves()[:, 0]):.3g}, ends {np.ptp(curves()[:, -1]):.3g}")),
        _check("the curves of random_orders, in order", False, mode,
               lambda: _close(curves(), expected(), "random_curves vs recomputed", **CURVE)),
    ), basis)


def gf_check_auc(c: Ctx) -> Verdict:
    s = c.s
    r_of = lambda: int(s("deletion.concepts"))  # noqa: E731

    def in_range(value, curves, what):
        value, curves = np.asarray(value), np.atleast_2d(np.asarray(curves, dtype=np.float64))
        ok = value.ndim == 0 and np.isfinite(value) and curves.min() - AUC_RANGE <= value <= curves.max() + AUC_RANGE
        return bool(ok), f"{what} = {_show(value)}, curve range [{curves.min():.4g}, {curves.max():.4g}]"

    def area(curves):
        return np.trapezoid(np.asarray(curves, dtype=np.float64), dx=1 / r_of(), axis=-1)
    return Verdict("gf_check_auc", (
        _check("auc_importance a number within its curve", True, OWN,
               lambda: in_range(s("deletion.auc_importance"), s("deletion.curve"), "auc_importance")),
        _check("auc_random a number within its curves", True, OWN,
               lambda: in_range(s("deletion.auc_random"), s("deletion.random_curves"), "auc_random")),
        _check("auc_importance = trapezoid(dx = 1/r)", False, OWN, lambda: _close(
            s("deletion.auc_importance"), area(s("deletion.curve")), "auc_importance", **AUC)),
        _check("auc_random = mean of the areas", False, OWN, lambda: _close(
            s("deletion.auc_random"), area(s("deletion.random_curves")).mean(), "auc_random", **AUC)),
    ))


def gf_check_recursion_select(c: Ctx) -> Verdict:
    """Judged on the student's own U and importances (an earlier difference is not counted twice)."""
    s = c.s
    chosen = lambda: np.asarray(s("rec_select.sub_idx"))  # noqa: E731
    expected = lambda: recursion_selection(s("rec_select.u"), s("rec_select.importances"))  # noqa: E731

    def indices():
        idx = chosen()
        ok = idx.ndim == 1 and idx.dtype.kind in "iu" and len(set(idx.tolist())) == len(idx) and (
            len(idx) == 0 or (idx.min() >= 0 and idx.max() < len(s("rec_select.u"))))
        return ok, f"sub_idx = {_show(idx)}"

    def dominated():
        u = np.asarray(s("rec_select.u"))
        return np.flatnonzero(u.argmax(axis=1) == int(s("rec_select.parent")))

    return Verdict("gf_check_recursion_select", (
        _check("parent an int", True, KERNEL, lambda: _true(s("rec_select.parent_is_int"), "isinstance(parent, int)")),
        _check("parent the most important concept", True, OWN,
               lambda: _equal(s("rec_select.parent"), expected()[0], "parent")),
        _check("sub_idx distinct crop indices", True, OWN, indices),
        _check("as many crops as dominated, MIN_SUB_CROPS at least", True, OWN, lambda: _equal(
            len(chosen()), max(len(dominated()), MIN_SUB_CROPS), "len(sub_idx)")),
        _check("every dominated crop selected", True, OWN, lambda: (
            set(dominated().tolist()) <= set(chosen().tolist()), f"dominated crops {_show(dominated())}")),
        _check("dominated first, by decreasing coefficient", False, OWN,
               lambda: _equal(chosen(), expected()[1], "sub_idx")),
    ), "own values: the selection is recomputed from the student's U and importances")


def _sub_fit_same(c: Ctx) -> tuple[bool, str]:
    """Did craft_sub's fit start from exactly what the reference's did (same crops, g3, settings)?"""
    def test():
        for label, name, rel in (("settings", "rec_fit.settings", 0), ("torch threads", "rec_fit.threads", 0),
                                 ("selected crops", "rec_fit.sub_idx", 0), ("crops", "rec_fit.source_ends", SAME),
                                 ("g3", "split3.g", SAME), ("BatchNorm statistics", "fit3.bn", 0)):
            if not _same(c.s(name), c.r(name), rel):
                return False, f"{label} differ from the reference's"
        return True, ""
    return _holds(test)


def gf_check_recursion_fit(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    exact, why = _sub_fit_same(c)
    _, basis = _basis(exact, why)
    side = lambda: int(s("rec_fit.side"))  # noqa: E731
    n = lambda: len(np.atleast_1d(s("rec_fit.sub_idx")))  # noqa: E731
    checks = [
        _check("a new CraftTorch", True, KERNEL, lambda: _true(
            bool(s("rec_fit.is_craft")) and bool(s("rec_fit.distinct")), "craft_sub is a new CraftTorch")),
        _check("N_SUB concepts, patch the images' side", True, OWN,
               lambda: _equal(s("rec_fit.settings"), (N_SUB, side()), "(concepts, patch)")),
        _check("sub_crops shape", True, OWN,
               lambda: _equal(s("rec_fit.crops_shape"), (n(), 3, side(), side()), "sub_crops.shape")),
        _check("sub_u shape", True, OWN, lambda: _equal(s("rec_fit.u").shape, (n(), N_SUB), "sub_u.shape")),
        _check("sub_w shape", True, OWN,
               lambda: _equal(s("rec_fit.w").shape, (N_SUB, int(s("rec_fit.channels"))), "sub_w.shape")),
        _check("numpy seeded right before fit", True, KERNEL, lambda: _seeded(s("rec_fit.rng"))),
    ]
    if exact:
        checks.append(_check("sub_u and sub_w equal the reference's (seeded fit, same inputs)", True, REFERENCE,
                             lambda: (_same(s("rec_fit.u"), r("rec_fit.u"), NMF_REL)
                                      and _same(s("rec_fit.w"), r("rec_fit.w"), NMF_REL),
                                      f"max gap U {_max_gap(s('rec_fit.u'), r('rec_fit.u')):.3g}, "
                                      f"W {_max_gap(s('rec_fit.w'), r('rec_fit.w')):.3g}")))
    checks += [
        _check("uses g3 and h3", False, KERNEL, lambda: _true(s("rec_fit.uses_split3"), "craft_sub uses g3, h3")),
        _check("fitted for the rabbit class", False, REFERENCE,
               lambda: _equal(s("rec_fit.class_id"), r("rec_fit.class_id"), "class_id")),
        _check("fitted on crops[sub_idx] resized to the images' side", False, OWN, lambda: _gap_below(
            s("rec_fit.crops_ends"), resize_bilinear(s("rec_fit.source_ends"), side()), RESIZE_ATOL,
            "first and last sub_crops vs bilinear resize of crops[sub_idx]")),
        _check("sub_u and sub_w non-negative", False, OWN, lambda: (
            bool((np.asarray(s("rec_fit.u")) >= 0).all() and (np.asarray(s("rec_fit.w")) >= 0).all()),
            "min of sub_u and sub_w")),
    ]
    return Verdict("gf_check_recursion_fit", tuple(checks), basis)


RULES: dict[str, Callable[[Ctx], Verdict]] = {
    "check_eval": check_eval, "check_g": check_g, "check_h": check_h, "check_transform": check_transform,
    "check_preprocess": check_preprocess, "check_craft": check_craft, "check_fit": check_fit,
    "check_model_untouched": check_model_untouched, "check_importance": check_importance,
    "check_plots": check_plots, "gf_check_split3": gf_check_split3, "gf_check_fit3": gf_check_fit3,
    "gf_check_local": gf_check_local, "gf_check_deletion": gf_check_deletion,
    "gf_check_random": gf_check_random, "gf_check_auc": gf_check_auc,
    "gf_check_recursion_select": gf_check_recursion_select, "gf_check_recursion_fit": gf_check_recursion_fit,
}


# ----------------------------------------------------------------------------- the API

def verify(student: dict[str, np.ndarray], reference: dict[str, np.ndarray],
           plots: dict[str, artefacts.Shown]) -> dict[str, Verdict]:
    """Each graded cell's verdict from the student's artefacts, the reference's, and the
    outputs of the student's executed notebook (artefacts.cell_outputs)."""
    ctx = Ctx(Run(student, "student's"), Run(reference, "reference's"), dict(plots))
    return {grade_id: rule(ctx) for grade_id, rule in RULES.items()}


def decide(verdicts: dict[str, Verdict], in_kernel_scores: dict[str, float],
           max_points: dict[str, float], manual: Iterable[str] = ()) -> tuple[dict[str, float], list[Evidence]]:
    """Points per graded cell (all or nothing, from the verdicts only) and the tampering evidence:
    cells that scored full marks in the kernel while a visible-level property fails here.

    Cells in `manual` (the written answers, graded by a person in formgrader: score.manual_max_scores)
    need no rule and get no automatic score here: they are left out, waiting for a TA."""
    manual = set(manual)
    auto = {grade_id: points for grade_id, points in max_points.items() if grade_id not in manual}
    unruled = sorted(set(auto) - set(verdicts))
    if unruled:
        raise ValueError(f"no verifier rule for the graded cells {unruled}: add them to grader/verify.py RULES")
    scores, evidence = {}, []
    for grade_id, points in auto.items():
        verdict = verdicts[grade_id]
        scores[grade_id] = float(points) if verdict.passed else 0.0
        in_kernel = float(in_kernel_scores.get(grade_id) or 0.0)
        if in_kernel >= points and verdict.failed(visible=True):
            evidence.append(Evidence(grade_id, in_kernel, tuple(verdict.failed(visible=True))))
    return scores, evidence


def reference_problems(reference: dict[str, np.ndarray], plots: dict[str, artefacts.Shown]) -> list[str]:
    """Why the reference run does not verify against itself (empty when it does): run once per
    batch before grading anyone, since every student is compared with it."""
    return [f"{v.grade_id}: {c.name}: {c.detail}" for v in verify(reference, reference, plots).values()
            for c in v.failed()]


def annotate(nb, verdicts: dict[str, Verdict]) -> int:
    """Say on each failed graded cell of the executed notebook what the grader's checks found, so
    the feedback page shows which check failed and why (the hidden tests' code stays out of it).
    Returns how many cells were annotated."""
    from nbformat.v4 import new_output

    annotated = 0
    for cell in nb.cells:
        verdict = verdicts.get(cell.get("metadata", {}).get("nbgrader", {}).get("grade_id"))
        if verdict is None or verdict.passed:
            continue
        lines = [f"  - {c.name}: {c.detail}" if c.detail else f"  - {c.name}" for c in verdict.failed()]
        cell.outputs.append(new_output("stream", name="stdout", text=(
            "Grader: this check did not pass the grader's own verification:\n" + "\n".join(lines) + "\n")))
        annotated += 1
    return annotated
