"""The kit's layout and settings, read from grader/course.toml: the one place they live."""
from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

GRADER_DIR = Path(__file__).resolve().parent
ROOT = GRADER_DIR.parent
WORK_VAR = "CRAFT_LAB_WORK"  # nbgrader's working folder; read by nbgrader_config.py
# Thread counts of the numeric libraries a kernel uses (OpenMP, MKL, OpenBLAS, TensorFlow)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


@dataclass(frozen=True)
class Course:
    course_id: str
    assignment: str
    notebook: str
    repository: str
    branch: str
    grading_n_images: int
    cell_timeout_s: int
    batch_cell_timeout_s: int = 300
    notebook_timeout_s: int = 1200
    notebook_timeout_factor: float = 6.0
    notebook_timeout_floor_s: int = 300
    named_regexps: tuple[str, ...] = ()

    @property
    def source_dir(self) -> Path:
        return ROOT / "solutions" / self.assignment

    @property
    def release_dir(self) -> Path:
        return ROOT / "notebooks" / self.assignment

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
                f"notebooks/{self.assignment}/{self.notebook}.ipynb")

    @property
    def raw_url(self) -> str:
        repo = self.repository.removeprefix("https://github.com/").rstrip("/")
        return f"https://raw.githubusercontent.com/{repo}/{self.branch}"


def load(path: Path = GRADER_DIR / "course.toml") -> Course:
    with open(path, "rb") as f:
        data = tomllib.load(f)
    c, g = data["course"], data["grading"]
    return Course(course_id=c["course_id"], assignment=c["assignment"], notebook=c["notebook"],
                  repository=c["repository"], branch=c["branch"],
                  grading_n_images=int(g["n_images"]), cell_timeout_s=int(g["cell_timeout_s"]),
                  batch_cell_timeout_s=int(g.get("batch_cell_timeout_s", 300)),
                  notebook_timeout_s=int(g.get("notebook_timeout_s", 1200)),
                  notebook_timeout_factor=float(g.get("notebook_timeout_factor", 6.0)),
                  notebook_timeout_floor_s=int(g.get("notebook_timeout_floor_s", 300)),
                  named_regexps=tuple(data.get("collect", {}).get("named_regexps", ())))


def tool(name: str) -> str:
    """Path of a console script (nbgrader, jupyter) in the running Python environment."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def lab_module(course: Course | None = None):
    """The lab's helper module (craftlab.py, kit code, not student code), from the source folder."""
    folder = str((course or load()).source_dir)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import craftlab

    return craftlab


def nbgrader_env(work: Path | None = None) -> dict[str, str]:
    """This process's environment, with this venv first on PATH and nbgrader's folder at `work`."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if work is not None:
        env[WORK_VAR] = str(work)
    return env


def grading_env(course: Course, work: Path | None = None, *, online: bool = False,
                n_images: int | None = None, threads: int | None = None,
                gpu_stand_in: bool = False) -> dict[str, str]:
    """The environment every graded or recorded notebook runs in: the one place it is built.

    Offline unless `online` (then rabbit.npz is cached in the kit's data/ folder), with
    n_images images (default: course.toml), and `threads` threads per kernel when given.
    gpu_stand_in: the notebook runs as on a Colab GPU runtime (the lab's device is "cuda"),
    in a kernel started by kernel_boot.py, where the CPU stands in for CUDA if there is no GPU
    and TensorFlow runs its functions eagerly (kernel_boot.TF_EAGER: no XLA compilations).
    """
    from .kernel_boot import CUDA_ON_CPU, TF_EAGER

    craftlab = lab_module(course)
    env = nbgrader_env(work)
    for name in (*craftlab.VARIABLES, CUDA_ON_CPU, TF_EAGER):  # only what is decided here reaches the notebook
        env.pop(name, None)
    settings = craftlab.Settings(offline=not online, n_images=n_images or course.grading_n_images,
                                 data_dir=ROOT / "data" if online else None,
                                 device="cuda" if gpu_stand_in else None)
    env.update(settings.to_env())
    env["PYTHONUNBUFFERED"] = "1"
    if gpu_stand_in:  # the grading kernel (kernel_boot.py): as on a Colab GPU, TensorFlow without XLA
        env[CUDA_ON_CPU] = env[TF_EAGER] = "1"
    if threads:
        env.update({name: str(threads) for name in THREAD_VARS})
    return env
