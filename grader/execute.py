"""How a submission's cells run under autograde: nbgrader's Execute, made to survive crashes.

nbgrader's Execute already gives every cell a time limit (ExecutePreprocessor.timeout):
a cell over it is interrupted, gets a CellTimeoutError output, and the notebook goes on.
Two things still abort the whole notebook, losing every point the student had earned:

- the kernel dies (os._exit, a segfault, the memory killer): nbclient raises DeadKernelError;
- the kernel ignores the interrupt (a signal handler, a C loop): nbclient raises
  CellTimeoutError while waiting for the interrupted cell to finish.

ResilientExecute catches both: that cell gets an error output saying what happened, the
kernel is killed if it is still there, and every later code cell gets a "not run" error
output instead of running. nbgrader then grades the notebook as usual: the tests that ran
before keep their points, the later ones score 0.
"""
from __future__ import annotations

import time
from pathlib import Path

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell
from nbgrader.preprocessors import Execute
from traitlets import Integer, Unicode

from . import artefacts

# What the grader learns while running a cell, kept in that cell's metadata so that the
# autograded notebook itself says it (worker.py reads it back): {"seconds": 12.3}.
TIMING_KEY = "craft_lab_grading"
# Error names of the outputs this module writes; a "not run" cell is one after a stop.
KERNEL_DIED, KERNEL_HUNG, NOT_RUN = "KernelDied", "KernelUnresponsive", "NotRun"


def cell_label(cell, index: int) -> str:
    return cell.metadata.get("nbgrader", {}).get("grade_id") or f"cell {index}"


def error_output(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue,
                        traceback=[f"{ename}: {evalue}"])


class ResilientExecute(Execute):
    """nbgrader's Execute; a dead or unresponsive kernel costs only the cells from there on."""

    run_dir = Unicode("", help="The kernel's working folder (its only writable place in the sandbox), "
                               "instead of the notebook's folder. Empty: the notebook's folder.").tag(config=True)
    probe_seed = Integer(None, allow_none=True,
                         help="Seed of the secret probe. When set, the capture snippets of "
                              "grader/artefacts.py run after their cells and save the artefacts the "
                              "trusted verifier checks; the probe is written into run_dir just "
                              "before the first snippet that reads it.").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        self._stopped: str | None = None
        self._started, self._first_cell, self._capture_s = time.monotonic(), None, 0.0
        try:
            return self._preprocess(nb, resources, km)
        finally:
            nb.metadata[TIMING_KEY] = {"kernel_start_seconds": round((self._first_cell or self._started)
                                                                     - self._started, 2),
                                       "capture_seconds": round(self._capture_s, 2)}

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
        snippet = artefacts.CAPTURES.get(cell_label(cell, index)) if self.probe_seed is not None else None
        if snippet and not self._stopped:
            stop = self._capture(cell_label(cell, index), snippet, resources, index)
            cell.outputs += stop  # a kernel that died or hung there shows on this cell
        return cell, resources

    def _capture(self, label: str, snippet: str, resources, index) -> list:
        """Run one capture snippet in the kernel, as a cell of its own that the notebook never
        holds; return the error outputs saying the kernel died or hung in it (else none)."""
        if label == artefacts.PROBE_BEFORE:
            artefacts.write_probe(Path(self.run_dir or resources["metadata"]["path"]), self.probe_seed)
        capture = new_code_cell(snippet, metadata={"nbgrader": {"grade_id": label}})
        real, started = self.nb.cells[index], time.monotonic()
        try:
            self._run_cell(capture, resources, index)
        finally:
            self.nb.cells[index] = real  # nbclient stores the cell it ran at its index
            self._capture_s += time.monotonic() - started
        return [out for out in capture.outputs if out.get("ename") in (KERNEL_DIED, KERNEL_HUNG)]

    def _run_cell(self, cell, resources, index):
        if cell.cell_type != "code" or not cell.source.strip():
            return super().preprocess_cell(cell, resources, index)
        label = cell_label(cell, index)
        if self._stopped:
            cell.outputs = [error_output(NOT_RUN, f"not run: {self._stopped}")]
            cell.execution_count = None
            return cell, resources
        started = time.monotonic()
        self._first_cell = self._first_cell or started
        try:
            return super().preprocess_cell(cell, resources, index)
        except DeadKernelError:
            self._stopped = f"the kernel died in {label}"
            cell.outputs.append(error_output(
                KERNEL_DIED, f"the kernel died while running this cell (os._exit, a crash, or out "
                              "of memory); the cells after it were not run"))
            return cell, resources
        except CellTimeoutError:
            self._stopped = f"the kernel stopped responding in {label}"
            self._kill_kernel()
            cell.outputs.append(error_output(
                KERNEL_HUNG, f"this cell ran past the {self.timeout} s limit and the kernel "
                                      "did not respond to the interrupt; it was stopped"))
            return cell, resources
        finally:
            cell.metadata[TIMING_KEY] = {"seconds": round(time.monotonic() - started, 2)}
