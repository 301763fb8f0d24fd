"""Tell, in an autograded notebook, the failures that come from the grader having no GPU.

The grading kernel lets the CPU stand in for CUDA (boot.py), which covers what the lab
and a Colab student usually write. What it does not cover still fails on a CPU-only grader,
with an error naming CUDA, the NVIDIA driver or a GPU ("Found no NVIDIA driver on your
system", "Torch not compiled with CUDA enabled", "CUDA error: ...", "Expected all tensors to
be on the same device, ... cuda:0 and cpu", a check saying "pass device='cuda'"), or with
such a warning on stderr in a graded cell (which nbgrader scores 0). Such a notebook may be
right on a GPU, so the submission carries the note gpu_reason() gives, saying which cells and
what to do. Only a note: the text comes from the kernel, which can print anything, so it never
decides a status (a `review` is decided by what the grader itself saw).
"""
from __future__ import annotations

import re

from . import cells

# Words that only a device problem puts in an error message.
GPU_WORDS = re.compile(r"cuda|nvidia|cudnn|cublas|nccl|\bgpus?\b", re.IGNORECASE)
SHOWN = 3  # cells named in the reason


def _label(cell, index: int) -> str:
    return cells.name(cell) or f"cell {index}"


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def gpu_failures(nb) -> list[tuple[str, str]]:
    """(cell, message) for each code cell whose error, or stderr in a graded cell, names CUDA or a GPU."""
    found = []
    for index, cell in enumerate(nb["cells"]):
        if cell.get("cell_type") != "code":
            continue
        graded = bool(cells.nbgrader(cell).get("grade", False))
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                text = f"{out.get('ename', '')}: {out.get('evalue', '')}"
            elif graded and out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = f"stderr: {out.get('text', '')}"
            else:
                continue
            if GPU_WORDS.search(text):
                found.append((_label(cell, index), _short(text)))
                break
    return found


def gpu_reason(nb) -> str | None:
    """A note if the notebook's errors name CUDA or a GPU (it may need one), else None."""
    failures = gpu_failures(nb)
    if not failures:
        return None
    shown = "; ".join(f"{label} ({text})" for label, text in failures[:SHOWN])
    if len(failures) > SHOWN:
        shown += f"; and {len(failures) - SHOWN} more cell(s)"
    return (f"errors name CUDA or a GPU, which the grader does not have: {shown}; if this notebook needs "
            f"a GPU, points from {failures[0][0]} on may be missing: grade it again on a GPU")
