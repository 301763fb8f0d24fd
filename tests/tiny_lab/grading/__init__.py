"""The tiny lab's grading: everything the engine asks of a lab (grader/lab.py), in one small file.

Two graded tasks and one written answer (source/tiny_lab/tiny_lab.ipynb). Each task's answer is
a function; a capture calls it on a secret input drawn from the batch's seed, and the rule
compares what it sent with the same function computed here, by trusted code: the engine needs
nothing else. (The CRAFT lab, grader/labs/craft_lab/, adds replays and figures.)
"""
from __future__ import annotations

import inspect

import numpy as np

from grader.evidence import capture
from grader.verdicts import Basis, Check, Verdict

# ----------------------------------------------------------------------------- the kernel side


def make_helpers(user, context):
    """What capture expressions may use: the secret input of this batch (sent only as they run)."""
    import numpy as np

    return {"secret": np.random.default_rng(context["seed"]).normal(size=32)}


def make_replay(context):
    return {}


KERNEL_SOURCE = inspect.getsource(make_helpers)
REPLAY_SOURCE = inspect.getsource(make_replay) + "\nREPLAYS = {}\n"

CAPTURES = (
    capture("answer_normalize", "normalize", out="normalize(secret)"),
    capture("answer_topk", "topk", out="top_k(secret, 3)"),
)


def context(seed: int) -> dict:
    return {"seed": int(seed)}


# ----------------------------------------------------------------------------- the rules


def _secret(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=32)


def _value(student: dict, name: str):
    if name not in student:
        raise LookupError(str(student.get("error." + name, "not captured")))
    return np.asarray(student[name])


def _check(name: str, basis: Basis, test) -> Check:
    try:
        ok, detail = test()
    except Exception as exc:  # missing or malformed: that check fails, with the reason
        return Check(name, False, False, basis, f"{type(exc).__name__}: {exc}"[:200])
    return Check(name, bool(ok), False, basis, detail)


def check_normalize(student: dict, seed: int) -> Verdict:
    x = _secret(seed)

    def same():
        got = _value(student, "normalize.out").astype(float)
        gap = float(np.abs(got - (x - x.mean()) / x.std()).max())
        return gap < 1e-9, f"max gap {gap:.3g} from (x - mean) / std on a secret input"
    return Verdict("check_normalize", (_check("standardised", Basis.RECOMPUTED, same),))


def check_topk(student: dict, seed: int) -> Verdict:
    x = _secret(seed)

    def same():
        got = _value(student, "topk.out").tolist()
        return got == np.argsort(x)[::-1][:3].tolist(), f"top_k(secret, 3) = {got}"
    return Verdict("check_topk", (_check("the 3 largest, largest first", Basis.RECOMPUTED, same),))


def check(student: dict, reference: dict, shown: dict, ref_shown: dict, seed: int, replay=None) -> dict[str, Verdict]:
    return {"check_normalize": check_normalize(student, seed), "check_topk": check_topk(student, seed)}


def reference_problems(reference: dict, ref_shown: dict, seed: int) -> list[str]:
    return [f"{v.grade_id}: {line}" for v in check(reference, reference, {}, {}, seed).values()
            for line in v.reasons()]


# ----------------------------------------------------------------------------- its kernels

SUPPORT_FILES: tuple[str, ...] = ()
MIN_IMAGES = 0
PRELOAD = ("numpy",)
LIBRARIES = "numpy"


def variables(source_dir) -> tuple[str, ...]:
    return ()


def kernel_env(source_dir, data_dir, *, online: bool, n_images: int, gpu: bool) -> dict[str, str]:
    return {}


def read_only(source_dir, environ) -> tuple[dict, dict]:
    return {}, {}


def describe(source_dir, environ) -> str:
    return "no settings"


def prefetch(source_dir, environ, echo) -> None:
    return None


# ----------------------------------------------------------------------------- its demo class

from grader.samples import ALL, Sample  # noqa: E402

DEMO_CLASS = [
    Sample("reference"),
    Sample("blank", blank=True, lost=ALL, says="not answered"),
    Sample("unscaled", {"answer_normalize": "def normalize(x):\n    return np.asarray(x) - np.mean(x)"},
           {"check_normalize": 2}),
    Sample("ascending", {"answer_topk": "def top_k(x, k):\n    return np.argsort(x)[:k]"}, {"check_topk": 1}),
]

