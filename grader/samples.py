"""Sample submissions built from the student notebook, and the points each one must get.

A Sample is the student notebook with the reference answers (read from the source
notebook's solution cells) or the blank answers, some cells replaced by id, and optionally
a last transformation of the file (delete a cell, strip metadata, break the JSON, rename
it). `lost` says how many points each graded cell loses against full marks; full marks per
cell come from the notebook's metadata.

`make demo` grades the lab's DEMO_CLASS (grader/labs/<lab>/samples.py); the tests grade tables
of their own (tests/submissions.py).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nbformat
from nbgrader import utils as nbu

ALL = "all"  # every graded cell scores 0


def reference_answers(source_nb) -> dict[str, str]:
    """Solution cell id -> the reference answer (the source cell without the solution markers)."""
    answers = {}
    for cell in source_nb.cells:
        if nbu.is_solution(cell):
            lines = [line for line in cell.source.splitlines()
                     if line.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION")]
            answers[cell.id] = "\n".join(lines)
    return answers


def max_points(source_nb) -> dict[str, float]:
    """Points of each automatically graded cell (the test cells)."""
    return {c.metadata.nbgrader["grade_id"]: float(c.metadata.nbgrader["points"])
            for c in source_nb.cells if nbu.is_grade(c) and not nbu.is_solution(c)}


def manual_points(source_nb) -> dict[str, float]:
    """Points of each cell a TA grades by hand (the written answers: graded answer cells).
    The autograder scores none of them: a sample's expected points leave them out."""
    return {c.metadata.nbgrader["grade_id"]: float(c.metadata.nbgrader["points"])
            for c in source_nb.cells if nbu.is_grade(c) and nbu.is_solution(c)}


# ----------------------------------------------------------------------------- file transformations

def delete_cells(*ids: str) -> Callable[[dict], bytes]:
    def apply(nb: dict) -> bytes:
        nb["cells"] = [c for c in nb["cells"] if c.get("id") not in ids]
        return json.dumps(nb, indent=1).encode()
    return apply


def strip_nbgrader(keep_ids: bool = False) -> Callable[[dict], bytes]:
    """What an editor that does not know nbgrader may do: drop its metadata (and the cell ids)."""
    def apply(nb: dict) -> bytes:
        for cell in nb["cells"]:
            cell["metadata"].pop("nbgrader", None)
            cell["metadata"].pop("deletable", None)
            cell["metadata"].pop("editable", None)
            if not keep_ids:
                cell.pop("id", None)
        if not keep_ids:
            nb["nbformat_minor"] = 4
        return json.dumps(nb, indent=1).encode()
    return apply


def then(*steps: Callable[[dict], bytes]) -> Callable[[dict], bytes]:
    def apply(nb: dict) -> bytes:
        for step in steps:
            nb = json.loads(step(nb))
        return json.dumps(nb, indent=1).encode()
    return apply


def one_big_cell(nb: dict) -> bytes:
    """All code pasted into one cell, metadata gone: nothing left to match."""
    code = "\n\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                       for c in nb["cells"] if c["cell_type"] == "code")
    nb["cells"] = [{"cell_type": "code", "metadata": {}, "source": code, "outputs": [], "execution_count": None}]
    nb["nbformat_minor"] = 4
    return json.dumps(nb, indent=1).encode()


def truncate(nb: dict) -> bytes:
    """A download that stopped half-way: not valid JSON."""
    data = json.dumps(nb, indent=1).encode()
    return data[: len(data) // 2]


# ----------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class Sample:
    name: str                                   # also the student id
    edits: dict[str, str] = field(default_factory=dict)
    lost: dict[str, float] | str = field(default_factory=dict)
    lost_after: str | None = None               # every graded cell after this cell scores 0 too
    blank: bool = False                         # start from the blank student notebook
    transform: Callable[[dict], bytes] | None = None
    filename: str = ""                          # the file's name ("": the lab's notebook name)
    status: str = "graded"                      # graded, review or failed
    says: str = ""                              # in the reason or the notes

    def expected(self, source_nb) -> dict[str, float]:
        """Points each automatically graded cell must get, from the notebook's metadata and `lost`
        (the written answers wait for a TA: see manual_points)."""
        points = max_points(source_nb)
        if self.lost == ALL or self.status == "failed":
            return {g: 0.0 for g in points}
        expected = {g: max(0.0, p - self.lost.get(g, 0.0)) for g, p in points.items()}
        if self.lost_after:
            ids = [c.get("id") for c in source_nb.cells]
            for c in source_nb.cells[ids.index(self.lost_after) + 1:]:
                if nbu.is_grade(c) and not nbu.is_solution(c):
                    expected[c.metadata.nbgrader["grade_id"]] = 0.0
        return expected

    def build(self, student_nb, answers: dict[str, str]) -> bytes:
        nb = copy.deepcopy(student_nb)
        sources = {} if self.blank else dict(answers)
        sources.update(self.edits)
        for cell in nb.cells:
            if cell.get("id") in sources:
                cell.source = sources[cell.id]
        data = json.loads(nbformat.writes(nb))
        return self.transform(data) if self.transform else json.dumps(data, indent=1).encode()



def write_samples(samples: list[Sample], folder: Path, source_path: Path, student_path: Path) -> None:
    """One folder per student id, as TAs receive them: <folder>/<name>/<filename> (by default
    the student notebook's own name)."""
    source = nbformat.read(source_path, as_version=4)
    student = nbformat.read(student_path, as_version=4)
    answers = reference_answers(source)
    for sample in samples:
        dest = folder / sample.name / (sample.filename or student_path.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(sample.build(student, answers))
