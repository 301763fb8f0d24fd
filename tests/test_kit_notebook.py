"""The source notebook is the single truth; the student notebook is generated from it and in sync."""
from __future__ import annotations

import subprocess
from pathlib import Path

import nbformat
import pytest

from conftest import run_env
from grader import release
from grader.course import GRADER_DIR, tool


def nbgrader_meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def is_written(cell) -> bool:
    """A written answer: a graded answer cell, scored by a TA in formgrader."""
    return bool(nbgrader_meta(cell).get("solution") and nbgrader_meta(cell).get("grade"))


@pytest.fixture(scope="module")
def source(course):
    return nbformat.read(course.source_notebook, as_version=4)


@pytest.fixture(scope="module")
def student(course):
    return nbformat.read(course.student_notebook, as_version=4)


def test_student_notebook_is_in_sync_with_the_source(course):
    stale = release.stale_files(course)
    assert stale == [], f"notebooks/{course.assignment}/ is stale ({stale}): run `make student`"


def test_every_answer_cell_is_followed_by_a_graded_check(source):
    """Answer cells of one task may come in a row (the four plots); a graded check closes them."""
    pending = []
    for cell in source.cells:
        meta = nbgrader_meta(cell)
        if is_written(cell):
            continue  # graded by a person: no check cell (test_written_answers_...)
        if meta.get("solution"):
            assert "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source, cell.id
            pending.append(cell.id)
        elif meta.get("grade"):
            pending = []
    assert pending == [], f"answer cells with no graded check after them: {pending}"


def test_graded_checks_are_locked_with_points_visible_asserts_and_hidden_tests(source):
    graded = [c for c in source.cells if nbgrader_meta(c).get("grade") and not is_written(c)]
    assert len(graded) >= 10
    for cell in graded:
        meta = nbgrader_meta(cell)
        assert meta["locked"] and meta["points"] > 0 and cell.cell_type == "code", cell.id
        assert cell.id == meta["grade_id"]
        visible = cell.source.split("### BEGIN HIDDEN TESTS")[0]
        assert "assert " in visible, f"{cell.id}: no visible check for the student"
        assert "### BEGIN HIDDEN TESTS" in cell.source and "### END HIDDEN TESTS" in cell.source, cell.id
        # nbgrader reads a number left as the cell's value as partial credit: end on a statement
        last = [line for line in cell.source.splitlines() if line.strip()][-1]
        assert last.startswith(("###", "print(", "assert", "craftlab.")) or last.startswith(" "), (
            f"{cell.id} ends with '{last}': end graded cells with a print or an assert")


def test_provided_cells_are_locked(source):
    for cell in source.cells:
        meta = nbgrader_meta(cell)
        assert meta, f"cell {cell.id} has no nbgrader metadata"
        if not meta.get("solution"):
            assert meta.get("locked"), f"provided cell {cell.id} is not locked"


def test_setup_imports_torch_before_xplique(source):
    setup = next(c for c in source.cells if c.id == "setup_imports").source
    assert setup.index("import torch") < setup.index("from xplique")
    assert setup.index("from torchvision") < setup.index("from xplique")
    assert "TF_FORCE_GPU_ALLOW_GROWTH" in setup and "keep_stderr_clean()" in setup
    first_code = next(c for c in source.cells if c.cell_type == "code" and "import" in c.source
                      and "xplique" in c.source and "pip" not in c.source)
    assert first_code.id == "setup_imports"


def test_student_version_has_no_answers_no_hidden_tests_no_outputs(source, student):
    text = nbformat.writes(student)
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    src = {c.id: c for c in source.cells}
    for cell in student.cells:
        meta = nbgrader_meta(cell)
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{cell.id} has outputs in the student notebook"
        if is_written(cell):
            assert cell.source == "YOUR ANSWER HERE", cell.id
        elif meta.get("solution"):
            assert "raise NotImplementedError()" in cell.source, cell.id
            assert src[cell.id].source.split("### BEGIN SOLUTION")[1].split("### END SOLUTION")[0].strip() not in cell.source
        elif not meta.get("grade"):
            assert cell.source == src[cell.id].source, f"locked cell {cell.id} differs from the source"
    assert [c.id for c in student.cells] == [c.id for c in source.cells]


def test_written_answers_are_graded_by_hand_with_a_rubric_the_students_never_see(source, student):
    """Each written answer: a locked question, then a markdown answer cell with points whose
    source (model answer and rubric, for the TA) nbgrader replaces in the student version."""
    written = [c for c in source.cells if is_written(c)]
    assert len(written) >= 3
    ids = [c.id for c in source.cells]
    for cell in written:
        meta = nbgrader_meta(cell)
        assert cell.cell_type == "markdown" and meta["points"] > 0 and not meta["locked"], cell.id
        assert cell.id == meta["grade_id"]
        assert cell.source.startswith("### BEGIN SOLUTION") and cell.source.endswith("### END SOLUTION"), cell.id
        assert "Model answer" in cell.source and "Rubric" in cell.source, cell.id
        question = source.cells[ids.index(cell.id) - 1]
        assert question.cell_type == "markdown" and nbgrader_meta(question)["locked"], cell.id
        assert "graded by a TA" in question.source, cell.id
    text = nbformat.writes(student)
    assert "Rubric" not in text and "Model answer" not in text and "TAs only" not in text
    student_written = [c for c in student.cells if is_written(c)]
    assert [c.id for c in student_written] == [c.id for c in written]
    assert all(c.source == "YOUR ANSWER HERE" for c in student_written)


def test_a_full_run_prints_the_convergence_warning_at_most_once(source):
    """The recorded outputs are a full offline run of the lab (make record)."""
    outputs = "".join(out.get("text", "") for c in source.cells if c.cell_type == "code" for out in c.outputs)
    assert outputs.count("[warning] ConvergenceWarning") <= 1
    assert "Traceback" not in outputs


def test_unactionable_warnings_are_shown_once_with_their_meaning_others_every_time(capsys, monkeypatch):
    import warnings

    import numpy as np
    from sklearn.decomposition import NMF

    import craftlab

    monkeypatch.setattr(craftlab, "_shown_once", set())
    x = np.random.default_rng(0).uniform(size=(30, 20))
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # what a notebook sees: the registry is reset between calls
        warnings.showwarning = craftlab.show_warning
        for _ in range(3):
            NMF(n_components=5, max_iter=2, init="nndsvda").fit_transform(x)
        warnings.warn("something to act on", UserWarning)
        warnings.warn("something to act on", UserWarning)
    out = capsys.readouterr().out
    assert out.count("[warning] ConvergenceWarning") == 1 and out.count("[warning]") == 3, out
    assert "harmless here" in out and "iterations" in out
    assert out.count("[warning] UserWarning: something to act on") == 2


def test_colab_link_and_helper_url_come_from_course_toml(course, source, student):
    for nb in (source, student):
        text = "\n".join(c.source for c in nb.cells)
        assert f'href="{course.colab_url}"' in text
        assert f'REPO_RAW = "{course.raw_url}"' in text
    assert course.colab_url.startswith("https://colab.research.google.com/github/")
    assert course.colab_url.endswith(f"/notebooks/{course.assignment}/{course.notebook}.ipynb")


def test_stamp_links_rewrites_a_changed_repository(course, tmp_path):
    import dataclasses
    import shutil

    copy_dir = tmp_path / "src"
    shutil.copytree(course.source_dir, copy_dir)
    other = dataclasses.replace(course, repository="https://github.com/someone/fork", branch="dev")
    moved = type("C", (), {"source_notebook": copy_dir / course.source_notebook.name,
                           "colab_url": other.colab_url, "raw_url": other.raw_url})
    assert release.stamp_links(moved) is True
    text = (copy_dir / course.source_notebook.name).read_text()
    assert "someone/fork/blob/dev/notebooks" in text and "raw.githubusercontent.com/someone/fork/dev" in text
    assert release.stamp_links(moved) is False, "stamping twice must change nothing"


def nbgrader_validate(path: Path, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    env = run_env(work=tmp_path)
    return subprocess.run([tool("nbgrader"), "validate", *flags, str(path)], cwd=GRADER_DIR,
                          env=env, capture_output=True, text=True, timeout=1800)


def test_nbgrader_validate_passes_on_the_solution(course, tmp_path):
    result = nbgrader_validate(course.source_notebook, tmp_path)
    assert result.returncode == 0 and "Success! Your notebook passes all the tests." in result.stdout, (
        result.stdout[-3000:] + result.stderr[-3000:])


def test_nbgrader_validate_invert_passes_on_the_blank_student_notebook(course, tmp_path):
    """--invert: succeeds only if every graded check fails on the blank notebook."""
    result = nbgrader_validate(course.student_notebook, tmp_path, "--invert")
    assert result.returncode == 0 and "Success! The notebook does not pass any tests." in result.stdout, (
        result.stdout[-3000:] + result.stderr[-3000:])


def test_hand_edited_student_notebook_is_detected_as_stale(course, tmp_path, monkeypatch):
    import shutil

    fake_root = tmp_path / "notebooks"
    shutil.copytree(course.release_dir, fake_root / course.assignment)
    nb_path = fake_root / course.assignment / course.student_notebook.name
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells[0].source += "\nedited by hand"
    nbformat.write(nb, nb_path)
    import dataclasses
    edited = dataclasses.replace(course)
    monkeypatch.setattr(type(edited), "release_dir", property(lambda self: fake_root / self.assignment))
    assert release.stale_files(edited) == [course.student_notebook.name]
