"""Task 8: the four plots (check_plots).

Trusted evidence: what the four plot cells really displayed, figure by figure, against the
figures trusted code drew from the same state: the reference run's when the student's CRAFT is
bitwise the reference's, else a replay's, which draws the four plots asked (image 0's concepts,
the importances, 10 crops of the 5 most important concepts, the attribution maps of the first
20 images) from the student's own captured values. A list the kit's recorder keeps (which
methods were called, on which tensors) can only take the points away.
"""
from __future__ import annotations

import numpy as np

from grader.evidence import capture
from grader.replay import Request
from grader.verdicts import Verdict

from ..common import KERNEL, RABBIT_CLASS, SHOWN, Ctx, check, figures_match, identical
from .fit import settings
from .importance import fit_same, state_same

PLOTS = ("plot_image_concepts", "plot_concepts_importances", "plot_concepts_crops", "plot_concept_attribution_maps")
PLOT_CELLS = ("answer_plot_image", "answer_plot_importances", "answer_plot_crops", "answer_plot_maps")
CAPTURES = (
    capture("check_importance", "plots_start", calls="len(recorder().plot_calls)"),
    capture("answer_plot_maps", "plots",
            names="[str(call[0]) for call in recorder().plot_calls]",
            on_cpu="[bool(call[1]) for call in recorder().plot_calls]"),
)


def craft_from(t, inputs, params):
    """The student's fitted CRAFT, rebuilt in a replay kernel from their captured values."""
    t["threads"](inputs["threads"])
    model = t["model_in"](inputs["bn"], inputs["bn_train"])
    g, h = t["split"](model, 8)
    craft = t["craft"](g, h, params["concepts"], params["patch"], params["batch"])
    rows = t["torch"].from_numpy(inputs["rows"])
    t["fitted"](craft, rows, inputs["reducer_w"], params["class_id"], crops=inputs["crops"], u=inputs["u"],
                importances=inputs["importances"])
    return craft, rows


def replay_plots(t, inputs, params):
    """The four plots of Task 8, as the lab asks for them, from the student's CRAFT."""
    import matplotlib.pyplot as plt

    craft, rows = craft_from(t, inputs, params)
    craft.plot_image_concepts(rows[0])
    plt.show()
    craft.plot_concepts_importances()
    plt.show()
    craft.plot_concepts_crops(nb_crops=10, nb_most_important_concepts=5)
    plt.show()
    craft.plot_concept_attribution_maps(rows[:20], nb_most_important_concepts=5)
    plt.show()
    return {}


REPLAYS = {"craft_from": craft_from, "replay_plots": replay_plots}


def plots_same(c: Ctx) -> bool:
    try:
        return fit_same(c) and state_same(c, "importance") and identical(
            c.s("importance.sensitivity"), c.r("importance.sensitivity"))
    except LookupError:
        return False


def craft_inputs(c: Ctx) -> tuple[dict, dict]:
    """(inputs, params) of a replay that rebuilds the student's fitted CRAFT (LookupError if not captured)."""
    concepts, patch, batch = settings(c.s, "fit")
    inputs = {k: c.s(f"importance.{k}") for k in ("bn", "bn_train", "threads")} | {
        "rows": c.s("preprocess.rows"), "reducer_w": c.s("fit.reducer_w"), "crops": c.s("fit.crops"),
        "u": c.s("fit.u"), "importances": c.s("importance.sensitivity")}
    return inputs, {"concepts": concepts, "patch": patch, "batch": batch, "class_id": RABBIT_CLASS}


def requests(c: Ctx) -> list:
    if plots_same(c):
        return []
    try:
        inputs, params = craft_inputs(c)
    except LookupError:
        return []
    return [Request("plots", "replay_plots", inputs, params)]


def displayed(shown: dict, cells) -> list[bytes]:
    return [png for cell in cells for png in getattr(shown.get(cell), "pngs", ())]


def recorded(c: Ctx) -> list[str]:
    return [str(n) for n in np.atleast_1d(c.s("plots.names")).tolist()[int(c.s("plots_start.calls")):]]


def check_plots(c: Ctx) -> Verdict:
    s = c.s
    reference = plots_same(c)
    expected = (lambda: displayed(c.ref_shown, PLOT_CELLS)) if reference else (lambda: c.x_figures.get("plots", []))

    def called():
        missing = [p for p in PLOTS if p not in recorded(c)]
        return not missing, f"not called in the plot cells: {missing}"

    on_cpu = lambda: np.atleast_1d(s("plots.on_cpu")).astype(bool).tolist()  # noqa: E731
    return Verdict("check_plots", (
        check("the four plots asked, displayed", True, SHOWN,
              lambda: figures_match(displayed(c.shown, PLOT_CELLS), expected(), "the plot cells")),
        check("the four plot methods called (kit recorder)", True, KERNEL, called),
        check("images on the CPU (kit recorder)", True, KERNEL, lambda: (all(on_cpu()), f"on CPU: {on_cpu()}")),
    ), "figures compared with the reference run's" if reference else
        "figures compared with those the grader drew from the student's own CRAFT")


RULES = {"check_plots": check_plots}
