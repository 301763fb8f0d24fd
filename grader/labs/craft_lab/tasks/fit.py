"""Task 6: fit CRAFT (check_fit, check_model_untouched). Task G1's fit (fit3.py) reuses the helpers.

Trusted evidence for the fit:
- the crops, recut here from the student's own images_preprocessed (Task 4's capture) with the
  fit's crop size: the fit ran on those images;
- U and W against a seeded fit of exactly those inputs: the reference run's when every input is
  bitwise the reference's (images, settings, the model's BatchNorm state, thread counts), else
  a replay's, in a trusted kernel, on the student's own inputs. Both a missing seed and a
  wrong class of inputs show there. The recorder's "seeded" only takes the points away.
Trusted evidence for check_model_untouched: the model after the fit, copied in the modes it is
in, computes on the secret probe what the loaded model computes in evaluation mode.
"""
from __future__ import annotations

import numpy as np

from grader.evidence import capture
from grader.replay import Request
from grader.verdicts import Verdict

from ..common import (
    KERNEL,
    NMF_REL,
    OWN,
    RABBIT_CLASS,
    RECOMPUTED,
    REFERENCE,
    Ctx,
    check,
    crops_of,
    equal,
    expected_from,
    identical,
    max_gap,
    n_crops,
    same,
    same_as,
    seeded,
)

FIT_ITEMS = dict(settings="(craft.number_of_concepts, craft.patch_size, craft.batch_size)",
                 crops="crops", u="crops_u", w="concept_bank_w",
                 reducer_w="craft.factorization.reducer.components_",
                 rng="fit_rng()", threads="threads()", class_id="craft.factorization.class_id",
                 bn="bn(model)", bn_train="bn_train(model)")
CAPTURES = (
    capture("answer_fit", "fit", **FIT_ITEMS,
            as_is="as_is(model, probe())",
            training="model.training",
            modules_training="sum(bool(m.training) for m in model.modules())"),
)


def replay_fit(t, inputs, params):
    """A seeded CRAFT fit of the student's images with their settings, through the lab's model in
    the student's BatchNorm state, cut after `layers` children, with their thread counts."""
    np, torch = t["np"], t["torch"]
    t["threads"](inputs["threads"])
    model = t["model_in"](inputs["bn"], inputs["bn_train"])
    g, h = t["split"](model, int(params["layers"]))
    craft = t["craft"](g, h, params["concepts"], params["patch"], params["batch"])
    np.random.seed(t["SEED"])
    crops, u, w = craft.fit(torch.from_numpy(np.asarray(inputs["rows"])), class_id=int(params["class_id"]))
    return {"u": u, "w": w, "reducer_w": craft.factorization.reducer.components_}


REPLAYS = {"replay_fit": replay_fit}


def settings(run, group: str) -> tuple:
    return tuple(int(v) for v in np.atleast_1d(run(f"{group}.settings")).tolist()[:3])


def inputs_same(c: Ctx, group: str) -> bool:
    """Did this fit start from bitwise what the reference's did (images, settings, model state, threads)?"""
    try:
        return (identical(c.s("preprocess.rows"), c.r("preprocess.rows")) and settings(c.s, group) == settings(c.r, group)
                and all(identical(c.s(f"{group}.{k}"), c.r(f"{group}.{k}")) for k in ("bn", "bn_train", "threads")))
    except LookupError:
        return False


def fit_request(c: Ctx, group: str, layers: int) -> list:
    """The replay of this fit on the student's own inputs, when they are not the reference's."""
    if inputs_same(c, group):
        return []
    try:
        concepts, patch, batch = settings(c.s, group)
        inputs = {k: c.s(f"{group}.{k}") for k in ("bn", "bn_train", "threads")} | {"rows": c.s("preprocess.rows")}
    except LookupError:
        return []
    return [Request(group, "replay_fit", inputs, {"concepts": concepts, "patch": patch, "batch": batch,
                                                   "class_id": RABBIT_CLASS, "layers": layers})]


def requests(c: Ctx) -> list:
    return fit_request(c, "fit", 8)


def fit_checks(c: Ctx, group: str, u: str, w: str) -> tuple[list, str]:
    """The checks check_fit and gf_check_fit3 share, and what U and W were compared with."""
    s = c.s
    concepts = lambda: settings(s, group)[0]  # noqa: E731
    patch = lambda: settings(s, group)[1]  # noqa: E731
    rows = lambda: np.asarray(s("preprocess.rows"))  # noqa: E731
    reference = inputs_same(c, group)

    def factors():
        eu, ew = expected_from(c, reference, u, f"{group}.u")[0], expected_from(c, reference, w, f"{group}.w")[0]
        return (same(s(u), eu, NMF_REL) and same(s(w), ew, NMF_REL),
                f"max gap U {max_gap(s(u), eu):.3g}, W {max_gap(s(w), ew):.3g} (limit {NMF_REL:g} x scale)")

    checks = [
        check("crops shape", True, OWN, lambda: equal(
            np.shape(s(f"{group}.crops")), (n_crops(len(rows()), rows().shape[-1], patch()), 3, patch(), patch()),
            "crops.shape")),
        check("U shape", True, OWN, lambda: equal(np.shape(s(u)), (np.shape(s(f"{group}.crops"))[0], concepts()), "U.shape")),
        check("W shape", True, OWN, lambda: equal(np.shape(s(w))[0], concepts(), "rows of W (concepts)")),
        check("U and W of a seeded fit of these inputs", True, REFERENCE if reference else RECOMPUTED, factors),
        check("numpy seeded right before fit", True, KERNEL, lambda: seeded(s(f"{group}.rng"))),
        check("fitted on images_preprocessed", False, RECOMPUTED, lambda: (
            identical(s(f"{group}.crops"), crops_of(rows(), patch())),
            "crops vs images_preprocessed cut by the grader with the fit's crop size")),
        check("fitted for the rabbit class", False, KERNEL,
              lambda: equal(s(f"{group}.class_id"), RABBIT_CLASS, "class_id")),
        check("U and W non-negative", False, OWN, lambda: (
            bool((np.asarray(s(u)) >= 0).all() and (np.asarray(s(w)) >= 0).all()), "min of U and W")),
    ]
    return checks, ("compared with the reference run" if reference else
                    "compared with a seeded fit of the student's own inputs, replayed by the grader")


def check_fit(c: Ctx) -> Verdict:
    checks, note = fit_checks(c, "fit", "fit.u", "fit.w")
    return Verdict("check_fit", tuple(checks), note)


def check_model_untouched(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    return Verdict("check_model_untouched", (
        check("the fit left the model as loaded, in eval mode", True, REFERENCE, lambda: same_as(
            s("fit.as_is"), r("fit.as_is"), "model(probe) as it stands vs the loaded model in eval mode")),
        check("model.training is False after the fit", True, KERNEL,
              lambda: equal(s("fit.training"), False, "model.training")),
        check("BatchNorm statistics unchanged by the fit", True, KERNEL, lambda: (
            identical(s("fit.bn"), r("fit.bn")), "BatchNorm statistics vs the model as loaded")),
        check("every sub-module in eval mode", False, KERNEL,
              lambda: equal(s("fit.modules_training"), 0, "modules in training mode")),
    ))


RULES = {"check_fit": check_fit, "check_model_untouched": check_model_untouched}
