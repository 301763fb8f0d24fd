"""The lab being graded, as the engine sees it: a package grader/labs/<assignment>/ that provides

    CAPTURES        evidence.Capture points, in notebook order
    KERNEL_SOURCE   source run in a student's kernel before each capture: make_helpers(user, context)
    REPLAY_SOURCE   source run in a replay kernel: make_replay(context) and REPLAYS
    SUPPORT_FILES   files of the lab's source folder every kernel gets in its working folder
    context(seed)   plain values the kernel-side code gets (the batch's secret seed, ...)
    check(student, reference, shown, ref_shown, seed, replay) -> {grade_id: Verdict}
    reference_problems(reference, ref_shown, seed) -> [why the reference does not verify]

The engine knows no lab: it runs the captures, keeps the evidence, runs the replays a lab asks
for and turns verdicts into points.
"""
from __future__ import annotations

import importlib

from .course import Course


def load(course: Course):
    """The grading package of the course's assignment."""
    return importlib.import_module(f"grader.labs.{course.assignment}")
