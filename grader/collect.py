"""Find the submissions a TA downloaded and map each one to a student id.

Input: a folder or an archive, as TAs get them: loose .ipynb files with Colab names
("Copy of lab5.ipynb", "lab5 (1).ipynb"), one folder per student, an LMS download zip,
or archives (.zip, .tar, .tar.gz, .gz) inside a folder. Archives are unpacked by
archive.py into the output folder, never in place, each archive inside a folder into a
folder named after it (as `nbgrader zip_collect` does). An archive that is unsafe or
damaged is refused: listed with the reason, and the rest is collected and graded.

Each .ipynb file is mapped to a student id by, in this order:
  1. the --map CSV (columns file, student_id), by relative path or by file name;
  2. the regular expressions of course.toml [collect] named_regexps, applied with
     nbgrader's FileNameCollectorPlugin to the file's path relative to the top folder;
  3. with a --roster CSV (nbgrader's student import format: id, first_name, last_name,
     email), a roster id or "first last" name that occurs in the path as whole words.
With a roster, ids from 1 or 2 must be in it. Anything else is reported as unmapped,
with the reason, and is not graded: the tool never guesses an identity.
When a student has several notebooks, the one named like the lab's notebook and most
recent is graded and the others are listed as superseded.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from . import archive, text

STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
IGNORED_PARTS = {"__MACOSX", ".ipynb_checkpoints", "__pycache__"}
COPY_SUFFIX = re.compile(r"\s*\((\d+)\)$")  # "lab5 (1)" from a second download
COPY_PREFIX = re.compile(r"^(copy of\s+)+", re.I)  # Colab's "Copy of lab5"


class FileStatus(str, Enum):
    """What became of a file found while collecting (collect.csv's status column)."""
    SUBMISSION = "submission"    # graded: this student's notebook
    SUPERSEDED = "superseded"    # the same student's other notebook is graded
    UNMAPPED = "unmapped"        # no student id found: never guessed
    IGNORED = "ignored"          # not a notebook, or a hidden or system file
    REFUSED = "refused"          # an archive not unpacked (why: the reason)

    def __str__(self) -> str:
        return self.value


@dataclass
class Found:
    """One file seen while collecting, and what became of it."""
    path: Path                # the file, inside the collect folder
    relpath: str              # its path relative to the top folder, with /
    student: str | None = None
    rule: str = ""            # which rule mapped it: map, regexp, roster
    status: FileStatus = FileStatus.UNMAPPED
    reason: str = ""
    timestamp: str | None = None
    sha256: str = ""

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Collection:
    root: Path                                        # the folder that was searched
    submissions: dict[str, Found] = field(default_factory=dict)  # student id -> file to grade
    files: list[Found] = field(default_factory=list)  # everything seen, for collect.csv

    @property
    def unmapped(self) -> list[Found]:
        return [f for f in self.files if f.status == FileStatus.UNMAPPED]

    @property
    def refused(self) -> list[Found]:
        return [f for f in self.files if f.status == FileStatus.REFUSED]


@dataclass
class Unpacked:
    root: Path                       # the folder to search for notebooks
    refused: list[archive.Refusal]   # archives (and links) not unpacked, with the reason


@dataclass(frozen=True)
class Student:
    id: str
    first_name: str = ""
    last_name: str = ""
    email: str = ""


def read_roster(path: Path) -> dict[str, Student]:
    """nbgrader's student CSV (id, first_name, last_name, email); 'student_id' is accepted for id."""
    roster = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            sid = row.get("id") or row.get("student_id")
            if not sid:
                continue
            if not STUDENT_ID.match(sid):
                raise ValueError(f"{path}: student id {sid!r} is not usable as an nbgrader id "
                                 "(letters, digits, . _ @ -)")
            roster[sid] = Student(sid, row.get("first_name", ""), row.get("last_name", ""),
                                  row.get("email", ""))
    return roster


def read_mapping(path: Path) -> dict[str, str]:
    """CSV with columns file, student_id: a file's relative path or name -> student id."""
    mapping = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            name, sid = row.get("file") or row.get("path"), row.get("student_id") or row.get("id")
            if name and sid:
                mapping[name.replace("\\", "/")] = sid
    return mapping


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _skipped(parts: tuple[str, ...]) -> bool:
    """Paths collect() ignores: their archives are not unpacked either."""
    return any(part in IGNORED_PARTS or part.startswith(".") for part in parts)


def unpack_all(source: Path, dest: Path) -> Unpacked:
    """Copy or unpack `source` (a folder or an archive) into a new `dest` (see archive.unpack:
    archives inside are unpacked into a folder of their name, unsafe ones refused); return the
    folder to search and what was refused."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    source = source.resolve()
    refused = archive.unpack(source, dest, skip=_skipped)
    # An archive that wraps everything in one folder: that folder names no student, look inside.
    root = dest
    while not source.is_dir():
        entries = [p for p in root.iterdir() if p.name not in IGNORED_PARTS]
        if len(entries) != 1 or not entries[0].is_dir():
            break
        root = entries[0]
    return Unpacked(root, refused)


def unpack(source: Path, dest: Path) -> Path:
    """unpack_all(source, dest).root: the folder to search, for a caller that does not report
    refused archives (collect_phase uses unpack_all)."""
    return unpack_all(source, dest).root


def _words(value: str) -> str:
    """Lower-case text with every run of non-alphanumerics turned into one space, padded."""
    return " " + re.sub(r"[^0-9a-z]+", " ", value.lower()).strip() + " "


def _roster_hits(relpath: str, roster: dict[str, Student]) -> list[str]:
    haystack = _words(relpath.rsplit(".", 1)[0])
    hits = []
    for s in roster.values():
        names = [s.id]
        if s.first_name and s.last_name:
            names += [f"{s.first_name} {s.last_name}", f"{s.last_name} {s.first_name}"]
        if any(_words(n) in haystack for n in names):
            hits.append(s.id)
    return hits


def _regexp_match(relpath: str, named_regexps) -> dict | None:
    from nbgrader.plugins import FileNameCollectorPlugin

    for regexp in named_regexps:
        plugin = FileNameCollectorPlugin(named_regexp=regexp)
        plugin.log.disabled = True  # a non-matching pattern is normal here, not a warning
        info = plugin.collect(relpath)
        if info and info.get("student_id"):
            return info
    return None


def normalised_stem(name: str) -> str:
    """'Copy of lab5 (2).ipynb' -> 'lab5'."""
    stem = name[:-6] if name.lower().endswith(".ipynb") else name
    stem = COPY_PREFIX.sub("", COPY_SUFFIX.sub("", stem.strip())).strip()
    return stem.lower().replace(" ", "_").replace("-", "_")


def _preference(found: Found, notebook: str):
    """Sort key: a file named like the lab first, then the latest timestamp, copy and mtime."""
    copy = COPY_SUFFIX.search(found.path.stem)
    return (normalised_stem(found.name) == notebook.lower(), found.timestamp or "",
            found.path.stat().st_mtime, int(copy.group(1)) if copy else 0, found.relpath)


def collect(folder: Path, notebook: str, named_regexps=(), roster: dict[str, Student] | None = None,
            mapping: dict[str, str] | None = None, refused: list[archive.Refusal] = ()) -> Collection:
    """Map every .ipynb under `folder` (already unpacked) to a student id. `refused`: what
    unpack_all refused, listed with status refused (in place of the archive's own row)."""
    result = Collection(root=folder)
    mapping = mapping or {}
    refusals = {r.path: r for r in refused}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        relpath = rel.as_posix()
        found = Found(path=path, relpath=relpath)
        result.files.append(found)
        if path in refusals:
            found.status, found.reason = FileStatus.REFUSED, refusals.pop(path).reason
            continue
        if _skipped(rel.parts):
            found.status, found.reason = FileStatus.IGNORED, "hidden or system file"
            continue
        if path.suffix.lower() != ".ipynb":
            found.status, found.reason = FileStatus.IGNORED, "not a .ipynb file"
            continue
        found.sha256 = _sha256(path)

        sid, rule = None, ""
        for key in (relpath, path.name):
            if key in mapping:
                sid, rule = mapping[key], "map"
                break
        if sid is None:
            info = _regexp_match(relpath, named_regexps)
            if info:
                sid, rule = info["student_id"], "regexp"
                found.timestamp = info.get("timestamp")
        if roster is not None and (sid is None or (rule == "regexp" and sid not in roster)):
            hits = _roster_hits(relpath, roster)
            if len(hits) == 1:
                sid, rule = hits[0], "roster"
            elif len(hits) > 1:
                found.reason = f"the path names several roster students: {', '.join(sorted(hits))}"
                continue
            elif sid is not None:
                found.reason = f"'{sid}' (from the file name) is not in the roster"
                continue
        if sid is None:
            found.reason = ("no student id in the path: put each student's file in a folder named "
                            "by their id, or give --map (file,student_id) or --roster")
            continue
        if not STUDENT_ID.match(sid):
            found.reason = f"'{sid}' is not usable as a student id (letters, digits, . _ @ -)"
            continue
        if roster is not None and sid not in roster:
            found.reason = f"'{sid}' is not in the roster"
            continue
        found.student, found.rule, found.status = sid, rule, FileStatus.SUBMISSION

    for r in refusals.values():  # not under `folder` as files: the archive was never copied there
        relpath = Path(os.path.relpath(r.path, folder)).as_posix()
        result.files.append(Found(path=r.path, relpath=relpath, status=FileStatus.REFUSED, reason=r.reason))

    by_student: dict[str, list[Found]] = {}
    for found in result.files:
        if found.status == FileStatus.SUBMISSION:
            by_student.setdefault(found.student, []).append(found)
    for sid, candidates in sorted(by_student.items()):
        candidates.sort(key=lambda f: _preference(f, notebook))
        chosen = candidates[-1]
        result.submissions[sid] = chosen
        for other in candidates[:-1]:
            other.status = FileStatus.SUPERSEDED
            other.reason = f"{sid} also submitted {chosen.relpath}, which is graded"
    return result


def write_report(collection: Collection, path: Path) -> None:
    """collect.csv: every file seen, the student it maps to and why (or why not). The names and
    reasons come from the submissions: their cells are made inert (text.csv_cell)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "status", "student_id", "rule", "reason", "sha256"])
        for found in collection.files:
            w.writerow([text.csv_cell(found.relpath), found.status, text.csv_cell(found.student or ""),
                        found.rule, text.csv_cell(found.reason), found.sha256])
    tmp.replace(path)
