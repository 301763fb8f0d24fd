"""Task 7: global concept importances (check_importance).

Trusted evidence: the importances against Xplique's Sobol estimate for the student's own fitted
CRAFT: the reference run's when the student's fit is bitwise the reference's, else a replay's,
which rebuilds the student's CraftTorch (their images, W, settings, the model in their state,
their thread counts) in a trusted kernel and estimates them there. That the importances equal
craft.sensitivity is the kernel's word, and can only take the point away.
"""
from __future__ import annotations

import numpy as np

from grader.evidence import capture
from grader.replay import Request
from grader.verdicts import Verdict

from ..common import (
    KERNEL,
    OWN,
    RABBIT_CLASS,
    RECOMPUTED,
    REFERENCE,
    SENSITIVITY,
    Ctx,
    check,
    close,
    equal,
    finite,
    identical,
    importance_close,
    true,
)
from .fit import inputs_same, settings

CAPTURES = (
    capture("answer_importance", "importance",
            value="importances",
            is_ndarray="isinstance(importances, np.ndarray)",
            sensitivity="craft.sensitivity.importances",
            threads="threads()", bn="bn(model)", bn_train="bn_train(model)"),
)


def replay_importance(t, inputs, params):
    """Global importances of a CraftTorch rebuilt from the student's fit (W), through the lab's model
    in their BatchNorm state, cut after `layers` children, with their thread counts."""
    t["threads"](inputs["threads"])
    model = t["model_in"](inputs["bn"], inputs["bn_train"])
    g, h = t["split"](model, int(params["layers"]))
    craft = t["craft"](g, h, params["concepts"], params["patch"], params["batch"])
    t["fitted"](craft, t["torch"].from_numpy(inputs["rows"]), inputs["reducer_w"], params["class_id"])
    return {"value": craft.estimate_importance(nb_design=int(params["nb_design"]))}


REPLAYS = {"replay_importance": replay_importance}


def fit_same(c: Ctx, group: str = "fit") -> bool:
    """The student's fitted CRAFT is bitwise the reference's (inputs and results)."""
    try:
        return inputs_same(c, group) and all(identical(c.s(f"{group}.{k}"), c.r(f"{group}.{k}"))
                                             for k in ("crops", "u", "w", "reducer_w", "class_id"))
    except LookupError:
        return False


def state_same(c: Ctx, group: str) -> bool:
    """The model's BatchNorm state and the thread counts at capture `group` are the reference's."""
    try:
        return all(identical(c.s(f"{group}.{k}"), c.r(f"{group}.{k}")) for k in ("bn", "bn_train", "threads"))
    except LookupError:
        return False


def importance_request(c: Ctx, name: str, fit: str, state: str, layers: int, nb_design: int) -> list:
    if fit_same(c, fit) and state_same(c, state):
        return []
    try:
        concepts, patch, batch = settings(c.s, fit)
        inputs = {k: c.s(f"{state}.{k}") for k in ("bn", "bn_train", "threads")} | {
            "rows": c.s("preprocess.rows"), "reducer_w": c.s(f"{fit}.reducer_w")}
    except LookupError:
        return []
    return [Request(name, "replay_importance", inputs, {"concepts": concepts, "patch": patch, "batch": batch,
                                                         "class_id": RABBIT_CLASS, "layers": layers,
                                                         "nb_design": nb_design})]


def requests(c: Ctx) -> list:
    return importance_request(c, "importance", "fit", "importance", 8, 32)


def check_importance(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    reference = fit_same(c) and state_same(c, "importance")
    expected = (lambda: r("importance.value")) if reference else (lambda: c.x("importance.value"))
    concepts = lambda: settings(s, "fit")[0]  # noqa: E731
    return Verdict("check_importance", (
        check("the global importances of this CRAFT", False, REFERENCE if reference else RECOMPUTED,
              lambda: importance_close(s("importance.value"), expected(), "importances")),
        check("an ndarray", True, KERNEL,
              lambda: true(s("importance.is_ndarray"), "isinstance(importances, np.ndarray)")),
        check("one per concept", True, OWN, lambda: equal(np.shape(s("importance.value")), (concepts(),),
                                                          "importances.shape")),
        check("finite", True, OWN, lambda: finite(s("importance.value"), "importances")),
        check("craft.sensitivity set", True, KERNEL, lambda: (s("importance.sensitivity") is not None,
                                                             "craft.sensitivity.importances")),
        check("equal craft.sensitivity", False, OWN, lambda: close(
            s("importance.value"), s("importance.sensitivity"), "importances vs craft.sensitivity", **SENSITIVITY)),
    ), "compared with the reference run" if reference else
        "compared with the importances of the student's own CRAFT, estimated again by the grader")


RULES = {"check_importance": check_importance}
