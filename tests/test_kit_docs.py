"""The numbers the documents quote that the code knows (points, images, limits) are the code's.

Each claim names the document, a pattern around the number, and where the code keeps it; a
document that loses the sentence fails too, so a reworded sentence is re-checked, not dropped.
"""
from __future__ import annotations

import re

import nbformat
import pytest
from nbgrader.utils import is_locked

from conftest import COURSE, ROOT
from grader import cells, light
from grader import course as course_mod
from grader.execute import ResilientExecute
from grader.samples import manual_points, max_points

SOURCE = nbformat.read(COURSE.source_notebook, as_version=4)
RELEASE = nbformat.read(COURSE.student_notebook, as_version=4)
SANDBOX = course_mod.read(COURSE.file)["sandbox"]
SIMILAR = course_mod.read(COURSE.file)["similarity"]
AUTOMATIC = sum(max_points(SOURCE).values())
WRITTEN = sum(manual_points(SOURCE).values())
N_WRITTEN = len(manual_points(SOURCE))
WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
GB = 1024
PROVIDED = sum(1 for c in RELEASE.cells if cells.grade_id(c) and is_locked(c))  # what repair.py counts

TA, README, MAINTAINING, ARCHITECTURE = "grader/README-TA.md", "README.md", "docs/MAINTAINING.md", "docs/ARCHITECTURE.md"

CLAIMS = [
    # (document, pattern with one group per number, the code's numbers)
    (TA, r"the automatic points \((\d+)\)", (AUTOMATIC,)),
    (TA, r"the (\d+) points of the written answers", (WRITTEN,)),
    (TA, r"written\s+answers\*\* \((\d+) points in all", (WRITTEN,)),
    (TA, r"(\w+) cells of the lab are \*\*written answers", (WORDS[N_WRITTEN].capitalize(),)),
    (README, r"The (\w+) written answers wait for you", (WORDS[N_WRITTEN],)),
    (TA, r"`--n-images K` \| (\d+) \(`course.toml`\)", (COURSE.grading_n_images,)),
    (README, r"at (\d+) images per notebook \(`course.toml`\)", (COURSE.grading_n_images,)),
    (MAINTAINING, r"offline in grading mode \((\d+) images\)", (COURSE.grading_n_images,)),
    (TA, r"`--cell-timeout S` \| (\d+) \(`course.toml`\)", (COURSE.batch_cell_timeout_s,)),
    (TA, r"ran past the (\d+) s cell limit", (COURSE.batch_cell_timeout_s,)),
    (TA, r"`--timeout S` \| (\d+) x the reference run, (\d+) to (\d+)",
     (COURSE.notebook_timeout_factor, COURSE.notebook_timeout_floor_s, COURSE.notebook_timeout_s)),
    (TA, r"limits on memory \((\d+) GB\), processes \((\d+)\)",
     (SANDBOX["memory_mb"] / GB, SANDBOX["max_processes"])),
    (TA, r"address\s+space \((\d+) GB", (SANDBOX["address_space_mb"] / GB,)),
    (ARCHITECTURE, r"past (\d+) MB a cell or (\d+) MB a notebook",
     (ResilientExecute.cell_output_mb.default_value, ResilientExecute.output_mb.default_value)),
    (ARCHITECTURE, r"memory \((\d+) GB\) and processes \((\d+)\)",
     (SANDBOX["memory_mb"] / GB, SANDBOX["max_processes"])),
    (TA, r"only 3 of the (\d+) provided cells were found", (PROVIDED,)),
    (TA, r"typical pair \((\d+) robust standard deviations above the median pair\) and at least a floor "
         r"\(([\d.]+) for code, ([\d.]+) for written answers\)",
     (SIMILAR["spread"], SIMILAR["code_floor"], SIMILAR["written_floor"])),
    (TA, r"fingerprints that more than (\d+)% of the class share", (100 * SIMILAR["common_share"],)),
    (ARCHITECTURE, r"JPEGs at most (\d+) pixels a side", (light.FIGURE_SIDE,)),
    (TA, r"JPEGs at most (\d+) pixels a side", (light.FIGURE_SIDE,)),
    (TA, r"at most ([\d.]+) MB a submission: a test checks it", (light.KEPT_PER_SUBMISSION / 1e6,)),
    (ARCHITECTURE, r"its middle cut past (\d+) KiB", (light.LOG_KEPT / 1024,)),
    (TA, r"`\[cluster\] allowed_failures` \+ 1 times \((\d+)\)", (course_mod.cluster_settings(COURSE).allowed_failures + 1,)),
]


def one_line(path: str) -> str:
    return re.sub(r"\s+", " ", (ROOT / path).read_text())


def same(quoted: str, known) -> bool:
    if isinstance(known, str):
        return quoted == known
    return float(quoted) == float(known)


@pytest.mark.parametrize("doc, pattern, known", CLAIMS, ids=[f"{d}:{p[:30]}" for d, p, _ in CLAIMS])
def test_a_quoted_number_is_the_codes(doc, pattern, known):
    found = re.search(pattern, one_line(doc))
    assert found, f"{doc} no longer says {pattern!r}: reword the claim here too"
    assert all(same(q, k) for q, k in zip(found.groups(), known)), \
        f"{doc} quotes {found.groups()} where the code has {known}: {found[0]!r}"


def test_every_score_the_ta_manual_shows_is_out_of_the_automatic_points():
    text = (ROOT / TA).read_text()
    shown = re.findall(r"\b\d+/(\d+)\s+(?:graded|review|failed)\b", text)
    assert shown and {int(m) for m in shown} == {int(AUTOMATIC)}


def test_the_claims_can_fail():
    """A wrong number is caught (the check above is not vacuous)."""
    doc, pattern, known = CLAIMS[0]
    found = re.search(pattern, one_line(doc))
    assert found and not same(found[1], AUTOMATIC + 1)
