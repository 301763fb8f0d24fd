"""A second lab, graded by the same engine: tests/tiny_lab/ (its course file, its notebook, its
grading package). Proves the engine knows no lab: the same `python -m grader grade`, sandbox and
warm kernels on, grades it with nothing of the CRAFT lab. About a minute."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT, run_env
from grader import course as course_mod
from grader import lab, light, release
from grader.jobs import EVIDENCE, GRADEBOOK, MERGED
from grader.kernel import probe
from grader.samples import write_samples

TINY = Path(__file__).resolve().parent / "tiny_lab" / "course.toml"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    if probe.probe().missing():
        pytest.skip("the sandbox is missing here: " + "; ".join(probe.probe().missing()))
    course = course_mod.load(TINY)
    work = tmp_path_factory.mktemp("tiny")
    student = release.generate(course, work / "release") / f"{course.notebook}.ipynb"
    samples = lab.load(course).DEMO_CLASS
    write_samples(samples, work / "inbox", course.source_notebook, student)
    env = run_env() | {course_mod.COURSE_VAR: str(TINY)}
    proc = subprocess.run([sys.executable, "-m", "grader", "grade", str(work / "inbox"), "--out", str(work / "out"),
                           "--workers", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.returncode == 0
    return course, samples, work / "out", proc.stdout


def test_its_samples_get_their_points_through_the_same_engine(graded):
    course, samples, out, _ = graded
    source = nbformat.read(course.source_notebook, as_version=4)
    rows = {r["student_id"]: r for r in csv.DictReader(open(out / "results.csv"))}
    for sample in samples:
        got = {test: float(rows[sample.name][test]) for test in sample.expected(source)}
        assert got == sample.expected(source), (sample.name, rows[sample.name]["reason"], rows[sample.name]["notes"])
    assert rows["reference"]["waiting_manual"] == "written_why", "its written answer waits for a TA"


def test_it_was_graded_in_the_sandbox_with_the_labs_own_libraries_warm(graded):
    _, _, out, stdout = graded
    summary = (out / "summary.md").read_text()
    assert "isolation ON" in summary and "OFF" not in summary
    assert "importing numpy once" in stdout and "warm kernels" in summary


def test_a_graded_job_keeps_its_records_only(graded):
    course, samples, out, _ = graded
    for sample in samples:
        job = out / "work" / sample.name
        assert (job / MERGED).is_file() and not (job / GRADEBOOK).exists() and not (job / EVIDENCE).exists()
        assert not (job / "autograded").exists(), "the notebooks live in the main nbgrader folder"
    assert (out / "work" / "_reference" / EVIDENCE).is_dir(), "every submission is verified against it"
    assert not (out / "collected").exists(), "the copy of the input goes once the batch is graded"
    assert light.disk_use(out)[2] == len(samples)


def test_keep_work_keeps_what_each_grading_made(graded, tmp_path):
    """`grade --keep-work`: the job's gradebook, evidence and kernel folder stay, for debugging."""
    course, samples, out, _ = graded
    inbox = tmp_path / "inbox"
    (inbox / "reference").mkdir(parents=True)
    (inbox / "reference" / f"{course.notebook}.ipynb").write_bytes(
        (out.parent / "inbox" / "reference" / f"{course.notebook}.ipynb").read_bytes())
    env = run_env() | {course_mod.COURSE_VAR: str(TINY)}
    proc = subprocess.run([sys.executable, "-m", "grader", "grade", str(inbox), "--out", str(tmp_path / "out"),
                           "--workers", "1", "--keep-work"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job = tmp_path / "out" / "work" / "reference"
    assert (job / GRADEBOOK).is_file() and any((job / EVIDENCE).glob("*.npz")) and (job / "run").is_dir()
    assert (job / MERGED).is_file()
    assert any((tmp_path / "out" / "collected").rglob("*.ipynb")), "and the copy of the input"


def test_the_engine_names_no_lab():
    """The engine (grader/*.py, grader/kernel/) knows no lab: what a lab is comes from its package."""
    words = ("craft", "xplique", "resnet", "concept", "rabbit")
    engine = [*ROOT.glob("grader/*.py"), *ROOT.glob("grader/kernel/*.py"), *ROOT.glob("grader/templates/*")]
    found = [f"{p.relative_to(ROOT)}: {w}" for p in engine for w in words if w in p.read_text().lower()]
    assert engine and found == []
