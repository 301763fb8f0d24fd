"""The tamper suite (tests/tamper.py) graded in one batch, as a hostile class would hand it in.

Every cheat gets exactly the points its answers deserve and is flagged where the kernel's
checks were forged; every limit holds (no network, nothing read or written outside the
submission's folder, memory, processes, files, disk, output and time bounded, nothing outlives
the kernel); links the kernel plants are never followed; no student HTML or script is live in
what the TA or the students open; student text reaches the TA's terminal and files escaped;
hostile archives are refused while the class is graded; the batch finishes and the main
gradebook holds only what the trusted side wrote.
"""
from __future__ import annotations

import csv
import dataclasses
import html
import html.parser
import http.server
import io
import re
import sqlite3
import threading
import zipfile
from pathlib import Path

import nbformat
import psutil
import pytest

from conftest import COURSE, ROOT
from grader import batch, release, score
from grader.kernel import probe, sandbox
from grader.samples import write_samples
from tamper import (
    CHEATS,
    DETACHED_MARKER,
    INJECTED,
    OUTSIDE_FILE,
    limit_samples,
    machine_samples,
)

pytestmark = pytest.mark.slow  # ~12 min on 2 cores

N_IMAGES = 2
LIMITS = sandbox.Limits.load(COURSE.file)


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


ANSI_FOLDER = "\x1b[2Jevil\x1b]0;pwned\x07"
FORMULA_FOLDER = '=SUM(1,1)+HYPERLINK("evil","x")'


def hostile_inbox_extras(inbox: Path, reference_nb: bytes) -> None:
    """What else a hostile class puts in the TA's download: archives that attack the collection,
    and names meant for the TA's terminal and spreadsheet."""
    with zipfile.ZipFile(inbox / "evil_traversal.zip", "w") as z:
        z.writestr("../../escaped_by_zip.txt", "x")
        setuid = zipfile.ZipInfo("s_setuid/craft_lab.ipynb")
        setuid.external_attr = 0o104755 << 16
        z.writestr(setuid, reference_nb)
    with zipfile.ZipFile(inbox / "evil_bomb.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("s_bomb/craft_lab.ipynb", bytes(300 * 2**20))
    for folder in (ANSI_FOLDER, FORMULA_FOLDER):
        (inbox / folder).mkdir()
        (inbox / folder / "craft_lab.ipynb").write_bytes(reference_nb)


@pytest.fixture(scope="module")
def graded(course, server, tmp_path_factory):
    if probe.probe().missing():
        pytest.fail("the tamper suite needs the full sandbox (setup installs bubblewrap): "
                    + "; ".join(probe.probe().missing()))
    out = tmp_path_factory.mktemp("tamper-out")
    samples = CHEATS + limit_samples(server.server_address[1], str(ROOT), str(out), LIMITS.memory_mb / 1024) \
        + machine_samples(str(out))
    inbox = tmp_path_factory.mktemp("tamper-inbox")
    student = release.generate(course, tmp_path_factory.mktemp("release")) / f"{course.notebook}.ipynb"
    write_samples(samples, inbox, course.source_notebook, student)
    hostile_inbox_extras(inbox, (inbox / "limit_network" / "craft_lab.ipynb").read_bytes())
    # the per-notebook limit derived from the reference run, as in a TA's batch (here: 4 x, 240 s at least)
    quick = dataclasses.replace(course, notebook_timeout_floor_s=240, notebook_timeout_factor=4)
    lines = []
    # --keep-work: each job's folders stay as the grading left them, so that the tests below see
    # what a kernel left there (by default light.py removes them once graded: tests/test_grading_light.py)
    result = batch.grade(quick, batch.Options(submissions=inbox, out=out, workers=2, n_images=N_IMAGES,
                                              cell_timeout_s=120, keep_work=True), echo=lines.append)
    print("\n".join(lines))
    return result, out, samples, lines


def output_of(out, course, student: str, cell_id: str = "answer_eval") -> str:
    path = out / "nbgrader" / "autograded" / student / course.assignment / f"{course.notebook}.ipynb"
    cell = next(c for c in nbformat.read(path, as_version=4).cells if c.get("id") == cell_id)
    return "".join(o.get("text", "") for o in cell.get("outputs", []))


def test_every_attack_gets_exactly_what_its_answers_deserve(graded, course):
    result, out, samples, _ = graded
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
    result, _, samples, _ = graded
    got = {r.student: r for r in result.results}
    for sample in samples:
        if sample.says == "possible tampering":
            forged = [t for t, lost in sample.lost.items() if lost]
            assert all(f"possible tampering: {t}:" in got[sample.name].reason for t in forged), got[sample.name].reason


def test_no_submission_reached_the_network(graded, server, course):
    _, out, _, _ = graded
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
    _, out, samples, _ = graded
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
    _, out, _, _ = graded
    job = out / "work" / "limit_write_outside"
    for folder in (ROOT, ROOT / "solutions", out, out / "work", job, Path.home(), Path("/var/tmp")):
        assert not (folder / OUTSIDE_FILE).exists(), folder


def test_no_gradebook_was_written_by_a_submission(graded, course):
    _, out, _, _ = graded
    for name in ("cheat_gradebook_by_path", "cheat_gradebook_by_search"):
        assert "GRADEBOOKS WRITTEN: []" in output_of(out, course, name)
    with sqlite3.connect(out / "nbgrader" / "gradebook.db") as con:
        assert con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall() == []
    grades = score.cell_scores(out / "nbgrader" / "gradebook.db", course.assignment)
    assert all(cell.final <= 2 for cells in grades.values() for cell in cells.values())


def test_memory_past_the_limit_ends_that_kernel_only(graded, course):
    result, _, _, _ = graded
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
    _, out, _, _ = graded
    text = output_of(out, course, "limit_fork_storm")
    started, refused = (int(x) for x in text.split("FORK STORM: started")[1].split("refused"))
    assert 0 < started < LIMITS.max_processes and refused > 0, text



def test_hostile_archives_are_refused_and_the_class_is_graded(graded):
    result, out, samples, lines = graded
    refused = {f.relpath: f.reason for f in result.collection.files if f.status == "refused"}
    assert set(refused) == {"evil_traversal.zip", "evil_bomb.zip"}, refused
    assert any("REFUSED: evil_bomb.zip" in line for line in lines)
    assert not (out / "escaped_by_zip.txt").exists() and not (out.parent / "escaped_by_zip.txt").exists()
    assert {r.student for r in result.results} == {s.name for s in samples}, "every other submission is graded"


class _Live(html.parser.HTMLParser):
    """Whatever in a page could run: script elements, event handlers, javascript: URLs."""

    def __init__(self):
        super().__init__()
        self.found, self.csp, self._script = [], False, False

    def handle_starttag(self, tag, attrs):
        self._script = tag == "script"
        for name, value in attrs:
            if name.startswith("on") or "javascript:" in (value or "").replace(" ", "").lower():
                self.found.append(f"<{tag} {name}={value!r}>")
            if tag == "meta" and name == "http-equiv" and (value or "").lower() == "content-security-policy":
                self.csp = True

    def handle_data(self, data):
        if self._script and INJECTED in data:
            self.found.append(f"<script>{data[:60]}")

    def handle_endtag(self, tag):
        self._script = False


def test_no_student_script_is_live_in_the_feedback_page_or_the_notebook_formgrader_shows(graded, course):
    _, out, _, _ = graded
    for student in ("attack_html_links", "attack_svg_answer_links"):
        page = (out / "feedback" / student / f"{course.notebook}.html").read_text()
        live = _Live()
        live.feed(page)
        assert live.csp and live.found == [], (student, live.found)
        path = out / "nbgrader" / "autograded" / student / course.assignment / f"{course.notebook}.ipynb"
        nb = nbformat.read(path, as_version=4)
        kinds = {kind for c in nb.cells for o in c.get("outputs", []) for kind in o.get("data", {})}
        assert not {"application/javascript", "text/javascript"} & kinds, student
        answers = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        assert "<img src=x onerror" not in answers and "javascript:" not in answers, "the answer's HTML is inert"
    answer = next(c for c in nbformat.read(out / "nbgrader" / "autograded" / "attack_svg_answer_links"
                                           / course.assignment / f"{course.notebook}.ipynb", as_version=4).cells
                  if c.get("id") == "written_concepts")
    assert "The three concepts are eyes, ears and fur." in answer.source, "the TA still reads the answer"


def test_links_a_kernel_planted_are_never_followed(graded, course):
    result, out, _, _ = graded
    for name in ("attack_html_links", "attack_svg_answer_links"):
        assert "LINKS PLANTED" in output_of(out, course, name)
        assert not list((out / "work" / name / "run").iterdir()), "the kernel's folder never reaches the host"
    with sqlite3.connect(out / "nbgrader" / "gradebook.db") as con:  # the gradebook is still a gradebook
        assert con.execute("SELECT count(*) FROM student").fetchone()[0] == len(result.results)
    honest = {r.student: r.status for r in result.results if r.student.startswith("limit_network")}
    assert honest == {"limit_network": "graded"}


def test_student_text_reaches_the_ta_escaped(graded):
    result, out, _, lines = graded
    for text in [*lines, (out / "summary.md").read_text(), (out / "results.csv").read_text(),
                 (out / "collect.csv").read_text()]:
        assert "\x1b" not in text and "\x07" not in text
    for table in ("results.csv", "collect.csv"):
        for row in csv.reader(io.StringIO((out / table).read_text())):
            assert not any(cell.lstrip().startswith(("=", "+", "@")) for cell in row), (table, row)
    columns = None
    for line in (out / "summary.md").read_text().splitlines():  # every row has its table's columns
        pipes = len(re.findall(r"(?<!\\)\|", line))
        columns = (columns or pipes) if line.startswith("|") else None
        assert pipes in (0, columns), f"a row that breaks its table: {line!r}"
    attack = next(r for r in result.results if r.student == "attack_html_links")
    assert attack.status == "graded", "an error text naming CUDA does not decide a review"


def test_what_a_kernel_leaves_is_bounded(graded, course):
    result, out, _, _ = graded
    got = {r.student: r for r in result.results}
    assert "FILES MADE" in output_of(out, course, "limit_files_and_disk")
    assert not list((out / "work" / "limit_files_and_disk" / "run").iterdir())
    autograded = out / "nbgrader" / "autograded" / "limit_output" / course.assignment / f"{course.notebook}.ipynb"
    assert autograded.stat().st_size < 24 * 2**20 and "output truncated" in output_of(out, course, "limit_output")
    assert (out / "feedback" / "limit_output" / f"{course.notebook}.html").stat().st_size < 24 * 2**20
    sleeper = got["limit_sleeps"]
    assert sleeper.status == "failed" and sleeper.seconds < 400, sleeper.reason
    for job in (out / "work").iterdir():
        assert not list(job.glob("grader-sandbox-*.json")), f"{job.name}: a sandbox was not cleaned up"
