"""Task 4: every image through the transform (check_preprocess).

Trusted evidence: rows 0 and N-1 of images_preprocessed against the reference run's. When they
differ (another transform, or a wrong stacking), a replay rebuilds the student's own transform
from its description (Task 3's capture) with torchvision, checks the rebuild gives on the secret
images exactly what the student's transform gave there, and applies it to images 0 and N-1:
one mistake in Task 3 is not charged again here. A transform that cannot be rebuilt (custom
code) leaves no trusted expectation, and this cell's point is not earned.
"""
from __future__ import annotations

import numpy as np

from grader.evidence import capture
from grader.replay import Request
from grader.verdicts import Verdict

from ..common import (
    KERNEL,
    OWN,
    PREPROCESS,
    RECOMPUTED,
    REFERENCE,
    Ctx,
    check,
    close,
    equal,
    gap_below,
    holds,
    true,
)

CAPTURES = (
    capture("answer_preprocess", "preprocess",
            is_tensor="isinstance(images_preprocessed, torch.Tensor)",
            shape="tuple(images_preprocessed.shape)",
            device="images_preprocessed.device.type",
            n_images="len(images)",
            rows="images_preprocessed"),
)
REBUILD_GAP = 1e-6     # the rebuilt transform vs the student's, on the secret images


def replay_transform(t, inputs, params):
    """The student's transform rebuilt from its description, on the secret images and on the
    lab's images 0 and N-1."""
    import numpy as np
    import torch

    rebuilt = rebuild_transform(params["spec"])  # noqa: F821  (kernel.py, in the replay kernel)
    secret = secret_images_array(params["seed"])  # noqa: F821
    images = t["craftlab"].load_rabbits()
    return {"secret": torch.stack([rebuilt(img) for img in secret]).numpy(),
            "rows": torch.stack([rebuilt(images[0]), rebuilt(images[len(images) - 1])]).numpy(),
            "n_images": np.asarray(len(images))}


REPLAYS = {"replay_transform": replay_transform}


def ends(run, name="preprocess.rows"):
    return np.asarray(run(name))[[0, -1]]


def reference_rows(c: Ctx) -> bool:
    return holds(lambda: close(ends(c.s), ends(c.r), "", **PREPROCESS))[0]


def requests(c: Ctx) -> list:
    if reference_rows(c) or not c.s.has("transform.spec") or not c.s.has("preprocess.rows"):
        return []
    return [Request("preprocess", "replay_transform", params={"spec": str(c.s("transform.spec")), "seed": c.seed})]


def check_preprocess(c: Ctx) -> Verdict:
    s, r = c.s, c.r

    def shape():
        want = (int(r("preprocess.n_images")), *np.atleast_1d(s("transform.shape")).tolist())
        return equal(s("preprocess.shape"), want, "images_preprocessed.shape")

    checks = [
        check("one tensor", True, KERNEL, lambda: true(s("preprocess.is_tensor"), "is a torch.Tensor")),
        check("shape (N, *transform shape)", True, OWN, shape),
        check("on the CPU", True, KERNEL, lambda: equal(s("preprocess.device"), "cpu", "device")),
    ]
    if reference_rows(c):
        checks.append(check("rows 0 and N-1 are transform(images[i])", False, REFERENCE,
                            lambda: close(ends(s), ends(r), "rows 0, N-1 vs the reference's", **PREPROCESS)))
        note = "compared with the reference run"
    else:
        checks += [
            check("the transform rebuilt by the grader is the student's", False, RECOMPUTED, lambda: gap_below(
                c.x("preprocess.secret"), s("transform.out"), REBUILD_GAP, "rebuilt vs student's, secret images")),
            check("rows 0 and N-1 are transform(images[i])", False, RECOMPUTED, lambda: close(
                ends(s), c.x("preprocess.rows"), "rows 0, N-1 vs the student's transform of images 0, N-1",
                **PREPROCESS)),
        ]
        note = "compared with the student's own transform, rebuilt by the grader"
    return Verdict("check_preprocess", tuple(checks), note)


RULES = {"check_preprocess": check_preprocess}
