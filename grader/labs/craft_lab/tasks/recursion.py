"""Task G4: recursion, the sub-concepts of the most important concept
(gf_check_recursion_select, gf_check_recursion_fit).

Trusted evidence: the selection recomputed here from the student's own U (Task 6's capture) and
importances (Task 7's); the sub-crops recomputed here from the student's crops and selection; the
sub-concepts against a seeded layer3 fit of those crops: the reference run's when bitwise the
same inputs, else a replay's on the student's own.
"""
from __future__ import annotations

import numpy as np

from grader.evidence import capture
from grader.replay import Request
from grader.verdicts import Verdict

from ..common import (
    KERNEL,
    MIN_SUB_CROPS,
    N_SUB,
    NMF_REL,
    OWN,
    RABBIT_CLASS,
    RECOMPUTED,
    REFERENCE,
    RESIZE_ATOL,
    Ctx,
    check,
    equal,
    gap_below,
    identical,
    max_gap,
    recursion_selection,
    resize_bilinear,
    same,
    seeded,
    show,
    true,
)

CAPTURES = (
    capture("gf_answer_recursion_select", "rec_select",
            parent="parent",
            parent_is_int="isinstance(parent, (int, np.integer))",
            sub_idx="sub_idx"),
    capture("gf_answer_recursion_fit", "rec_fit",
            is_craft="isinstance(craft_sub, CraftTorch_)",
            distinct="craft_sub is not craft and craft_sub is not craft3",
            uses_split3="craft_sub.input_to_latent_model is g3 and craft_sub.latent_to_logit_model is h3",
            settings="(craft_sub.number_of_concepts, craft_sub.patch_size, craft_sub.batch_size)",
            crops="sub_crops", u="sub_u", w="sub_w",
            rng="fit_rng()", threads="threads()", class_id="craft_sub.factorization.class_id",
            bn="bn(model)", bn_train="bn_train(model)"),
)


def replay_rec_fit(t, inputs, params):
    """A seeded layer3 fit of the selected crops, resized to the images' side, with N_SUB concepts."""
    np, torch = t["np"], t["torch"]
    t["threads"](inputs["threads"])
    model = t["model_in"](inputs["bn"], inputs["bn_train"])
    g3, h3 = t["split"](model, 7)
    side = int(params["side"])
    chosen = torch.as_tensor(np.asarray(inputs["crops"])[np.asarray(inputs["sub_idx"], dtype=int)])
    sub_inputs = torch.nn.functional.interpolate(chosen, size=side, mode="bilinear", align_corners=False)
    craft = t["craft"](g3, h3, params["concepts"], side, params["batch"])
    np.random.seed(t["SEED"])
    _, u, w = craft.fit(sub_inputs, class_id=int(params["class_id"]))
    return {"u": u, "w": w}


REPLAYS = {"replay_rec_fit": replay_rec_fit}


def chosen(c: Ctx) -> np.ndarray:
    return np.asarray(c.s("rec_select.sub_idx"))


def inputs_same(c: Ctx) -> bool:
    try:
        return all(identical(c.s(n), c.r(n)) for n in ("rec_select.sub_idx", "fit.crops", "rec_fit.bn",
                                                        "rec_fit.bn_train", "rec_fit.threads", "rec_fit.settings"))
    except LookupError:
        return False


def requests(c: Ctx) -> list:
    if inputs_same(c):
        return []
    try:
        settings = np.atleast_1d(c.s("rec_fit.settings")).tolist()
        inputs = {k: c.s(f"rec_fit.{k}") for k in ("bn", "bn_train", "threads")} | {
            "crops": c.s("fit.crops"), "sub_idx": chosen(c)}
        side = int(np.shape(c.s("preprocess.rows"))[-1])
    except LookupError:
        return []
    return [Request("rec_fit", "replay_rec_fit", inputs, {"concepts": int(settings[0]), "side": side,
                                                           "batch": int(settings[2]), "class_id": RABBIT_CLASS})]


def gf_check_recursion_select(c: Ctx) -> Verdict:
    s = c.s
    expected = lambda: recursion_selection(s("fit.u"), s("importance.value"))  # noqa: E731

    def indices():
        idx = chosen(c)
        ok = idx.ndim == 1 and idx.dtype.kind in "iu" and len(set(idx.tolist())) == len(idx) and (
            len(idx) == 0 or (idx.min() >= 0 and idx.max() < len(s("fit.u"))))
        return ok, f"sub_idx = {show(idx)}"

    def dominated():
        u = np.asarray(s("fit.u"))
        return np.flatnonzero(u.argmax(axis=1) == int(s("rec_select.parent")))

    return Verdict("gf_check_recursion_select", (
        check("parent the most important concept", True, RECOMPUTED,
              lambda: equal(s("rec_select.parent"), expected()[0], "parent")),
        check("as many crops as dominated, MIN_SUB_CROPS at least", True, RECOMPUTED, lambda: equal(
            len(chosen(c)), max(len(dominated()), MIN_SUB_CROPS), "len(sub_idx)")),
        check("every dominated crop selected", True, RECOMPUTED, lambda: (
            set(dominated().tolist()) <= set(chosen(c).tolist()), f"dominated crops {show(dominated())}")),
        check("dominated first, by decreasing coefficient", False, RECOMPUTED,
              lambda: equal(chosen(c), expected()[1], "sub_idx")),
        check("parent an int", True, KERNEL, lambda: true(s("rec_select.parent_is_int"), "isinstance(parent, int)")),
        check("sub_idx distinct crop indices", True, OWN, indices),
    ), "the selection recomputed from the student's own U and importances")


def gf_check_recursion_fit(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    reference = inputs_same(c)
    side = lambda: int(np.shape(s("preprocess.rows"))[-1])  # noqa: E731
    n = lambda: len(np.atleast_1d(chosen(c)))  # noqa: E731
    settings = lambda: np.atleast_1d(s("rec_fit.settings")).tolist()[:2]  # noqa: E731

    def factors():
        eu, ew = (r("rec_fit.u"), r("rec_fit.w")) if reference else (c.x("rec_fit.u"), c.x("rec_fit.w"))
        return (same(s("rec_fit.u"), eu, NMF_REL) and same(s("rec_fit.w"), ew, NMF_REL),
                f"max gap U {max_gap(s('rec_fit.u'), eu):.3g}, W {max_gap(s('rec_fit.w'), ew):.3g}")

    return Verdict("gf_check_recursion_fit", (
        check("sub_u and sub_w of a seeded fit of those crops", True, REFERENCE if reference else RECOMPUTED, factors),
        check("fitted on crops[sub_idx] resized to the images' side", False, RECOMPUTED, lambda: gap_below(
            s("rec_fit.crops"), resize_bilinear(np.asarray(s("fit.crops"))[chosen(c)], side()), RESIZE_ATOL,
            "sub_crops vs the grader's bilinear resize of crops[sub_idx]")),
        check("N_SUB concepts, patch the images' side", True, REFERENCE,
              lambda: equal(settings(), [N_SUB, side()], "(concepts, patch)")),
        check("sub_crops shape", True, OWN,
              lambda: equal(np.shape(s("rec_fit.crops")), (n(), 3, side(), side()), "sub_crops.shape")),
        check("sub_u shape", True, OWN, lambda: equal(np.shape(s("rec_fit.u")), (n(), N_SUB), "sub_u.shape")),
        check("sub_w shape", True, OWN,
              lambda: equal(np.shape(s("rec_fit.w")), (N_SUB, np.shape(r("rec_fit.w"))[1]), "sub_w.shape")),
        check("a new CraftTorch", True, KERNEL, lambda: true(
            bool(s("rec_fit.is_craft")) and bool(s("rec_fit.distinct")), "craft_sub is a new CraftTorch")),
        check("numpy seeded right before fit", True, KERNEL, lambda: seeded(s("rec_fit.rng"))),
        check("uses g3 and h3", False, KERNEL, lambda: true(s("rec_fit.uses_split3"), "craft_sub uses g3, h3")),
        check("fitted for the rabbit class", False, KERNEL,
              lambda: equal(s("rec_fit.class_id"), RABBIT_CLASS, "class_id")),
        check("sub_u and sub_w non-negative", False, OWN, lambda: (
            bool((np.asarray(s("rec_fit.u")) >= 0).all() and (np.asarray(s("rec_fit.w")) >= 0).all()),
            "min of sub_u and sub_w")),
    ), "compared with the reference run" if reference else
        "compared with a seeded fit of the student's own selection, replayed by the grader")


RULES = {"gf_check_recursion_select": gf_check_recursion_select, "gf_check_recursion_fit": gf_check_recursion_fit}
