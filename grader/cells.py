"""A notebook cell's nbgrader identity, read in one place (from a NotebookNode or plain JSON).

nbgrader keeps what it knows about a cell in `metadata.nbgrader` (grade_id, grade, solution,
locked, points); an editor that does not know nbgrader may drop it, or a file may carry junk
there, so every reading tolerates its absence.
"""
from __future__ import annotations


def nbgrader(cell) -> dict:
    meta = (cell.get("metadata") or {}).get("nbgrader") if isinstance(cell, dict) else None
    return meta if isinstance(meta, dict) else {}


def grade_id(cell) -> str | None:
    """The cell's nbgrader grade_id, or None."""
    value = nbgrader(cell).get("grade_id")
    return value if isinstance(value, str) and value else None


def name(cell) -> str | None:
    """grade_id, else the cell's own id (nbformat >= 4.5), else None."""
    return grade_id(cell) or cell.get("id") or None


def label(cell, index: int) -> str:
    """What reports call a cell: its grade_id, else its position."""
    return grade_id(cell) or f"cell {index}"
