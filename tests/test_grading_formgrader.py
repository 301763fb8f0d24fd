"""The TA's path for the written answers, in a real browser: `python -m grader formgrade` on a
graded batch, each written answer shown with its rubric, scores and comments typed into
formgrader's boxes, then `python -m grader export`: the gradebook, grades.csv, results.csv,
summary.md, scores.png and the students' feedback pages all carry them, and agree.

The batch is the tiny lab's (tests/tiny_lab/: it grades in seconds), two students who answered
the written question in their own words; Playwright drives Debian's chromium (/usr/bin/chromium,
no browser download). Whether the CRAFT lab's rubric is found for each of its written answers is
checked without a browser: formgrader's exporter is the same code for every lab.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from nbgrader.api import Gradebook

from conftest import ROOT, run_env
from grader import course as course_mod
from grader import release, rubric, sanitize, score
from grader.jobs import BatchFolders, notebook_path
from grader.kernel import probe
from grader.samples import Sample, write_samples

TINY = Path(__file__).resolve().parent / "tiny_lab" / "course.toml"
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).exists()), None)
# what each student wrote, and what the TA gives them in formgrader
ANSWERS = {"ada": "Ada's words: on one scale the scores can be compared.",
           "bob": "Bob's words: numbers look nicer."}
GIVEN = {"ada": ("1", "Right: a common scale."), "bob": ("0.5", "Half: say why the scales differ.")}


# ----------------------------------------------------------------------------- no browser

def _preprocess(nb, template: str, resources: dict):
    """ShowRubrics as nbconvert runs it: registered in an exporter (its parent) with that template."""
    return rubric.ShowRubrics.preprocess(SimpleNamespace(parent=SimpleNamespace(template_name=template)),
                                         nb, resources)[0]


def _formgrader_view(course, nb):
    """The notebook as formgrader's exporter preprocesses it for the course's notebook."""
    return _preprocess(nb, rubric.FORMGRADER_TEMPLATE, {"assignment_id": course.assignment,
                                                         "notebook_id": course.notebook})


def test_each_written_answer_of_the_craft_lab_has_its_rubric_beside_it_in_formgrader(course):
    """W1..W4: after each answer cell of the student version, one TA-only cell holding the text
    nbgrader removed from that cell of the source (its model answer and rubric)."""
    source = nbformat.read(course.source_notebook, as_version=4)
    texts = rubric.written_answers(source)
    assert list(texts) == ["written_concepts", "written_layers", "written_local", "written_deletion"]
    assert all("Rubric" in t and "BEGIN SOLUTION" not in t and len(t) > 200 for t in texts.values())
    student = nbformat.read(course.student_notebook, as_version=4)
    assert not any(t[:60] in c.source for c in student.cells for t in texts.values()), "a rubric in the student version"
    shown = _formgrader_view(course, nbformat.read(course.student_notebook, as_version=4))
    assert len(shown.cells) == len(student.cells) + len(texts)
    for i, cell in enumerate(shown.cells):
        if rubric.is_written_answer(cell):
            after = shown.cells[i + 1].source
            assert rubric.HEADING in after and str(course.source_notebook.relative_to(ROOT)) in after
            body = [line[2:] for line in after.splitlines() if line.startswith("> ")]
            assert " ".join(body) == " ".join(line for line in texts.pop(cell.metadata.nbgrader["grade_id"])
                                              .splitlines() if line)
    assert texts == {}


def test_the_rubric_shows_in_formgrader_only(course):
    """Another exporter (generate_feedback's: template `feedback`), another notebook, or no
    formgrader resources: the notebook is left as it is."""
    student = nbformat.read(course.student_notebook, as_version=4)
    ids = {"assignment_id": course.assignment, "notebook_id": course.notebook}
    for template, resources in (("feedback", ids), (rubric.FORMGRADER_TEMPLATE, {**ids, "notebook_id": "other"}),
                                (rubric.FORMGRADER_TEMPLATE, {}), ("classic", ids)):
        got = _preprocess(nbformat.read(course.student_notebook, as_version=4), template, resources)
        assert got.cells == student.cells, template


def test_the_ta_text_is_what_nbgrader_removes():
    cell = nbformat.v4.new_markdown_cell("Intro\n### BEGIN SOLUTION\nModel.\n\n- rubric\n### END SOLUTION\nafter")
    assert rubric.ta_text(cell) == "Model.\n\n- rubric"
    assert rubric.ta_text(nbformat.v4.new_markdown_cell("Whole cell: model and rubric.")) == \
        "Whole cell: model and rubric."


def test_a_page_that_cannot_be_protected_is_not_published(tmp_path):
    from grader import feedback

    page = tmp_path / "feedback" / "ada" / "lab.html"
    page.parent.mkdir(parents=True)
    page.write_text("<html><head></head><body>earlier</body></html>")
    made = tmp_path / "made.html"
    made.write_text("<html><body>no head</body></html>")
    assert "protected" in feedback.publish(made, page, 0.0) and "earlier" in page.read_text()
    assert feedback.publish(tmp_path / "none.html", page, 0.0) == "nbgrader made no page"
    made.write_text("<html><head><title>t</title></head><body>new</body></html>")
    assert feedback.publish(made, page, time.time() + 60) == "nbgrader made no page", "a stale page"
    assert feedback.publish(made, page, 0.0) == "" and "new" in page.read_text()
    assert sanitize.has_policy(page.read_text()) and not list(page.parent.glob(".*"))


def test_formgrade_refuses_a_folder_that_was_never_graded(tmp_path):
    from grader import formgrade

    with pytest.raises(SystemExit, match="grade the batch first"):
        formgrade.server(course_mod.load(TINY), tmp_path)


# ----------------------------------------------------------------------------- in a browser

@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The tiny lab graded for ada and bob (bob's top_k is wrong), both written answers waiting."""
    course = course_mod.load(TINY)
    work = tmp_path_factory.mktemp("formgrader")
    student = release.generate(course, work / "release") / f"{course.notebook}.ipynb"
    write_samples([Sample("ada", {"written_why": ANSWERS["ada"]}),
                   Sample("bob", {"written_why": ANSWERS["bob"],
                                  "answer_topk": "def top_k(x, k):\n    return np.argsort(x)[:k]"})],
                  work / "inbox", course.source_notebook, student)
    env = run_env() | {course_mod.COURSE_VAR: str(TINY)}
    unsafe = ["--allow-unsafe"] if probe.probe().missing() else []  # our own samples: trusted
    proc = subprocess.run([sys.executable, "-m", "grader", "grade", str(work / "inbox"), "--out", str(work / "out"),
                           "--workers", "2", *unsafe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return course, work / "out", env


def _rows(path) -> dict[str, dict[str, str]]:
    return {row["student_id"]: row for row in csv.DictReader(open(path, encoding="utf-8"))}


def _start(out: Path, env: dict) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen([sys.executable, "-m", "grader", "formgrade", "--out", str(out), "--port", "0"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(300, server.kill)  # a server that never says where it is does not hang the suite
    watchdog.start()
    said = []
    try:
        for line in server.stdout:
            said.append(line)
            found = re.search(r"(http://127\.0\.0\.1:\d+/\S+\?token=\S+)", line)
            if found:
                return server, found.group(1)
    finally:
        watchdog.cancel()
    raise AssertionError("formgrade printed no address:\n" + "".join(said))


def _score_in_formgrader(url: str, course) -> dict[str, str]:
    """As a TA: open the printed address, open each submission, read the answer and its rubric,
    type a score and a comment. Returns what each student's page showed."""
    from playwright.sync_api import sync_playwright

    pages = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.set_default_timeout(120_000)  # a busy machine renders slowly
        page.goto(url)
        links = page.locator("a[href*='/formgrader/submissions/']")  # filled in by formgrader's script
        links.first.wait_for(state="attached")
        hrefs = sorted({links.nth(i).get_attribute("href") for i in range(links.count())})
        assert len(hrefs) == 2, hrefs
        base = url.split("/formgrader")[0]
        for href in hrefs:
            page.goto(base + href if href.startswith("/") else href)
            # formgrader's script has fetched the scores and comments and bound the boxes to them
            page.wait_for_function("() => window.formgrader && formgrader.grades && formgrader.grades.loaded "
                                   "&& formgrader.comments && formgrader.comments.loaded")
            shown = page.inner_text("body")
            sid = next(s for s, answer in ANSWERS.items() if answer in shown)
            pages[sid] = shown
            points, comment = GIVEN[sid]
            with page.expect_response(lambda r: "/formgrader/api/grade/" in r.url and r.request.method == "PUT"):
                page.fill("#written_why", points)
                page.press("#written_why", "Tab")
            with page.expect_response(lambda r: "/formgrader/api/comment/" in r.url and r.request.method == "PUT"):
                page.fill("#written_why-comment", comment)
                page.press("#written_why-comment", "Tab")
        anonymous = browser.new_page()  # no token: the login page, no submission
        anonymous.goto(base + "/formgrader/gradebook")
        assert "/login" in anonymous.url and not anonymous.locator("a[href*='/formgrader/submissions/']").count()
        browser.close()
    return pages


def _page_scores(html: str) -> tuple[float, list[str]]:
    """(the total in a feedback page's title bar, the text of the page)."""
    total = re.search(r"\(Score: ([\d.]+) / ([\d.]+)\)", html)
    assert total, "no total in the feedback page"
    return float(total.group(1)), re.sub(r"<[^>]+>", " ", html)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium (/usr/bin/chromium) is not installed: the browser "
                                             "test of formgrader needs it (CI installs it: apt-get install chromium)")
def test_a_ta_scores_the_written_answers_in_formgrader_and_export_carries_them_everywhere(graded):
    pytest.importorskip("playwright.sync_api", reason="playwright is in requirements.txt: run make setup")
    course, out, env = graded
    folders = BatchFolders(out)
    source = nbformat.read(course.source_notebook, as_version=4)
    rubric_text = rubric.written_answers(source)["written_why"]
    before = {sid: (out / "feedback" / sid / f"{course.notebook}.html").read_text() for sid in ANSWERS}
    picture = (out / "scores.png").read_bytes()

    server, url = _start(out, env)
    try:
        shown = _score_in_formgrader(url, course)
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C
        said = server.communicate(timeout=60)[0]
    assert server.returncode == 0 and "Formgrader stopped" in said, said[-2000:]
    for sid, text in shown.items():  # the answer, then its rubric, for the TA
        assert text.index(ANSWERS[sid]) < text.index(rubric.HEADING) < text.index(rubric_text.splitlines()[0][:40])

    # the gradebook holds what the TA typed
    with Gradebook(score.db_url(folders.main_db)) as gb:
        for sid, (points, comment) in GIVEN.items():
            assert gb.find_grade("written_why", course.notebook, course.assignment, sid).manual_score == float(points)
            assert gb.find_comment("written_why", course.notebook, course.assignment, sid).manual_comment == comment

    proc = subprocess.run([sys.executable, "-m", "grader", "export", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Feedback pages: 2 made again" in proc.stdout and "No written answer waits" in proc.stdout

    grades, results = _rows(out / "grades.csv"), _rows(out / "results.csv")
    expected = {"ada": 3 + 1.0, "bob": 2 + 0.5}   # automatic points (bob lost check_topk) + the TA's
    totals = {}
    for sid, (points, comment) in GIVEN.items():
        page = (out / "feedback" / sid / f"{course.notebook}.html").read_text()
        total, words = _page_scores(page)
        assert total == float(grades[sid]["score"]) == float(results[sid]["score"]) == expected[sid], sid
        assert float(results[sid]["written_why"]) == float(points) and results[sid]["waiting_manual"] == ""
        assert comment in words and ANSWERS[sid] in words, sid
        assert re.search(rf"Score:\s*{float(points)}\s*/\s*1\.0", words), "the written answer's own score"
        assert rubric_text[:40] not in page and rubric.HEADING not in page, "the rubric reached a student's page"
        assert sanitize.has_policy(page) and page != before[sid]
        assert os.path.samefile(out / "feedback" / sid / f"{course.notebook}.html",
                                notebook_path(folders.main, "feedback", sid, course, ".html"))
        totals[sid] = total
    summary = (out / "summary.md").read_text()
    mean = sum(totals.values()) / len(totals)
    assert re.search(rf"\| TOTAL \| 4 \| {mean:.2f} \|", summary), summary
    assert "nothing waits for a person" in summary
    assert (out / "scores.png").read_bytes() != picture
