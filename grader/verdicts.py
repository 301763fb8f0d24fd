"""Verdicts: a graded cell's points from checks whose basis is named, and the rule for earning them.

A lab's verification (one rule per automatically graded cell) returns a Verdict: a list of
Checks, each saying what it compared with what (`Basis`). The rule for points:

- a check can EARN only if its expectation comes from trusted computation: the batch's
  reference run (REFERENCE), trusted code run on the student's own captured data
  (RECOMPUTED), or what the notebook really displayed compared with the figure trusted code
  drew (SHOWN);
- a check on a fact the kernel only reports about itself (KERNEL: a flag, an object's type or
  identity, a recorder's entries, a thread count) or on a relation among values the kernel
  sent (OWN) can only TAKE points away.

So a cell passes when every check passes AND at least one trusted check does. decide() turns
verdicts into points (all or nothing per cell, as nbgrader does) and names, as possible
tampering, a cell whose visible checks passed in the kernel while one of them fails here.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Iterable

from . import cells


class Basis(str, Enum):
    REFERENCE = "reference"    # the trusted reference run's evidence, same secret inputs
    RECOMPUTED = "recomputed"  # trusted code on the student's own captured data (worker, or a replay kernel)
    SHOWN = "shown"            # a figure the notebook displayed, against the figure trusted code drew
    OWN = "own"                # a relation among the student's own captured values: takes away only
    KERNEL = "kernel"          # what the kernel reports about itself: takes away only

    @property
    def trusted(self) -> bool:
        return self in (Basis.REFERENCE, Basis.RECOMPUTED, Basis.SHOWN)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    visible: bool              # a visible test in the notebook checks the same property
    basis: Basis
    detail: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "visible": self.visible, "basis": self.basis.value,
                "detail": self.detail}


NO_TRUSTED = "no check here rests on trusted computation, so no point can be earned"


@dataclass(frozen=True)
class Verdict:
    grade_id: str
    checks: tuple[Check, ...]
    note: str = ""             # what the expectations came from, when that was a choice

    @property
    def earned(self) -> bool:
        """At least one trusted check passed (a KERNEL or OWN check alone never earns)."""
        return any(c.ok and c.basis.trusted for c in self.checks)

    @property
    def passed(self) -> bool:
        return self.earned and all(c.ok for c in self.checks)

    def failed(self, visible: bool | None = None) -> list[Check]:
        return [c for c in self.checks if not c.ok and (visible is None or c.visible == visible)]

    def reasons(self) -> list[str]:
        """Why the cell scores 0, one line per failed check (or the missing trusted evidence)."""
        lines = [f"{c.name}: {c.detail}" if c.detail else c.name for c in self.failed()]
        return lines or ([] if self.passed else [NO_TRUSTED])

    def to_dict(self) -> dict:
        return {"grade_id": self.grade_id, "passed": self.passed, "earned": self.earned, "note": self.note,
                "checks": [c.to_dict() for c in self.checks]}


@dataclass(frozen=True)
class Tampering:
    """A cell whose visible tests passed in the kernel while the same property fails here."""
    grade_id: str
    in_kernel: float
    checks: tuple[Check, ...]

    def summary(self) -> str:
        failed = "; ".join(f"{c.name} ({c.basis.value}): {c.detail}" for c in self.checks)
        return f"{self.grade_id}: passed in the kernel ({self.in_kernel:g} points), but {failed}"

    def to_dict(self) -> dict:
        return {"grade_id": self.grade_id, "in_kernel": self.in_kernel,
                "checks": [c.to_dict() for c in self.checks], "summary": self.summary()}


def decide(verdicts: dict[str, Verdict], in_kernel_scores: dict[str, float], max_points: dict[str, float],
           manual: Iterable[str] = ()) -> tuple[dict[str, float], list[Tampering]]:
    """Points per automatically graded cell (all or nothing, from the verdicts only) and the
    tampering evidence. Cells in `manual` (written answers, graded by a person) need no rule."""
    manual = set(manual)
    auto = {grade_id: points for grade_id, points in max_points.items() if grade_id not in manual}
    unruled = sorted(set(auto) - set(verdicts))
    if unruled:
        raise ValueError(f"no verification rule for the graded cells {unruled}: add them to the lab's tasks")
    scores, tampering = {}, []
    for grade_id, points in auto.items():
        verdict = verdicts[grade_id]
        scores[grade_id] = float(points) if verdict.passed else 0.0
        in_kernel = float(in_kernel_scores.get(grade_id) or 0.0)
        if in_kernel >= points and verdict.failed(visible=True):
            tampering.append(Tampering(grade_id, in_kernel, tuple(verdict.failed(visible=True))))
    return scores, tampering


def annotate(nb, verdicts: dict[str, Verdict]) -> int:
    """Say on each failed graded cell of the executed notebook what the grader's checks found, so
    the feedback page shows which check failed and why (never the hidden tests' code).
    Returns how many cells were annotated."""
    from nbformat.v4 import new_output

    annotated = 0
    for cell in nb.cells:
        verdict = verdicts.get(cells.grade_id(cell))
        if verdict is None or verdict.passed:
            continue
        lines = [f"  - {line}" for line in verdict.reasons()]
        cell.outputs.append(new_output("stream", name="stdout", text=(
            "Grader: this check did not pass the grader's own verification:\n" + "\n".join(lines) + "\n")))
        annotated += 1
    return annotated
