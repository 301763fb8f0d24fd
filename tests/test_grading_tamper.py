"""The tamper suite (tests/tamper.py) graded in one batch, as a hostile class would hand it in.

Every cheat gets exactly the points its answers deserve and is flagged where the kernel's
checks were forged; every limit holds (no network, nothing read or written outside the
submission's folder, memory and processes bounded, nothing outlives the kernel); the batch
finishes and the main gradebook holds only what the trusted side wrote.
"""
from __future__ import annotations

import html
import http.server
import sqlite3
import threading
from pathlib import Path

import nbformat
import psutil
import pytest

from conftest import ROOT
from grader import batch, release, sandbox, score
from grader.samples import write_samples
from tamper import CHEATS, DETACHED_MARKER, OUTSIDE_FILE, limit_samples

pytestmark = pytest.mark.slow  # ~6 min on 2 cores

N_IMAGES = 2
LIMITS = sandbox.Limits.load()


class _Counter(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):  # noqa: N802
        type(self).hits += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    """A server on loopback in the grader's own network namespace: no kernel may reach it."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counter)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()


@pytest.fixture(scope="module")
def graded(course, server, tmp_path_factory):
    if sandbox.probe().missing():
        pytest.fail("the tamper suite needs the full sandbox (setup installs bubblewrap): "
                    + "; ".join(sandbox.probe().missing()))
    out = tmp_path_factory.mktemp("tamper-out")
    samples = CHEATS + limit_samples(server.server_address[1], str(ROOT), str(out), LIMITS.memory_mb / 1024)
    inbox = tmp_path_factory.mktemp("tamper-inbox")
    student = release.generate(course, tmp_path_factory.mktemp("release")) / f"{course.notebook}.ipynb"
    write_samples(samples, inbox, course.source_notebook, student)
    lines = []
    result = batch.grade(course, batch.Options(submissions=inbox, out=out, workers=2, n_images=N_IMAGES,
                                               cell_timeout_s=120, notebook_timeout_s=900), echo=lines.append)
    print("\n".join(lines))
    return result, out, samples


def output_of(out, course, student: str, cell_id: str = "answer_eval") -> str:
    path = out / "nbgrader" / "autograded" / student / course.assignment / f"{course.notebook}.ipynb"
    cell = next(c for c in nbformat.read(path, as_version=4).cells if c.get("id") == cell_id)
    return "".join(o.get("text", "") for o in cell.get("outputs", []))


def test_every_attack_gets_exactly_what_its_answers_deserve(graded, course):
    result, out, samples = graded
    source = nbformat.read(course.source_notebook, as_version=4)
    got = {r.student: r for r in result.results}
    assert sorted(got) == sorted(s.name for s in samples), "the batch must grade every submission"
    wrong = {}
    for sample in samples:
        r = got[sample.name]
        points = {t: r.points(t) for t in sample.expected(source)}
        said = " | ".join([r.reason, *r.notes])
        if points != sample.expected(source) or r.status != sample.status or sample.says not in said:
            wrong[sample.name] = (r.status, said[:300], {t: (p, sample.expected(source)[t]) for t, p in points.items()
                                                          if p != sample.expected(source)[t]})
    assert wrong == {}


def test_forged_cells_are_named_in_the_tampering_evidence(graded):
    result, _, samples = graded
    got = {r.student: r for r in result.results}
    for sample in samples:
        if sample.says == "possible tampering":
            forged = [t for t, lost in sample.lost.items() if lost]
            assert all(f"possible tampering: {t}:" in got[sample.name].reason for t in forged), got[sample.name].reason


def test_no_submission_reached_the_network(graded, server, course):
    _, out, _ = graded
    assert _Counter.hits == 0
    assert "NETWORK REACHED: []" in output_of(out, course, "limit_network")


def hidden_lines(course) -> set[str]:
    """The lines only the source notebook's hidden tests hold (not blanks, markers, or lines
    that also stand in the visible code or the reference answers, which submissions carry)."""
    hidden, public, inside = set(), set(), False
    for cell in nbformat.read(course.source_notebook, as_version=4).cells:
        for line in cell.source.splitlines():
            inside = (inside or "BEGIN HIDDEN TESTS" in line) and "END HIDDEN TESTS" not in line
            (hidden if inside else public).add(line.strip())
    return {line for line in hidden - public if len(line) > 25 and "HIDDEN TESTS" not in line}


def test_nothing_outside_the_submissions_folder_was_read_and_no_hidden_test_leaked(graded, course):
    _, out, samples = graded
    assert "FILES READ OUTSIDE: []" in output_of(out, course, "limit_read_outside")
    hidden = hidden_lines(course)
    assert len(hidden) > 20, "the source notebook's hidden tests were not found"
    for sample in samples:
        path = out / "nbgrader" / "autograded" / sample.name / course.assignment / f"{course.notebook}.ipynb"
        cells = nbformat.read(path, as_version=4).cells
        shown = [c.source for c in cells] + [o.get("text", "") for c in cells for o in c.get("outputs", [])]
        lines = {line.strip() for text in shown for line in text.splitlines()}
        page = html.unescape((out / "feedback" / sample.name / f"{course.notebook}.html").read_text())
        assert not any(text.startswith("LEAKED:") for text in lines), sample.name
        assert "### BEGIN HIDDEN TESTS" not in page and hidden & lines == set(), sample.name


def test_nothing_was_written_outside_the_submissions_folder(graded):
    """Judged on the host: inside, paths under /tmp lie on the sandbox's private /tmp, where a
    write succeeds and vanishes with the sandbox (the attack's own report may say it wrote)."""
    _, out, _ = graded
    job = out / "work" / "limit_write_outside"
    for folder in (ROOT, ROOT / "solutions", out, out / "work", job, Path.home(), Path("/var/tmp")):
        assert not (folder / OUTSIDE_FILE).exists(), folder


def test_no_gradebook_was_written_by_a_submission(graded, course):
    _, out, _ = graded
    for name in ("cheat_gradebook_by_path", "cheat_gradebook_by_search"):
        assert "GRADEBOOKS WRITTEN: []" in output_of(out, course, name)
    with sqlite3.connect(out / "nbgrader" / "gradebook.db") as con:
        assert con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall() == []
    grades = score.cell_scores(out / "nbgrader" / "gradebook.db", course.assignment)
    assert all(cell.final <= 2 for cells in grades.values() for cell in cells.values())


def test_memory_past_the_limit_ends_that_kernel_only(graded, course):
    result, _, _ = graded
    got = {r.student: r for r in result.results}
    for name in ("limit_memory_numpy", "limit_memory_bytes"):
        assert got[name].status == "review" and "kernel died in answer_eval" in got[name].reason
        assert got[name].points("check_eval") == 0


def test_no_process_outlives_its_submission(graded):
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(DETACHED_MARKER in part for part in proc.info["cmdline"] or []):
                left.append(proc.pid)
        except psutil.Error:
            continue
    assert left == []


def test_a_fork_storm_stops_at_the_process_limit(graded, course):
    _, out, _ = graded
    text = output_of(out, course, "limit_fork_storm")
    started, refused = (int(x) for x in text.split("FORK STORM: started")[1].split("refused"))
    assert 0 < started < LIMITS.max_processes and refused > 0, text

