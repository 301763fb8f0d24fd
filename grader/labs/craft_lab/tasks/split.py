"""Task 2: f = h o g (check_g, check_h).

Trusted evidence: g's output and h(first 8 children's output) on the secret probe, against the
reference run's, always: no weaker comparison can be switched on by changing the model (a
changed model gives other numbers, and loses these points). The reference's fc row of the
rabbit class also serves Task G3 (the deletion curves are recomputed from it).
"""
from __future__ import annotations

import numpy as np

from grader.evidence import capture
from grader.verdicts import Verdict

from ..common import (
    KERNEL,
    LOGIT_GAP,
    OWN,
    REFERENCE,
    Ctx,
    check,
    equal,
    gap_below,
    same_as,
    true,
    with_scale,
)

CAPTURES = (
    capture("answer_split", "split", reference_only=("model", "fc_w", "fc_b"),
            g_is_module="isinstance(g, torch.nn.Module)",
            h_is_module="isinstance(h, torch.nn.Module)",
            g="out(g, probe())",
            h="out(h, first(8))",
            model="out(model, probe())",
            fc_w="model.fc.weight[CLASS]",
            fc_b="model.fc.bias[CLASS]"),
)
REPLAYS: dict = {}


def requests(c: Ctx) -> list:
    return []


def check_g(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    return Verdict("check_g", (
        check("g(x) shape", True, REFERENCE, lambda: equal(s("split.g").shape, r("split.g").shape, "g(probe).shape")),
        check("g equals the first 8 children", False, REFERENCE,
              lambda: same_as(s("split.g"), r("split.g"), "g(probe) vs the reference's first 8 children")),
        check("g is a torch module", True, KERNEL, lambda: true(s("split.g_is_module"), "isinstance(g, nn.Module)")),
        check("g(x) >= 0", False, OWN, lambda: (float(np.min(s("split.g"))) >= 0,
                                                f"min {float(np.min(s('split.g'))):.3g}")),
    ))


def check_h(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    return Verdict("check_h", (
        check("h(latent) shape", True, REFERENCE,
              lambda: equal(s("split.h").shape, r("split.model").shape, "h(latent).shape")),
        check("h(g(x)) == model(x)", False, REFERENCE, lambda: gap_below(
            s("split.h"), r("split.model"), with_scale(LOGIT_GAP, r("split.model")), "logits vs the reference model's")),
        check("h is a torch module", True, KERNEL, lambda: true(s("split.h_is_module"), "isinstance(h, nn.Module)")),
    ))


RULES = {"check_g": check_g, "check_h": check_h}
