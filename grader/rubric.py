"""The TA-only text of the written answers (model answer and rubric), shown beside each answer in
formgrader, and nowhere else.

The rule, in one place (written_answers, ta_text): a written answer is a graded answer cell of
the source notebook (nbgrader metadata `grade` and `solution`: a person scores it); its TA-only
text is what nbgrader's ClearSolutions takes out of it for the student version: the lines
between its solution delimiters (`### BEGIN SOLUTION`, `### END SOLUTION`), or the whole cell
where it has none. The answer and its text are matched by the cell's grade_id, so the rule
knows no lab.

ShowRubrics is an nbconvert preprocessor, listed in nbgrader_config.py for every HTML export
made from grader/. It acts only in formgrader's exporter (the exporter whose template is
formgrader's own, FORMGRADER_TEMPLATE) and only on the course's notebook: there it inserts,
after each written answer, a markdown cell with that answer's TA-only text. The exporter works
on a copy in memory: the autograded notebook on disk, which feedback pages are made from, never
holds the text, and generate_feedback's exporter (template `feedback`) leaves notebooks as they
are.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbconvert.preprocessors import Preprocessor
from nbgrader import utils as nbu

FORMGRADER_TEMPLATE = "formgrade"  # the template nbgrader's formgrader gives its HTMLExporter
HEADING = "TA only: model answer and rubric"


def _delimiters() -> tuple[str, str]:
    """nbgrader's solution delimiters, from its ClearSolutions (the preprocessor that removes
    the text for the student version)."""
    from nbgrader.preprocessors import ClearSolutions

    traits = ClearSolutions.class_traits()
    return traits["begin_solution_delimeter"].default_value, traits["end_solution_delimeter"].default_value


def is_written_answer(cell) -> bool:
    """A cell graded by a person: a graded answer cell (nbgrader's manually graded answer)."""
    return nbu.is_grade(cell) and nbu.is_solution(cell)


def ta_text(cell) -> str:
    """What nbgrader removes from a written answer for the student version: the lines inside its
    solution region(s), or the whole cell where it has no delimiters."""
    begin, end = _delimiters()
    lines, inside, found = [], False, False
    for line in cell.source.splitlines():
        if begin in line:
            inside = found = True
        elif end in line:
            inside = False
        elif inside:
            lines.append(line)
    return ("\n".join(lines) if found else cell.source).strip()


def written_answers(source_nb) -> dict[str, str]:
    """grade_id -> the TA-only text of each written answer of a source notebook, in notebook order."""
    return {cell.metadata.nbgrader["grade_id"]: ta_text(cell) for cell in source_nb.cells if is_written_answer(cell)}


def rubric_cell(text: str, source: str):
    """The markdown cell formgrader shows after a written answer."""
    quoted = "\n".join(f"> {line}" if line else ">" for line in text.splitlines())
    return nbformat.v4.new_markdown_cell(f"**{HEADING}** (from `{source}`; students never see this text)\n\n"
                                         f"{quoted}")


def insert_rubrics(nb, rubrics: dict[str, str], source: str):
    """`nb` with a TA-only cell after each written answer that has a text in `rubrics` (in place)."""
    cells = []
    for cell in nb.cells:
        cells.append(cell)
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if is_written_answer(cell) and rubrics.get(grade_id):
            cells.append(rubric_cell(rubrics[grade_id], source))
    nb.cells = cells
    return nb


def _label(path: Path) -> str:
    from .course import ROOT

    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


class ShowRubrics(Preprocessor):
    """In formgrader only: each written answer of the course's notebook followed by its TA-only text."""

    def preprocess(self, nb, resources):
        if getattr(self.parent, "template_name", None) != FORMGRADER_TEMPLATE:
            return nb, resources
        from .course import load

        course = load()
        if (resources.get("assignment_id"), resources.get("notebook_id")) != (course.assignment, course.notebook):
            return nb, resources
        source = nbformat.read(course.source_notebook, as_version=4)
        return insert_rubrics(nb, written_answers(source), _label(course.source_notebook)), resources
