"""What a graded submission keeps (grader/light.py): light figures, scratch removed, links never
followed, a long log shortened, the disk counted as `du -sb` counts it. Unit tests on made-up
folders and notebooks: no grading, a few seconds."""
from __future__ import annotations

import base64
import io
import os
import struct
import zlib

import nbformat
import numpy as np
from nbformat.v4 import new_code_cell, new_notebook, new_output
from PIL import Image

from grader import light
from grader.jobs import (
    EVIDENCE,
    GRADEBOOK,
    LOG,
    MERGED,
    REPLAY,
    RUN,
    BatchFolders,
    JobFolder,
)


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def noisy_figure(width: int = 1600, height: int = 700) -> bytes:
    """A figure like the lab's: noisy crops, a transparent margin."""
    rgba = np.random.default_rng(0).integers(0, 256, (height, width, 4), dtype=np.uint8)
    rgba[:, : width // 10, 3] = 0
    rgba[:, width // 10:, 3] = 255
    return png(Image.fromarray(rgba, "RGBA"))


def huge_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels (a decompression bomb's header), with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def figure_output(data: bytes | str, hints: dict | None = None):
    value = data if isinstance(data, str) else base64.b64encode(data).decode()
    return new_output("display_data", data={"image/png": value, "text/plain": "<Figure>"},
                      metadata=hints or {})


def test_figures_become_small_jpegs_and_what_cannot_shrink_stays_as_it_was():
    small = png(Image.new("RGB", (20, 20), "red"))
    gif = io.BytesIO()
    Image.new("RGB", (900, 900), "blue").save(gif, "GIF")
    nb = new_notebook(cells=[new_code_cell("plot()", outputs=[
        figure_output(noisy_figure(), {"image/png": {"width": 1600}}),
        figure_output(small),
        figure_output(gif.getvalue()),            # not a PNG: never decoded as anything else
        figure_output(huge_header(20000, 20000)),  # too many pixels: never decoded
        figure_output("not base64 at all!"),
    ])])
    before, after = light.lighten_notebook(nb)
    outs = nb.cells[0].outputs
    assert "image/png" not in outs[0].data and outs[0].metadata == {"image/jpeg": {"width": 1600}}
    jpeg = base64.b64decode(outs[0].data["image/jpeg"])
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG" and max(image.size) == light.FIGURE_SIDE
        assert image.size == (light.FIGURE_SIDE, round(700 * light.FIGURE_SIDE / 1600))
        assert min(image.convert("RGB").getpixel((5, 5))) > 240, "the transparent margin is white"
    assert after < before / 5
    for out, kept in zip(outs[1:], [small, gif.getvalue(), huge_header(20000, 20000)]):
        assert list(out.data) == ["image/png", "text/plain"] and base64.b64decode(out.data["image/png"]) == kept
    assert outs[4].data["image/png"] == "not base64 at all!"


def job_folder(tmp_path, course):
    """A job folder as a finished worker leaves it, with a link the kernel could have planted."""
    folder = JobFolder(tmp_path / "work" / "s1")
    outside = tmp_path / "outside.txt"
    outside.write_text("not the grader's")
    for name in (EVIDENCE, RUN, REPLAY):
        (folder.file(name) / "deep").mkdir(parents=True)
        (folder.file(name) / "deep" / "x.npz").write_bytes(b"x" * 1000)
    (folder.file(RUN) / "planted").symlink_to(outside)
    (folder.file(RUN) / "planted_dir").symlink_to(tmp_path)
    for kind, suffix in (("submitted", ".ipynb"), ("autograded", ".ipynb"), ("feedback", ".html")):
        page = folder.notebook(kind, course).with_suffix(suffix)
        page.parent.mkdir(parents=True)
        (page.parent / "helper.py").write_text("lab code nbgrader copied")
    nb = new_notebook(cells=[new_code_cell("x = 1", outputs=[figure_output(noisy_figure(200, 100))],
                                           execution_count=3)])
    nbformat.write(nb, folder.notebook("submitted", course))
    nbformat.write(nb, folder.notebook("autograded", course))
    folder.notebook("feedback", course).with_suffix(".html").write_text("<html></html>")
    folder.gradebook.write_bytes(b"db")
    folder.file(LOG).write_bytes(b"a" * light.LOG_KEPT + b"b" * light.LOG_KEPT)
    return folder, outside


def test_a_job_folder_keeps_its_records_and_nothing_a_kernel_planted_is_followed(tmp_path, course):
    folder, outside = job_folder(tmp_path, course)
    light.tidy_job(folder, course, "s1")
    assert not any(folder.file(name).exists() for name in (EVIDENCE, RUN, REPLAY))
    assert outside.read_text() == "not the grader's" and tmp_path.is_dir()
    for kind, keep in (("autograded", ".ipynb"), ("feedback", ".html")):
        here = folder.notebook(kind, course).parent
        assert [p.name for p in here.iterdir()] == [f"{course.notebook}{keep}"]
    submitted = nbformat.read(folder.notebook("submitted", course), as_version=4)
    assert submitted.cells[0].outputs == [] and submitted.cells[0].execution_count is None
    assert submitted.cells[0].source == "x = 1"
    autograded = nbformat.read(folder.notebook("autograded", course), as_version=4)
    assert autograded.cells[0].outputs, "the autograded notebook keeps its outputs"

    for kind in light.NOTEBOOK_KINDS:  # what batch._publish does: the notebooks move to the main folder
        for path in sorted(folder.file(kind).rglob("*"), reverse=True):
            path.unlink() if path.is_file() else None
    light.after_merge(folder)
    assert sorted(p.name for p in folder.path.iterdir()) == [LOG]
    log = folder.file(LOG).read_bytes()
    assert len(log) < light.LOG_KEPT + 100 and log.startswith(b"a" * 1000) and log.endswith(b"b" * 1000)
    assert b"bytes cut by the grader" in log


def test_disk_use_counts_each_file_once_and_the_shared_part_apart(tmp_path):
    folders = BatchFolders(tmp_path / "out")
    for sid in ("s1", "s2"):
        folders.job(sid).path.mkdir(parents=True)
        (folders.job(sid).path / MERGED).write_bytes(b"m" * 1000)
        page = folders.out / "nbgrader" / "feedback" / sid / "page.html"
        page.parent.mkdir(parents=True)
        page.write_bytes(b"p" * 5000)
        folders.page(sid, type("C", (), {"notebook": "page"})).parent.mkdir(parents=True)
        os.link(page, folders.out / "feedback" / sid / "page.html")  # counted once, as du does
    folders.job("_reference").path.mkdir()
    (folders.job("_reference").path / "evidence.npz").write_bytes(b"e" * 100_000)
    folders.template.mkdir()
    (folders.template / GRADEBOOK).write_bytes(b"g" * 50_000)
    (folders.out / "grades.csv").write_bytes(b"c" * 300)
    dirs = [p for p in folders.out.rglob("*") if p.is_dir()]
    shared_dirs = [folders.job("_reference").path, folders.template]
    mine, shared, n = light.disk_use(folders.out)
    size = os.lstat(folders.out).st_size
    assert n == 2
    assert shared == 100_000 + 50_000 + 300 + size + sum(os.lstat(d).st_size for d in shared_dirs)
    assert mine == 2 * (1000 + 5000) + sum(os.lstat(d).st_size for d in dirs if d not in shared_dirs)
