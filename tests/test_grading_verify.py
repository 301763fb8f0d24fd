"""The CRAFT lab's verification rules (grader/labs/craft_lab) on synthetic evidence, no kernel.

A synthetic reference run holds every captured name; a student is a copy with changes. Each
test says what a student did and what the rules must conclude: which cells pass, which replays
are asked for, and that nothing the kernel merely reports can earn a point. The rules on real
runs, replays included, are tested by the sample submissions (test_grading_batch.py) and the
tamper suite (test_grading_tamper.py).
"""
from __future__ import annotations

import copy
import io

import nbformat
import numpy as np
import pytest

from conftest import COURSE
from grader import lab, verdicts
from grader.evidence import Displayed
from grader.labs.craft_lab import common
from grader.replay import Replayed
from grader.verdicts import Basis, Check, Verdict

LAB = lab.load(COURSE)
SEED = 11
SOURCE = nbformat.read(COURSE.source_notebook, as_version=4)


def png(seed: int, size=(40, 30), blank=False) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.full((*size, 3), 255, np.uint8) if blank else rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def synthetic_reference(n: int = 2, r: int = 3, patch: int = 80) -> dict[str, np.ndarray]:
    """Evidence of a correct run, self-consistent where the rules recompute (crops, curves, selection)."""
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(n, 3, 256, 256)).astype(np.float32)
    crops = common.crops_of(rows, patch)
    u, w = rng.uniform(size=(len(crops), r)), rng.uniform(size=(r, 8))
    importances = rng.uniform(size=r)
    bn, bn_train = rng.normal(size=12), np.zeros(4, dtype=bool)
    threads = np.array([1, 1])
    fc_w, fc_b = rng.normal(size=8), np.asarray(rng.normal())
    u_images = rng.uniform(size=(n, 8, 8, r))
    order = np.argsort(importances)[::-1]
    orders = common.random_orders(r, 10)
    curve = common.deletion_curve(u_images, w, order, fc_w, fc_b)
    curves = np.stack([common.deletion_curve(u_images, w, o, fc_w, fc_b) for o in orders])
    parent, sub_idx = common.recursion_selection(u, importances)
    secret = common.transform_expected(common.secret_images(SEED))
    logits, latent, latent3 = rng.normal(size=(2, 5)), rng.uniform(size=(2, 8, 2, 2)), rng.uniform(size=(2, 4, 4, 4))
    fit = dict(settings=(r, patch, 64), crops=crops, u=u, w=w, reducer_w=w, rng=common.seeded_state(), threads=threads,
               class_id=common.RABBIT_CLASS, bn=bn, bn_train=bn_train)
    values = {
        "eval": dict(as_is=logits, training=False, modules_training=0, bn=bn),
        "split": dict(g_is_module=True, h_is_module=True, g=latent, h=logits, model=logits, fc_w=fc_w, fc_b=fc_b),
        "transform": dict(out=secret, is_tensor=True, shape=(3, 256, 256), dtype="torch.float32", spec="[]"),
        "preprocess": dict(is_tensor=True, shape=rows.shape, device="cpu", n_images=n, rows=rows),
        "craft": dict(is_craft=True, concepts=r, patch=patch, batch=64, device="cuda", kernel_device="cuda",
                      uses_g=True, uses_h=True),
        "fit": dict(fit, as_is=logits, training=False, modules_training=0),
        "importance": dict(value=importances, is_ndarray=True, sensitivity=importances, threads=threads, bn=bn,
                           bn_train=bn_train),
        "plots_start": dict(calls=0),
        "plots": dict(names=list(LAB.tasks.plots.PLOTS), on_cpu=[True] * 4),
        "split3": dict(g_is_module=True, h_is_module=True, g=latent3, h=logits, first7=latent3, model=logits, bn=bn,
                       bn_train=bn_train),
        "fit3": dict(fit, is_craft=True, distinct=True, device="cuda", uses_split3=True, importances=importances,
                     is_ndarray=True, sensitivity=importances),
        "local_start": dict(calls=4),
        "local": dict(value=importances, is_ndarray=True, order=order),
        "local_plot": dict(names=[*LAB.tasks.plots.PLOTS, "plot_image_concepts"]),
        "setup": dict(u_images=u_images, random_orders=orders),
        "deletion": dict(order=order, curve=curve, random_curves=curves),
        "auc": dict(auc_importance=np.trapezoid(curve, dx=1 / r), auc_random=np.trapezoid(curves, dx=1 / r, axis=1).mean()),
        "rec_select": dict(parent=parent, parent_is_int=True, sub_idx=sub_idx),
        "rec_fit": dict(is_craft=True, distinct=True, uses_split3=True, settings=(common.N_SUB, 256, 64),
                        crops=common.resize_bilinear(crops[sub_idx], 256).astype(np.float32),
                        u=rng.uniform(size=(len(sub_idx), common.N_SUB)), w=rng.uniform(size=(common.N_SUB, 4)),
                        rng=common.seeded_state(), threads=threads, class_id=common.RABBIT_CLASS, bn=bn,
                        bn_train=bn_train),
    }
    return {f"{group}.{k}": np.asarray(v) for group, items in values.items() for k, v in items.items()}


REFERENCE = synthetic_reference()
PLOT_CELLS = LAB.tasks.plots.PLOT_CELLS
SHOWN = {cell: Displayed((png(i),)) for i, cell in enumerate(PLOT_CELLS)} | {
    "gf_answer_local_plot": Displayed((png(9),))}


def run(student: dict, shown=SHOWN, replayed: Replayed | None = None, seen: list | None = None) -> dict[str, Verdict]:
    def replay(requests):
        if seen is not None:
            seen.extend(requests)
        return replayed or Replayed()
    return LAB.check(student, REFERENCE, shown, SHOWN, SEED, replay)


def failing(cells: dict[str, Verdict]) -> dict[str, list[str]]:
    return {g: v.reasons() for g, v in cells.items() if not v.passed}


def student(**changes) -> dict:
    s = copy.deepcopy(REFERENCE)
    for name, value in changes.items():
        if value is None:
            s.pop(name.replace("__", "."), None)
        else:
            s[name.replace("__", ".")] = np.asarray(value)
    return s


# ============================================================================ the rules as a whole

def test_the_reference_verifies_against_itself_without_any_replay():
    seen = []
    assert failing(run(REFERENCE, seen=seen)) == {} and seen == []
    assert LAB.reference_problems(REFERENCE, SHOWN, SEED) == []


def test_every_graded_cell_has_a_rule_and_every_rule_rests_on_trusted_computation():
    graded = {c.metadata.nbgrader["grade_id"] for c in SOURCE.cells
              if c.metadata.get("nbgrader", {}).get("grade") and not c.metadata.nbgrader.get("solution")}
    assert set(LAB.RULES) == graded
    for grade_id, verdict in run(REFERENCE).items():
        assert any(c.basis.trusted for c in verdict.checks), grade_id


def test_checks_on_what_the_kernel_reports_can_only_take_points_away():
    kernel_only = Verdict("x", (Check("flag", True, True, Basis.KERNEL), Check("own", True, True, Basis.OWN)))
    assert not kernel_only.passed and verdicts.NO_TRUSTED in kernel_only.reasons()
    assert Verdict("x", (Check("ref", True, False, Basis.REFERENCE), Check("flag", True, True, Basis.KERNEL))).passed
    assert not Verdict("x", (Check("ref", True, False, Basis.REFERENCE), Check("flag", False, True, Basis.KERNEL))).passed


def test_every_captured_name_is_declared_once_and_every_rule_reads_declared_names():
    names = [n for point in LAB.CAPTURES for n in point.names]
    assert len(names) == len(set(names)) and set(REFERENCE) == set(names)


def test_a_student_is_never_asked_for_what_only_the_reference_gives():
    only = {n for point in LAB.CAPTURES for n in point.reference_only}
    assert only and not only & {n for point in LAB.CAPTURES for n in point.names_for(reference=False)}
    assert failing(run({k: v for k, v in REFERENCE.items() if k not in only})) == {}


def test_the_constants_are_the_notebooks_and_craftlabs():
    import craftlab

    setup = next(c.source for c in SOURCE.cells if c.get("id") == "gf_recursion_setup")
    assert f"N_SUB = {common.N_SUB}" in setup and f"MIN_SUB_CROPS = {common.MIN_SUB_CROPS}" in setup
    assert (craftlab.SEED, craftlab.RABBIT_CLASS) == (common.SEED, common.RABBIT_CLASS)


# ============================================================================ forged or wrong evidence

def test_a_missing_capture_costs_only_the_cells_that_need_it_and_says_why():
    s = {k: v for k, v in REFERENCE.items() if not k.startswith("importance.")}
    s["error.importance.value"] = np.asarray("no evidence was sent (the kernel never got there)")
    bad = failing(run(s))
    assert "check_importance" in bad and "no evidence" in " ".join(bad["check_importance"])
    assert "check_fit" not in bad and "check_g" not in bad


def test_a_changed_model_opens_no_weaker_comparison_for_g_and_h():
    s = student(split__model=REFERENCE["split.model"] + 1, split__g=REFERENCE["split.g"] * 1.01,
                split__h=REFERENCE["split.h"] + 1)
    bad = failing(run(s))
    assert {"check_g", "check_h"} <= set(bad), "g and h are always compared with the reference's"


def test_a_model_left_in_training_mode_fails_eval_whatever_its_flags_say():
    s = student(eval__as_is=REFERENCE["eval.as_is"] + 0.5)   # flags forged: training False, 0 modules
    assert set(failing(run(s))) == {"check_eval"}


def test_a_forged_seed_record_does_not_earn_an_unseeded_fit():
    s = student(fit__u=REFERENCE["fit.u"] * 1.3)   # the recorder still says "seeded"
    bad = failing(run(s, replayed=Replayed()))
    assert "check_fit" in bad and "U and W of a seeded fit" in " ".join(bad["check_fit"])


def test_other_thread_counts_mean_a_replay_and_a_missing_replay_earns_nothing():
    seen = []
    s = student(fit__threads=[2, 1], fit__u=REFERENCE["fit.u"] * 1.3)
    bad = failing(run(s, seen=seen))
    assert "fit" in [r.name for r in seen], "the fit is recomputed with the student's thread counts"
    assert "check_fit" in bad and "missing" in " ".join(bad["check_fit"])


def test_a_fit_of_other_images_is_judged_on_a_replay_of_the_students_own_inputs():
    rows = REFERENCE["preprocess.rows"] * 2
    crops = common.crops_of(rows, 80)
    u2, w2 = REFERENCE["fit.u"] + 1, REFERENCE["fit.w"] + 1
    s = student(preprocess__rows=rows, fit__crops=crops, fit__u=u2, fit__w=w2)
    seen = []
    fair = Replayed({"fit.u": u2, "fit.w": w2, "fit.reducer_w": w2,
                     "preprocess.rows": rows[[0, -1]], "preprocess.secret": REFERENCE["transform.out"]})
    assert "check_fit" not in failing(run(s, replayed=fair, seen=seen))
    assert {"preprocess", "fit"} <= {r.name for r in seen}
    assert "check_fit" in failing(run(s, replayed=Replayed({"fit.u": u2 * 2, "fit.w": w2})))


def test_crops_that_are_not_cut_from_images_preprocessed_fail():
    s = student(fit__crops=REFERENCE["fit.crops"][::-1])
    assert "check_fit" in failing(run(s))


def test_fake_recorder_entries_without_the_figures_earn_no_plot_points():
    shown = dict(SHOWN) | {"answer_plot_crops": Displayed()}
    bad = failing(run(REFERENCE, shown=shown))
    assert "check_plots" in bad and "3 of 4 expected figures" in " ".join(bad["check_plots"])


def test_a_blank_figure_of_the_right_size_is_not_the_figure_asked():
    shown = dict(SHOWN) | {"answer_plot_maps": Displayed((png(3, blank=True),))}
    assert "check_plots" in failing(run(REFERENCE, shown=shown))


def test_figures_displayed_in_other_plot_cells_still_count():
    shown = dict(SHOWN) | {"answer_plot_image": Displayed((png(0), png(1))), "answer_plot_importances": Displayed()}
    assert "check_plots" not in failing(run(REFERENCE, shown=shown))


def test_a_preprocess_after_another_transform_needs_the_rebuilt_transform():
    rows = REFERENCE["preprocess.rows"] * 0.5
    s = student(preprocess__rows=rows, transform__out=REFERENCE["transform.out"] * 0.5,
                fit__crops=common.crops_of(rows, 80))
    ok = Replayed({"preprocess.rows": rows[[0, -1]], "preprocess.secret": REFERENCE["transform.out"] * 0.5})
    assert "check_preprocess" not in failing(run(s, replayed=ok))
    assert "check_transform" in failing(run(s, replayed=ok))
    unfaithful = Replayed({"preprocess.rows": rows[[0, -1]], "preprocess.secret": REFERENCE["transform.out"]})
    assert "check_preprocess" in failing(run(s, replayed=unfaithful)), "the rebuild must match on the secret images"
    assert "check_preprocess" in failing(run(s)), "no rebuild (custom code): nothing earns this point"


def test_a_deletion_curve_is_recomputed_and_an_area_from_the_earlier_curve():
    s = student(deletion__curve=REFERENCE["deletion.curve"] + 0.5)
    bad = failing(run(s))
    assert "gf_check_deletion" in bad and "gf_check_auc" in bad, "the areas no longer match the curve sent before"
    s = student(auc__auc_importance=np.trapezoid(REFERENCE["deletion.curve"]))
    assert set(failing(run(s))) == {"gf_check_auc"}


def test_an_ascending_selection_loses_only_the_selection():
    u = REFERENCE["fit.u"]
    parent = int(np.argmax(REFERENCE["importance.value"]))
    dominated = u.argmax(axis=1) == parent
    ascending = np.lexsort((u[:, parent], ~dominated))[:max(int(dominated.sum()), common.MIN_SUB_CROPS)]
    if np.array_equal(ascending, REFERENCE["rec_select.sub_idx"]):
        pytest.skip("the synthetic U has ties: ascending equals descending")
    s = student(rec_select__sub_idx=ascending,
                rec_fit__crops=common.resize_bilinear(REFERENCE["fit.crops"][ascending], 256).astype(np.float32))
    fair = Replayed({"rec_fit.u": REFERENCE["rec_fit.u"], "rec_fit.w": REFERENCE["rec_fit.w"]})
    assert set(failing(run(s, replayed=fair))) == {"gf_check_recursion_select"}


def test_decide_flags_a_cell_that_passed_in_the_kernel_while_a_visible_check_fails_here():
    s = student(eval__as_is=REFERENCE["eval.as_is"] + 0.5)
    cells = run(s)
    scores, tampering = verdicts.decide(cells, {"check_eval": 1.0}, {g: 1.0 for g in cells})
    assert scores["check_eval"] == 0.0 and [t.grade_id for t in tampering] == ["check_eval"]
    with pytest.raises(ValueError, match="no verification rule"):
        verdicts.decide(cells, {}, {"unknown_cell": 1.0})


def test_same_figure_tolerates_nothing_but_rendering_noise():
    a = png(5)
    assert common.same_figure(a, a) and not common.same_figure(a, png(6))
    assert not common.same_figure(a, png(5, size=(41, 30))) and not common.same_figure(b"not a png", a)


def test_crops_of_is_torchs_unfold_and_resize_bilinear_is_torchs_interpolate():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(2, 3, 256, 256)).astype(np.float32)
    patches = torch.nn.functional.unfold(torch.from_numpy(x), kernel_size=80, stride=64)
    expected = patches.transpose(1, 2).contiguous().view(-1, 3, 80, 80).numpy()
    assert np.array_equal(common.crops_of(x, 80), expected)
    resized = torch.nn.functional.interpolate(torch.from_numpy(expected[:4]), size=256, mode="bilinear",
                                              align_corners=False).numpy()
    assert np.abs(common.resize_bilinear(expected[:4], 256) - resized).max() < 1e-5
