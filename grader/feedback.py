"""The students' feedback pages made again from the main gradebook, once a TA has scored the
written answers (or changed a score) in formgrader: what `export` sends back.

`grade` makes each page in the submission's worker, before any manual score. regenerate() runs
nbgrader's generate_feedback --force once on the batch's main nbgrader folder (its gradebook
holds the TA's scores and comments, its autograded notebooks were made inert when graded; the
configuration is grader/nbgrader_config.py's, as in the worker: the sanitizer again and the
template whose page carries the Content-Security-Policy). Each new page is then treated as the
worker treats its own: the policy made sure of (sanitize.protect_page), and only then put in
place of the student's page, OUT/feedback/<student>/<notebook>.html, atomically. A submission
that failed keeps the page that gives its reason; a page nbgrader could not make or that could
not be protected is not published, and the student keeps the earlier one (the TA is told).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from . import text
from .course import GRADER_DIR, Course, nbgrader_env, tool
from .jobs import BatchFolders, notebook_path
from .results import GradingResult
from .sanitize import protect_page

LOG = "feedback.log"  # nbgrader's output, in OUT/work/


def _generate(course: Course, folders: BatchFolders, expected: int, echo) -> int:
    """nbgrader generate_feedback --force on the main folder, its output to the log; returns its exit status."""
    log = folders.work / LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    done = 0
    with open(log, "w", encoding="utf-8") as record:
        proc = subprocess.Popen([tool("nbgrader"), "generate_feedback", "--force", course.assignment],
                                cwd=GRADER_DIR, env=nbgrader_env(folders.main, course), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in proc.stdout:
            record.write(line)
            if "Converting notebook" in line:
                done += 1
                echo(f"  [{done:>{len(str(expected))}}/{expected}] feedback page")
        return proc.wait()


def publish(made: Path, page: Path, since: float) -> str:
    """Put the page nbgrader made (`made`, written after `since`) in place of the student's page,
    with its Content-Security-Policy made sure of, atomically. Returns "" or why it was not."""
    if not made.exists() or made.stat().st_mtime < since:
        return "nbgrader made no page"
    try:
        protect_page(made)
    except (OSError, ValueError) as exc:
        return f"its page could not be protected ({exc})"
    page.parent.mkdir(parents=True, exist_ok=True)
    tmp = page.with_name(f".{page.name}.new")
    tmp.unlink(missing_ok=True)
    try:
        os.link(made, tmp)  # the same file twice, without the space (as `grade` publishes it)
    except OSError:
        shutil.copyfile(made, tmp)
    os.replace(tmp, page)
    return ""


def regenerate(course: Course, folders: BatchFolders, results: list[GradingResult], echo=print) -> dict[str, str]:
    """Every graded submission's page made again with the gradebook's scores and comments and
    published; returns {student: why its earlier page was kept}."""
    students = [r.student for r in results if r.status != "failed"
                and notebook_path(folders.main, "autograded", r.student, course).exists()]
    if not students:
        return {}
    echo(f"Making the {len(students)} feedback pages again with the gradebook's scores and comments "
         "(nbgrader generate_feedback)...")
    since = time.time() - 1.0  # file times may be rounded down
    status = _generate(course, folders, len(list((folders.main / "autograded").glob(f"*/{course.assignment}"))), echo)
    kept = {}
    for sid in students:
        why = publish(notebook_path(folders.main, "feedback", sid, course, ".html"), folders.page(sid, course), since)
        if why:
            kept[sid] = why
    if kept or status:
        echo(f"WARNING: {len(kept)} feedback pages were not made again and keep their earlier scores "
             f"(nbgrader's output: {folders.work / LOG}); " + text.terminal("; ".join(f"{s}: {w}" for s, w in sorted(kept.items()))))
    else:
        echo(f"Feedback pages: {len(students)} made again in {folders.out / 'feedback'}.")
    return kept
