"""Task 1: evaluation mode (check_eval).

Trusted evidence: the model, copied in the modes it is in, computes on the secret probe what the
reference model computes in evaluation mode. A model left in training mode normalises with the
probe's own batch statistics and gives other logits. Its flags only take points away.
"""
from __future__ import annotations

from grader.evidence import capture
from grader.verdicts import Verdict

from ..common import KERNEL, REFERENCE, Ctx, check, equal, same_as

CAPTURES = (
    capture("answer_eval", "eval",
            as_is="as_is(model, probe())",
            training="model.training",
            modules_training="sum(bool(m.training) for m in model.modules())",
            bn="bn(model)"),
)
REPLAYS: dict = {}


def requests(c: Ctx) -> list:
    return []


def bn_unchanged(got, expected) -> tuple[bool, str]:
    ok, _ = equal(got, expected, "")
    return ok, "the BatchNorm statistics are " + ("those of the model as loaded" if ok else
                                                   "not those of the model as loaded")


def check_eval(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    return Verdict("check_eval", (
        check("model computes as in evaluation mode", True, REFERENCE, lambda: same_as(
            s("eval.as_is"), r("eval.as_is"), "model(probe) as it stands vs the loaded model in eval mode")),
        check("model.training is False", True, KERNEL, lambda: equal(s("eval.training"), False, "model.training")),
        check("every sub-module in eval mode", True, KERNEL,
              lambda: equal(s("eval.modules_training"), 0, "modules in training mode")),
        check("BatchNorm statistics unchanged", False, KERNEL, lambda: bn_unchanged(s("eval.bn"), r("eval.bn"))),
    ))


RULES = {"check_eval": check_eval}
