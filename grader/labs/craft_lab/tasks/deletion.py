"""Task G3: concept deletion (gf_check_deletion, gf_check_random, gf_check_auc).

Trusted evidence: every curve recomputed here, in the worker, from U_images (the reference
run's when the student's CRAFT is bitwise the reference's, else a replay's craft.transform of
the student's images through their own CRAFT), the student's W, the order the student chose,
and the reference model's classifier row for the rabbit class; the random orders are the
lab's seeded ones. Each area is recomputed from the curve captured one cell earlier.
"""
from __future__ import annotations

import numpy as np

from grader.evidence import capture
from grader.replay import Request
from grader.verdicts import Verdict

from ..common import (
    AUC,
    AUC_RANGE,
    CURVE,
    CURVE_ENDS,
    OWN,
    RECOMPUTED,
    REFERENCE,
    Ctx,
    check,
    close,
    decreasing,
    deletion_curve,
    equal,
    finite,
    gap_below,
    is_permutation,
    random_orders,
    show,
)
from .fit import settings
from .plots import craft_inputs, plots_same

CAPTURES = (
    capture("gf_deletion_setup", "setup", u_images="U_images", random_orders="random_orders"),
    capture("gf_answer_deletion", "deletion", order="deletion_order", curve="deletion_curve",
            random_curves="random_curves"),
    capture("gf_answer_auc", "auc", auc_importance="auc_importance", auc_random="auc_random"),
)


def replay_transform_images(t, inputs, params):
    """U_images: craft.transform(images_preprocessed) through the student's CRAFT."""
    craft, rows = craft_from(t, inputs, params)  # noqa: F821  (plots.py, in the replay kernel)
    return {"u_images": craft.transform(rows)}


REPLAYS = {"replay_transform_images": replay_transform_images}


def requests(c: Ctx) -> list:
    if plots_same(c):
        return []
    try:
        inputs, params = craft_inputs(c)
    except LookupError:
        return []
    return [Request("u_images", "replay_transform_images", inputs, params)]


def u_images(c: Ctx):
    """(trusted U_images, basis)."""
    return (c.r("setup.u_images"), REFERENCE) if plots_same(c) else (c.x("u_images.u_images"), RECOMPUTED)


def curve_of(c: Ctx, order) -> np.ndarray:
    return deletion_curve(u_images(c)[0], c.s("fit.w"), order, c.r("split.fc_w"), c.r("split.fc_b"))


def concepts(c: Ctx) -> int:
    return settings(c.s, "fit")[0]


def gf_check_deletion(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    return Verdict("gf_check_deletion", (
        check("the deletion curve of deletion_order", False, RECOMPUTED, lambda: close(
            s("deletion.curve"), curve_of(c, s("deletion.order")), "deletion_curve vs recomputed", **CURVE)),
        check("everything deleted gives h(0)", True, REFERENCE, lambda: gap_below(
            np.asarray(s("deletion.curve"))[-1], r("split.fc_b"), CURVE_ENDS, "deletion_curve[-1] vs fc bias")),
        check("deletion_order a permutation", True, OWN,
              lambda: is_permutation(s("deletion.order"), concepts(c), "deletion_order")),
        check("r + 1 points", True, OWN,
              lambda: equal(np.shape(s("deletion.curve")), (concepts(c) + 1,), "deletion_curve.shape")),
        check("finite", True, OWN, lambda: finite(s("deletion.curve"), "deletion_curve")),
        check("order of decreasing importance", False, OWN,
              lambda: decreasing(s("importance.value"), s("deletion.order"), "importances[deletion_order]")),
    ), "U_images " + ("of the reference run" if plots_same(c) else "recomputed from the student's own CRAFT"))


def gf_check_random(c: Ctx) -> Verdict:
    s = c.s
    curves = lambda: np.asarray(s("deletion.random_curves"), dtype=np.float64)  # noqa: E731
    orders = lambda: random_orders(concepts(c), 10)  # noqa: E731
    return Verdict("gf_check_random", (
        check("the curves of random_orders, in order", False, RECOMPUTED, lambda: close(
            curves(), np.stack([curve_of(c, order) for order in orders()]), "random_curves vs recomputed", **CURVE)),
        check("one curve per random order", True, OWN, lambda: equal(
            np.shape(s("deletion.random_curves")), (len(orders()), concepts(c) + 1), "random_curves.shape")),
        check("finite", True, OWN, lambda: finite(s("deletion.random_curves"), "random_curves")),
        check("same start and same end", True, OWN, lambda: (
            np.ptp(curves()[:, 0]) < CURVE_ENDS and np.ptp(curves()[:, -1]) < CURVE_ENDS,
            f"spread of starts {np.ptp(curves()[:, 0]):.3g}, ends {np.ptp(curves()[:, -1]):.3g}")),
    ))


def gf_check_auc(c: Ctx) -> Verdict:
    s = c.s

    def in_range(value, curves, what):
        value, curves = np.asarray(value), np.atleast_2d(np.asarray(curves, dtype=np.float64))
        ok = value.ndim == 0 and np.isfinite(value) and curves.min() - AUC_RANGE <= value <= curves.max() + AUC_RANGE
        return bool(ok), f"{what} = {show(value)}, curve range [{curves.min():.4g}, {curves.max():.4g}]"

    def area(curves):
        return np.trapezoid(np.asarray(curves, dtype=np.float64), dx=1 / concepts(c), axis=-1)
    return Verdict("gf_check_auc", (
        check("auc_importance = trapezoid(deletion_curve, dx = 1/r)", False, RECOMPUTED, lambda: close(
            s("auc.auc_importance"), area(s("deletion.curve")), "auc_importance", **AUC)),
        check("auc_random = mean of the areas", False, RECOMPUTED, lambda: close(
            s("auc.auc_random"), area(s("deletion.random_curves")).mean(), "auc_random", **AUC)),
        check("auc_importance a number within its curve", True, OWN,
              lambda: in_range(s("auc.auc_importance"), s("deletion.curve"), "auc_importance")),
        check("auc_random a number within its curves", True, OWN,
              lambda: in_range(s("auc.auc_random"), s("deletion.random_curves"), "auc_random")),
    ), "areas recomputed from the curves captured after gf_answer_deletion")


RULES = {"gf_check_deletion": gf_check_deletion, "gf_check_random": gf_check_random, "gf_check_auc": gf_check_auc}
