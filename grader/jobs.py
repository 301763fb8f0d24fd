"""A submission's job folder and what the parent asks of the worker: the one place the layout lives.

    out/                        the batch's folder (BatchFolders)
      nbgrader/                 the main nbgrader folder: gradebook.db, submitted/, autograded/, feedback/
      work/<student>/           one submission's job folder (JobFolder): its own gradebook and
                                nbgrader folders, job.json, worker.log, result.json, evidence/,
                                verification.json, merged.json, and the folders kernels start from
                                (run/, replay/); once merged, it keeps job.json, worker.log,
                                result.json, verification.json and merged.json (light.py), or
                                everything with --keep-work
      work/_template/           an empty gradebook and the student version, copied for each job
      feedback/<student>/<notebook>.html   each student's page (BatchFolders.page)

nbgrader's own layout inside any nbgrader folder: <kind>/<student>/<assignment>/<notebook>.ipynb
(kind: submitted, autograded, feedback), gradebook.db beside them.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .course import Course
from .results import write_json

JOB, RESULT, LOG = "job.json", "result.json", "worker.log"
EVIDENCE = "evidence"               # what the captures sent, as the worker received it
VERIFICATION = "verification.json"  # each graded cell's verdict and any tampering evidence
MERGED = "merged.json"              # the result once merged into the main gradebook
GRADEBOOK = "gradebook.db"
RUN, REPLAY = "run", "replay"       # the host folders the grading kernel and the replay kernel start from
REFERENCE = "_reference"            # the reference run's job folder (no student id starts with "_")


def notebook_path(folder: Path, kind: str, student: str, course: Course, suffix: str = ".ipynb") -> Path:
    """nbgrader's <folder>/<kind>/<student>/<assignment>/<notebook><suffix>."""
    return folder / kind / student / course.assignment / f"{course.notebook}{suffix}"


def write_notebook(nb, path: Path) -> None:
    """Write a notebook atomically (nbgrader leaves the autograded copy read-only)."""
    import nbformat

    tmp = path.with_name(path.name + ".tmp")
    nbformat.write(nb, tmp)
    tmp.replace(path)


@dataclass(frozen=True)
class JobFolder:
    """One submission's job folder (an nbgrader folder of its own, and the worker's files)."""
    path: Path

    @property
    def student(self) -> str:
        return self.path.name

    @property
    def gradebook(self) -> Path:
        return self.path / GRADEBOOK

    def notebook(self, kind: str, course: Course, student: str | None = None) -> Path:
        return notebook_path(self.path, kind, student or self.student, course)

    def file(self, name: str) -> Path:
        return self.path / name


@dataclass(frozen=True)
class BatchFolders:
    """The output folder's parts (see the module's docstring)."""
    out: Path

    @property
    def main(self) -> Path:
        return self.out / "nbgrader"

    @property
    def main_db(self) -> Path:
        return self.main / GRADEBOOK

    @property
    def work(self) -> Path:
        return self.out / "work"

    @property
    def collected(self) -> Path:
        """A copy of the input, archives unpacked (removed after the batch unless --keep-work)."""
        return self.out / "collected"

    @property
    def template(self) -> Path:
        return self.work / "_template"

    def job(self, student: str) -> JobFolder:
        return JobFolder(self.work / student)

    def page(self, student: str, course: Course) -> Path:
        """The feedback page to send back to a student."""
        return self.out / "feedback" / student / f"{course.notebook}.html"


@dataclass
class Job:
    """What the parent asks the worker to grade (job.json in the job folder)."""
    student: str
    source: str             # the submitted file, as collected
    release: str            # the student version the submission is checked against
    cell_timeout_s: int
    file: str = ""
    sha256: str = ""
    allow_unsafe: bool = False   # grade even where the sandbox lacks a protection (the TA said so)
    seed: int | None = None      # the batch's secret seed (None: no captures, no verification)
    reference_job: str = ""      # job folder of the batch's trusted reference run ("": this IS it)
    keep_work: bool = False      # keep the evidence, scratch folders and full-size figures (grade --keep-work)

    def write(self, job_dir: Path) -> None:
        write_json(Path(job_dir) / JOB, asdict(self))

    @classmethod
    def read(cls, job_dir: Path) -> "Job":
        return cls(**json.loads((Path(job_dir) / JOB).read_text()))


# ----------------------------------------------------------------------------- jobs graded elsewhere
# A job graded on another machine (grader/cluster.py) travels as bytes: the files the worker needs
# from the batch go out once per machine, the files the batch reads come back, and nothing else.

MARKER_FILE = "job.marker"  # the marker in the environment of the job's processes (runner.MARKER)


def returned_files(course: Course, student: str) -> tuple[str, ...]:
    """What of a job folder goes back to the batch, relative to the job folder: what Merger.finish,
    the reports and a TA read (gradebook, result, log, verdicts, the notebooks and the page)."""
    here = Path()
    notebooks = [notebook_path(here, kind, student, course) for kind in ("submitted", "autograded")]
    page = notebook_path(here, "feedback", student, course, ".html")
    return (GRADEBOOK, RESULT, LOG, VERIFICATION, *(p.as_posix() for p in (*notebooks, page)))


def shared_files(folders: BatchFolders, course: Course, reference: str) -> tuple[str, ...]:
    """What every machine grading a batch needs from it, relative to its work folder: the empty
    gradebook and the student version (the template), and the reference run's evidence and
    autograded notebook (what the verification compares with)."""
    ref = folders.job(reference)
    paths = [folders.template / GRADEBOOK, folders.template / "release" / course.assignment / f"{course.notebook}.ipynb",
             ref.notebook("autograded", course), *sorted(ref.file(EVIDENCE).glob("*.npz"))]
    return tuple(p.relative_to(folders.work).as_posix() for p in paths)


def pack(folder: Path, names) -> dict[str, bytes]:
    """{name: content} of the regular files `names` (relative to folder) that exist; a link is skipped."""
    import os

    packed = {}
    for name in names:
        try:
            fd = os.open(Path(folder) / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        with open(fd, "rb") as f:
            packed[name] = f.read()
    return packed


def unpack(folder: Path, files: dict, expected) -> int:
    """Write files {name: bytes} into folder, each atomically; return the bytes written. Refuses
    (ValueError, nothing written) any name not in `expected` or content that is not bytes: what
    comes back from a worker was made while student code ran, and is written only where it belongs."""
    expected = set(expected)
    if not isinstance(files, dict):
        raise ValueError(f"expected a dict of files, got {type(files).__name__}")
    wrong = [repr(name)[:80] for name, data in files.items() if name not in expected or not isinstance(data, bytes)]
    if wrong:
        raise ValueError(f"refused unexpected files from the worker: {', '.join(sorted(wrong)[:5])}")
    size = 0
    for name, data in files.items():
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        size += len(data)
    return size
