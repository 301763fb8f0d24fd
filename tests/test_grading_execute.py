"""Running untrusted cells: time limits, dead kernels, and killing what a submission leaves behind.

Small notebooks, a few seconds each: the full notebook is graded in test_grading_batch.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from conftest import run_env
from grader import jobs, pipeline, runner
from grader.execute import ResilientExecute
from grader.results import GradingResult


def execute(tmp_path, *sources, timeout=5):
    return run(tmp_path, *sources, timeout=timeout)[1]


def run(tmp_path, *sources, timeout=5):
    """(executed notebook, [[(output type, error name, text)] per cell])."""
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, cell in enumerate(nb.cells):
        cell.metadata["nbgrader"] = {"grade_id": f"c{i}", "grade": False, "solution": False,
                                     "locked": True, "schema_version": 3}
    ResilientExecute(timeout=timeout).preprocess(nb, {"metadata": {"path": str(tmp_path)}})
    return nb, [[(o.output_type, o.get("ename"), o.get("text", "").strip()) for o in c.outputs] for c in nb.cells]


def test_a_cell_over_the_limit_is_interrupted_and_the_rest_runs(tmp_path):
    outputs = execute(tmp_path, "x = 1", "while True:\n    pass", "print(x + 1)", timeout=3)
    assert ("error", "CellTimeoutError", "") in outputs[1]
    assert outputs[2] == [("stream", None, "2")]


def test_a_dying_kernel_costs_only_the_cells_after_it(tmp_path):
    nb, outputs = run(tmp_path, "print('before')", "import os\nos._exit(1)", "print('after')")
    assert outputs[0] == [("stream", None, "before")]
    assert outputs[1][-1][:2] == ("error", "KernelDied")
    assert outputs[2][0][:2] == ("error", "NotRun")
    notes, review = pipeline._cell_problems(nb, 5)
    assert review == ["the kernel died in c1: the cells after it were not run"]
    assert set(pipeline.cell_seconds(nb)) == {"c0", "c1"}, "the cell not run has no time"


def test_a_kernel_ignoring_the_interrupt_is_stopped(tmp_path):
    started = time.monotonic()
    nb, outputs = run(tmp_path, "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
                      "print('after')", timeout=3)
    assert outputs[0][-1][:2] == ("error", "KernelUnresponsive")
    assert outputs[1][0][:2] == ("error", "NotRun")
    assert pipeline._cell_problems(nb, 3)[1] == ["the kernel stopped responding in c0 and was stopped; "
                                               "the cells after it were not run"]
    assert time.monotonic() - started < 60


def _spawn_family(marker: str) -> tuple[subprocess.Popen, int]:
    """A parent and a grandchild in a new session (as a Jupyter kernel is), both marked."""
    code = ("import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(600)\n")
    env = dict(os.environ, **{runner.MARKER: marker})
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    return proc, int(proc.stdout.readline())


def test_kill_tree_finds_children_in_other_sessions(tmp_path):
    proc, grandchild = _spawn_family("test-marker-1")
    killed = runner.kill_tree(proc.pid, "test-marker-1")
    assert killed == 2
    proc.wait(timeout=10)
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE


def test_run_job_kills_a_submission_past_the_notebook_limit(tmp_path):
    code = ("import subprocess, sys, time\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
            "time.sleep(600)\n")
    started = time.monotonic()
    result = runner.run_job(tmp_path, run_env(), timeout_s=3, argv=[sys.executable, "-c", code])
    assert time.monotonic() - started < 30
    assert result.status == "failed" and "killed after 3 s" in result.reason
    left = [p for p in psutil.process_iter(["pid"]) if _marked(p, tmp_path.name)]
    assert left == []


def _marked(proc, name) -> bool:
    try:
        return proc.environ().get(runner.MARKER, "").startswith(f"{name}-")
    except psutil.Error:
        return False


def test_run_job_reports_a_worker_that_died_without_a_result(tmp_path):
    result = runner.run_job(tmp_path, run_env(), timeout_s=30, argv=[sys.executable, "-c", "import os; os._exit(3)"])
    assert result.status == "failed" and "exit status 3" in result.reason


def test_run_job_reads_the_worker_result(tmp_path):
    code = (f"import json; open({str(tmp_path / jobs.RESULT)!r}, 'w').write(json.dumps("
            "{'student': 's1', 'status': 'graded', 'tests': {'check_h': 2.0}}))")
    result = runner.run_job(tmp_path, run_env(), timeout_s=30, argv=[sys.executable, "-c", code])
    assert result.status == "graded" and result.tests == {"check_h": 2.0} and result.student == "s1"


@pytest.mark.parametrize("bad", ["{not json", '{"cells": []}'])
def test_the_worker_records_an_ungradable_file_without_running_nbgrader(tmp_path, course, bad):
    (tmp_path / "in.ipynb").write_text(bad)
    jobs.Job(student="s1", source=str(tmp_path / "in.ipynb"), cell_timeout_s=10,
               release=str(course.student_notebook)).write(tmp_path)
    assert pipeline.main([str(tmp_path)]) == 0
    result = GradingResult.read(tmp_path / jobs.RESULT)
    assert result.status == "failed" and result.reason.startswith(("not a notebook", "does not look like"))
    assert not (tmp_path / "autograded").exists()


def test_a_status_comes_from_what_the_executor_saw_never_from_printed_error_names(tmp_path):
    """A kernel can print any error output; only the grader's own record decides a review."""
    forged = ("from IPython.display import display\n"
              "get_ipython().display_pub.publish({'text/plain': 'x'})\n"
              "raise type('KernelDied', (Exception,), {})('the kernel died while running this cell')")
    timeout_name = "raise type('CellTimeoutError', (Exception,), {})('No reply from kernel before timeout')"
    nb, outputs = run(tmp_path, forged, timeout_name, "print('after')")
    assert outputs[0][-1][:2] == ("error", "KernelDied") and outputs[1][-1][:2] == ("error", "CellTimeoutError")
    notes, review = pipeline._cell_problems(nb, 5)
    assert review == [] and outputs[2] == [("stream", None, "after")]
    assert [c.metadata["grader"]["outcome"] for c in nb.cells] == ["error", "error", "ok"]


def test_a_record_planted_in_the_submitted_notebook_is_replaced(tmp_path):
    nb = new_notebook(cells=[new_code_cell("print('hi')")])
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells[0].metadata["grader"] = {"seconds": 0.0, "outcome": "died"}
    nb.metadata["grader"] = {"kernel_start_seconds": -1}
    ResilientExecute(timeout=5).preprocess(nb, {"metadata": {"path": str(tmp_path)}})
    assert nb.cells[0].metadata["grader"]["outcome"] == "ok" and nb.metadata["grader"]["kernel_start_seconds"] >= 0


def test_outputs_are_kept_within_their_budget_with_a_note(tmp_path):
    nb = new_notebook(cells=[new_code_cell("for _ in range(40):\n    print('x' * 2**17)"), new_code_cell("print('next')")])
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    ResilientExecute(timeout=30, cell_output_mb=1.0, output_mb=1.5).preprocess(nb, {"metadata": {"path": str(tmp_path)}})
    kept = sum(len(o.get("text", "")) for o in nb.cells[0].outputs)
    assert kept <= 1.1 * 2**20 and "output truncated" in nb.cells[0].outputs[-1]["text"]
    assert nb.cells[0].metadata["grader"]["truncated"] and "next" in nb.cells[1].outputs[0]["text"]
