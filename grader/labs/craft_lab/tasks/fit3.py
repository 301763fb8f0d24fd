"""Task G1, part 2: CRAFT at layer3 (gf_check_fit3).

As Task 6 and Task 7 at layer3: the crops recut from the student's images, U3 and W3 against a
seeded fit of the student's own inputs (the reference run's when bitwise the same, else a
replay's), the importances (nb_design=4) against Xplique's estimate for the student's own W3.
The notebook's locked cell continue_split3 replaces an invalid g3/h3 under autograde, so a
mistake in part 1 is not charged again here.
"""
from __future__ import annotations

import numpy as np

from grader.evidence import capture
from grader.verdicts import Verdict

from ..common import (
    KERNEL,
    OWN,
    RECOMPUTED,
    REFERENCE,
    SENSITIVITY,
    Ctx,
    check,
    close,
    equal,
    finite,
    importance_close,
    true,
)
from .fit import fit_checks, fit_request, settings
from .importance import fit_same, importance_request, state_same

CAPTURES = (
    capture("gf_answer_importance3", "fit3",
            settings="(craft3.number_of_concepts, craft3.patch_size, craft3.batch_size)",
            crops="crops3", u="crops_u3", w="concept_bank_w3",
            reducer_w="craft3.factorization.reducer.components_",
            rng="fit_rng()", threads="threads()", class_id="craft3.factorization.class_id",
            bn="bn(model)", bn_train="bn_train(model)",
            is_craft="isinstance(craft3, CraftTorch_)",
            distinct="craft3 is not craft",
            device="str(craft3.device)",
            uses_split3="craft3.input_to_latent_model is g3 and craft3.latent_to_logit_model is h3",
            importances="importances3",
            is_ndarray="isinstance(importances3, np.ndarray)",
            sensitivity="craft3.sensitivity.importances"),
)
REPLAYS: dict = {}   # replay_fit and replay_importance, with layers=7


def requests(c: Ctx) -> list:
    return fit_request(c, "fit3", 7) + importance_request(c, "importance3", "fit3", "fit3", 7, 4)


def gf_check_fit3(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    checks, note = fit_checks(c, "fit3", "fit3.u", "fit3.w")
    reference = fit_same(c, "fit3") and state_same(c, "fit3")
    expected = (lambda: r("fit3.importances")) if reference else (lambda: c.x("importance3.value"))
    concepts = lambda: settings(s, "fit3")[0]  # noqa: E731
    checks = [
        check("a new CraftTorch", True, KERNEL, lambda: true(
            bool(s("fit3.is_craft")) and bool(s("fit3.distinct")), "craft3 is a new CraftTorch")),
        check("10 concepts, patch 80, batch 64", True, REFERENCE,
              lambda: equal(settings(s, "fit3"), settings(r, "fit3"), "(concepts, patch, batch)")),
        *checks,
        check("importances3 an ndarray", True, KERNEL,
              lambda: true(s("fit3.is_ndarray"), "isinstance(importances3, np.ndarray)")),
        check("importances3 one per concept", True, OWN,
              lambda: equal(np.shape(s("fit3.importances")), (concepts(),), "importances3.shape")),
        check("importances3 finite", True, OWN, lambda: finite(s("fit3.importances"), "importances3")),
        check("the global importances of craft3", False, REFERENCE if reference else RECOMPUTED,
              lambda: importance_close(s("fit3.importances"), expected(), "importances3")),
        check("uses g3 and h3", False, KERNEL, lambda: true(s("fit3.uses_split3"), "craft3 uses g3, h3")),
        check("device", False, REFERENCE, lambda: equal(s("fit3.device"), r("fit3.device"), "craft3.device")),
        check("equal craft3.sensitivity", False, OWN, lambda: close(
            s("fit3.importances"), s("fit3.sensitivity"), "importances3 vs craft3.sensitivity", **SENSITIVITY)),
    ]
    return Verdict("gf_check_fit3", tuple(checks), note)


RULES = {"gf_check_fit3": gf_check_fit3}
