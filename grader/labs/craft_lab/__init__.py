"""The CRAFT lab's grading: what the engine asks of a lab (grader/lab.py), from the task modules.

Each graded task has one module in tasks/ (captures, replays, requests, rules together), found
here by itself. Adding a task: its cells in the source notebook, its module in tasks/, its row
in the sample table (tests/submissions.py).
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil

from grader.verdicts import Verdict

from . import common, kernel, tasks
from .common import Ctx, Run
from .environment import (  # noqa: F401
    LIBRARIES,
    MIN_IMAGES,
    PRELOAD,
    SUPPORT_FILES,
    describe,
    helper,
    kernel_env,
    prefetch,
    read_only,
    variables,
)
from .samples import DEMO_CLASS  # noqa: F401

TASKS = tuple(importlib.import_module(f"{tasks.__name__}.{info.name}")
              for info in sorted(pkgutil.iter_modules(tasks.__path__), key=lambda info: info.name))

CAPTURES = tuple(point for task in TASKS for point in task.CAPTURES)
NAMES = frozenset(name for point in CAPTURES for name in point.names)
RULES = {grade_id: rule for task in TASKS for grade_id, rule in task.RULES.items()}
KERNEL_SOURCE = inspect.getsource(kernel)   # make_helpers (captures) and make_replay (replays)
REPLAYS = {kind: fn for task in TASKS for kind, fn in task.REPLAYS.items()}
REPLAY_SOURCE = "\n\n".join([KERNEL_SOURCE, *(inspect.getsource(fn) for fn in REPLAYS.values()),
                             "REPLAYS = {" + ", ".join(f"{kind!r}: {fn.__name__}" for kind, fn in REPLAYS.items())
                             + "}\n"])


def context(seed: int) -> dict:
    """What the kernel-side helpers get: the batch's secret seed and the lab's class."""
    return {"seed": int(seed), "class_id": common.RABBIT_CLASS}


def requests(c: Ctx) -> list:
    """The replays this student's verification needs (none when every input is the reference's)."""
    return [request for task in TASKS for request in task.requests(c)]


def rules(c: Ctx) -> dict[str, Verdict]:
    """Each graded cell's verdict, in notebook order (a rule may read an earlier verdict)."""
    for grade_id, rule in RULES.items():
        c.verdicts[grade_id] = rule(c)
    return c.verdicts


def check(student: dict, reference: dict, shown: dict, ref_shown: dict, seed: int, replay=None) -> dict[str, Verdict]:
    """Verdicts for one submission. `replay(requests)` runs trusted recomputations (grader/replay.py)
    and returns a Replayed; None when no kernel may be started (tests): then nothing is replayed."""
    c = Ctx(Run(student, "student's"), Run(reference, "reference's"), shown=dict(shown), ref_shown=dict(ref_shown),
            seed=seed)
    wanted = requests(c)
    if wanted and replay is not None:
        done = replay(wanted)
        c.x, c.x_figures = Run(done.arrays, "recomputed"), done.figures
    return rules(c)


def reference_problems(reference: dict, ref_shown: dict, seed: int) -> list[str]:
    """Why the reference run does not verify against itself (empty when it does): checked once per
    batch before grading anyone, since every student is compared with it."""
    verdicts = check(reference, reference, ref_shown, ref_shown, seed)
    return [f"{v.grade_id}: {line}" for v in verdicts.values() for line in v.reasons()]
