"""Formgrader on a graded batch: the page where a TA scores and comments the written answers.

serve() runs a Jupyter server (jupyter_server) in this process with one extension, nbgrader's
formgrader, on the batch's nbgrader folder (OUT/nbgrader: its gradebook, its autograded
notebooks), the course of the course file in use, and nbgrader_config.py read from grader/ (the
sanitizer and the rubrics beside the answers, grader/rubric.py). It listens on 127.0.0.1 unless
told otherwise, logs in with a random token, and prints formgrader's address with the token; Ctrl-C
stops it. Scores and comments go into the batch's main gradebook, which `export` reads.

No other extension is loaded (no JupyterLab, no terminal, no notebook editor): the TA needs
formgrader's pages only, and a browser logged in to a server that shows student work should
have nothing more to reach.
"""
from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path

from jupyter_server.serverapp import ServerApp

from .course import GRADER_DIR, Course, nbgrader_env
from .jobs import BatchFolders

EXTENSION = "nbgrader.server_extensions.formgrader"
DEFAULT_IP = "127.0.0.1"


class FormgraderServer(ServerApp):
    """A Jupyter server with formgrader and nothing else: neither the extensions nor the settings
    of the machine's Jupyter configuration (config files are read under this app's own name)."""

    name = "grader-formgrade"
    description = "formgrader on a graded batch"

    def find_server_extensions(self) -> None:
        """Only the extensions this app names (jpserver_extensions), none found in config folders."""

    def init_signal(self) -> None:
        """Ctrl-C stops the server at once (Jupyter would ask for a confirmation, on a terminal only)."""
        super().init_signal()
        signal.signal(signal.SIGINT, self._signal_stop)


def page(course: Course) -> str:
    """Formgrader's Manual Grading page of the course's notebook: its submissions, one link each."""
    return f"/formgrader/gradebook/{course.assignment}/{course.notebook}"


def url(ip: str, port: int, path: str, token: str) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}{path}?token={token}"


def server(course: Course, out: Path, port: int | None = None, ip: str = DEFAULT_IP,
           token: str | None = None) -> tuple[FormgraderServer, str]:
    """The server for the batch in `out`, bound and ready to start(), and its address (token
    included). Sets this process's course, nbgrader folder and working folder, as nbgrader reads
    them (nbgrader_config.py)."""
    folders = BatchFolders(Path(out).resolve())
    if not folders.main_db.exists():
        raise SystemExit(f"{folders.main_db} not found: grade the batch first "
                         f"(`python -m grader grade SUBMISSIONS --out {out}`)")
    environ = nbgrader_env(folders.main, course)
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(GRADER_DIR)  # where nbgrader looks for nbgrader_config.py
    token = token or secrets.token_urlsafe(32)
    argv = [f"--ServerApp.root_dir={folders.main}", f"--ServerApp.ip={ip}", "--ServerApp.open_browser=False",
            f"--ServerApp.default_url={page(course)}", "--ServerApp.terminals_enabled=False",
            f"--IdentityProvider.token={token}", "--ServerApp.answer_yes=True",
            "--ServerApp.allow_root=True",  # a TA or CI grading as root may score as root
            # the login cookie for the whole server: formgrader's handlers give it their own folder
            # as its path, so that the first page opened with the token was the only one logged in
            "--IdentityProvider.cookie_options=path=/"]
    argv += [f"--ServerApp.port={port}", "--ServerApp.port_retries=0"] if port is not None else []
    app = FormgraderServer.instance(jpserver_extensions={EXTENSION: True})
    app.initialize(argv=argv)
    return app, url(ip, app.port, page(course), token)


def serve(course: Course, out: Path, port: int | None = None, ip: str = DEFAULT_IP, echo=print) -> int:
    """Run formgrader on the batch in `out` until Ctrl-C."""
    app, address = server(course, out, port, ip)
    echo(f"Formgrader on {BatchFolders(Path(out).resolve()).main} (course {course.course_id}, "
         f"assignment {course.assignment}). Open, in a browser on this machine:\n\n    {address}\n\n"
         "It lists the submissions (Manual Grading); in each, a written answer has a score box, a comment box "
         "and, below it, its model answer and rubric (TA only). Ctrl-C stops the server; then "
         f"`python -m grader export --out {out}` writes the reports and the students' pages with your scores.")
    app.start()
    echo("Formgrader stopped.")
    return 0
