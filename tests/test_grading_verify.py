"""The trusted verifier (grader/verify.py) on the artefacts of grader/artefacts.py.

Fast unit tests on small synthetic artefact dicts (no kernel), and on the capture snippet and
the artefact reader. The verifier on real runs, through the whole grading pipeline, is tested
by the sample submissions (test_grading_batch.py) and the tamper suite (test_grading_tamper.py).
"""
from __future__ import annotations

import io
import zipfile

import nbformat
import numpy as np
import pytest

from conftest import COURSE
from grader import artefacts, verify
from grader.samples import max_points
from submissions import SAMPLES

SOURCE = nbformat.read(COURSE.source_notebook, as_version=4)
MAX_POINTS = max_points(SOURCE)
SAMPLE = {sample.name: sample for sample in SAMPLES}


# ============================================================================ synthetic runs

def synthetic_run(patch: int = 80, fit_seed: int = 0, n: int = 2, r: int = 3) -> dict[str, np.ndarray]:
    """A small, self-consistent set of artefacts: what a correct run with these settings
    would capture (model parts from a fixed seed; the fit's U and W from fit_seed)."""
    model_rng, fit_rng = np.random.default_rng(100), np.random.default_rng(fit_seed)
    images = model_rng.integers(0, 256, size=(n, 224, 224, 3), dtype=np.uint8)
    rows = verify.transform_expected(images)
    logits, latent, latent3 = (model_rng.normal(size=(2, 5)), model_rng.uniform(size=(2, 8, 2, 2)),
                               model_rng.uniform(size=(2, 4, 4, 4)))
    fc_w, fc_b = model_rng.normal(size=8), np.asarray(model_rng.normal())
    bn = model_rng.uniform(size=(5, 2))
    n_crops = n * ((256 - patch) // int(0.8 * patch) + 1) ** 2
    u3, w3 = model_rng.uniform(size=(n * 9, r)), model_rng.uniform(size=(r, 4))
    importances3 = model_rng.uniform(size=r)
    u, w = fit_rng.uniform(size=(n_crops, r)), fit_rng.uniform(size=(r, 8))
    u_images = fit_rng.uniform(size=(n, 8, 8, r))
    importances, local = fit_rng.uniform(size=r), fit_rng.uniform(size=r)
    orders = verify.random_orders(r, 10)
    order = np.argsort(importances)[::-1]
    curve = verify.deletion_curve(u_images, w, order, fc_w, fc_b)
    curves = np.stack([verify.deletion_curve(u_images, w, o, fc_w, fc_b) for o in orders])
    ends80 = verify._crop_windows(rows, 80)
    fit_common = dict(rng=verify._seeded_state(), threads=2, class_id=330, bn=bn)
    values = {
        "eval": dict(model_training=False, modules_training=0, bn=bn),
        "split": dict(g_is_module=True, h_is_module=True, g=latent, first8=latent, h=logits, model=logits,
                      fc_w=fc_w, fc_b=fc_b),
        "transform": dict(images=images[:3], is_tensor=True, shape=(3, 256, 256), dtype="torch.float32",
                          out=rows[:3]),
        "preprocess": dict(n_images=n, is_tensor=True, shape=(n, 3, 256, 256), device="cpu", rows=rows[[0, -1]],
                           transformed=rows[[0, -1]]),
        "craft": dict(is_craft=True, concepts=r, patch=patch, batch=64, device="cpu", kernel_device="cpu",
                      uses_g=True, uses_h=True),
        "fit": dict(crops_shape=(n_crops, 3, patch, patch), crops_ends=verify._crop_windows(rows, patch), u=u, w=w,
                    channels=8, model_training=False, modules_training=0, **fit_common),
        "importance": dict(value=importances, is_ndarray=True, sensitivity=importances, concepts=r),
        "plots_start": dict(calls=0), "plot_image": dict(calls=1), "plot_importances": dict(calls=2),
        "plot_crops": dict(calls=3),
        "plots": dict(names=list(verify.PLOTS), on_cpu=[True] * 4, counts=[1, 0, 0, min(20, n)], n_images=n),
        "local_start": dict(calls=4), "local_answer": dict(calls=4),
        "split3": dict(g_is_module=True, h_is_module=True, g=latent3, first7=latent3, h=logits, model=logits),
        "fit3": dict(is_craft=True, distinct=True, settings=(r, 80, 64), device="cpu", uses_split3=True,
                     crops_shape=(n * 9, 3, 80, 80), crops_ends=ends80, u=u3, w=w3, channels=4,
                     importances=importances3, is_ndarray=True, sensitivity=importances3, **fit_common),
        "local": dict(value=local, is_ndarray=True, order=np.argsort(local)[::-1],
                      names=[*verify.PLOTS, "plot_image_concepts"], concepts=r, expected=local),
        "setup": dict(u_images=u_images, random_orders=orders),
        "deletion": dict(order=order, curve=curve, random_curves=curves,
                         auc_importance=np.trapezoid(curve, dx=1 / r),
                         auc_random=np.trapezoid(curves, dx=1 / r, axis=1).mean(),
                         importances=importances, w=w, concepts=r),
    }
    # Task G4 (drawn last, so the values above do not depend on it)
    parent, sub_idx = verify.recursion_selection(u, importances)
    source_ends = model_rng.uniform(size=(2, 3, patch, patch)).astype(np.float32)
    sub_u, sub_w = fit_rng.uniform(size=(len(sub_idx), verify.N_SUB)), fit_rng.uniform(size=(verify.N_SUB, 4))
    values["rec_select"] = dict(parent=parent, parent_is_int=True, sub_idx=sub_idx, u=u, importances=importances)
    values["rec_fit"] = dict(is_craft=True, distinct=True, uses_split3=True, settings=(verify.N_SUB, 256), side=256,
                             sub_idx=sub_idx, crops_shape=(len(sub_idx), 3, 256, 256),
                             crops_ends=verify.resize_bilinear(source_ends, 256).astype(np.float32),
                             source_ends=source_ends, u=sub_u, w=sub_w, channels=4, rng=verify._seeded_state(),
                             threads=2, class_id=330)
    return {f"{group}.{name}": np.asarray(value) for group, items in values.items() for name, value in items.items()}


# Figures each cell shows, as in a real run: the crops plot shows one figure per concept,
# the attribution maps a legend and the maps.
FIGURES = {cell: artefacts.Shown(figures=n) for cell, n in (
    ("answer_plot_image", 1), ("answer_plot_importances", 1), ("answer_plot_crops", 5), ("answer_plot_maps", 2),
    ("gf_answer_local_plot", 1))}
FULL = dict.fromkeys(verify.RULES, 1.0)  # unit tests: every cell worth 1 point
IN_KERNEL_FULL = dict(FULL)


def failing(verdicts: dict[str, verify.Verdict]) -> dict[str, list[str]]:
    return {g: [c.name for c in v.failed()] for g, v in verdicts.items() if not v.passed}


def test_the_synthetic_run_declares_every_artefact_and_verifies_fully():
    reference = synthetic_run()
    assert set(reference) == artefacts.NAMES
    assert failing(verify.verify(reference, reference, FIGURES)) == {}
    assert verify.reference_problems(reference, FIGURES) == []


def test_every_graded_cell_has_a_rule():
    assert set(verify.RULES) == set(MAX_POINTS)


def test_written_answers_need_no_rule_and_get_no_automatic_score():
    """Graded answer cells (markdown, scored by a TA in formgrader) wait for a person: decide()
    neither refuses them nor scores them."""
    from grader.samples import manual_points

    written = manual_points(SOURCE)
    assert written and not set(written) & set(verify.RULES)
    assert all(c.cell_type == "markdown" for c in SOURCE.cells if c.metadata.nbgrader.get("grade_id") in written)
    reference = synthetic_run()
    verdicts = verify.verify(reference, reference, FIGURES)
    scores, evidence = verify.decide(verdicts, {}, {**FULL, **written}, manual=written)
    assert scores == FULL and evidence == []
    with pytest.raises(ValueError, match="no verifier rule"):
        verify.decide(verdicts, {}, {**FULL, **written})


# ---------------------------------------------------------------------------- Task G4: recursion

def _cell(cell_id: str) -> str:
    return next(c.source for c in SOURCE.cells if c.id == cell_id)


def test_the_recursion_constants_and_selection_are_the_notebooks():
    """N_SUB and MIN_SUB_CROPS as the locked cell sets them; the reference answer selects what
    verify.recursion_selection does; at grading size (18 crops) there are always enough crops."""
    consts = {}
    exec(_cell("gf_recursion_setup"), {}, consts)
    assert (consts["N_SUB"], consts["MIN_SUB_CROPS"]) == (verify.N_SUB, verify.MIN_SUB_CROPS)
    assert verify.MIN_SUB_CROPS >= verify.N_SUB
    answer = "\n".join(line for line in _cell("gf_answer_recursion_select").splitlines() if "###" not in line)
    rng = np.random.default_rng(3)
    for trial in range(50):
        u = rng.uniform(size=(18, 10)) ** rng.uniform(1, 6)
        importances = rng.uniform(size=10)
        space = dict(np=np, crops_u=u, importances=importances, MIN_SUB_CROPS=verify.MIN_SUB_CROPS)
        exec(answer, space)
        parent, expected = verify.recursion_selection(u, importances)
        assert space["parent"] == parent and np.array_equal(space["sub_idx"], expected)
        dominated = np.flatnonzero(u.argmax(axis=1) == parent)
        assert len(expected) == max(len(dominated), verify.MIN_SUB_CROPS) >= verify.N_SUB
        assert list(expected[:len(dominated)]) == sorted(dominated, key=lambda i: -u[i, parent])


def test_resize_bilinear_is_torchs_interpolate():
    import torch

    x = np.random.default_rng(0).normal(size=(2, 3, 80, 80)).astype(np.float32)
    for side in (256, 160, 80):  # enlarging, as Task G4 does (shrinking differs by float32 rounding)
        expected = torch.nn.functional.interpolate(torch.from_numpy(x), size=side, mode="bilinear",
                                                   align_corners=False).numpy()
        assert np.abs(verify.resize_bilinear(x, side) - expected).max() < 1e-5


def test_an_ascending_selection_loses_only_the_selection_and_is_no_tampering():
    """The sample gf_recursion_ascending: the right count, every dominated crop, the wrong order.
    Its fit on those crops is judged on its own selection (no double penalty)."""
    reference = synthetic_run()
    student = dict(reference)
    u, parent = reference["rec_select.u"], int(reference["rec_select.parent"])
    dominated = u.argmax(axis=1) == parent
    wrong = np.lexsort((u[:, parent], ~dominated))[:len(reference["rec_select.sub_idx"])]
    assert not np.array_equal(wrong, reference["rec_select.sub_idx"])
    student["rec_select.sub_idx"] = student["rec_fit.sub_idx"] = wrong
    verdicts = verify.verify(student, reference, FIGURES)
    assert failing(verdicts) == {"gf_check_recursion_select": ["dominated first, by decreasing coefficient"]}
    assert verify.decide(verdicts, IN_KERNEL_FULL, FULL)[1] == []
    assert verdicts["gf_check_recursion_fit"].basis.startswith("own values: selected crops differ")


def test_a_wrong_recursion_selection_count_is_a_visible_failure():
    reference = synthetic_run()
    student = dict(reference, **{"rec_select.sub_idx": reference["rec_select.sub_idx"][:2]})
    verdicts = verify.verify(student, reference, FIGURES)
    assert "as many crops as dominated, MIN_SUB_CROPS at least" in failing(verdicts)["gf_check_recursion_select"]
    assert [e.grade_id for e in verify.decide(verdicts, IN_KERNEL_FULL, FULL)[1]] == ["gf_check_recursion_select"]


def test_an_unseeded_sub_fit_loses_only_the_recursion_fit():
    reference = synthetic_run()
    student = dict(reference)
    student["rec_fit.rng"] = verify._seeded_state(7)
    student["rec_fit.u"] = reference["rec_fit.u"][:, ::-1].copy()   # another NMF start, another U
    verdicts = verify.verify(student, reference, FIGURES)
    assert set(failing(verdicts)) == {"gf_check_recursion_fit"}
    failed = failing(verdicts)["gf_check_recursion_fit"]
    assert "numpy seeded right before fit" in failed
    assert "sub_u and sub_w equal the reference's (seeded fit, same inputs)" in failed


def test_sub_crops_that_are_not_the_resized_selection_fail_a_hidden_check():
    """Fitting craft_sub on the 80-pixel crops (patch_size 80) or on other crops."""
    reference = synthetic_run()
    student = dict(reference)
    student["rec_fit.crops_ends"] = reference["rec_fit.crops_ends"][::-1].copy()
    verdicts = verify.verify(student, reference, FIGURES)
    assert failing(verdicts) == {"gf_check_recursion_fit": ["fitted on crops[sub_idx] resized to the images' side"]}
    small = dict(reference, **{"rec_fit.settings": np.asarray((verify.N_SUB, 80)),
                               "rec_fit.crops_shape": np.asarray((6, 3, 80, 80))})
    assert {"N_SUB concepts, patch the images' side", "sub_crops shape"} <= set(
        failing(verify.verify(small, reference, FIGURES))["gf_check_recursion_fit"])


def test_a_verdict_is_all_or_nothing_and_only_visible_failures_are_tampering():
    ok = verify.Check("a", True, True, verify.OWN)
    hidden_fail = verify.Check("hidden", False, False, verify.REFERENCE, "gap 7.5")
    visible_fail = verify.Check("visible", False, True, verify.KERNEL, "not seeded")
    verdicts = {"x": verify.Verdict("x", (ok, hidden_fail)), "y": verify.Verdict("y", (ok, visible_fail)),
                "z": verify.Verdict("z", (ok, visible_fail)), "w": verify.Verdict("w", (ok,))}
    points = {"x": 2.0, "y": 2.0, "z": 1.0, "w": 3.0}
    scores, evidence = verify.decide(verdicts, {"x": 2.0, "y": 2.0, "z": 0.0, "w": 3.0}, points)
    assert scores == {"x": 0.0, "y": 0.0, "z": 0.0, "w": 3.0}
    assert [(e.grade_id, [c.name for c in e.checks]) for e in evidence] == [("y", ["visible"])]
    assert "not seeded" in evidence[0].summary() and evidence[0].to_dict()["grade_id"] == "y"


def test_decide_refuses_a_graded_cell_without_a_rule():
    with pytest.raises(ValueError, match="new_cell"):
        verify.decide({}, {}, {"new_cell": 1.0})


def test_a_missing_artefact_costs_only_the_cells_that_need_it_and_says_why():
    reference, student = synthetic_run(), synthetic_run()
    del student["importance.sensitivity"]
    student[artefacts.ERROR_PREFIX + "importance.sensitivity"] = np.asarray("AttributeError: 'NoneType' ...")
    verdicts = verify.verify(student, reference, FIGURES)
    assert failing(verdicts) == {"check_importance": ["craft.sensitivity set", "the global importances of craft"]}
    assert "AttributeError" in verdicts["check_importance"].failed()[0].detail


def test_a_wrong_patch_size_loses_only_check_craft():
    """No double penalty: later cells are checked on the student's own settings and values."""
    reference = synthetic_run()
    student = synthetic_run(patch=64, fit_seed=1)
    verdicts = verify.verify(student, reference, FIGURES)
    assert failing(verdicts) == {"check_craft": ["patch_size"]}
    assert verdicts["check_fit"].basis.startswith("own values")
    assert verdicts["check_fit"].to_dict()["checks"][0]["mode"] == verify.OWN


def test_an_unseeded_fit_with_the_right_settings_fails_against_the_reference():
    reference = synthetic_run()
    student = synthetic_run(fit_seed=5)  # consistent in itself, but not the reference's W
    student["fit.rng"] = np.asarray(verify._seeded_state(1))
    verdicts = verify.verify(student, reference, FIGURES)
    assert failing(verdicts) == {"check_fit": ["numpy seeded right before fit",
                                               "U and W equal the reference's (seeded fit, same inputs)"]}


def test_a_forged_recorder_state_is_still_caught_by_the_reference_w():
    reference = synthetic_run()
    student = synthetic_run(fit_seed=5)  # the recorder says seeded (forged), W says otherwise
    scores, evidence = verify.decide(verify.verify(student, reference, FIGURES), IN_KERNEL_FULL, FULL)
    assert scores["check_fit"] == 0.0 and [e.grade_id for e in evidence] == ["check_fit"]


def test_a_forged_recorder_without_figures_is_tampering():
    reference = synthetic_run()
    figures = {**FIGURES, "answer_plot_crops": artefacts.Shown()}  # a record made there, but no figure
    scores, evidence = verify.decide(verify.verify(reference, reference, figures), IN_KERNEL_FULL, FULL)
    assert scores["check_plots"] == 0.0
    assert [(e.grade_id, [c.name for c in e.checks]) for e in evidence] == [
        ("check_plots", ["a figure where a plot was made"])]
    assert "answer_plot_crops: 1 plot calls, no figure, no error" in evidence[0].summary()


def test_a_plot_call_that_raised_still_counts_as_a_call():
    """As in the visible test: the recorder saw the call; the cell's error is the student's own."""
    reference = synthetic_run()
    figures = {**FIGURES, "answer_plot_crops": artefacts.Shown(error=True)}
    assert failing(verify.verify(reference, reference, figures)) == {}


def test_plot_records_forged_before_the_plot_cells_are_tampering():
    reference, student = synthetic_run(), synthetic_run()
    # four records appended in an earlier cell, then only three real plots (crops forgotten;
    # plot_image_concepts records its own inner plot_concepts_importances call, as in a real run)
    real = ["plot_image_concepts", "plot_concepts_importances", "plot_concepts_importances",
            "plot_concept_attribution_maps"]
    student.update({"plots_start.calls": np.asarray(4), "plot_image.calls": np.asarray(6),
                    "plot_importances.calls": np.asarray(7), "plot_crops.calls": np.asarray(7),
                    "plots.names": np.asarray([*verify.PLOTS, *real]), "plots.on_cpu": np.ones(8, bool),
                    "plots.counts": np.asarray([1, 0, 0, 2, 1, 0, 0, 2]),
                    "local_start.calls": np.asarray(8), "local_answer.calls": np.asarray(8),
                    "local.names": np.asarray([*verify.PLOTS, *real, "plot_image_concepts"])})
    figures = {**FIGURES, "answer_plot_crops": artefacts.Shown()}
    scores, evidence = verify.decide(verify.verify(student, reference, figures), IN_KERNEL_FULL, FULL)
    assert [g for g, s in scores.items() if s == 0] == ["check_plots"]
    assert [(e.grade_id, [c.name for c in e.checks]) for e in evidence] == [
        ("check_plots", ["the four plot methods called"])]


def test_plots_made_in_other_cells_than_asked_still_count():
    reference, student = synthetic_run(), synthetic_run()
    # all four plots in the first plot cell, the local plot in the cell before its own
    student.update({"plot_image.calls": np.asarray(4), "plot_importances.calls": np.asarray(4),
                    "plot_crops.calls": np.asarray(4), "local_answer.calls": np.asarray(5)})
    figures = {"answer_plot_image": artefacts.Shown(9), "gf_answer_local": artefacts.Shown(1)}
    assert failing(verify.verify(student, reference, figures)) == {}


def test_the_handouts_head_fails_a_hidden_property_only_so_it_is_no_tampering():
    reference, student = synthetic_run(), synthetic_run()
    student["split.h"] = student["split.h"] + 7.5  # a fresh nn.Linear: right shape, wrong logits
    scores, evidence = verify.decide(verify.verify(student, reference, FIGURES), IN_KERNEL_FULL, FULL)
    assert [g for g, s in scores.items() if s == 0] == ["check_h"]
    assert evidence == []


def test_a_changed_model_is_judged_against_its_own_first_children():
    reference, student = synthetic_run(), synthetic_run()
    student["split.model"] = student["split.model"] + 0.5   # BatchNorm statistics moved in train mode
    student["split.first8"] = student["split.first8"] * 1.1
    student["split.g"] = student["split.first8"]            # g = the first 8 children of *this* model
    student["split.h"] = student["split.model"]
    assert failing(verify.verify(student, reference, FIGURES)) == {}
    student["split.g"] = reference["split.g"]               # the reference's g is not this model's
    assert failing(verify.verify(student, reference, FIGURES)) == {"check_g": ["g equals the first 8 children"]}


def test_batchnorm_statistics_moved_by_a_train_mode_forward_are_caught():
    reference, student = synthetic_run(), synthetic_run()
    for name in ("eval.bn", "fit.bn", "fit3.bn"):  # one statistic of one layer moved
        student[name] = student[name].copy()
        student[name][3, 0] += 1e-3
    failed = failing(verify.verify(student, reference, FIGURES))
    assert failed == {"check_eval": ["BatchNorm statistics unchanged"],
                      "check_model_untouched": ["BatchNorm statistics unchanged by the fit"]}


def test_an_area_outside_its_curve_is_tampering_when_the_kernel_said_ok():
    """An area above its curve (e.g. dx = 1 instead of 1/r) passes in the kernel only if its
    comparisons were rigged (tests/tamper.py, ALWAYS_IN_RANGE)."""
    reference, student = synthetic_run(), synthetic_run()
    student["deletion.auc_importance"] = np.asarray(student["deletion.curve"].max() + 1.0)
    scores, evidence = verify.decide(verify.verify(student, reference, FIGURES), IN_KERNEL_FULL, FULL)
    assert [g for g, s in scores.items() if s == 0] == ["gf_check_auc"]
    assert [c.name for c in evidence[0].checks] == ["auc_importance a number within its curve"]


def test_a_local_order_from_least_important_is_tampering_when_the_kernel_said_ok():
    reference, student = synthetic_run(), synthetic_run()
    student["local.order"] = student["local.order"][::-1].copy()
    scores, evidence = verify.decide(verify.verify(student, reference, FIGURES), IN_KERNEL_FULL, FULL)
    assert [g for g, s in scores.items() if s == 0] == ["gf_check_local"]
    assert "local_order most important first" in [c.name for c in evidence[0].checks]


def test_maps_of_too_few_images_fail_a_hidden_property_only():
    reference, student = synthetic_run(), synthetic_run()
    student["plots.counts"] = np.asarray([1, 0, 0, 1])  # one image where the first 2 (of 20) were due
    scores, evidence = verify.decide(verify.verify(student, reference, FIGURES), IN_KERNEL_FULL, FULL)
    assert failing(verify.verify(student, reference, FIGURES)) == {
        "check_plots": ["attribution maps of the first 20 images"]}
    assert evidence == []


def test_a_deletion_curve_that_is_not_its_orders_fails_the_hidden_check():
    reference, student = synthetic_run(), synthetic_run()
    student["deletion.curve"] = student["deletion.curve"][::-1].copy()  # keeps the ends' spread, not the values
    student["deletion.auc_importance"] = np.asarray(np.trapezoid(student["deletion.curve"], dx=1 / 3))
    failed = failing(verify.verify(student, reference, FIGURES))
    assert "the deletion curve of deletion_order" in failed["gf_check_deletion"]
    assert "gf_check_auc" not in failed


# ============================================================================ the artefact reader

def test_load_reads_back_what_a_snippet_saves(tmp_path):
    path = tmp_path / "g.npz"
    np.savez(path, **{"split.g": np.ones((2, 3), np.float32), "craft.device": np.asarray("cpu"),
                      "error.split.h": np.asarray("NameError: h")})
    got = artefacts.load(path)
    assert got["split.g"].dtype == np.float32 and got["split.g"].shape == (2, 3)
    assert got["craft.device"] == "cpu" and str(got["error.split.h"]) == "NameError: h"


@pytest.mark.parametrize("damage", ["truncated", "objects", "too_big", "lying_header", "not_zip"])
def test_load_refuses_damaged_or_hostile_files(tmp_path, damage):
    path = tmp_path / "x.npz"
    np.savez(path, a=np.arange(1000, dtype=np.float64))
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "objects":
        np.savez(path, a=np.array([{"x": 1}], dtype=object))
    elif damage == "lying_header":  # a header claiming 8 GB, with 8 KB of data behind it
        member = io.BytesIO()
        np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": (10**9,)})
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("a.npy", member.getvalue() + bytes(8000))
    elif damage == "not_zip":
        path.write_text("not an archive")
    with pytest.raises(artefacts.ArtefactError, match="x.npz"):
        artefacts.load(path, max_bytes=4000 if damage == "too_big" else artefacts.MAX_FILE_BYTES)


def test_load_run_keeps_what_it_can_and_says_why_the_rest_is_missing(tmp_path):
    folder = tmp_path / artefacts.ARTEFACT_DIR
    folder.mkdir()
    np.savez(folder / "eval.npz", **{"eval.model_training": np.asarray(False), "split.g": np.ones(3),
                                     "error.eval.bn": np.asarray("NameError: model")})
    (folder / "split.npz").write_bytes(b"PK\x03\x04 damaged")
    got = artefacts.load_run(tmp_path)
    assert got["eval.model_training"] == np.asarray(False)
    assert "split.g" not in got  # only the names a group declares are taken from its file
    assert "damaged" in str(got["error.split.g"]) and "NameError" in str(got["error.eval.bn"])
    assert "no capture after answer_fit" in str(got["error.fit.w"])


def test_the_snippet_guards_each_item_and_leaves_no_names_behind(tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    user = {"model": torch.nn.Sequential(torch.nn.BatchNorm1d(3))}
    exec(artefacts.CAPTURES["answer_eval"], user)
    exec(artefacts.CAPTURES["answer_craft"], user)  # no `craft` here: every item fails alone
    assert set(user) - {"__builtins__"} == {"model"}
    got = artefacts.load_run(tmp_path)
    assert got["eval.model_training"] == np.asarray(True) and got["eval.modules_training"] == 2
    assert got["eval.bn"].shape == (3, 2)
    assert "NameError" in str(got["error.craft.patch"]) and "craft.patch" not in got


def test_the_snippet_ignores_a_students_names_for_builtins(tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    shadows = dict.fromkeys(("sum", "len", "dict", "eval", "exec", "open", "print", "type", "isinstance", "np"), None)
    user = {"model": torch.nn.Sequential(torch.nn.BatchNorm1d(3)).eval(), **shadows}
    exec(artefacts.CAPTURES["answer_eval"], user)
    got = artefacts.load_run(tmp_path)
    assert got["eval.model_training"] == np.asarray(False) and got["eval.modules_training"] == 0
    assert set(user) - {"__builtins__"} == {"model", *shadows}


def test_the_probe_is_seeded_and_where_the_snippets_read_it(tmp_path):
    first, again = artefacts.write_probe(tmp_path, 7), np.load(artefacts.write_probe(tmp_path / "b", 7))
    assert first == tmp_path / artefacts.ARTEFACT_DIR / artefacts.PROBE_FILE
    assert np.array_equal(np.load(first), again) and again.shape == artefacts.PROBE_SHAPE
    assert not np.array_equal(again, np.load(artefacts.write_probe(tmp_path / "c", 8)))


def test_cell_outputs_counts_figures_and_errors_per_cell():
    nb = {"cells": [{"cell_type": "code", "id": "a", "outputs": [
        {"output_type": "display_data", "data": {"image/png": "..", "text/plain": "<Figure>"}},
        {"output_type": "stream", "text": "x"}]},
        {"cell_type": "code", "id": "b", "outputs": [{"output_type": "error", "ename": "ValueError"},
                                                     {"output_type": "display_data", "data": {"text/plain": "x"}}]},
        {"cell_type": "markdown", "id": "c", "source": ""}]}
    assert artefacts.cell_outputs(nb) == {"a": artefacts.Shown(1, False), "b": artefacts.Shown(0, True)}
