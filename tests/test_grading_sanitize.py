"""Student content made inert (grader/sanitize.py): the autograded notebook, the feedback page
and formgrader's page run nothing a student wrote, and show what the student wrote.

A hostile notebook (a script in HTML, img onerror, a JavaScript output, an SVG with a script
and onload, a PNG whose width hint carries an attribute, a widget view, a written answer with
an onerror, a javascript: link, an iframe and a script) goes through the preprocessor, then
through nbgrader itself on a tiny course (generate_assignment, autograde with the worker's
preprocessors except that nothing is executed: the outputs are the submission's, and
generate_feedback with grader/nbgrader_config.py), and through formgrader's exporter as
formgrader builds it. Every page is read with html.parser, the parser nbconvert itself
re-serializes pages with. About 10 s.
"""
from __future__ import annotations

import copy
import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from grader import course as course_mod
from grader import evidence, pipeline, sanitize
from grader.course import GRADER_DIR
from grader.jobs import Job, JobFolder
from grader.results import GradingResult

MARK = "pwned"  # every hostile payload names it: nothing that can run may carry it


def _js(where: str) -> str:
    return f"document.body.setAttribute('data-{MARK}','{where}')"


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
PROSE = "The concepts are stripes and wheels."
ANSWER = (f"{PROSE}\n\n"
          f"<img src=x onerror=\"{_js('answer-img')}\">\n\n"
          f"[a link](javascript:{_js('answer-link')})\n\n"
          f"<iframe src=\"javascript:parent.{_js('answer-iframe')}\"></iframe>\n\n"
          f"<script>{_js('answer-script')}</script>\n\n"
          "Still readable: $a<b$, `x<y` and a < b.")
HTML_OUT = (f"<table><tr><td>table-cell</td></tr></table><script>{_js('html-script')}</script>"
            f"<img src=x onerror=\"{_js('html-img')}\"><a href=\"javascript:{_js('html-link')}\">link</a>"
            f"<iframe srcdoc=\"<script>parent.{_js('html-iframe')}</script>\"></iframe>")
SVG_OUT = (f"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"20\" height=\"20\" onload=\"{_js('svg-onload')}\">"
           f"<script>{_js('svg-script')}</script><rect width=\"10\" height=\"10\" fill=\"red\"/></svg>")


def hostile_outputs() -> list:
    return [
        new_output("stream", name="stdout", text="plain text out\n"),
        new_output("display_data", data={"text/html": HTML_OUT, "text/plain": "<IPython.core.display.HTML object>"}),
        new_output("display_data", data={"application/javascript": _js("js-output")}),
        new_output("display_data", data={"image/svg+xml": SVG_OUT, "text/plain": "<Figure size 20x20>"}),
        new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure size 1x1>"},
                   metadata={"image/png": {"width": f"1 onerror={_js('png-width')}", "height": 1}}),
        new_output("execute_result", execution_count=3,
                   data={"text/markdown": f"**bold** <img src=x onerror=\"{_js('md-output')}\">", "text/plain": "md"}),
        new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "1"},
                                         "text/plain": "IntSlider(value=0)"}),
        new_output("display_data", data={"text/html": "<p>isolated</p>"}, metadata={"text/html": {"isolated": True}}),
    ]


def hostile_notebook():
    answer = new_markdown_cell(ANSWER, metadata={"nbgrader": {"grade": True, "solution": True, "locked": False,
                                                              "grade_id": "w1", "points": 2, "schema_version": 3}})
    code = new_code_cell("show()", execution_count=3, outputs=hostile_outputs(),
                         metadata={"nbgrader": {"grade": False, "solution": True, "locked": False, "grade_id": "answer",
                                                "schema_version": 3}})
    failing = new_code_cell("assert False",
                            outputs=[new_output("error", ename="AssertionError", evalue="", traceback=["boom"])])
    nb = new_notebook(cells=[answer, code, failing], metadata={"widgets": {"state": "x"}})
    failing.execution_count = f"<img src=x onerror={_js('count')}>"  # a kernel's reply, not valid nbformat
    return nb


# ----------------------------------------------------------------------------- reading a page

_URL_ATTRIBUTES = {"href", "src", "action", "formaction", "xlink:href", "data", "poster", "background"}


class Page(HTMLParser):
    """What can run on an HTML page: problems names each element, attribute or URL that could run
    student code: a frame, object, embed, base, form or refresh; a script that carries MARK (the
    pages' own scripts come from the templates); an event attribute (when not strict, only one
    that carries MARK: formgrader's page has onclick handlers); a javascript:, vbscript: or
    data: URL, except an image's."""

    def __init__(self, text: str, strict: bool = True):
        super().__init__(convert_charrefs=True)
        self.strict, self.problems, self.text, self.images, self.head = strict, [], [], [], []
        self._script, self._in_head = None, False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        if self._in_head and not self.head:
            self.head.append((tag, dict(attrs)))
        if tag == "head":
            self._in_head = True
        if tag in ("iframe", "frame", "frameset", "object", "embed", "applet", "base", "form"):
            self.problems.append(f"<{tag}>")
        if tag == "script":
            self._script = dict(attrs).get("src") or ""
        if tag == "meta" and "refresh" in (dict(attrs).get("http-equiv") or "").lower():
            self.problems.append("<meta refresh>")
        for name, value in attrs:
            value = value or ""
            if name.startswith("on") and (self.strict or MARK in value):
                self.problems.append(f"<{tag} {name}={value[:160]!r}>")
            if name in _URL_ATTRIBUTES:
                url = re.sub(r"[\t\n\r]", "", value).strip(" \x00\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c"
                                                            "\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19"
                                                            "\x1a\x1b\x1c\x1d\x1e\x1f").lower()
                scheme = re.match(r"([a-z][a-z0-9+.-]*):", url)
                if scheme and scheme.group(1) in ("javascript", "vbscript"):
                    self.problems.append(f"<{tag} {name}={value[:160]!r}>")
                if scheme and scheme.group(1) == "data" and not (tag == "img" and name == "src"
                                                                  and url.startswith("data:image/")):
                    self.problems.append(f"<{tag} {name}={value[:160]!r}>")
            if MARK in value and name == "style":
                self.problems.append(f"<{tag} style={value[:160]!r}>")
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag == "script":
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag == "head":
            self._in_head = False
        if tag == "script" and self._script is not None:
            if MARK in self._script:
                self.problems.append(f"<script> {self._script[:80]!r}")
            self._script = None

    def handle_data(self, data):
        if self._script is not None:
            self._script += data
        else:
            self.text.append(data)

    def visible(self) -> str:
        return " ".join("".join(self.text).replace(sanitize.ZWSP, "").split())


# ----------------------------------------------------------------------------- the preprocessor

def test_the_sanitized_notebook_keeps_no_code_and_all_that_the_student_sees():
    nb = hostile_notebook()
    before = copy.deepcopy(nb)
    sanitize.SanitizeNotebook().preprocess(nb, {})
    answer, code, failing = nb.cells
    outputs = code.outputs

    assert answer.source.replace(sanitize.ZWSP, "") == ANSWER  # the same text, the markup shown as text
    for live in ("<img", "<iframe", "<script", "javascript:", "<b$", "<y`"):
        assert live not in answer.source, live

    assert outputs[0] == before.cells[1].outputs[0]  # stream: as it was
    html = outputs[1].data["text/html"]
    assert "<td>table-cell</td>" in html and "<script" not in html and "onerror" not in html
    assert "javascript" not in html and "iframe" not in html and MARK not in html
    assert outputs[2].data == {"text/plain": outputs[2].data["text/plain"]}
    assert "application/javascript" in outputs[2].data["text/plain"]
    svg = outputs[3].data["image/svg+xml"]
    assert "<rect" in svg and "script" not in svg and "onload" not in svg and MARK not in svg
    assert outputs[4].data["image/png"] == PNG and outputs[4].metadata == {"image/png": {"height": 1}}
    assert "<img" not in outputs[5].data["text/markdown"] and "**bold**" in outputs[5].data["text/markdown"]
    assert outputs[6].data == {"text/plain": "IntSlider(value=0)"}
    assert outputs[7].metadata == {}
    assert failing.execution_count is None and failing.outputs == before.cells[2].outputs
    assert "widgets" not in nb.metadata

    # what nbgrader and the grader's verification read does not change
    for cell, original in zip(nb.cells, before.cells):
        assert cell.metadata == original.metadata and (cell.cell_type == "markdown" or cell.source == original.source)
    assert evidence.displayed(nb) == evidence.displayed(before)


def test_sanitizing_twice_changes_nothing_more():
    once = sanitize.sanitize_notebook(hostile_notebook())
    assert sanitize.sanitize_notebook(copy.deepcopy(once)) == once


def test_the_lab_notebooks_go_through_unchanged(course):
    """The instructor's markdown (a Colab badge, a link, a comment) is already inert."""
    for path in (course.student_notebook, course.source_notebook):
        nb = nbformat.read(path, as_version=4)
        assert sanitize.sanitize_notebook(copy.deepcopy(nb)) == nb


def _rendered_markdown(source: str) -> Page:
    from nbconvert.exporters import HTMLExporter

    return Page(HTMLExporter().markdown2html({"cell": {}}, sanitize.sanitize_markdown(source)))


@pytest.mark.parametrize("source", [
    f"<img src=x onerror={_js('1')}>", f"<IMG SRC=\"jav&#x09;ascript:{_js('2')}\">",
    f"<a href=\"&#106;avascript&colon;{_js('3')}\">x</a>", f"[x](&#106;avascript:{_js('4')})",
    f"[x](java\tscript:{_js('5')})", f"[x](JAVASCRIPT\\:{_js('6')})", f"[x]: javascript:{_js('7')}\n\n[x]",
    f"<javascript:{_js('8')}>", f"<!--> <img src=x onerror={_js('9')}> -->",
    f"`<!--` <img src=x onerror={_js('10')}> `-->`", f"<div <img src=x onerror={_js('11')}>",
    f"<svg><script>{_js('12')}</script></svg>", f"<details open ontoggle={_js('13')}>x</details>",
    f"<a href=\"https://x.org\" onmouseover=\"{_js('14')}\">x</a>", f"<style>*{{}}</style><script>{_js('15')}</script>",
    f"<form action=\"javascript:{_js('16')}\"><button>go</button></form>", f"<base href=\"javascript:{_js('17')}//\">",
    f"<object data=\"data:text/html,<script>{_js('18')}</script>\"></object>", f"<embed src=x onload={_js('19')}>",
    f"<div style=\"background:url(javascript:{_js('20')})\">x</div>", f"<a href=\"data:text/html,{_js('21')}\">x</a>",
    f"<meta http-equiv=refresh content=\"0;url=javascript:{_js('22')}\">",
    f"<![CDATA[<img src=x onerror={_js('23')}>]]>", f"<?php <img src=x onerror={_js('24')}> ?>",
])
def test_no_markdown_trick_survives_rendering(source):
    page = _rendered_markdown(source)
    assert not page.problems, page.problems


@pytest.mark.parametrize("source", [
    "A plain answer, with *emphasis*, `code`, a [link](https://example.org) and $x^2$.",
    "> a quotation\n\n```python\nif a < b and c > d:\n    pass\n```",
    '<a href="https://colab.research.google.com/x" target="_blank">\n'
    '<img src="https://example.org/b.svg" alt="badge"/>\n</a>',
    "<!-- a note -->\n<b>bold</b> <em>em</em> <br> <sub>1</sub> &amp; &lt;tag&gt;",
    "<table><tr><th align=\"left\">a</th></tr><tr><td colspan=\"2\">b</td></tr></table>",
    "Data: 300 images; a <= b; x < 3.",
])
def test_inert_markdown_stays_as_written(source):
    assert sanitize.sanitize_markdown(source) == source


def test_a_broken_tag_is_shown_as_text_and_reads_the_same():
    source = "Compare $a<b$ with `List<int>` and <unknown attr=1>text</unknown>."
    clean = sanitize.sanitize_markdown(source)
    assert clean != source and clean.replace(sanitize.ZWSP, "") == source
    assert "<unknown" not in clean and "<int" not in clean and "<b" not in clean


@pytest.mark.parametrize("text,bad", [
    ("javascript:x", True), ("JaVaScRiPt:x", True), ("&#106;avascript:x", True), ("&#x6A;avascript&#58;x", True),
    ("java&Tab;script:x", True), ("java\nscript:x", True), ("javascript\\:x", True), ("vbscript:x", True),
    ("data:text/html,x", True), ("data:image/png;base64,AAA", False), ("Data: the images", False),
    ("https://x.org/javascript", False), ("a javascript lesson", False),
])
def test_url_schemes_are_broken_however_they_are_written(text, bad):
    out = sanitize.neutralize_schemes(text)
    assert (out != text) is bad
    assert out.replace(sanitize.ZWSP, "") == text
    assert sanitize.neutralize_schemes(out) == out


def test_html_outputs_keep_tables_and_lose_code():
    table = ('<div><style scoped>.dataframe tbody tr th {vertical-align: top;}</style>'
             '<table border="1" class="dataframe"><thead><tr style="text-align: right;"><th></th><th>a</th></tr>'
             '</thead><tbody><tr><th>0</th><td>x&lt;y</td></tr></tbody></table></div>')
    clean = sanitize.sanitize_html(table)
    assert clean == ('<div><table border="1"><thead><tr style="text-align: right"><th></th><th>a</th></tr>'
                     '</thead><tbody><tr><th>0</th><td>x&lt;y</td></tr></tbody></table></div>')
    hostile = sanitize.sanitize_html(
        '<p style="cursor: url(http://e/x.cur); color: red; position: fixed">p</p><div id="x" class="modal" '
        'data-toggle="tooltip" title="t">d</div><img src="data:image/svg+xml;base64,AAA"><math><mi>m</mi></math>'
        '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>')
    assert hostile.startswith('<p style="color: red">p</p><div title="t">d</div><img>')
    assert not Page(hostile).problems


def test_an_svg_figure_stays_a_drawing(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([1, 2, 3], [3, 1, 2])
    ax.imshow([[0.0, 1.0], [1.0, 0.0]], extent=(1, 2, 1, 2))
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    clean = sanitize.sanitize_svg(buffer.getvalue())
    tags = set(re.findall(r"<([A-Za-z]+)", clean))
    assert {"svg", "path", "image", "clipPath", "use"} <= tags and clean.count("<path") > 10
    assert 'xmlns="http://www.w3.org/2000/svg"' in clean and "data:image/png;base64" in clean
    assert sanitize.sanitize_svg(clean) == clean


def test_an_svg_loses_everything_that_runs_or_loads():
    svg = sanitize.sanitize_svg(
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" onload="alert(1)">'
        '<script>alert(2)</script><a xlink:href="javascript:alert(3)"><text y="9">click</text></a>'
        '<foreignObject><body xmlns="http://www.w3.org/1999/xhtml"><img src="x" onerror="alert(4)"/></body>'
        '</foreignObject><animate attributeName="href" to="javascript:alert(5)"/><set attributeName="onclick" '
        'to="alert(6)"/><rect width="1" height="1" fill="url(http://e/x)" '
        'style="fill: url(#g); stroke: url(http://e)"/><use xlink:href="http://e/x.svg#a"/>'
        '<image href="data:image/png;base64,AAA"/><style>@import url(http://e)</style>'
        '</svg>')
    assert svg == ('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink">'
                   '<rect width="1" height="1" style="fill: url(#g)"></rect><use></use>'
                   '<image xlink:href="data:image/png;base64,AAA"></image></svg>')
    for broken in ("<svg><script>alert(1)</script>", '<!DOCTYPE s [<!ENTITY a "b">]><svg>&a;</svg>',
                   '<html><script>alert(1)</script></html>'):
        assert sanitize.sanitize_svg(broken) == sanitize.SVG_REMOVED


def test_inline_styles_keep_only_harmless_properties():
    assert sanitize.sanitize_css("color: red; background: url(http://e); width: expression(alert(1)); "
                                 "fill: url(#a); stroke: url('#b'); font-weight: bold !important; "
                                 "color: rgb(1, 2, 3); behavior: url(x.htc); cursor: url(x), auto") == \
        "color: red; fill: url(#a); stroke: url(\"#b\"); font-weight: bold !important; color: rgb(1, 2, 3)"


# ----------------------------------------------------------------------------- the wiring

def test_the_preprocessor_goes_after_nbgrader_has_scored_the_notebook():
    from nbgrader.converters import Autograde

    default = Autograde.class_traits()["autograde_preprocessors"].default()
    wired = sanitize.autograde_preprocessors(default)
    names = [sanitize._name(p) for p in wired]
    assert names.index("SanitizeNotebook") == names.index("AssignLatePenalties") + 1
    assert names.index("SanitizeNotebook") > names.index("SaveAutoGrades") > names.index("Execute")
    assert names[-1] == "CheckCellMetadata" and len(wired) == len(default) + 1
    assert sanitize.autograde_preprocessors(wired) == wired
    with pytest.raises(ValueError):
        sanitize.autograde_preprocessors(["nbgrader.preprocessors.CheckCellMetadata"])


def test_the_worker_autogrades_with_it_and_protects_the_page(tmp_path, monkeypatch):
    from nbgrader.converters import GenerateFeedback
    from nbgrader.preprocessors import SaveAutoGrades

    cfg = pipeline.nbgrader_config(60)
    wired = list(cfg.Autograde.autograde_preprocessors)
    assert wired.index(sanitize.SanitizeNotebook) > wired.index(SaveAutoGrades)
    # the sanitizer last, over all a page shows (the rubrics ShowRubrics adds in formgrader too)
    assert cfg.HTMLExporter.preprocessors == ["grader.rubric.ShowRubrics", "grader.sanitize.SanitizeNotebook"]

    monkeypatch.setenv("GRADER_WORK", str(tmp_path))
    course = course_mod.load()
    page = tmp_path / "feedback" / "ada" / course.assignment / f"{course.notebook}.html"

    def generate(app_class, cfg, assignment, student, log):
        assert app_class is GenerateFeedback and Path(cfg.CourseDirectory.root) == tmp_path
        page.parent.mkdir(parents=True)
        page.write_text("<!DOCTYPE html><html><head><title>t</title></head><body>b</body></html>")

    monkeypatch.setattr(pipeline, "_run_app", generate)
    result = GradingResult("ada")
    pipeline._feedback(pipeline.Grading(course, Job("ada", "", "", 60), JobFolder(tmp_path), result))
    assert sanitize.has_policy(page.read_text()) and not result.notes


def test_protect_page_adds_the_policy_once_atomically(tmp_path):
    page = tmp_path / "p.html"
    page.write_text("<!DOCTYPE html>\n<html>\n<HEAD lang=en>\n<title>t</title></HEAD><body><img src=x></body></html>")
    page.chmod(0o640)
    assert sanitize.protect_page(page) is True
    text = page.read_text()
    assert text.startswith(f"<!DOCTYPE html>\n<html>\n<HEAD lang=en>\n{sanitize.CSP_META}\n<title>")
    assert Page(text).head == [("meta", {"http-equiv": "Content-Security-Policy", "content": sanitize.CSP})]
    assert sanitize.protect_page(page) is False and page.read_text() == text
    assert page.stat().st_mode & 0o777 == 0o640 and sorted(os.listdir(tmp_path)) == ["p.html"]
    (tmp_path / "bare.html").write_text("<p>no head</p>")
    with pytest.raises(ValueError):
        sanitize.protect_page(tmp_path / "bare.html")


# ----------------------------------------------------------------------------- nbgrader, end to end

def _course_config(root: Path):
    """grader/nbgrader_config.py, as the worker and the TA's commands load it, on a tiny course."""
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    cfg = PyFileConfigLoader("nbgrader_config.py", path=str(GRADER_DIR)).load_config()
    cfg.CourseDirectory = Config(root=str(root), course_id="tiny", db_url=f"sqlite:///{root / 'gradebook.db'}")
    return cfg


def _run(app_class, cfg, student: str = ".") -> None:
    from nbgrader.coursedir import CourseDirectory

    coursedir = CourseDirectory(config=cfg)
    coursedir.assignment_id, coursedir.student_id = "ps1", student
    app = app_class(coursedir=coursedir, config=cfg)
    app.log, app.force = logging.getLogger("tiny-course"), True
    if hasattr(app, "create_student"):
        app.create_student = True
    app.start()


def _autograde_config(cfg, sanitized: bool):
    """The worker's Autograde preprocessors (with or without the sanitizer), except that the
    submission's outputs stand for the kernel's: nothing is executed and nothing cleared."""
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import ClearOutput, NbGraderPreprocessor
    from traitlets.config import Config

    from grader.execute import ResilientExecute

    class AlreadyRun(NbGraderPreprocessor):
        def preprocess(self, nb, resources):
            return nb, resources

    steps = [AlreadyRun if p is ResilientExecute else p
             for p in pipeline.nbgrader_config(60).Autograde.autograde_preprocessors]
    extra = Config()
    extra.Autograde.sanitize_preprocessors = [p for p in Autograde.class_traits()["sanitize_preprocessors"].default()
                                              if p is not ClearOutput]
    extra.Autograde.autograde_preprocessors = steps if sanitized else \
        [p for p in steps if p is not sanitize.SanitizeNotebook]
    cfg = copy.deepcopy(cfg)
    cfg.merge(extra)
    return cfg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A one-notebook nbgrader course, the hostile notebook submitted twice: ada's autograded
    with the sanitizer, bob's without (a notebook autograded before it existed)."""
    from nbgrader.converters import Autograde, GenerateAssignment, GenerateFeedback

    root = tmp_path_factory.mktemp("tiny")
    source = new_notebook(cells=[
        new_markdown_cell("YOUR ANSWER HERE", metadata={"nbgrader": {"grade": True, "solution": True, "locked": False,
                                                                     "grade_id": "w1", "points": 2,
                                                                     "schema_version": 3}}),
        new_code_cell("show()", metadata={"nbgrader": {"grade": False, "solution": True, "locked": False,
                                                       "grade_id": "answer", "schema_version": 3}}),
        new_code_cell("assert True", metadata={"nbgrader": {"grade": True, "solution": False, "locked": True,
                                                            "grade_id": "check", "points": 1, "schema_version": 3}}),
        new_code_cell("assert False", metadata={"nbgrader": {"grade": True, "solution": False, "locked": True,
                                                             "grade_id": "check_fails", "points": 1,
                                                             "schema_version": 3}}),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    (root / "source" / "ps1").mkdir(parents=True)
    nbformat.write(source, root / "source" / "ps1" / "ps1.ipynb")
    cfg = _course_config(root)
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nbgrader's gradebook trips SQLAlchemy's autoflush warnings
        mp.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")  # alembic
        _run(GenerateAssignment, cfg)
        submitted = {}
        for student, sanitized in (("ada", True), ("bob", False)):
            nb = nbformat.read(root / "release" / "ps1" / "ps1.ipynb", as_version=4)
            nb.cells[0].source = ANSWER
            nb.cells[1].outputs = hostile_outputs()
            nb.cells[3].outputs = [new_output("error", ename="AssertionError", evalue="", traceback=["AssertionError"])]
            path = root / "submitted" / student / "ps1" / "ps1.ipynb"
            path.parent.mkdir(parents=True)
            nbformat.write(nb, path)
            submitted[student] = path.read_bytes()
            _run(Autograde, _autograde_config(cfg, sanitized), student)
            _run(GenerateFeedback, cfg, student)
    return root, submitted


def _grades(root: Path, student: str) -> dict:
    from nbgrader.api import Gradebook

    with warnings.catch_warnings(), Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        warnings.simplefilter("ignore")
        return {g.name: (g.auto_score, g.needs_manual_grade)
                for g in gb.find_submission_notebook("ps1", "ps1", student).grades}


def test_nbgrader_grades_the_same_with_the_sanitizer(tiny):
    root, _ = tiny
    assert _grades(root, "ada") == _grades(root, "bob") == {"w1": (None, True), "check": (1.0, False),
                                                            "check_fails": (0.0, False)}


def test_the_autograded_notebook_is_inert_and_the_submitted_one_as_handed_in(tiny):
    root, submitted = tiny
    for student in ("ada", "bob"):
        assert (root / "submitted" / student / "ps1" / "ps1.ipynb").read_bytes() == submitted[student]
    ada = nbformat.read(root / "autograded" / "ada" / "ps1" / "ps1.ipynb", as_version=4)
    bob = nbformat.read(root / "autograded" / "bob" / "ps1" / "ps1.ipynb", as_version=4)
    assert ada.cells[0].source == sanitize.sanitize_markdown(ANSWER) and bob.cells[0].source == ANSWER
    assert "<script" not in nbformat.writes(ada) and "<script" in nbformat.writes(bob)
    for cell, raw in zip(ada.cells, bob.cells):
        assert cell.metadata == raw.metadata
    assert sanitize.sanitize_notebook(bob) == ada


def _feedback_page(root: Path, student: str) -> str:
    return (root / "feedback" / student / "ps1" / "ps1.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("student", ["ada", "bob"])
def test_the_feedback_page_runs_nothing_and_shows_the_work(tiny, student):
    """bob's notebook was autograded without the sanitizer: the export sanitizes it all the same."""
    root, _ = tiny
    page = Page(_feedback_page(root, student))
    assert page.head[0] == ("meta", {"http-equiv": "Content-Security-Policy", "content": sanitize.CSP})
    assert not page.problems, page.problems
    text = page.visible()
    for shown in (PROSE, "Still readable: $a<b$, x<y and a < b.", f"<script>{_js('answer-script')}</script>",
                  "table-cell", "plain text out", "IntSlider(value=0)",
                  "isolated", "bold", "Score: 1.0 / 4.0", "Written response"):
        assert shown in text, shown
    assert f"data:image/png;base64,{PNG}" in page.images
    assert any(src.startswith("data:image/svg+xml;base64,") for src in page.images)


def _raw_export(root: Path) -> str:
    """bob's autograded notebook (never sanitized) exported with nbgrader's feedback template
    alone: no sanitizer, no policy."""
    from nbconvert.exporters import HTMLExporter
    from traitlets.config import Config

    template_dir = Path(sys.modules["nbgrader"].__file__).parent / "server_extensions" / "formgrader" / "templates"
    cfg = Config()
    cfg.HTMLExporter.template_name = "feedback"
    cfg.HTMLExporter.extra_template_basedirs = [str(template_dir)]
    cfg.HTMLExporter.extra_template_paths = [str(template_dir.parent / "static" / "node_modules" / "bootstrap" / "dist"
                                                 / "css")]
    nb = nbformat.read(root / "autograded" / "bob" / "ps1" / "ps1.ipynb", as_version=4)
    for cell in nb.cells:  # what nbgrader's GetGrades adds
        if "nbgrader" in cell.metadata:
            cell.metadata.nbgrader["score"] = 0
    raw, _ = HTMLExporter(config=cfg).from_notebook_node(
        nb, resources={"nbgrader": {"notebook": "ps1", "score": 0, "max_score": 4, "late_penalty": 0}})
    return raw


def test_the_page_checks_find_what_a_raw_export_runs(tiny):
    """The same notebook exported without the sanitizer and the policy: the checks above fail."""
    root, _ = tiny
    page = Page(_raw_export(root))
    assert not sanitize.has_policy(_raw_export(root))
    found = " ".join(page.problems)
    for where in ("answer-img", "answer-iframe", "answer-script", "html-script", "html-img", "md-output", "<iframe>"):
        assert where in found, where


def test_formgrader_renders_an_unsanitized_notebook_inert(tiny, monkeypatch):
    """formgrader as the TA starts it from grader/ (its exporter built from nbgrader_config.py),
    on bob's notebook, autograded without the sanitizer."""
    from nbgrader.server_extensions.formgrader.formgrader import FormgradeExtension

    root, _ = tiny
    monkeypatch.chdir(GRADER_DIR)
    monkeypatch.setattr(sys, "path", list(sys.path))  # nbgrader puts the working folder in front
    extension = FormgradeExtension()
    extension.root_dir = str(GRADER_DIR.parent)
    extension.initialize([])

    class WebApp:
        settings: dict = {}

    extension.init_tornado_settings(WebApp)
    exporter = WebApp.settings["nbgrader_exporter"]
    assert exporter.template_name == "formgrade"
    resources = {"assignment_id": "ps1", "notebook_id": "ps1", "submission_id": "s1", "index": 0, "total": 1,
                 "base_url": "", "student": "bob", "last_name": None, "first_name": None, "notebook_path": "/x"}
    html, _ = exporter.from_filename(str(root / "autograded" / "bob" / "ps1" / "ps1.ipynb"), resources=resources)
    page = Page(html, strict=False)  # formgrader's own page has scripts and onclick handlers
    assert not page.problems, page.problems
    assert PROSE in page.visible() and "table-cell" in page.visible()
    assert "formgrade.js" in html


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium (/usr/bin/chromium) is not installed: "
                                             "the headless browser check of the feedback page needs it")
def test_a_browser_runs_nothing_of_the_student_on_the_feedback_page(tiny, tmp_path):
    """Headless chromium loads the page (and the page without its policy, to see the sanitizer
    alone): no payload marks the body. The raw export shows that the payloads do run."""
    root, _ = tiny

    def pwned(text: str) -> bool:
        path = tmp_path / f"page{len(list(tmp_path.iterdir()))}.html"
        path.write_text(text, encoding="utf-8")
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000",
                              "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120).stdout
        assert "</body>" in dom, "chromium gave no page"
        return re.search(rf"<body[^>]*\bdata-{MARK}=", dom) is not None

    page = _feedback_page(root, "ada")
    without_policy = re.sub(r"<meta[^>]*Content-Security-Policy[^>]*>", "", page)
    assert without_policy != page
    assert not pwned(page) and not pwned(without_policy)
    assert pwned(_raw_export(root)), "no payload ran in the raw export: the browser check would prove nothing"
