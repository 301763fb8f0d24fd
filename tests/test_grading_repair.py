"""Checking and repairing submitted notebooks against the release version (nothing is executed)."""
from __future__ import annotations

import copy
import json

import nbformat
import pytest

from grader import repair
from submissions import delete_cells, one_big_cell, strip_nbgrader, truncate


@pytest.fixture(scope="module")
def release(course):
    return nbformat.read(course.student_notebook, as_version=4)


@pytest.fixture
def data(release):
    """The release notebook as JSON, with each source as one string."""
    data = json.loads(nbformat.writes(release))
    for cell in data["cells"]:
        cell["source"] = "".join(cell["source"])
    return data


def grade_ids(nb):
    return [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells]


def graded_ids(nb):
    return [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]


def run(data, release):
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return repair.repair(raw, release, "craft_lab.ipynb")


def test_an_untouched_notebook_passes_unchanged(data, release):
    fixed = run(data, release)
    assert (fixed.error, fixed.notes, fixed.review) == (None, [], [])
    assert grade_ids(fixed.nb) == grade_ids(release)


@pytest.mark.parametrize("keep_ids, how", [(True, "by cell id"), (False, "by source")])
def test_stripped_metadata_is_restored(data, release, keep_ids, how):
    answer = next(c for c in data["cells"] if c.get("id") == "answer_fit")
    answer["source"] = "np.random.seed(SEED)\ncrops, crops_u, concept_bank_w = craft.fit(images_preprocessed, 330)"
    fixed = run(json.loads(strip_nbgrader(keep_ids)(data)), release)
    assert fixed.error is None and fixed.review == []
    assert "nbgrader metadata was missing" in fixed.notes[0] and how in fixed.notes[0]
    assert grade_ids(fixed.nb) == grade_ids(release)
    fit = next(c for c in fixed.nb.cells if c.metadata["nbgrader"]["grade_id"] == "answer_fit")
    assert "craft.fit(images_preprocessed, 330)" in fit.source  # the student's answer is kept
    nbformat.validate(fixed.nb)


def test_stripped_metadata_with_an_answer_cell_gone_is_flagged(data, release):
    fixed = run(json.loads(strip_nbgrader()(json.loads(delete_cells("answer_eval")(data)))), release)
    assert fixed.error is None
    assert any("answer cells not found: answer_eval" in r for r in fixed.review)
    assert grade_ids(fixed.nb) == grade_ids(release)  # a blank answer cell stands in for it


def test_a_deleted_test_cell_is_put_back_in_place_and_flagged(data, release):
    fixed = run(json.loads(delete_cells("check_h", "check_fit")(data)), release)
    assert grade_ids(fixed.nb) == grade_ids(release)
    assert graded_ids(fixed.nb) == graded_ids(release)
    assert "check_h, check_fit" in fixed.review[0]


def test_an_edited_provided_cell_is_reported(data, release):
    cell = next(c for c in data["cells"] if c.get("id") == "load_data")
    cell["source"] = "images = craftlab.load_rabbits()[:1]"
    fixed = run(data, release)
    assert fixed.notes == ["provided cells edited, nbgrader puts the originals back: load_data"]


def test_an_edited_provided_cell_without_metadata_is_matched_by_similarity(data, release):
    cell = next(c for c in data["cells"] if c.get("id") == "check_eval")
    cell["source"] = cell["source"].replace("model.eval() before", "model.eval() first before")
    fixed = run(json.loads(strip_nbgrader()(data)), release)
    assert grade_ids(fixed.nb) == grade_ids(release)
    assert "check_eval" in fixed.notes[1]


def test_a_copied_test_cell_loses_its_metadata(data, release):
    copy_of = copy.deepcopy(next(c for c in data["cells"] if c.get("id") == "check_g"))
    copy_of["id"] = "copied"
    data["cells"].append(copy_of)
    fixed = run(data, release)
    assert graded_ids(fixed.nb) == graded_ids(release)
    assert "check_g" in fixed.notes[0]


def test_moved_cells_are_flagged(data, release):
    ids = [c.get("id") for c in data["cells"]]
    a, b = ids.index("check_g"), ids.index("check_h")
    data["cells"][a], data["cells"][b] = data["cells"][b], data["cells"][a]
    fixed = run(data, release)
    assert "out of the notebook's order" in fixed.review[0]
    assert graded_ids(fixed.nb) == graded_ids(release)


def test_damaged_metadata_is_treated_as_missing(data, release):
    for cell in data["cells"][:5]:
        cell["metadata"]["nbgrader"] = ["not", "a", "dict"]
    data["cells"][5]["metadata"] = None
    fixed = run(data, release)
    assert fixed.error is None and grade_ids(fixed.nb) == grade_ids(release)


def test_old_nbformat_gets_cell_ids(data, release):
    fixed = run(json.loads(strip_nbgrader(keep_ids=False)(data)), release)
    assert fixed.nb.nbformat_minor >= 5
    assert len({c.id for c in fixed.nb.cells}) == len(fixed.nb.cells)


@pytest.mark.parametrize("make, reason", [
    (lambda d: truncate(d), "invalid JSON"),
    (lambda d: b"\xff\xfe\x00garbage", "not UTF-8"),
    (lambda d: b'{"hello": 1}', "no list of cells"),
    (lambda d: b'{"cells": [{"cell_type": "code"}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}',
     "not a notebook"),
    (lambda d: one_big_cell(d), "does not look like craft_lab.ipynb"),
])
def test_files_that_cannot_be_graded_say_why(data, release, make, reason):
    fixed = run(make(data), release)
    assert fixed.nb is None and reason in fixed.error


WRITTEN = ["written_concepts", "written_local", "written_deletion", "written_layers"]


@pytest.mark.parametrize("keep_ids", [True, False])
def test_written_answers_that_lost_their_metadata_are_restored_with_the_students_text(data, release, keep_ids):
    """Colab drops nbgrader's metadata (and, saving nbformat 4.4, the cell ids) from markdown
    cells too: the written answers are found again and stay answers for a TA to grade."""
    from nbgrader import utils as nbu

    answers = {gid: f"My answer to {gid}: the crops show *fur*." for gid in WRITTEN[:3]}
    for cell in data["cells"]:
        if cell.get("id") in answers:
            cell["source"] = answers[cell["id"]]
    fixed = run(json.loads(strip_nbgrader(keep_ids)(data)), release)
    assert fixed.error is None and fixed.review == []
    assert "nbgrader metadata was missing" in fixed.notes[0]
    assert grade_ids(fixed.nb) == grade_ids(release)
    by_gid = {c.metadata["nbgrader"]["grade_id"]: c for c in fixed.nb.cells if "nbgrader" in c.metadata}
    released = {c.metadata["nbgrader"]["grade_id"]: c for c in release.cells}
    for gid in WRITTEN:
        cell = by_gid[gid]
        assert cell.cell_type == "markdown" and cell.metadata["nbgrader"] == released[gid].metadata["nbgrader"]
        assert nbu.is_grade(cell) and nbu.is_solution(cell)
        if gid in answers:  # answered: nbgrader leaves it to a person (no automatic score)
            assert cell.source == answers[gid]
            assert nbu.determine_grade(cell) == (None, cell.metadata["nbgrader"]["points"])
        else:  # left blank: the checksum is back, so nbgrader scores it 0 ("no response")
            assert cell.source == "YOUR ANSWER HERE"
            assert nbu.determine_grade(cell) == (0, cell.metadata["nbgrader"]["points"])
    nbformat.validate(fixed.nb)


def test_a_deleted_written_answer_is_put_back_blank(data, release):
    fixed = run(json.loads(delete_cells("written_local")(data)), release)
    assert grade_ids(fixed.nb) == grade_ids(release)
    cell = next(c for c in fixed.nb.cells if c.get("id") == "written_local")
    assert cell.source == "YOUR ANSWER HERE"
    assert any("answer cells not found: written_local" in n for n in fixed.notes)
