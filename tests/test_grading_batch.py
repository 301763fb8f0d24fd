"""Batch grading end to end: every sample submission gets its expected score, in one batch.

All samples of tests/submissions.py are graded in ONE run with 2 workers (module fixture),
in grading mode with 2 images, so the whole module stays within minutes on 2 cores. A few
of them are graded again on a Dask LocalCluster (`--cluster local`), to check that the cluster
gives the same gradebook and results as the local pool.
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import nbformat
import pytest

from conftest import ROOT, run_env
from grader import batch, light, release, score
from grader.jobs import EVIDENCE, GRADEBOOK, MERGED
from submissions import SAMPLES, write_samples

N_IMAGES = 2          # 9 crops per image; 18 crops are enough for 10 concepts
CELL_TIMEOUT = 60     # the slowest cell (the imports) takes ~15-25 s here under load
NOTEBOOK_TIMEOUT = 600
SUBSET = ["blank", "train_mode", "invalid_json"]  # graded again on a LocalCluster

pytestmark = pytest.mark.slow  # ~12 min on 2 cores: CI runs it, `make test-quick` leaves it out


def options(submissions, out, workers, **kw):
    return batch.Options(submissions=submissions, out=out, workers=workers, n_images=N_IMAGES,
                         cell_timeout_s=CELL_TIMEOUT, notebook_timeout_s=NOTEBOOK_TIMEOUT, **kw)


@pytest.fixture(scope="module")
def source(course):
    return nbformat.read(course.source_notebook, as_version=4)


@pytest.fixture(scope="module")
def student_notebook(course, tmp_path_factory):
    """The student version as nbgrader generates it now from the source notebook
    (the committed notebooks/ copy is the same when in sync; test_kit_notebook checks that)."""
    folder = release.generate(course, tmp_path_factory.mktemp("release"))
    return folder / f"{course.notebook}.ipynb"


@pytest.fixture(scope="module")
def inbox(course, student_notebook, tmp_path_factory):
    folder = tmp_path_factory.mktemp("inbox")
    write_samples(SAMPLES, folder, course.source_notebook, student_notebook)
    # what else lands in a TA's download folder
    shutil.copyfile(folder / "reference" / "craft_lab.ipynb", folder / "Copy of craft_lab.ipynb")  # no owner
    (folder / "reference" / "notes.txt").write_text("not a notebook")
    return folder


@pytest.fixture(scope="module")
def graded(course, inbox, tmp_path_factory):
    out = tmp_path_factory.mktemp("graded")
    lines = []
    result = batch.grade(course, options(inbox, out, workers=2), echo=lines.append)
    print("\n".join(lines))
    kept, shared, n = light.disk_use(out)
    print(f"kept {kept / n:.0f} bytes per submission, {shared} shared")
    assert n == len(SAMPLES) and kept / n <= light.KEPT_PER_SUBMISSION, "a batch keeps too much (grader/light.py)"
    return result, out, lines


def by_student(result):
    return {r.student: r for r in result.results}


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_each_sample_gets_its_expected_points(graded, source, sample):
    result, out, _ = graded
    got = by_student(result)[sample.name]
    expected = sample.expected(source)
    scores = {t: got.points(t) for t in expected}
    assert scores == expected, f"{sample.name}: {got.status} {got.reason} {got.notes}"
    assert got.status == sample.status, (got.reason, got.notes)
    said = " | ".join([got.reason] + got.notes)
    assert sample.says in said


def test_every_submission_is_graded_and_the_odd_files_are_reported(graded):
    result, out, lines = graded
    assert sorted(by_student(result)) == sorted(s.name for s in SAMPLES)
    rows = list(csv.DictReader(open(out / "collect.csv")))
    status = {r["file"]: r["status"] for r in rows}
    assert status["Copy of craft_lab.ipynb"] == "unmapped"
    assert status["reference/notes.txt"] == "ignored"
    assert any("UNMAPPED: Copy of craft_lab.ipynb" in line for line in lines)


def test_progress_shows_each_submission_with_elapsed_time(graded):
    _, _, lines = graded
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) == len(SAMPLES)
    assert all("elapsed" in line and "left" in line for line in progress)


def test_reports(graded, source, course):
    result, out, _ = graded
    full = sum(v for v in result.max_tests.values()) + sum(result.manual.values())
    # grades.csv is nbgrader's own export
    grades = {r["student_id"]: r for r in csv.DictReader(open(out / "grades.csv"))}
    for sample in SAMPLES:
        row = grades[sample.name]
        assert float(row["score"]) == sum(sample.expected(source).values()), sample.name
        assert float(row["max_score"]) == full
    # results.csv: one row per submission, one column per test, the reason
    rows = {r["student_id"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert set(rows) == {s.name for s in SAMPLES}
    assert rows["invalid_json"]["status"] == "failed" and "invalid JSON" in rows["invalid_json"]["reason"]
    for test in result.tests:
        assert test in rows["reference"]
    # the per-test table and the picture
    summary = (out / "summary.md").read_text()
    for test in result.tests:
        assert f"| {test} |" in summary
    assert "## Needs a look" in summary and "kernel_dies" in summary
    # the written answers: waiting for a TA where answered (the reference answers them), not failures
    manual = list(result.manual)
    assert manual and not set(manual) & set(result.tests)
    assert sorted(rows["reference"]["waiting_manual"].split()) == sorted(manual)
    assert rows["reference"]["status"] == "graded"
    assert rows["blank"]["waiting_manual"] == ""  # left as released: nbgrader's "no response", 0
    assert sorted(result.waiting["reference"]) == sorted(manual) and "blank" not in result.waiting
    assert "## Waiting for manual grading" in summary and "| reference | " in summary
    for test in manual:
        assert f"| {test} |" in summary and rows["reference"][test] == "0"
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # feedback: nbgrader's page for graded ones, a page with the reason for the others
    for sample in SAMPLES:
        page = (out / "feedback" / sample.name / f"{course.notebook}.html").read_text()
        if sample.status == "failed":
            assert "not graded automatically" in page
        else:
            assert "check_fit" in page
    # its figures, light (grader/light.py): made once verified, in the page and in formgrader's notebook
    page = (out / "feedback" / "reference" / f"{course.notebook}.html").read_text()
    autograded = (out / "nbgrader" / "autograded" / "reference" / course.assignment / f"{course.notebook}.ipynb")
    assert "data:image/jpeg" in page and '"image/jpeg"' in autograded.read_text()


def test_main_gradebook_holds_what_each_grading_decided_and_flags_problems(graded, course):
    result, out, _ = graded
    main = score.dump(out / "nbgrader" / "gradebook.db", course.assignment)
    for r in result.results:
        sid = r.student
        flagged = main[("notebook", sid, course.notebook)][0]
        assert flagged == (r.status != "graded"), sid
        assert not (out / "work" / sid / GRADEBOOK).exists() and not (out / "work" / sid / EVIDENCE).exists()
        if r.status == "failed":
            continue
        merged = json.loads((out / "work" / sid / MERGED).read_text())["tests"]
        assert merged and all(main[("grade", sid, course.notebook, t)][0] == v for t, v in merged.items()), sid


def test_a_local_cluster_grades_as_the_local_pool(graded, course, inbox, tmp_path):
    """A few samples graded again on a Dask LocalCluster (`--cluster local`) with --keep-work: the
    same gradebook and the same results as the module's light batch on the local pool, and each
    job's own gradebook (back from its worker) holds what the main one got (tests/test_grading_cluster.py
    has the cluster's failures)."""
    from grader import cluster

    result, out, _ = graded
    subset = tmp_path / "subset"
    for name in SUBSET:
        shutil.copytree(inbox / name, subset / name)
    again = cluster.grade(course, options(subset, tmp_path / "cluster", workers=2, keep_work=True), "local",
                          echo=lambda *_: None)

    def only(dump):
        return {k: v for k, v in dump.items() if k[1] in SUBSET}

    def same(r):
        return r.status, r.tests, sorted(r.review)

    pooled = only(score.dump(out / "nbgrader" / "gradebook.db", course.assignment))
    clustered = only(score.dump(tmp_path / "cluster" / "nbgrader" / "gradebook.db", course.assignment))
    assert pooled == clustered
    assert {r.student: same(r) for r in again.results} == {r.student: same(r) for r in result.results
                                                           if r.student in SUBSET}
    assert (tmp_path / "cluster" / "feedback" / SUBSET[0] / f"{course.notebook}.html").exists()
    for sid in ("blank", "train_mode"):  # gradable (invalid_json's own gradebook was never merged)
        own = score.dump(tmp_path / "cluster" / "work" / sid / GRADEBOOK, course.assignment)
        mine = {k: v for k, v in own.items() if k[0] in ("grade", "comment")}
        assert mine and all(clustered[k] == v for k, v in mine.items()), sid


def test_running_again_continues_and_keeps_manual_grades(graded, course, inbox):
    """The CLI on the same --out: nothing is graded twice, a TA's manual score survives."""
    from nbgrader.api import Gradebook

    _, out, _ = graded
    db = out / "nbgrader" / "gradebook.db"
    with Gradebook(score.db_url(db)) as gb:
        gb.find_grade("check_fit", course.notebook, course.assignment, "fit_unseeded").manual_score = 1.5
        gb.db.commit()
    before = score.dump(db, course.assignment)
    proc = subprocess.run([sys.executable, "-m", "grader", "grade", str(inbox), "--out", str(out),
                           "--workers", "2", "--n-images", str(N_IMAGES)],
                          cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(SAMPLES)} submissions already graded" in proc.stdout
    assert "Grading 0 submissions" in proc.stdout
    assert score.dump(db, course.assignment) == before
    grades = {r["student_id"]: r for r in csv.DictReader(open(out / "grades.csv"))}
    merged = json.loads((out / "work" / "fit_unseeded" / "merged.json").read_text())
    assert merged["tests"]["check_fit"] == 0
    assert float(grades["fit_unseeded"]["score"]) == sum(merged["tests"].values()) + 1.5
    # results.csv reads the same gradebook: the manual score counts there too
    rows = {r["student_id"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert float(rows["fit_unseeded"]["check_fit"]) == 1.5
    assert float(rows["fit_unseeded"]["score"]) == float(grades["fit_unseeded"]["score"])
