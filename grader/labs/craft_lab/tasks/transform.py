"""Task 3: the preprocessing transform (check_transform).

Trusted evidence: the student's transform applied, in their kernel, to secret uint8 images (drawn
from the batch's secret seed at capture time, so no answer can be tuned to them), against PIL's
bilinear resize and ImageNet's normalisation computed here. The capture also describes the
transform (transform_spec) so that Task 4 can rebuild it in a replay when it is not the reference's.
"""
from __future__ import annotations

from grader.evidence import capture
from grader.verdicts import Verdict

from ..common import (
    KERNEL,
    RECOMPUTED,
    REFERENCE,
    TRANSFORM_GAP,
    Ctx,
    check,
    equal,
    gap_below,
    secret_images,
    transform_expected,
    true,
)

CAPTURES = (
    capture("answer_transform", "transform",
            out="transform_all(transform, secret_images())",
            is_tensor="isinstance(transform(secret_images()[0]), torch.Tensor)",
            shape="tuple(transform(secret_images()[0]).shape)",
            dtype="str(transform(secret_images()[0]).dtype)",
            spec="transform_spec(transform)"),
)
REPLAYS: dict = {}


def requests(c: Ctx) -> list:
    return []


def check_transform(c: Ctx) -> Verdict:
    s, r = c.s, c.r
    return Verdict("check_transform", (
        check("transform returns a tensor", True, KERNEL, lambda: true(s("transform.is_tensor"), "is a torch.Tensor")),
        check("transform(image) shape", True, REFERENCE, lambda: equal(s("transform.shape"), r("transform.shape"), "shape")),
        check("transform(image) dtype", True, REFERENCE, lambda: equal(s("transform.dtype"), r("transform.dtype"), "dtype")),
        check("Resize, CenterCrop, Normalize", False, RECOMPUTED, lambda: gap_below(
            s("transform.out"), transform_expected(secret_images(c.seed)), TRANSFORM_GAP,
            "transform(secret images) vs PIL + Normalize")),
    ))


RULES = {"check_transform": check_transform}
