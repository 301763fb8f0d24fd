"""The result of grading one submission: a typed record that crosses the process boundary.

The worker writes it as JSON (result.json) in the submission's job folder; the batch reads
it back, adds what only the parent knows (the file it came from, the wall-clock time),
merges it and hands it to the reports. Scores here are the AUTOMATIC scores of that one
grading; what a TA later enters by hand lives in the gradebook (see score.py).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path


class Status(str, Enum):
    """What became of a submission: graded normally, graded but a person should look, or not gradable."""
    GRADED = "graded"
    REVIEW = "review"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


STATUSES = tuple(Status)
# The worker's stages, in order (GradingResult.stage_seconds; scripts/benchmark_grading.py prints them).
STAGES = {
    "worker_start": "worker process start and imports (Python, nbgrader)",
    "repair": "read, check and repair the submitted file",
    "sandbox": "set up the sandbox (cgroup, kernelspec)",
    "kernel_start": "kernel start, until it answers (a fork of the zygote, or a cold start)",
    "cells": "the notebook's cells (imports in setup_imports, each task's cells)",
    "captures": "the captures after graded cells (their evidence sent to the worker)",
    "nbgrader": "nbgrader's own steps in autograde (sanitize, gradebook, write)",
    "verify": "out-of-kernel verification and scores (replays apart)",
    "replay": "trusted recomputations on the student's own values, when they differ from the reference's",
    "feedback": "nbgrader generate_feedback (the HTML page)",
}


@dataclass
class GradingResult:
    student: str
    status: Status = Status.FAILED
    reason: str = ""                       # why review or failed, one line
    notes: list[str] = field(default_factory=list)    # worth knowing, no action needed
    review: list[str] = field(default_factory=list)   # what a person should look at
    tests: dict[str, float | None] = field(default_factory=dict)  # grade_id -> automatic score (verified)
    kernel_tests: dict[str, float | None] = field(default_factory=dict)  # what the kernel's checks said: a hint
    max_tests: dict[str, float] = field(default_factory=dict)
    cell_seconds: dict[str, float] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # where the worker's time went (STAGES)
    file: str = ""                         # path relative to the submissions folder
    sha256: str = ""
    seconds: float = 0.0                   # wall-clock, as the parent saw it
    worker_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.status = Status(self.status)  # a plain string read back from JSON, or a typo (ValueError)

    @classmethod
    def failure(cls, student: str, reason: str, **kw) -> "GradingResult":
        return cls(student=student, status=Status.FAILED, reason=reason, **kw)

    def conclude(self) -> "GradingResult":
        """Set the status from what was found: review when anything needs a person."""
        self.status = Status.REVIEW if self.review else Status.GRADED
        self.reason = "; ".join(self.review)
        return self

    def points(self, test: str) -> float:
        value = self.tests.get(test)
        return float(value) if value is not None else 0.0

    def total(self, tests: list[str] | None = None) -> float:
        return sum(self.points(t) for t in (tests if tests is not None else self.tests))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GradingResult":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def write(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def read(cls, path: Path) -> "GradingResult":
        return cls.from_dict(json.loads(Path(path).read_text()))


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half of it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    tmp.replace(path)
