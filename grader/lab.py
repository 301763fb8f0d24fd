"""The lab being graded, as the engine sees it: a package grader/labs/<assignment>/ that provides

    CAPTURES        evidence.Capture points
    KERNEL_SOURCE   source run in a student's kernel before each capture: make_helpers(user, context)
    REPLAY_SOURCE   source run in a replay kernel: make_replay(context) and REPLAYS
    SUPPORT_FILES   files of the lab's source folder every kernel gets in its working folder
    MIN_IMAGES, PRELOAD, LIBRARIES   the fewest images a batch may use; what the zygote imports
                    once; those libraries in words
    variables(source_dir), kernel_env(source_dir, data_dir, online=, n_images=, gpu=),
    read_only(source_dir, environ), describe(source_dir, environ), prefetch(source_dir, environ, echo)
                    the lab's own kernel variables, their values, what a kernel may read, the
                    settings in words, what an online batch fetches once
    DEMO_CLASS      the sample submissions `python -m grader demo` grades
    context(seed)   plain values the kernel-side code gets (the batch's secret seed, ...)
    check(student, reference, shown, ref_shown, seed, replay) -> {grade_id: Verdict}
    reference_problems(reference, ref_shown, seed) -> [why the reference does not verify]

The engine knows no lab: it runs the captures, keeps the evidence, runs the replays a lab asks
for and turns verdicts into points.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # course.py loads the lab through this module
    from .course import Course


def load(course: Course):
    """The course's lab grading package: a module name (grader.labs.<lab>), or a package folder
    beside the course file (a lab kept with its course, as the tests' tiny lab is)."""
    folder = course.file.parent / course.grading
    if not (folder / "__init__.py").is_file():
        return importlib.import_module(course.grading)
    name = f"grader_lab_{course.assignment}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
