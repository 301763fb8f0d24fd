"""Task G2: one image's own concept importances (gf_check_local).

Trusted evidence: the local importances of image 0, and the LOCAL-order plot the answer cells
displayed, against those of the student's own CRAFT: the reference run's when bitwise the
reference's, else a replay's, which estimates them and draws the plot again in a trusted kernel.
Whether local_order is a permutation sorted by the student's own values is checked on the
student's values (takes away only); that it ranks image 0's true importances is trusted.
"""
from __future__ import annotations

import numpy as np

from grader.evidence import capture
from grader.replay import Request
from grader.verdicts import Verdict

from ..common import (
    IMPORTANCE_REL,
    KERNEL,
    OWN,
    RECOMPUTED,
    REFERENCE,
    SHOWN,
    Ctx,
    check,
    decreasing,
    equal,
    figures_match,
    finite,
    importance_close,
    is_permutation,
    true,
)
from .fit import settings
from .plots import craft_inputs, displayed, plots_same

LOCAL_PLOT_CELLS = ("gf_answer_local", "gf_answer_local_plot")
CAPTURES = (
    capture("gf_local_before", "local_start", calls="len(recorder().plot_calls)"),
    capture("gf_answer_local", "local",
            value="local_importances",
            is_ndarray="isinstance(local_importances, np.ndarray)",
            order="local_order"),
    capture("gf_answer_local_plot", "local_plot", names="[str(call[0]) for call in recorder().plot_calls]"),
)


def replay_local(t, inputs, params):
    """Image 0's own importances from the student's CRAFT, and its LOCAL-order plot."""
    import matplotlib.pyplot as plt
    from xplique.concepts import DisplayImportancesOrder

    craft, rows = craft_from(t, inputs, params)  # noqa: F821  (plots.py, in the replay kernel)
    value = craft.estimate_importance(inputs=rows[0])
    craft.plot_image_concepts(rows[0], display_importance_order=DisplayImportancesOrder.LOCAL)
    plt.show()
    return {"value": value}


REPLAYS = {"replay_local": replay_local}


def requests(c: Ctx) -> list:
    if plots_same(c):
        return []
    try:
        inputs, params = craft_inputs(c)
    except LookupError:
        return []
    return [Request("local", "replay_local", inputs, params)]


def gf_check_local(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    reference = plots_same(c)
    basis = REFERENCE if reference else RECOMPUTED
    expected = (lambda: r("local.value")) if reference else (lambda: c.x("local.value"))
    figures = (lambda: displayed(c.ref_shown, LOCAL_PLOT_CELLS[1:])) if reference else \
        (lambda: c.x_figures.get("local", []))
    concepts = lambda: settings(s, "fit")[0]  # noqa: E731
    tolerance = lambda: IMPORTANCE_REL * float(np.abs(expected()).max())  # noqa: E731

    def plotted():
        made = [str(n) for n in np.atleast_1d(s("local_plot.names")).tolist()[int(s("local_start.calls")):]]
        return "plot_image_concepts" in made, "plots made after gf_local_before"

    return Verdict("gf_check_local", (
        check("the importances of image 0", False, basis,
              lambda: importance_close(s("local.value"), expected(), "local_importances")),
        check("local_order ranks image 0's importances", False, basis,
              lambda: decreasing(expected(), s("local.order"), "expected[local_order]", tolerance())),
        check("image 0 plotted in its local order", True, SHOWN,
              lambda: figures_match(displayed(c.shown, LOCAL_PLOT_CELLS), figures(), "the local plot")),
        check("an ndarray", True, KERNEL,
              lambda: true(s("local.is_ndarray"), "isinstance(local_importances, np.ndarray)")),
        check("one per concept", True, OWN, lambda: equal(np.shape(s("local.value")), (concepts(),),
                                                          "local_importances.shape")),
        check("finite", True, OWN, lambda: finite(s("local.value"), "local_importances")),
        check("local_order a permutation", True, OWN, lambda: is_permutation(s("local.order"), concepts(), "local_order")),
        check("local_order most important first", True, OWN,
              lambda: decreasing(s("local.value"), s("local.order"), "local_importances[local_order]")),
        check("plot_image_concepts called (kit recorder)", True, KERNEL, plotted),
    ), "compared with the reference run" if reference else
        "compared with the student's own CRAFT, estimated and drawn again by the grader")


RULES = {"gf_check_local": gf_check_local}
