"""The kit's layout and settings, read from grader/course.toml: the one place they live."""
from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

GRADER_DIR = Path(__file__).resolve().parent
ROOT = GRADER_DIR.parent


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
                  named_regexps=tuple(data.get("collect", {}).get("named_regexps", ())))


def tool(name: str) -> str:
    """Path of a console script (nbgrader, jupyter) in the running Python environment."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def nbgrader_env(work: Path, **extra: str) -> dict[str, str]:
    """Environment for an nbgrader run whose gradebook and folders live under `work`."""
    env = dict(os.environ)
    env["CRAFT_LAB_WORK"] = str(work)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env
