"""How a submission's cells run under autograde: nbgrader's Execute, made to survive crashes,
to take the lab's evidence, and to keep its own record of what happened.

nbgrader's Execute already gives every cell a time limit (ExecutePreprocessor.timeout): a cell
over it is interrupted and the notebook goes on. Two things still abort the whole notebook,
losing every point the student had earned: the kernel dies (nbclient raises DeadKernelError),
or it ignores the interrupt (CellTimeoutError while waiting for the interrupted cell).
ResilientExecute catches both: that cell gets an error output saying what happened, the kernel
is killed if still there, and every later code cell gets a "not run" output instead of running.

It also:
- runs the lab's capture snippets right after their cells (grader/evidence.py) and writes
  what each sent into the evidence folder, as it arrives;
- records in each code cell's metadata (TIMING_KEY), itself, how long the cell ran and how it
  ended (OUTCOMES): the worker reads that record, never the error names a kernel can print;
- keeps at most `cell_output_mb` of outputs per cell and `output_mb` per notebook: past that,
  outputs are dropped and one note says so.
"""
from __future__ import annotations

import json
import time

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell
from nbgrader.preprocessors import Execute
from traitlets import Bool, Float, Integer, Unicode

from . import cells, evidence

# The grader's record of a cell, in that cell's metadata: {"seconds": 12.3, "outcome": "ok"}.
TIMING_KEY = "grader"
OUTCOMES = ("ok", "error", "timeout", "died", "hung", "not_run")
# Error names of the outputs this module writes.
KERNEL_DIED, KERNEL_HUNG, NOT_RUN = "KernelDied", "KernelUnresponsive", "NotRun"
TRUNCATED = "grader: output truncated"
MB = 2 ** 20


cell_label = cells.label


def error_output(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


def outcome(cell) -> str:
    """How the grader recorded this code cell's run ("" if it was not recorded)."""
    return (cell.get("metadata", {}).get(TIMING_KEY) or {}).get("outcome", "")


class ResilientExecute(Execute):
    """nbgrader's Execute; a dead or unresponsive kernel costs only the cells from there on."""

    run_dir = Unicode("", help="The folder the kernel is started from instead of the notebook's folder "
                               "(in a sandbox, the kernel works in a private folder of its own). "
                               "Empty: the notebook's folder.").tag(config=True)
    evidence_dir = Unicode("", help="Where the evidence each capture sends is written (a folder the "
                                    "kernel cannot see). Empty: no captures.").tag(config=True)
    reference_run = Bool(False, help="This run is the batch's reference run: the captures also take "
                                     "the values only the reference gives.").tag(config=True)
    capture_seed = Integer(None, allow_none=True,
                           help="The batch's secret seed, given to the lab's capture code only as "
                                "each capture runs.").tag(config=True)
    cell_output_mb = Float(2.0, help="Outputs kept per cell, in MB; past it, outputs are dropped "
                                     "with a note.").tag(config=True)
    output_mb = Float(16.0, help="Outputs kept per notebook, in MB.").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        self._stopped: str | None = None
        self._timed_out = False
        self._started, self._first_cell, self._capture_s = time.monotonic(), None, 0.0
        self._sizes = {"notebook": 0}
        self._capturing = False
        self._truncated: list[int] = []
        self._points = self._capture_points()
        for cell in nb.cells:  # only this run's record counts, never one a submission brought along
            cell.get("metadata", {}).pop(TIMING_KEY, None)
        nb.metadata.pop(TIMING_KEY, None)
        try:
            return self._preprocess(nb, resources, km)
        finally:
            nb.metadata[TIMING_KEY] = {"kernel_start_seconds": round((self._first_cell or self._started)
                                                                     - self._started, 2),
                                       "capture_seconds": round(self._capture_s, 2)}

    def _capture_points(self) -> dict[str, list]:
        if not self.evidence_dir or self.capture_seed is None:
            return {}
        from . import course, lab

        self._lab = lab.load(course.load())
        points: dict[str, list] = {}
        for point in self._lab.CAPTURES:
            points.setdefault(point.after, []).append(point)
        return points

    def _preprocess(self, nb, resources, km):
        if not self.run_dir:
            return super().preprocess(nb, resources, km)
        resources = resources if resources is not None else {}
        metadata = resources.setdefault("metadata", {})
        notebook_dir, metadata["path"] = metadata.get("path"), self.run_dir
        try:
            return super().preprocess(nb, resources, km)
        finally:
            metadata["path"] = notebook_dir

    def _kill_kernel(self) -> None:
        try:
            process = getattr(getattr(self.km, "provisioner", None), "process", None)
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        except Exception as exc:  # the kernel is gone either way, or the cleanup will retry
            self.log.warning("could not kill the kernel: %s", exc)

    def preprocess_cell(self, cell, resources, index):
        cell, resources = self._run_cell(cell, resources, index)
        if cell.cell_type == "code":
            cell.outputs = evidence.strip_messages(cell.outputs)
        for point in self._points.get(cell_label(cell, index), []) if not self._stopped else []:
            cell.outputs += self._capture(point, resources, index)  # a kernel that died or hung there shows here
            if self._stopped:
                cell.metadata[TIMING_KEY]["outcome"] = "died" if "died" in self._stopped else "hung"
        return cell, resources

    def _capture(self, point, resources, index) -> list:
        """Run one capture as a cell of its own that the notebook never holds; keep what it sent.
        Returns the error outputs saying the kernel died or hung in it (else none)."""
        snippet = evidence.snippet(point, self._lab.KERNEL_SOURCE, self._lab.context(self.capture_seed),
                                   self.reference_run)
        capture = new_code_cell(snippet, metadata={"nbgrader": {"grade_id": point.after}})
        real, started = self.nb.cells[index], time.monotonic()
        self._capturing = True
        try:
            self._run_cell(capture, resources, index)
        finally:
            self._capturing = False
            self.nb.cells[index] = real  # nbclient stores the cell it ran at its index
            self._capture_s += time.monotonic() - started
        arrays, why = evidence.read_message(capture.outputs, point.group)
        evidence.Store(self.evidence_dir).put(point.group, arrays, point.names_for(self.reference_run), why)
        return [out for out in capture.outputs if out.get("ename") in (KERNEL_DIED, KERNEL_HUNG)]

    def _run_cell(self, cell, resources, index):
        if cell.cell_type != "code" or not cell.source.strip():
            return super().preprocess_cell(cell, resources, index)
        label = cell_label(cell, index)
        record = {"seconds": 0.0, "outcome": "ok"}
        if self._stopped:
            cell.outputs = [error_output(NOT_RUN, f"not run: {self._stopped}")]
            cell.execution_count = None
            cell.metadata[TIMING_KEY] = dict(record, outcome="not_run")
            return cell, resources
        started = time.monotonic()
        self._first_cell = self._first_cell or started
        self._timed_out = False
        self._sizes[index] = 0
        try:
            cell, resources = super().preprocess_cell(cell, resources, index)
            record["outcome"] = "timeout" if self._timed_out else (
                "error" if any(out.get("output_type") == "error" for out in cell.outputs) else "ok")
            record["truncated"] = index in self._truncated
            return cell, resources
        except DeadKernelError:
            self._stopped = f"the kernel died in {label}"
            record["outcome"] = "died"
            cell.outputs.append(error_output(
                KERNEL_DIED, "the kernel died while running this cell (os._exit, a crash, or out "
                             "of memory); the cells after it were not run"))
            return cell, resources
        except CellTimeoutError:
            self._stopped = f"the kernel stopped responding in {label}"
            record["outcome"] = "hung"
            self._kill_kernel()
            cell.outputs.append(error_output(
                KERNEL_HUNG, f"this cell ran past the {self.timeout} s limit and the kernel "
                             "did not respond to the interrupt; it was stopped"))
            return cell, resources
        finally:
            record["seconds"] = round(time.monotonic() - started, 2)
            cell.metadata[TIMING_KEY] = record

    async def _async_handle_timeout(self, timeout, cell=None):
        self._timed_out = True  # seen here, on the grader's side: not an error name a kernel could print
        return await super()._async_handle_timeout(timeout, cell)

    def output(self, outs, msg, display_id, cell_index):
        """nbclient's output handling, within the per-cell and per-notebook budgets."""
        if self._capturing:
            return super().output(outs, msg, display_id, cell_index)
        size = len(json.dumps(msg.get("content", {}), default=str))
        cell_size = self._sizes.get(cell_index, 0)
        cell_limit, limit = self.cell_output_mb * MB, self.output_mb * MB
        if cell_size + size > cell_limit or self._sizes["notebook"] + size > limit:
            if cell_size <= cell_limit:  # one note per cell
                outs.append(NotebookNode(output_type="stream", name="stdout", text=(
                    f"\n[{TRUNCATED}] the grader kept only the first {self.cell_output_mb:g} MB of this cell's "
                    f"outputs ({self.output_mb:g} MB for the whole notebook); the rest was dropped\n")))
                self._truncated.append(cell_index)
            self._sizes[cell_index] = cell_limit + 1
            return None
        self._sizes[cell_index] = cell_size + size
        self._sizes["notebook"] += size
        return super().output(outs, msg, display_id, cell_index)
