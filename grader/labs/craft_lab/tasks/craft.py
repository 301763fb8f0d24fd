"""Task 5: the CraftTorch object (check_craft).

Its settings are the answer itself (10 concepts, 80-pixel crops, batches of 64, the lab's
device): they are compared with the reference run's. Whether the object really uses g and h
is the kernel's word, which can only take the point away; the fit that follows (Task 6) uses
the object's real settings and is judged on its results.
"""
from __future__ import annotations

from grader.evidence import capture
from grader.verdicts import Verdict

from ..common import KERNEL, REFERENCE, Ctx, check, equal, true

CAPTURES = (
    capture("answer_craft", "craft", reference_only=("kernel_device",),
            is_craft="isinstance(craft, CraftTorch_)",
            concepts="craft.number_of_concepts",
            patch="craft.patch_size",
            batch="craft.batch_size",
            device="str(craft.device)",
            kernel_device="str(device)",
            uses_g="craft.input_to_latent_model is g",
            uses_h="craft.latent_to_logit_model is h"),
)
REPLAYS: dict = {}


def requests(c: Ctx) -> list:
    return []


def check_craft(c: Ctx) -> Verdict:
    s, r = c.s, c.r

    def setting(key: str, what: str):
        return check(what, True, REFERENCE, lambda: equal(s(f"craft.{key}"), r(f"craft.{key}"), what))

    return Verdict("check_craft", (
        setting("concepts", "number_of_concepts"),
        setting("patch", "patch_size"),
        setting("batch", "batch_size"),
        check("device", True, REFERENCE, lambda: equal(s("craft.device"), r("craft.kernel_device"), "craft.device")),
        check("a CraftTorch", True, KERNEL, lambda: true(s("craft.is_craft"), "isinstance(craft, CraftTorch)")),
        check("uses g", False, KERNEL, lambda: true(s("craft.uses_g"), "input_to_latent_model is g")),
        check("uses h", False, KERNEL, lambda: true(s("craft.uses_h"), "latent_to_logit_model is h")),
    ))


RULES = {"check_craft": check_craft}
