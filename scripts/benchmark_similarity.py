"""How long the similar hand-ins report takes for a large class, on this machine.

    .venv/bin/python scripts/benchmark_similarity.py [--n 1000]

Builds N hand-ins of the course's lab from its student notebook (in a temporary batch folder):
each answer cell gets the reference answer with lines of its own added (distinct code for every
student) and each written answer words drawn at random from the notebook's text; one hand-in
in a hundred is a copy of another. Then times `similarity.report` (reading, fingerprinting, every pair's code and written scores,
the page and the picture) and prints the figures. Nothing is asserted: it is a measurement.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import nbformat  # noqa: E402

from grader import course as course_mod  # noqa: E402
from grader import similarity  # noqa: E402
from grader.jobs import BatchFolders, notebook_path  # noqa: E402


def hand_in(student_nb, answers: dict[str, str], rng: random.Random, vocabulary: list[str]):
    nb = nbformat.from_dict(student_nb)
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if not meta.get("solution"):
            continue
        reference = answers.get(cell.id, "")
        if cell.cell_type == "code":
            own = [f"v{rng.randrange(10**6)} = {rng.choice(['sum', 'len', 'max', 'min'])}"
                   f"([{rng.randrange(100)}, {rng.randrange(100)}]) * {rng.randrange(1, 9)}" for _ in range(4)]
            cell.source = reference + "\n" + "\n".join(own)
        else:
            cell.source = " ".join(rng.choice(vocabulary) for _ in range(rng.randrange(40, 120)))
    return nb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="hand-ins (default 1000)")
    args = parser.parse_args()
    from submissions import reference_answers

    course = course_mod.load()
    answers = reference_answers(nbformat.read(course.source_notebook, as_version=4))
    student_nb = nbformat.read(course.student_notebook, as_version=4)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="similarity-bench-") as work:
        out = Path(work)
        folders = BatchFolders(out)
        built = time.monotonic()
        vocabulary = sorted({w for c in student_nb.cells if c.cell_type == "markdown" for w in c.source.split()})
        notebooks = [hand_in(student_nb, answers, rng, vocabulary) for _ in range(args.n)]
        for i in range(0, args.n - 1, 100):     # a copied pair every 100 hand-ins
            notebooks[i + 1] = notebooks[i]
        for i, nb in enumerate(notebooks):
            path = notebook_path(folders.main, "submitted", f"s{i:05d}", course)
            path.parent.mkdir(parents=True)
            nbformat.write(nb, path)
        print(f"{args.n} hand-ins of {course.notebook} written in {time.monotonic() - built:.1f} s")
        started = time.monotonic()
        pairs = similarity.report(course, out, strict=True)
        seconds = time.monotonic() - started
        n_pairs = args.n * (args.n - 1) // 2
        print(f"similarity.report: {seconds:.1f} s for {args.n} hand-ins ({n_pairs} pairs), "
              f"{len(pairs)} pairs listed (planted: {len(range(0, args.n - 1, 100))}); "
              f"page {(out / 'similarity.html').stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
