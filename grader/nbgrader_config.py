"""nbgrader configuration for the kit.

nbgrader reads this file when it runs with grader/ as its working directory (the
grader package does that). Folder names come from the course file (grader/course.toml, or
the one $GRADER_COURSE names):

    source  -> its `source` folder (solutions/: the single truth, with answers and hidden tests)
    release -> its `release` folder (notebooks/: the generated student version, committed)
    submitted / autograded / feedback / gradebook.db -> $GRADER_WORK (default .grading/, ignored)
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
c.CourseDirectory.source_directory = str(COURSE.source_root)
c.CourseDirectory.release_directory = str(COURSE.release_root)
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
c.CourseDirectory.db_url = f"sqlite:///{WORK / 'gradebook.db'}"
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "*.npz", "*.part"]

# `nbgrader export` writes grades.csv quoted (grader/grades_csv.py), not comma-joined.
c.ExportApp.plugin_class = "grader.grades_csv.QuotedCsvExport"

c.ExecutePreprocessor.timeout = COURSE.cell_timeout_s
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}

# Student content is hostile (grader/sanitize.py): every HTML page made from a notebook, in
# formgrader and by generate_feedback, shows it made inert, and feedback pages carry a
# Content-Security-Policy that lets no script run (a template for generate_feedback's exporter
# only: formgrader keeps its own). In formgrader's exporter only, each written answer is
# followed by its model answer and rubric from the source notebook (grader/rubric.py).
c.HTMLExporter.preprocessors = ["grader.rubric.ShowRubrics", "grader.sanitize.SanitizeNotebook"]
c.GenerateFeedback.HTMLExporter.template_file = str(Path(__file__).resolve().parent / "templates"
                                                     / "feedback_csp.html.j2")
