"""grades.csv: nbgrader's CSV export, with its columns and rows, written as a real CSV.

nbgrader's own CsvExportPlugin joins fields with commas unquoted, so a name holding a comma or
a quote breaks its row. This plugin writes the same columns through the csv module, its text
cells through `text.csv_cell` (no control characters; no cell that a spreadsheet would run as
a formula). nbgrader uses it for every `nbgrader export` run from grader/ (nbgrader_config.py);
`report.export_grades` is how the batch writes grades.csv.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from nbgrader.api import Gradebook, MissingEntry
from nbgrader.plugins import CsvExportPlugin

from .text import csv_cell

COLUMNS = ("assignment", "duedate", "timestamp", "student_id", "last_name", "first_name", "email",
           "raw_score", "late_submission_penalty", "score", "max_score")
TEXT = {"assignment", "student_id", "last_name", "first_name", "email"}


def row(gradebook: Gradebook, assignment, student) -> dict[str, object]:
    """One student's line for one assignment, as nbgrader's CSV export computes it (no
    submission: 0 points)."""
    line = {"assignment": assignment.name, "duedate": assignment.duedate, "student_id": student.id,
            "last_name": student.last_name, "first_name": student.first_name, "email": student.email,
            "max_score": assignment.max_score, "timestamp": "", "raw_score": 0.0,
            "late_submission_penalty": 0.0, "score": 0.0}
    try:
        sub = gradebook.find_submission(assignment.name, student.id)
    except MissingEntry:
        return line
    penalty = sub.late_submission_penalty
    return line | {"timestamp": sub.timestamp, "raw_score": sub.score, "late_submission_penalty": penalty,
                   "score": max(0.0, sub.score - penalty)}


def cell(column: str, value: object) -> str:
    if value is None:
        return ""
    return csv_cell(value) if column in TEXT else str(value)


class QuotedCsvExport(CsvExportPlugin):
    """nbgrader's CSV export (same columns and rows), quoted, written atomically."""

    def export(self, gradebook: Gradebook) -> None:
        dest = Path(self.to or "grades.csv")
        students, assignments = set(map(str, self.student)), set(map(str, self.assignment))
        tmp = dest.with_name(dest.name + ".part")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(COLUMNS)
            for assignment in gradebook.assignments:
                if assignments and assignment.name not in assignments:
                    continue
                for student in gradebook.students:
                    if not students or student.id in students:
                        line = row(gradebook, assignment, student)
                        out.writerow([cell(c, line[c]) for c in COLUMNS])
        os.replace(tmp, dest)
        self.log.info("Exported grades to %s", dest)
