"""What a graded submission keeps on disk: its figures made light, the grading's scratch removed.

A batch keeps, per submission, what the TA and the later commands read: the feedback page,
the autograded notebook (formgrader; the page made again after manual grading), the
submitted notebook (formgrader lists submissions by it), and the job folder's records
(job.json, worker.log, result.json, verification.json, merged.json: a later run and `export`
read merged.json). The rest served the grading only and goes once it is done, unless
`grade --keep-work`:

- in the worker, once the submission is verified (pipeline.py): each figure of the autograded
  notebook becomes a JPEG at most FIGURE_SIDE pixels a side, before the feedback page is made
  from it (the page and formgrader get the light figures; verification has read the full ones);
  at the end of its pipeline, the evidence, the kernels' folders, the lab's files nbgrader
  copied beside the notebook, and the outputs of the submitted copy (the file as handed in
  stays where the TA took it from);
- in the parent, once the submission is merged (batch.Merger): the job's own gradebook, the
  folders emptied by the move into the main nbgrader folder, and the middle of a long worker.log;
  once the batch is graded, collected/ (the copy of the input: a later run copies it again).

The reference run's job folder is kept whole: each submission is verified against its evidence
and the figures it displayed, on this run and on a later one.
"""
from __future__ import annotations

import base64
import binascii
import io
import os
import stat
from pathlib import Path

from .jobs import (
    EVIDENCE,
    LOG,
    MERGED,
    REFERENCE,
    REPLAY,
    RUN,
    BatchFolders,
    JobFolder,
    write_notebook,
)

FIGURE_SIDE = 640               # pixels: the longer side of a figure kept (larger ones are scaled down)
FIGURE_QUALITY = 55             # JPEG quality of the figures kept
LARGEST_FIGURE = 40_000_000     # pixels: a figure larger than this is left as it is, never decoded
LOG_KEPT = 256 << 10            # bytes of a worker.log kept after merging: its first and last halves
# What a batch keeps per submission by default, at most, in bytes: tests/test_grading_batch.py
# checks it, grader/README-TA.md (*Speed*) quotes it. The model solution keeps 1.29 MB: its page
# (about 0.36 MB of text and style, the rest figures), the autograded notebook (the same figures),
# the submitted copy without outputs (0.11 MB), the job's records (0.08 MB).
KEPT_PER_SUBMISSION = 1_400_000
SCRATCH = (EVIDENCE, RUN, REPLAY)   # a job folder's folders that only served the grading
NOTEBOOK_KINDS = ("submitted", "autograded", "feedback")


# ----------------------------------------------------------------------------- figures

def light_figure(png: bytes) -> bytes | None:
    """`png` as a JPEG over white, scaled down to FIGURE_SIDE pixels a side; None when it is not
    a PNG Pillow reads, is too large to decode, or would not get smaller."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(png), formats=["PNG"]) as image:
            if image.width * image.height > LARGEST_FIGURE:
                return None
            rgba = image.convert("RGBA")
        flat = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
        flat.thumbnail((FIGURE_SIDE, FIGURE_SIDE), Image.LANCZOS)
        out = io.BytesIO()
        flat.save(out, "JPEG", quality=FIGURE_QUALITY, optimize=True)
    except Exception:  # a figure the kernel sent broken stays as it was
        return None
    light = out.getvalue()
    return light if len(light) < len(png) else None


def lighten_notebook(nb) -> tuple[int, int]:
    """Replace, in place, each PNG figure of the notebook's outputs by its light JPEG (where that
    is smaller); return the figures' bytes (before, after)."""
    before = after = 0
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            data = out.get("data") or {}
            if out.get("output_type") not in ("display_data", "execute_result") or \
                    not isinstance(data.get("image/png"), str):
                continue
            try:
                png = base64.b64decode(data["image/png"])
            except (binascii.Error, ValueError):
                continue
            light = light_figure(png)
            before += len(png)
            after += len(light or png)
            if light is None:
                continue
            del data["image/png"]
            data["image/jpeg"] = base64.b64encode(light).decode("ascii")
            hints = out.get("metadata") or {}
            if isinstance(hints.get("image/png"), dict):
                hints["image/jpeg"] = hints.pop("image/png")
    return before, after


# ----------------------------------------------------------------------------- a job folder

def tidy_job(folder: JobFolder, course, student: str) -> None:
    """The worker's side, at the end of its pipeline: the scratch folders, the lab's files nbgrader
    copied beside the notebook and the page, and the submitted copy's outputs."""
    import nbformat

    from .kernel.reap import remove_tree

    for name in SCRATCH:
        remove_tree(folder.file(name))
    for kind, keep in (("autograded", f"{course.notebook}.ipynb"), ("feedback", f"{course.notebook}.html")):
        here = folder.notebook(kind, course, student).parent
        for path in here.iterdir() if here.is_dir() else ():
            if path.name != keep and stat.S_ISREG(os.lstat(path).st_mode):
                path.unlink()
    submitted = folder.notebook("submitted", course, student)
    if submitted.is_file():
        nb = nbformat.read(submitted, as_version=4)
        if any(cell.get("outputs") for cell in nb.cells):
            for cell in nb.cells:
                if cell.cell_type == "code":
                    cell.outputs, cell.execution_count = [], None
            write_notebook(nb, submitted)


def after_batch(folders: BatchFolders) -> None:
    """The parent's side, once every submission is merged: the copy of the input (collected/)."""
    from .kernel.reap import remove_tree

    remove_tree(folders.collected)


def after_merge(folder: JobFolder) -> None:
    """The parent's side, once the submission is merged and published: its own gradebook, the
    folders the move emptied, scratch a killed worker left, and the middle of a long worker.log."""
    from .kernel.reap import remove_tree

    folder.gradebook.unlink(missing_ok=True)
    for name in SCRATCH:
        remove_tree(folder.file(name))
    for kind in NOTEBOOK_KINDS:
        _remove_empty(folder.file(kind))
    shorten_log(folder.file(LOG))


def _remove_empty(top: Path) -> None:
    """Remove the folders under `top`, and `top`, that hold no file (links are never followed)."""
    if not top.is_dir() or top.is_symlink():
        return
    for here, _, _ in os.walk(top, topdown=False):
        try:
            os.rmdir(here)
        except OSError:  # not empty
            pass


def shorten_log(path: Path, kept: int = LOG_KEPT) -> None:
    """Keep a long log's first and last kept/2 bytes, saying what was cut, atomically."""
    try:
        size = os.lstat(path).st_size
    except FileNotFoundError:
        return
    if size <= kept:
        return
    with open(path, "rb") as f:
        head = f.read(kept // 2)
        f.seek(size - kept // 2)
        tail = f.read()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(head + f"\n[... {size - len(head) - len(tail)} bytes cut by the grader ...]\n".encode() + tail)
    tmp.replace(path)


# ----------------------------------------------------------------------------- measuring

def disk_use(out: Path) -> tuple[int, int, int]:
    """(bytes of the submissions, shared bytes, number of submissions) of a graded batch's folder,
    counted as `du -sb` does (each file once however many links it has, folders included). Shared:
    the reference run's job folder, the template, the batch's own files in work/, the main
    gradebook and the reports at the top."""
    folders = BatchFolders(Path(out))
    shared_roots = {folders.job(REFERENCE).path, folders.template, folders.main_db}
    shared_roots |= {p for p in folders.work.iterdir() if not p.is_dir()}
    shared_roots |= {p for p in folders.out.iterdir() if not p.is_dir()}
    seen: set[tuple[int, int]] = set()
    totals = [0, os.lstat(folders.out).st_size]
    for here, dirs, files in os.walk(folders.out):
        for name in dirs + files:
            path = Path(here, name)
            info = os.lstat(path)
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            totals[any(path == root or root in path.parents for root in shared_roots)] += info.st_size
    submissions = sum(1 for p in folders.work.glob(f"*/{MERGED}"))
    return totals[0], totals[1], submissions
