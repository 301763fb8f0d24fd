"""nbgrader configuration for the CRAFT lab kit.

nbgrader reads this file when it runs with grader/ as its working directory (the
Makefile and the grader package do that). Folder names map onto the kit's layout:

    source  -> solutions/    (the single source of truth, with solutions and hidden tests)
    release -> notebooks/    (generated student version, committed)
    submitted / autograded / feedback / gradebook.db -> $CRAFT_LAB_WORK (default .grading/, ignored)
"""
import os
import tomllib
from pathlib import Path

c = get_config()  # noqa: F821  (provided by traitlets when nbgrader loads this file)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
with open(HERE / "course.toml", "rb") as f:
    COURSE = tomllib.load(f)
WORK = Path(os.environ.get("CRAFT_LAB_WORK", ROOT / ".grading")).resolve()

c.CourseDirectory.course_id = COURSE["course"]["course_id"]
c.CourseDirectory.root = str(WORK)
c.CourseDirectory.source_directory = str(ROOT / "solutions")
c.CourseDirectory.release_directory = str(ROOT / "notebooks")
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
c.CourseDirectory.db_url = f"sqlite:///{WORK / 'gradebook.db'}"
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "*.npz", "*.part"]

c.ExecutePreprocessor.timeout = COURSE["grading"]["cell_timeout_s"]
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
