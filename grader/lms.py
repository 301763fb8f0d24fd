"""The totals for the LMS: the roster a TA exported from Canvas or Moodle, given back with the
assignment's column filled from the main gradebook.

Each LMS imports a gradebook file shaped like its own export:

- Canvas (Grades > Export): `Student,ID,SIS User ID,SIS Login ID,Section` (some instances add
  `Integration ID`), then one column per assignment named `<name> (<assignment id>)`, then
  read-only totals; the row under the header is `Points Possible` (its ID is empty). Canvas
  matches rows by ID, SIS User ID or SIS Login ID, and makes a new assignment from a column it
  does not know.
- Moodle (Grade administration > Export > Plain text file): `First name,Last name,ID number,
  Institution,Department,Email address`, then one column per grade item, `<item> (Real)`, and
  `Last downloaded from this course`. Its import maps users by a column the TA picks (email
  address or ID number) and each column to a grade item.

Rows are matched on the roster column the course names (course.toml `[lms]`), compared exactly
with nbgrader's student ids; nothing is guessed. Rows, columns, their order, the delimiter and a
byte-order mark are kept; only the assignment's cells of matched students change. Text cells
students can set (names) are made inert for spreadsheets (text.csv_cell); the columns the LMS
matches on are written as they came, or the LMS would no longer find its users.

Also nbgrader export plugins: `nbgrader export --exporter=grader.lms.CanvasExport
--CanvasExport.roster=ROSTER.csv --to=canvas.csv` (from grader/, as report.export_grades runs it).
"""
from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from nbgrader.plugins import ExportPlugin
from traitlets import Unicode

from . import course as course_mod
from . import text


@dataclass(frozen=True)
class Settings:
    """course.toml's [lms] section: the roster column holding nbgrader's student id, per LMS."""
    canvas_key: str
    moodle_key: str

    @classmethod
    def load(cls, path: Path | str) -> "Settings":
        return course_mod.typed(cls, course_mod.read(Path(path)).get("lms") or {}, f"[lms] in {path}")


@dataclass(frozen=True)
class Format:
    """What one LMS's gradebook export looks like."""
    name: str
    identity: tuple[str, ...]        # columns its export always has before the grades
    matched_on: tuple[str, ...]      # columns the LMS may match users on (kept verbatim)
    grade_column: re.Pattern         # a column holding one assignment's (grade item's) points
    export_steps: str                # where the TA gets the roster

    def key(self, settings: Settings) -> str:
        return getattr(settings, f"{self.name}_key")


CANVAS = Format("canvas", ("Student", "ID", "SIS User ID", "SIS Login ID", "Section"),
                ("ID", "SIS User ID", "SIS Login ID", "Integration ID"), re.compile(r".*\(\d+\)\s*$"),
                "Canvas: Grades > Export > Export Entire Gradebook (CSV)")
MOODLE = Format("moodle", ("First name", "Last name", "Email address"),
                ("ID number", "Email address", "Username"), re.compile(r".*\((Real|Percentage)\)\s*$"),
                "Moodle: Grades > Export > Plain text file (CSV, UTF-8)")
FORMATS = {f.name: f for f in (CANVAS, MOODLE)}


class RosterError(ValueError):
    """The roster cannot be filled: what is wrong, and what to do."""


@dataclass
class Roster:
    header: list[str]
    rows: list[list[str]]
    delimiter: str = ","
    bom: bool = False


@dataclass
class Filled:
    """A roster with the assignment's column filled, and what could not be matched."""
    roster: Roster
    column: str
    added: bool                                                # the column was not in the roster
    matched: dict[str, float] = field(default_factory=dict)    # key -> points written
    not_in_roster: list[str] = field(default_factory=list)     # graded students the roster lacks
    no_submission: list[str] = field(default_factory=list)     # roster rows left as they were


def read_roster(path: Path, fmt: Format, key: str) -> Roster:
    """The LMS's export as it is; RosterError if it is not that LMS's format or lacks `key`."""
    raw = Path(path).read_bytes()
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RosterError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): export it again "
                          f"({fmt.export_steps}), or save it from the spreadsheet as 'CSV UTF-8'") from None
    first = content.split("\n", 1)[0]
    delimiter = max(",;\t", key=first.count)
    table = [row for row in csv.reader(io.StringIO(content, newline=""), delimiter=delimiter) if row]
    if not table:
        raise RosterError(f"{path} is empty: export the gradebook from the LMS ({fmt.export_steps})")
    header = [h.strip() for h in table[0]]
    missing = [c for c in (*fmt.identity, key) if c not in header]
    if missing:
        raise RosterError(
            f"{path} does not look like a {fmt.name} gradebook export: it lacks the column(s) "
            f"{', '.join(map(repr, dict.fromkeys(missing)))} (its columns: "
            f"{', '.join(repr(text.terminal(h, 40)) for h in header[:12])}). Export it again ({fmt.export_steps}); "
            f"if the course matches students on another column, set {fmt.name}_key in [lms] of the course file.")
    width = len(header)
    rows = [row + [""] * (width - len(row)) for row in table[1:]]
    return Roster(header, rows, delimiter, raw.startswith(b"\xef\xbb\xbf"))


def choose_column(roster: Roster, fmt: Format, column: str = "") -> tuple[str, bool]:
    """The column to fill (and whether it is added): `column` if given, else the roster's only
    assignment column; RosterError when there is none or several, listing them."""
    if column:
        return column, column not in roster.header
    found = [h for h in roster.header if fmt.grade_column.match(h) and not h.startswith("Course total")]
    if len(found) == 1:
        return found[0], False
    listed = ", ".join(repr(text.terminal(h, 60)) for h in found)
    raise RosterError(
        (f"the roster has several assignment columns ({listed}): name the one to fill with --column NAME"
         if found else "the roster has no assignment column: export it with the assignment's column, or name "
         "a column to add with --column NAME (the LMS makes a new assignment or grade item from it)"))


def _points(x: float) -> str:
    return f"{round(x, 2):g}"


def _student_row(row: list[str], header: list[str], fmt: Format) -> bool:
    """Canvas's Points Possible (and other rows under its header) have no Canvas ID."""
    return fmt is not CANVAS or bool(row[header.index("ID")].strip())


def fill(roster: Roster, fmt: Format, key: str, totals: dict[str, float], max_score: float,
         column: str = "") -> Filled:
    """The roster with `column` (choose_column) set to each matched student's total."""
    name, added = choose_column(roster, fmt, column)
    header = roster.header + ([name] if added else [])
    at, by = header.index(name), header.index(key)
    filled = Filled(Roster(header, [], roster.delimiter, roster.bom), name, added)
    for row in roster.rows:
        row = row + ([""] if added else [])
        if not _student_row(row, header, fmt):
            if added and row[0].strip() == "Points Possible":
                row[at] = _points(max_score)
        elif (sid := row[by].strip()) in totals:
            row[at] = _points(totals[sid])
            filled.matched[sid] = totals[sid]
        else:
            filled.no_submission.append(sid or f"(row without {key}: {' '.join(row[:2])})")
        filled.roster.rows.append(row)
    filled.not_in_roster = sorted(set(totals) - set(filled.matched))
    return filled


def _cell(value: str, column: str, fmt: Format, key: str, filled: str) -> str:
    """A cell as written: numbers, grade columns (Moodle's `-` for no grade) and the columns the
    LMS matches on as they are; other text (names, sections) inert for spreadsheets."""
    if column in fmt.matched_on or column in (key, filled) or fmt.grade_column.match(column):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return text.csv_cell(value) if value else value


def write(filled: Filled, fmt: Format, key: str, dest: Path) -> None:
    """The filled roster, atomically, quoted by the csv module, with the roster's delimiter and BOM."""
    r = filled.roster
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8-sig" if r.bom else "utf-8") as f:
        w = csv.writer(f, delimiter=r.delimiter)
        w.writerow(r.header)
        for row in r.rows:
            w.writerow([_cell(v, c, fmt, key, filled.column) for v, c in zip(row, r.header)])
    os.replace(tmp, dest)


def totals(gradebook, assignment: str) -> tuple[dict[str, float], float]:
    """student id -> what nbgrader's own export calls `score` (every cell's points, a TA's manual
    score over the automatic one, extra credit, minus any late penalty); and the assignment's
    maximum."""
    found = gradebook.find_assignment(assignment)
    return ({s.student.id: max(0.0, s.score - (s.late_submission_penalty or 0.0)) for s in found.submissions},
            float(found.max_score))


def lines(filled: Filled, dest: Path) -> list[str]:
    """What the TA is told: the file, and every student left out on either side (escaped)."""
    out = [f"Wrote {dest}: column {text.terminal(filled.column)!r}"
           f"{' (added)' if filled.added else ''} filled for {len(filled.matched)} students."]
    if filled.not_in_roster:
        out.append(f"{len(filled.not_in_roster)} graded students are not in the roster (not written; check the "
                   "key column in [lms] of the course file, or add them in the LMS): "
                   + ", ".join(text.terminal(s) for s in filled.not_in_roster))
    if filled.no_submission:
        out.append(f"{len(filled.no_submission)} roster rows have no graded submission (left as they were): "
                   + ", ".join(text.terminal(s) for s in filled.no_submission))
    return out


def export_file(gradebook, course, fmt: Format, roster_path: Path, dest: Path, column: str = "",
                assignment: str = "") -> Filled:
    """Read the roster, fill it from `gradebook` (an open nbgrader Gradebook), write `dest`."""
    key = fmt.key(Settings.load(course.file))
    roster = read_roster(roster_path, fmt, key)
    points, max_score = totals(gradebook, assignment or course.assignment)
    filled = fill(roster, fmt, key, points, max_score, column)
    write(filled, fmt, key, dest)
    return filled


def export(course, out: Path, lms: str, roster_path: Path, column: str = "", echo=print) -> Path:
    """`python -m grader export --out OUT --lms LMS ROSTER`: OUT/<lms>.csv from OUT's main gradebook."""
    from nbgrader.api import Gradebook

    from .jobs import BatchFolders
    from .score import db_url

    folders = BatchFolders(Path(out).resolve())
    dest = folders.out / f"{lms}.csv"
    try:
        with Gradebook(db_url(folders.main_db)) as gb:
            filled = export_file(gb, course, FORMATS[lms], Path(roster_path), dest, column)
    except (RosterError, FileNotFoundError) as exc:
        raise SystemExit(f"Cannot write {dest}: {exc}") from None
    for line in lines(filled, dest):
        echo(line)
    return dest


class LmsExport(ExportPlugin):
    """A roster exported from the LMS, given back with the assignment's column filled."""
    fmt: Format = CANVAS
    roster = Unicode("", help="the gradebook CSV exported from the LMS (its students, columns and format are "
                              "kept; the assignment's column is filled from the gradebook)").tag(config=True)
    column = Unicode("", help="the roster column to fill (default: the roster's only assignment column); "
                              "a name the roster lacks is added").tag(config=True)

    def export(self, gradebook) -> None:
        from . import course as course_mod

        dest = Path(self.to or f"{self.fmt.name}.csv").resolve()
        try:
            if not self.roster:
                raise RosterError(f"no roster: give --{type(self).__name__}.roster=FILE ({self.fmt.export_steps})")
            filled = export_file(gradebook, course_mod.load(), self.fmt, Path(self.roster), dest, self.column,
                                 self.assignment[0] if self.assignment else "")
        except (RosterError, FileNotFoundError) as exc:
            self.log.error("Cannot write %s: %s", dest, exc)
            raise SystemExit(1) from None
        for line in lines(filled, dest):
            self.log.info(line)


class CanvasExport(LmsExport):
    """Canvas's gradebook CSV: `nbgrader export --exporter=grader.lms.CanvasExport --CanvasExport.roster=R.csv`."""
    fmt = CANVAS


class MoodleExport(LmsExport):
    """Moodle's grade import CSV: `nbgrader export --exporter=grader.lms.MoodleExport --MoodleExport.roster=R.csv`."""
    fmt = MOODLE
