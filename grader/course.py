"""The course being graded: its layout and settings, read from its course file (course.toml), the
one place they live. The kit's own course file is grader/course.toml; COURSE_VAR names another
(a second lab, the tests' tiny lab), whose folders are then relative to that file's folder.
"""
from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

GRADER_DIR = Path(__file__).resolve().parent
ROOT = GRADER_DIR.parent
COURSE_FILE = GRADER_DIR / "course.toml"
COURSE_VAR = "GRADER_COURSE"  # another course file (read by every process of a batch, and by nbgrader_config.py)
WORK_VAR = "GRADER_WORK"      # nbgrader's working folder; read by nbgrader_config.py
# Thread counts of the numeric libraries a kernel uses (OpenMP, MKL, OpenBLAS, TensorFlow)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


@dataclass(frozen=True)
class Course:
    """One course file's settings. Their meaning and values: the comments of grader/course.toml."""
    course_id: str
    assignment: str
    notebook: str
    repository: str
    branch: str
    grading: str                   # the lab's grading package: a module name, or a folder beside the file
    source_root: Path              # nbgrader's source folder (holds <assignment>/)
    release_root: Path             # nbgrader's release folder (holds <assignment>/)
    grading_n_images: int
    cell_timeout_s: int
    batch_cell_timeout_s: int
    notebook_timeout_s: int
    notebook_timeout_factor: float
    notebook_timeout_floor_s: int
    named_regexps: tuple[str, ...]
    file: Path = COURSE_FILE

    @property
    def source_dir(self) -> Path:
        return self.source_root / self.assignment

    @property
    def release_dir(self) -> Path:
        return self.release_root / self.assignment

    @property
    def source_notebook(self) -> Path:
        return self.source_dir / f"{self.notebook}.ipynb"

    @property
    def student_notebook(self) -> Path:
        return self.release_dir / f"{self.notebook}.ipynb"

    @property
    def colab_url(self) -> str:
        repo = self.repository.removeprefix("https://github.com/").rstrip("/")
        return (f"https://colab.research.google.com/github/{repo}/blob/{self.branch}/"
                f"{self.release_root.relative_to(ROOT).as_posix()}/{self.assignment}/{self.notebook}.ipynb")

    @property
    def raw_url(self) -> str:
        repo = self.repository.removeprefix("https://github.com/").rstrip("/")
        return f"https://raw.githubusercontent.com/{repo}/{self.branch}"


def course_file(environ=None) -> Path:
    """The course file in use: COURSE_VAR's, else the kit's."""
    named = (os.environ if environ is None else environ).get(COURSE_VAR)
    return Path(named).resolve() if named else COURSE_FILE


def read(path: Path | None = None) -> dict:
    with open(path or course_file(), "rb") as f:
        return tomllib.load(f)


def load(path: Path | None = None) -> Course:
    """The course of `path` (default: course_file()). Every setting must be in the file: the file
    is where each one is declared, with its meaning."""
    path = Path(path or course_file())
    data = read(path)
    c, g = data["course"], data["grading"]
    base = ROOT if path == COURSE_FILE else path.parent
    try:
        return Course(course_id=c["course_id"], assignment=c["assignment"], notebook=c["notebook"],
                      repository=c["repository"], branch=c["branch"], grading=c["grading"],
                      source_root=base / c["source"], release_root=base / c["release"],
                      grading_n_images=int(g["n_images"]), cell_timeout_s=int(g["cell_timeout_s"]),
                      batch_cell_timeout_s=int(g["batch_cell_timeout_s"]),
                      notebook_timeout_s=int(g["notebook_timeout_s"]),
                      notebook_timeout_factor=float(g["notebook_timeout_factor"]),
                      notebook_timeout_floor_s=int(g["notebook_timeout_floor_s"]),
                      named_regexps=tuple(data.get("collect", {}).get("named_regexps", ())), file=path)
    except KeyError as exc:
        raise SystemExit(f"{path}: the setting {exc} is missing (grader/course.toml says what each one means)") from exc


_CONVERT = {"int": int, "float": float, "str": str}


def typed(cls, data: dict, where: str, **extra):
    """A table of the course file as the dataclass `cls`: exactly its fields (except those in
    `extra`, given as they are), each value converted to the field's type; anything else refused."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    types = {f.name: f.type for f in fields(cls) if f.name not in extra}
    if sorted(scalars) != sorted(types):
        raise SystemExit(f"{where} must set exactly {sorted(types)} (grader/course.toml says what each one "
                         f"means); it has {sorted(scalars)}")
    try:
        return cls(**{k: _CONVERT[types[k]](v) for k, v in scalars.items()}, **extra)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"{where}: {exc}") from exc


@dataclass(frozen=True)
class ClusterSettings:
    """The course file's [cluster] table: grading on a Dask cluster (grader/cluster.py). Their
    meaning: the comments of grader/course.toml."""
    allowed_failures: int
    local_workers: int
    local_threads: int
    batch_jobs: int
    jobqueue: dict[str, dict]      # "slurm" / "pbs": keyword arguments of dask-jobqueue's cluster


def cluster_settings(course: Course) -> ClusterSettings:
    data = read(course.file).get("cluster") or {}
    return typed(ClusterSettings, data, f"[cluster] in {course.file}",
                 jobqueue={kind: dict(data.get(kind, {})) for kind in ("slurm", "pbs")})


def tool(name: str) -> str:
    """Path of a console script (nbgrader, jupyter) in the running Python environment."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def nbgrader_env(work: Path | None = None, course: Course | None = None) -> dict[str, str]:
    """This process's environment, with this venv first on PATH, nbgrader's folder at `work` and
    the course file of `course` (so that nbgrader_config.py reads the same course)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if work is not None:
        env[WORK_VAR] = str(work)
    if course is not None:
        env.pop(COURSE_VAR, None)
        if course.file != COURSE_FILE:
            env[COURSE_VAR] = str(course.file)
    return env


def grading_env(course: Course, work: Path | None = None, *, online: bool = False,
                n_images: int | None = None, threads: int | None = None,
                gpu_stand_in: bool = False) -> dict[str, str]:
    """The environment every graded or recorded notebook runs in: the one place it is built.

    The lab's own variables come from the lab (grader/lab.py): offline unless `online` (then its
    data is cached in the kit's data/ folder), n_images images (default: course.toml).
    `threads`: threads per kernel, when given. gpu_stand_in: the notebook runs as on a Colab GPU
    runtime, in a kernel started by kernel/boot.py, where the CPU stands in for CUDA if there is
    no GPU and TensorFlow runs its functions eagerly (boot.TF_EAGER: no XLA compilations).
    """
    from . import lab
    from .kernel.boot import CUDA_ON_CPU, TF_EAGER

    graded = lab.load(course)
    env = nbgrader_env(work, course)
    for name in (*graded.variables(course.source_dir), CUDA_ON_CPU, TF_EAGER):  # only what is decided here
        env.pop(name, None)
    env.update(graded.kernel_env(course.source_dir, ROOT / "data", online=online,
                                 n_images=n_images or course.grading_n_images, gpu=gpu_stand_in))
    env["PYTHONUNBUFFERED"] = "1"
    if gpu_stand_in:  # the grading kernel (kernel/boot.py): as on a Colab GPU, TensorFlow without XLA
        env[CUDA_ON_CPU] = env[TF_EAGER] = "1"
    if threads:
        env.update({name: str(threads) for name in THREAD_VARS})
    return env


def kernel_spec(course: Course, environ) -> tuple[dict[str, str], dict[Path, str]]:
    """(variables, read-only binds) of a kernel graded in the environment `environ` (grading_env's):
    the lab's settings and what it may read, the thread counts, the CPU standing in for CUDA."""
    from . import lab
    from .kernel import BOOT, HERE
    from .kernel.boot import CUDA_ON_CPU, TF_EAGER

    graded = lab.load(course)
    names = (*graded.variables(course.source_dir), CUDA_ON_CPU, TF_EAGER, *THREAD_VARS, "PYTHONUNBUFFERED")
    env = {name: environ[name] for name in names if name in environ}
    env["NBGRADER_EXECUTION"] = "autograde"
    more_env, more_binds = graded.read_only(course.source_dir, environ)
    return env | more_env, {HERE / "boot.py": BOOT} | more_binds
