"""Task G1, part 1: the layer3 split, f = h3 o g3 (gf_check_split3).

Trusted evidence: g3's output and h3(first 7 children's output) on the secret probe's corner,
against the same computed by trusted code from the model as the student's model stands: the
reference run's when its BatchNorm state is the reference's, else a replay's, which puts the
lab's model in the student's captured state (a model left in training mode during the fit has
moved statistics: that mistake is Task 1's, not charged again here).
"""
from __future__ import annotations

from grader.evidence import capture
from grader.replay import Request
from grader.verdicts import Verdict

from ..common import (
    G_ATOL,
    KERNEL,
    LOGIT_GAP,
    RECOMPUTED,
    REFERENCE,
    Ctx,
    check,
    equal,
    gap_below,
    identical,
    true,
    with_scale,
)

CAPTURES = (
    capture("gf_answer_split3", "split3", reference_only=("first7", "model"),
            g_is_module="isinstance(g3, torch.nn.Module)",
            h_is_module="isinstance(h3, torch.nn.Module)",
            g="out(g3, probe(SMALL))",
            h="out(h3, first(7, SMALL))",
            first7="first(7, SMALL)",
            model="out(model, probe(SMALL))",
            bn="bn(model)", bn_train="bn_train(model)"),
)


def replay_split3(t, inputs, params):
    """The first 7 children and the whole model, in eval mode, in the student's BatchNorm state, on the probe's corner."""
    torch = t["torch"]
    model = t["model_in"](inputs["bn"], inputs["bn_train"]).eval()
    probe = t["probe"](int(params["side"]))
    with torch.no_grad():
        return {"first7": torch.nn.Sequential(*list(model.children())[:7])(probe).cpu().numpy(),
                "model": model(probe).cpu().numpy()}


REPLAYS = {"replay_split3": replay_split3}


def state_same(c: Ctx) -> bool:
    try:
        return identical(c.s("split3.bn"), c.r("split3.bn"))
    except LookupError:
        return False


def requests(c: Ctx) -> list:
    if state_same(c) or not (c.s.has("split3.bn") and c.s.has("split3.bn_train")):
        return []
    from .. import kernel

    return [Request("split3", "replay_split3", {"bn": c.s("split3.bn"), "bn_train": c.s("split3.bn_train")},
                    {"side": kernel.SMALL_SIDE})]


def gf_check_split3(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    reference = state_same(c)
    basis = REFERENCE if reference else RECOMPUTED
    first7 = (lambda: r("split3.first7")) if reference else (lambda: c.x("split3.first7"))
    model = (lambda: r("split3.model")) if reference else (lambda: c.x("split3.model"))
    return Verdict("gf_check_split3", (
        check("g3(x) shape", True, REFERENCE, lambda: equal(s("split3.g").shape, r("split3.g").shape, "g3(probe).shape")),
        check("h3(g3(x)) shape", True, REFERENCE, lambda: equal(s("split3.h").shape, r("split3.model").shape, "shape")),
        check("g3 equals the first 7 children", False, basis, lambda: gap_below(
            s("split3.g"), first7(), with_scale(G_ATOL, first7()), "g3(probe) vs the first 7 children")),
        check("h3(g3(x)) == model(x)", False, basis, lambda: gap_below(
            s("split3.h"), model(), with_scale(LOGIT_GAP, model()), "logits vs the model's")),
        check("g3 and h3 are torch modules", True, KERNEL, lambda: true(
            bool(s("split3.g_is_module")) and bool(s("split3.h_is_module")), "both nn.Module")),
    ), "compared with the reference run" if reference else
        "compared with the model in the student's BatchNorm state, recomputed by the grader")


RULES = {"gf_check_split3": gf_check_split3}
