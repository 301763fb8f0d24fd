"""Real `nbgrader autograde` runs: the reference gets full marks, the blank 0, and the
handout's two mistakes (a fresh classifier head, no eval mode) lose their points."""
from __future__ import annotations

import nbformat
import pytest

from conftest import build_submission, reference_answers
from grader import autograde

HANDOUT_H = """children = list(model.children())
g = nn.Sequential(*children[:8])
h = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Dropout(p=0.0),
                  nn.Linear(in_features=2048, out_features=1000, bias=True), nn.Identity())
h = h.to(device)"""


def import_xplique_first(nb):
    """A student who adds a cell at the very top importing xplique (TensorFlow) before torch."""
    nb.cells.insert(0, nbformat.v4.new_code_cell("import xplique\nfrom xplique.concepts import CraftTorch"))


SUBMISSIONS = {
    "reference": ({}, None),
    "blank": (None, None),
    "handout_h": ({"answer_split": HANDOUT_H}, None),
    "train_mode": ({"answer_eval": "pass  # forgot model.eval()"}, None),
    "xplique_first": ({}, import_xplique_first),
}


@pytest.fixture(scope="module")
def graded(course, tmp_path_factory):
    work = tmp_path_factory.mktemp("autograde")
    autograde.prepare_gradebook(course, work)
    answers = reference_answers(course)
    env = autograde.grading_env(course, work, n_images=4)
    results = {}
    for student, (overrides, edit) in SUBMISSIONS.items():
        chosen = None if overrides is None else {**answers, **overrides}
        path = build_submission(work / "incoming" / f"{student}.ipynb", chosen, course, edit)
        autograde.submit(course, work, student, path)
        result = autograde.autograde(course, work, student, env)
        results[student] = (result, autograde.cell_scores(course, work, student))
    return results


def test_reference_solution_gets_full_marks(graded):
    result, cells = graded["reference"]
    assert result.score == result.max_score > 0, (cells, result.log[-3000:])


def test_blank_student_notebook_gets_zero(graded):
    result, cells = graded["blank"]
    assert result.score == 0, cells


def lost(graded, student):
    reference = graded["reference"][1]
    return {name: reference[name] - score for name, score in graded[student][1].items()
            if score != reference[name]}


def test_the_handouts_fresh_linear_head_fails_the_h_check_only(graded):
    """h(g(x)) == model(x) is a hidden test: the handout's nn.Linear(2048, 1000) must fail it."""
    assert lost(graded, "handout_h") == {"check_h": 2}


def test_a_model_left_in_train_mode_loses_the_eval_checks_only(graded):
    assert lost(graded, "train_mode") == {"check_eval": 1, "check_model_untouched": 1}


def test_grading_survives_a_student_who_imports_xplique_first(graded):
    result, cells = graded["xplique_first"]
    assert result.score == result.max_score, (cells, result.log[-3000:])
