"""nbgrader configuration for the CRAFT lab kit.

nbgrader reads this file when it runs with grader/ as its working directory (the
grader package does that). Folder names map onto the kit's layout:

    source  -> solutions/    (the single source of truth, with solutions and hidden tests)
    release -> notebooks/    (generated student version, committed)
    submitted / autograded / feedback / gradebook.db -> $CRAFT_LAB_WORK (default .grading/, ignored)
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from grader.course import ROOT, WORK_VAR, load  # noqa: E402

c = get_config()  # noqa: F821  (provided by traitlets when nbgrader loads this file)

COURSE = load()
WORK = Path(os.environ.get(WORK_VAR, ROOT / ".grading")).resolve()

c.CourseDirectory.course_id = COURSE.course_id
c.CourseDirectory.root = str(WORK)
c.CourseDirectory.source_directory = str(ROOT / "solutions")
c.CourseDirectory.release_directory = str(ROOT / "notebooks")
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
c.CourseDirectory.db_url = f"sqlite:///{WORK / 'gradebook.db'}"
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "*.npz", "*.part"]

c.ExecutePreprocessor.timeout = COURSE.cell_timeout_s
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}

# Student content is hostile (grader/sanitize.py): every HTML page made from a notebook, in
# formgrader and by generate_feedback, shows it made inert, and feedback pages carry a
# Content-Security-Policy that lets no script run (a template for generate_feedback's exporter
# only: formgrader keeps its own).
c.HTMLExporter.preprocessors = ["grader.sanitize.SanitizeNotebook"]
c.GenerateFeedback.HTMLExporter.template_file = str(Path(__file__).resolve().parent / "templates"
                                                     / "craft_feedback.html.j2")
