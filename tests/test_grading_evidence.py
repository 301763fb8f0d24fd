"""The evidence channel (grader/evidence.py): what a capture sends, how the worker takes it, and
what it refuses. Fast: the kernel side runs here in-process, with the display call captured."""
from __future__ import annotations

import base64
import io
import zipfile

import numpy as np
import pytest

from grader import evidence

HELPERS = '''
def make_helpers(user, context):
    return {"twice": lambda x: 2 * x, "SEED": context["seed"]}
'''


@pytest.fixture
def sent(monkeypatch):
    """Runs a capture snippet in a namespace like a kernel's; returns the display messages it sent."""
    import IPython.display

    messages = []
    monkeypatch.setattr(IPython.display, "publish_display_data",
                        lambda data, metadata=None, **kw: messages.append(
                            {"output_type": "display_data", "data": data, "metadata": metadata or {}}))

    def run(point, user):
        exec(evidence.snippet(point, HELPERS, {"seed": 7}), user)
        return messages
    return run


def test_a_capture_sends_each_item_once_and_guards_each_one(sent):
    point = evidence.capture("cell", "grp", a="twice(x)", b="undefined_name", c="SEED", d="'text'", e="object()")
    user = {"x": np.arange(3)}
    messages = sent(point, user)
    arrays, why = evidence.read_message(messages, "grp")
    assert why == "" and len(messages) == 1
    assert arrays["grp.a"].tolist() == [0, 2, 4] and int(arrays["grp.c"]) == 7 and str(arrays["grp.d"]) == "text"
    assert "NameError" in str(arrays["error.grp.b"]) and "not plain numbers" in str(arrays["error.grp.e"])
    assert set(user) == {"x", "__builtins__"}, "the snippet leaves no name behind in the student's namespace"


def test_a_students_names_for_builtins_do_not_break_the_capture(sent):
    point = evidence.capture("cell", "grp", n="len(x)")
    arrays, why = evidence.read_message(sent(point, {"x": [1, 2], "len": None, "eval": None, "np": None}), "grp")
    assert why == "" and int(arrays["grp.n"]) == 2


def message(arrays: dict, group: str = "grp") -> dict:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return {"output_type": "display_data", "data": {evidence.MIME: base64.b64encode(buffer.getvalue()).decode()},
            "metadata": {evidence.MIME: {"group": group}}}


def test_exactly_one_message_of_the_right_group_is_taken():
    good = message({"grp.a": np.ones(2)})
    assert evidence.read_message([good], "grp")[0]["grp.a"].tolist() == [1, 1]
    assert "no evidence" in evidence.read_message([], "grp")[1]
    assert "instead of one" in evidence.read_message([good, good], "grp")[1]
    assert evidence.read_message([good, good], "grp")[0] == {}
    assert "another capture" in evidence.read_message([message({"x.a": np.ones(1)}, "other")], "grp")[1]


@pytest.mark.parametrize("damage", ["objects", "lying_header", "not_zip", "not_base64", "too_big", "too_many"])
def test_hostile_messages_are_refused_whole(damage, monkeypatch):
    if damage == "objects":
        buffer = io.BytesIO()
        np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        out = message({})
        data = io.BytesIO()
        with zipfile.ZipFile(data, "w") as z:
            z.writestr("grp.a.npy", buffer.getvalue())
        out["data"][evidence.MIME] = base64.b64encode(data.getvalue()).decode()
    elif damage == "lying_header":
        buffer = io.BytesIO()
        np.save(buffer, np.zeros(4))
        raw = buffer.getvalue().replace(b"(4,)", b"(9,)")
        data = io.BytesIO()
        with zipfile.ZipFile(data, "w") as z:
            z.writestr("grp.a.npy", raw)
        out = message({})
        out["data"][evidence.MIME] = base64.b64encode(data.getvalue()).decode()
    elif damage == "not_zip":
        out = message({})
        out["data"][evidence.MIME] = base64.b64encode(b"just text").decode()
    elif damage == "not_base64":
        out = message({})
        out["data"][evidence.MIME] = "%%% not base64 %%%"
    elif damage == "too_big":
        monkeypatch.setattr(evidence, "MAX_MESSAGE_BYTES", 1000)
        out = message({"grp.a": np.zeros(1000)})
    else:
        out = message({f"grp.a{i}": np.zeros(1) for i in range(evidence.MAX_MEMBERS + 1)})
    arrays, why = evidence.read_message([out], "grp")
    assert arrays == {} and why, damage


def test_student_cells_lose_evidence_messages_and_keep_the_rest():
    outputs = [message({"grp.a": np.ones(1)}), {"output_type": "stream", "name": "stdout", "text": "hi"}]
    assert evidence.strip_messages(outputs) == outputs[1:]


def test_the_store_keeps_what_was_sent_and_says_why_the_rest_is_missing(tmp_path):
    store = evidence.Store(tmp_path / "evidence")
    store.put("grp", {"grp.a": np.arange(2), "grp.extra": np.ones(1)}, names=("grp.a", "grp.b"), why="stopped")
    store.put("other", {}, names=("other.x",), why="no evidence was sent")
    got = store.load()
    assert got["grp.a"].tolist() == [0, 1] and "grp.extra" not in got, "only declared names are kept"
    assert str(got["error.grp.b"]) == "stopped" and "no evidence" in str(got["error.other.x"])
    assert not list((tmp_path / "evidence").glob("*.part")), "written atomically"


def test_displayed_reads_figures_and_errors_per_cell():
    png = base64.b64encode(b"\x89PNG fake").decode()
    nb = {"cells": [
        {"cell_type": "code", "id": "a", "metadata": {"nbgrader": {"grade_id": "plot"}}, "outputs": [
            {"output_type": "display_data", "data": {"image/png": png}},
            {"output_type": "error", "ename": "E", "evalue": ""}]},
        {"cell_type": "code", "id": "b", "metadata": {}, "outputs": [{"output_type": "stream", "text": "x"}]},
        {"cell_type": "markdown", "id": "c", "metadata": {}, "source": ""}]}
    shown = evidence.displayed(nb)
    assert shown["plot"].pngs == (b"\x89PNG fake",) and shown["plot"].error
    assert shown["b"] == evidence.Displayed() and "c" not in shown
