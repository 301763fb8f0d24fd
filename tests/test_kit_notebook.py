"""The source notebook is the single truth; the student notebook is generated from it and in sync."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT, craftlab, run_env
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


def recorded_text(nb) -> dict[str, str]:
    """cell id -> the text its recorded outputs printed (make record: a full offline run)."""
    return {c.id: "".join(out.get("text", "") for out in c.outputs) for c in nb.cells if c.cell_type == "code"}


def test_a_full_run_explains_each_unactionable_warning_once_and_shows_no_raw_log(source):
    """The recorded outputs are a full offline run of the lab (make record): scikit-learn's
    ConvergenceWarning and TensorFlow's retracing warning at most once each, with what they mean;
    no log line of TensorFlow's as it writes it (absl's "WARNING: ...", "I0000 ...",
    "WARNING:tensorflow:..."), only under the note that explains it."""
    outputs = "".join(recorded_text(source).values())
    assert outputs.count("[warning] ConvergenceWarning") <= 1
    assert "Traceback" not in outputs
    retracing = outputs.count("triggered tf.function retracing")
    assert retracing == outputs.count(f"[warning] {craftlab.RETRACING}:") <= 1, (
        f"TensorFlow's retracing warning shown {retracing} times, not once with its meaning")
    if retracing:
        assert craftlab.SHOWN_ONCE[craftlab.RETRACING] in outputs
    raw = [line for line in outputs.splitlines() if re.match(r"(WARNING|ERROR|[IWEF]\d{4} )", line)]
    assert raw == [], f"unexplained log lines in the recorded outputs: {raw}"
    setup = recorded_text(source)["setup_imports"]
    if "Compiled cluster using XLA" in setup:
        assert craftlab.XLA_NOTE in setup and setup.index(craftlab.XLA_NOTE) < setup.index("Compiled cluster")


def test_tensorflows_retracing_warning_is_explained_once_then_hidden(capsys, monkeypatch):
    import logging

    monkeypatch.setattr(craftlab, "_shown_once", set())
    logger = logging.getLogger("tensorflow")
    retracing = craftlab.TensorFlowRetracing()
    logger.addFilter(retracing)
    try:
        for calls in (7, 8, 9):
            logger.warning(f"5 out of the last {calls} calls to <function JansenEstimator.__call__ at 0x7f> "
                           "triggered tf.function retracing. Tracing is expensive and the excessive number of "
                           "tracings could be due to (1) creating @tf.function repeatedly in a loop.")
        assert retracing.filter(logging.makeLogRecord({"msg": "another TensorFlow message"}))
    finally:
        logger.removeFilter(retracing)
    out = capsys.readouterr().out
    assert out.count("[warning]") == 1 and "last 7 calls" in out and "Tracing is expensive" not in out, out
    assert craftlab.SHOWN_ONCE[craftlab.RETRACING] in out and "harmless here" in out


def test_require_names_the_cell_to_run_first():
    with pytest.raises(AssertionError, match=r"^g is not defined: run Task 2's answer cell first \(it defines g and h\)\.$"):
        craftlab.require({}, "g", "h", task="Task 2")
    with pytest.raises(AssertionError, match=r"^h is None: run Task 2's answer cell first"):
        craftlab.require({"g": 1, "h": None}, "g", "h", task="Task 2")
    with pytest.raises(AssertionError, match=r"run Task G4's step 2 answer cell first \(it defines sub_w\)"):
        craftlab.require({}, "sub_w", task="Task G4", cell="step 2 answer cell")
    craftlab.require({"g": 0, "h": []}, "g", "h", task="Task 2")  # falsy but defined: fine


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


# ----------------------------------------------------------------------------- the lab as a student meets it

WRITTEN_HEADING = re.compile(r"^### Written answer W(\d+) \((\d+) points?, graded by a TA\): (.+)$", re.M)
TASK_HEADING = re.compile(r"^### Task (\w+) \(", re.M)


def prose(nb) -> dict[str, str]:
    """cell id -> text of each markdown cell a student reads (not the TAs' model answers)."""
    return {c.id: c.source for c in nb.cells if c.cell_type == "markdown" and not nbgrader_meta(c).get("solution")}


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_written_answers_are_numbered_in_notebook_order_everywhere(course, source, student):
    """W1, W2, ... in the order students meet them; every reference to one (in the notebook,
    "above"/"below" included, and in both READMEs) names an existing question, where it is."""
    for nb in (source, student):
        cells = nb.cells
        headings = [(i, int(m[1]), int(m[2]), m[3].strip()) for i, c in enumerate(cells) if c.cell_type == "markdown"
                    for m in WRITTEN_HEADING.finditer(c.source)]
        written = [i for i, c in enumerate(cells) if is_written(c)]
        assert [n for _, n, _, _ in headings] == list(range(1, len(written) + 1)), headings
        assert [i + 1 for i, _, _, _ in headings] == written, "each written question sits right above its answer cell"
        assert [nbgrader_meta(cells[i])["points"] for i in written] == [p for _, _, p, _ in headings]
        where = {n: i for i, n, _, _ in headings}
        for i, cell in enumerate(cells):
            if cell.cell_type != "markdown" or i in where.values():
                continue
            for m in re.finditer(r"\bW(\d+)\b(\s+(above|below))?", cell.source):
                n = int(m[1])
                assert n in where, f"{cell.id} refers to W{n}, which does not exist"
                if m[3] == "above":
                    assert where[n] < i, f"{cell.id}: W{n} is not above it"
                if m[3] == "below":
                    assert where[n] > i, f"{cell.id}: W{n} is not below it"
        intro = next(c.source for c in cells if c.cell_type == "markdown")
        total = re.search(r"\((\d+) points in all\)", intro)
        assert total and int(total[1]) == sum(p for _, _, p, _ in headings), "the intro's points for the written answers"
    titles = [(n, title) for _, n, _, title in headings]
    for readme in (ROOT / "README.md", ROOT / "grader" / "README-TA.md"):
        text = one_line(readme.read_text())
        for n, title in titles:
            assert f"W{n} *{title}*" in text, f"{readme.name} does not list W{n} as *{title}*"


ALLOWED_DECIMALS = {"0.485", "0.456", "0.406", "0.229", "0.224", "0.225",  # ImageNet's statistics
                    "0.8"}                                                     # CRAFT's stride factor


def test_prose_quotes_no_number_that_the_run_decides_or_that_the_recorded_run_contradicts(course, source):
    """Measured values (areas, importances, shares, seconds) are printed by the cells, never quoted
    in the prose; counts the prose gives (images, crops per image, uncovered pixels) are the lab's
    own and agree with the recorded run (make record)."""
    text = prose(source)
    out = recorded_text(source)
    for cid, md in text.items():
        decimals = set(re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", md)) - ALLOWED_DECIMALS
        assert not decimals, f"{cid} quotes {sorted(decimals)}: print measured values from the run instead"
        assert not re.search(r"\d\s*%", md), f"{cid} quotes a percentage: print it from the run instead"
        assert not re.search(r"\d\s*(s|sec|seconds)\b", md), f"{cid} quotes a duration in seconds"
    # The number of images the recorded run used, and the crop counts it printed for each crop size.
    n_images = int(re.search(r"images: \((\d+), 224, 224, 3\)", out["load_data"])[1])
    table = {int(row[0]): (int(row[2]), int(row[3]), int(row[4])) for row in
             (line.split() for line in out["gf_patch_sizes"].splitlines()[1:]) if row and row[0].isdigit()}
    assert table[80][0] == 9 and table[80][1] == 9 * n_images, table
    for cid, md in text.items():
        for m in re.finditer(r"\b(\d+)(?: \w+)? images\b", md):
            assert int(m[1]) in (craftlab.FULL_SIZE, 20, n_images), (
                f"{cid}: '{m[0]}': the recorded run used {n_images} images, rabbit.npz holds {craftlab.FULL_SIZE}")
        for m in re.finditer(r"\b(\d+) (?:crops )?per image\b", md):
            assert int(m[1]) in {row[0] for row in table.values()}, f"{cid}: '{m[0]}' is no crop size's count"
        for m in re.finditer(r"\b(\d+) crops\b(?! per image)", md):
            assert int(m[1]) in {row[1] for row in table.values()} or f"nb_crops={m[1]}" in md, (
                f"{cid}: '{m[0]}' is not a crop count of the recorded run ({n_images} images)")
    after = one_line(text["gf_patch_after_md"])
    quoted = [(re.search(r"(\d+)-pixel crops, (\d+) per image, the last (\d+) rows", after), (0, 2)),
              (re.search(r"(\d+)-pixel crops would give (\d+) per image", after), (0,)),
              (re.search(r"(\d+)-pixel crops only (one)", after), (0,))]
    for match, columns in quoted:
        assert match, f"gf_patch_after_md changed: update this test to check its numbers ({after})"
        size, *numbers = [1 if v == "one" else int(v) for v in match.groups()]
        expected = [table[size][c] for c in columns]
        assert numbers == expected, f"gf_patch_after_md: '{match[0]}', the recorded table says {expected}"


def test_blank_student_notebook_checks_name_the_task_to_run_first(course, tmp_path):
    """Run as released, answers left blank (offline, course.toml's images): every graded check
    fails with an AssertionError that names a task whose cells come earlier in the notebook, and
    no cell anywhere fails with a NameError. Quick: nothing heavy runs without answers."""
    from nbclient import NotebookClient

    for name in (course.student_notebook.name, "craftlab.py"):
        shutil.copy(course.release_dir / name, tmp_path / name)
    nb = nbformat.read(tmp_path / course.student_notebook.name, as_version=4)
    NotebookClient(nb, timeout=course.cell_timeout_s, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute(env=run_env(work=tmp_path))
    task_at = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            for m in TASK_HEADING.finditer(cell.source):
                task_at[m[1]] = i
    assert len(task_at) >= 12, task_at
    graded = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not [o for o in errors if o.ename == "NameError"], f"{cell.id}: {errors[0].evalue}"
        assert not [o for o in cell.outputs if o.get("name") == "stderr"], f"{cell.id} wrote to stderr"
        if not nbgrader_meta(cell).get("grade"):
            continue
        graded += 1
        assert [o.ename for o in errors] == ["AssertionError"], (cell.id, [(o.ename, o.evalue) for o in errors])
        named = re.findall(r"\bTask (\w+)\b", errors[0].evalue)
        assert named, f"{cell.id} fails without naming a task: {errors[0].evalue}"
        assert task_at[named[0]] < i, f"{cell.id} names Task {named[0]}, which comes after it"
    assert graded == len([c for c in nb.cells if nbgrader_meta(c).get("grade") and not is_written(c)]) >= 18
