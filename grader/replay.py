"""Replays: trusted code run on a student's own captured data, in a kernel of its own.

When a student's answer to an earlier task differs from the reference's, the reference run
says nothing about what their later steps should give. A lab then asks for replays: trusted
functions of its own (the lab's `replay_source`), run in a fresh sandboxed kernel with the
same libraries, settings and thread counts as the student's, on plain arrays taken from the
student's evidence. What a replay returns is trusted (no student code runs in that kernel);
the lab compares the student's captured values with it (grader/verdicts.py, Basis.RECOMPUTED).

    replayed = replay.run(requests, source, context, sandbox, run_dir, timeout_s)

A request that fails leaves error entries ("error.<name>.<key>"), never a guess; a replay
kernel that dies or hangs loses the requests not done yet, with the reason.
"""
from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import evidence


@dataclass(frozen=True)
class Request:
    name: str                      # unique within a submission: results come back as "<name>.<key>"
    kind: str                      # the replay function of the lab's replay source
    inputs: dict = field(default_factory=dict)   # plain arrays (from the student's evidence)
    params: dict = field(default_factory=dict)   # plain JSON values

    def payload(self) -> str:
        buffer = io.BytesIO()
        np.savez(buffer, **{k: np.asarray(v) for k, v in self.inputs.items()})
        return base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class Replayed:
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    figures: dict[str, list[bytes]] = field(default_factory=dict)   # request name -> PNGs it displayed
    seconds: float = 0.0

    @property
    def names(self) -> set[str]:
        return {key.split(".", 1)[0] for key in self.arrays if not key.startswith(evidence.ERROR_PREFIX)}


SETUP = """\
import base64 as _b64, io as _io
import numpy as _np
from IPython.display import publish_display_data as _publish
_grader_space = {{"__name__": "grader_replay"}}
exec({source!r}, _grader_space)
_grader_tools = _grader_space["make_replay"]({context!r})

def _grader_replay(name, kind, payload, params):
    with _np.load(_io.BytesIO(_b64.b64decode(payload)), allow_pickle=False) as npz:
        inputs = {{k: npz[k] for k in npz.files}}
    result = _grader_space["REPLAYS"][kind](_grader_tools, inputs, params)
    buffer = _io.BytesIO()
    _np.savez(buffer, **{{f"{{name}}.{{k}}": _np.asarray(v) for k, v in result.items()}})
    _publish({{{mime!r}: _b64.b64encode(buffer.getvalue()).decode("ascii")}}, metadata={{{mime!r}: {{"group": name}}}})
"""


def notebook(requests: list[Request], source: str, context: dict):
    """The replay as a notebook: one set-up cell, then one cell per request."""
    from nbformat.v4 import new_code_cell, new_notebook

    cells = [new_code_cell(SETUP.format(source=source, context=context, mime=evidence.MIME))]
    for request in requests:
        cells.append(new_code_cell(f"_grader_replay({request.name!r}, {request.kind!r}, {request.payload()!r}, "
                                   f"{request.params!r})"))
    return new_notebook(cells=cells)


def collect(nb, requests: list[Request]) -> Replayed:
    """What each request's cell sent back, and the figures it displayed."""
    replayed = Replayed()
    setup_error = _error(nb.cells[0].get("outputs", []))
    for cell, request in zip(nb.cells[1:], requests):
        outputs = cell.get("outputs", [])
        arrays, why = evidence.read_message(outputs, request.name)
        if not arrays:
            why = setup_error or _error(outputs) or why
            replayed.arrays[evidence.ERROR_PREFIX + request.name] = np.asarray(f"replay {request.kind}: {why}"[:300])
        replayed.arrays.update(arrays)
        replayed.figures[request.name] = [base64.b64decode(out["data"]["image/png"]) for out in outputs
                                          if out.get("output_type") in ("display_data", "execute_result")
                                          and "image/png" in out.get("data", {})]
    return replayed


def _error(outputs: list) -> str:
    for out in outputs:
        if out.get("output_type") == "error":
            return f"{out.get('ename', '')}: {out.get('evalue', '')}"[:300]
    return ""


def run(requests: list[Request], source: str, context: dict, sandbox, run_dir: Path, timeout_s: int,
        log=None) -> Replayed:
    """Run the requests in a kernel of `sandbox` (a grader.kernel.sandbox.Sandbox, entered), cwd run_dir."""
    import os

    from nbclient import NotebookClient
    from nbclient.exceptions import (
        CellExecutionError,
        CellTimeoutError,
        DeadKernelError,
    )

    if not requests:
        return Replayed()
    started = time.monotonic()
    nb = notebook(requests, source, context)
    os.environ.update(sandbox.jupyter_env())
    client = NotebookClient(nb, timeout=timeout_s, allow_errors=True, config=sandbox.config(),
                            kernel_name=sandbox.kernel_name, resources={"metadata": {"path": str(run_dir)}})
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError, RuntimeError) as exc:
        if log is not None:
            log.warning("replay kernel stopped: %s", exc)
    replayed = collect(nb, requests)
    replayed.seconds = round(time.monotonic() - started, 2)
    return replayed
