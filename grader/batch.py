"""Grade a folder of submissions: collect, autograde in parallel, merge, report.

Layout of the output folder (OUT):

  collect.csv                 every file found, the student it maps to and why (or why not)
  grades.csv                  nbgrader export of the main gradebook
  results.csv, summary.md     per-submission and per-test results, reasons
  scores.png                  heatmap of points per test, histogram of totals
  feedback/<student>/<notebook>.html
  nbgrader/                   the main nbgrader folder: gradebook.db, submitted/, autograded/,
                              feedback/ (`python -m grader formgrade --out OUT` serves it in formgrader)
  work/<student>/             one submission's own grading: worker.log, result.json, verification.json,
                              merged.json (its gradebook, evidence and scratch too with --keep-work: light.py)
  collected/                  a copy of the input, archives unpacked (only while grading, or with --keep-work)

Running the command again on the same OUT continues: submissions already merged, with the
same file content, are not graded again (--regrade forces it). Manual grades entered in
the main gradebook are kept, as nbgrader autograde keeps them.

The written answers (graded cells that are also answer cells) are scored by a person in
formgrader, never here: the reports list them as waiting for manual grading, and export()
(`python -m grader export --out OUT`) rewrites the reports once a TA has scored them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbgrader import utils as nbu

from . import collect, feedback, lab, light, report, runner, score, similarity, text
from .course import ROOT, Course, grading_env
from .course import kernel_spec as course_kernel_spec
from .jobs import (
    EVIDENCE,
    GRADEBOOK,
    LOG,
    MERGED,
    REFERENCE,
    BatchFolders,
    Job,
    notebook_path,
)
from .kernel import sandbox, warm
from .results import STATUSES, GradingResult


@dataclass
class Options:
    submissions: Path
    out: Path
    workers: int = 0                       # 0: one per CPU
    roster: Path | None = None
    mapping: Path | None = None
    online: bool = False
    n_images: int | None = None            # default: course.toml grading.n_images
    cell_timeout_s: int | None = None      # default: course.toml grading.batch_cell_timeout_s
    notebook_timeout_s: int | None = None  # default: derived from the reference run (course.toml [grading])
    regrade: bool | list[str] = False      # True: all; a list: these student ids
    allow_unsafe: bool = False             # grade even if this machine lacks a sandbox protection
    warm: bool = True                      # kernels forked from one pre-imported process, where safe (warm.py)
    keep_work: bool = False                # keep each job's gradebook, evidence, scratch, full-size figures (light.py)


@dataclass(frozen=True)
class Settings:
    """Options resolved against course.toml: what this batch really runs with."""
    n_images: int
    cell_timeout_s: int
    notebook_timeout_s: int
    workers: int
    threads: int                           # per kernel, so that the workers share the CPUs
    protections_off: tuple[str, ...] = ()  # what the sandbox cannot do on this machine (allowed)
    caps: object = None                    # the machine's probe.Capabilities, as checked

    def after_reference(self, course: Course, opts: Options, seconds: float) -> "Settings":
        """The per-notebook limit, unless given: a multiple of the reference run's time, within
        course.toml's floor and cap (a submission has no business running far longer than the
        reference answers: five sleeps of 295 s should not hold a worker for 20 minutes)."""
        if opts.notebook_timeout_s:
            return self
        limit = int(min(course.notebook_timeout_s, max(course.notebook_timeout_floor_s,
                                                       course.notebook_timeout_factor * seconds)))
        return dataclasses.replace(self, notebook_timeout_s=limit, cell_timeout_s=min(self.cell_timeout_s, limit))

    @classmethod
    def resolve(cls, course: Course, opts: Options) -> "Settings":
        n_images = opts.n_images or course.grading_n_images
        least = lab.load(course).MIN_IMAGES
        if n_images < least:
            raise SystemExit(f"--n-images must be at least {least} for this lab (see its grading package, "
                             f"grader/labs/{course.assignment}/)")
        workers = opts.workers or os.cpu_count() or 1
        from .kernel import probe

        caps = probe.probe()
        return cls(n_images, opts.cell_timeout_s or course.batch_cell_timeout_s,
                   opts.notebook_timeout_s or course.notebook_timeout_s, workers,
                   max(1, (os.cpu_count() or 1) // workers), sandbox_check(opts.allow_unsafe, caps), caps)


def sandbox_check(allow_unsafe: bool, caps=None) -> tuple[str, ...]:
    """What the sandbox cannot do here (`caps`, else probed). Refuses to grade (SystemExit,
    saying what is off and the command that fixes each) unless the TA allowed it explicitly;
    then returns the protections that are off."""
    from .kernel import probe

    off = tuple((caps or probe.probe()).missing())
    if off and not allow_unsafe:
        raise SystemExit("Refusing to grade: this machine cannot confine the students' code:\n  - "
                         + "\n  - ".join(off) + "\nFix what is missing (`python -m grader doctor` says the same "
                         "for this machine; grader/README-TA.md, *Grading as an ordinary user*), or grade "
                         "submissions you trust with --allow-unsafe, knowing what is off.")
    return off


@dataclass
class Batch:
    results: list[GradingResult]
    scores: report.Points                  # what counts, read from the main gradebook
    tests: list[str]                       # the automatically graded cells, in notebook order
    max_tests: dict[str, float]            # their points
    collection: collect.Collection
    seconds: float
    graded_now: int
    tables: list[str] = field(default_factory=list)
    manual: dict[str, float] = field(default_factory=dict)    # written answers (graded by a TA) -> points
    waiting: report.Waiting = field(default_factory=dict)     # student -> written answers not graded yet


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def tests_in_order(course: Course, max_tests: dict[str, float]) -> list[str]:
    """Graded cells in notebook order (from the source notebook's metadata)."""
    nb = nbformat.read(course.source_notebook, as_version=4)
    order = [c.metadata.nbgrader["grade_id"] for c in nb.cells if nbu.is_grade(c)]
    return [t for t in order if t in max_tests] + sorted(set(max_tests) - set(order))


# ----------------------------------------------------------------------------- phases

def collect_phase(course: Course, opts: Options, out: Path, echo):
    roster = collect.read_roster(opts.roster) if opts.roster else None
    mapping = collect.read_mapping(opts.mapping) if opts.mapping else None
    unpacked = collect.unpack_all(opts.submissions, BatchFolders(out).collected)
    found = collect.collect(unpacked.root, course.notebook, course.named_regexps, roster, mapping, unpacked.refused)
    collect.write_report(found, out / "collect.csv")
    echo(f"Collected {len(found.submissions)} submissions from {opts.submissions} "
         f"({len(found.files)} files; details in {out / 'collect.csv'})")
    for f in found.files:
        if f.status in ("unmapped", "superseded", "refused"):
            echo(f"  {f.status.upper()}: {text.terminal(f.relpath)}: {text.terminal(f.reason)}")
    return found, roster or {}


def gradebooks_phase(course: Course, folders: BatchFolders, roster: dict) -> dict[str, float]:
    """An empty template gradebook, and the main one (kept across runs); returns the max points
    of the automatically graded cells (score.manual_max_scores has the written answers')."""
    shutil.rmtree(folders.template, ignore_errors=True)
    template = score.prepare_gradebook(course, folders.template)
    max_tests = score.max_scores(template, course.assignment)
    if folders.main_db.exists():
        if score.max_scores(folders.main_db, course.assignment) != max_tests or \
                score.manual_max_scores(folders.main_db, course.assignment) != \
                score.manual_max_scores(template, course.assignment):
            raise RuntimeError(f"{folders.main_db} was made for another version of the notebook (other "
                               "tests or points): grade into a new --out folder")
    else:
        folders.main.mkdir(parents=True, exist_ok=True)
        score.copy_gradebook(template, folders.main_db)
    if roster:
        score.add_students(folders.main_db, list(roster.values()))
    return max_tests


def _seed(folders: BatchFolders) -> int:
    """The batch's secret seed (probe, secret images): made once per output folder, kept for later
    runs and regrades, in a folder no kernel sees, and given to each kernel only as a capture runs."""
    path = folders.work / "seed"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(secrets.randbits(31)))
    return int(path.read_text())


def reference_phase(course: Course, opts: Options, settings: Settings, folders: BatchFolders, echo,
                    zygote: warm.Zygote | None = None) -> tuple[Path, float]:
    """Run the reference answers through the very pipeline students go through: the trusted
    evidence every submission is verified against. Returns the reference's job folder and the
    seconds it took."""
    from . import evidence, lab, samples

    job = folders.job(REFERENCE)
    job_dir = job.path
    _clear(job_dir)
    release_nb = folders.template / "release" / course.assignment / f"{course.notebook}.ipynb"
    source = nbformat.read(course.source_notebook, as_version=4)
    submission = job_dir / "incoming" / f"{course.notebook}.ipynb"
    submission.parent.mkdir()
    submission.write_bytes(samples.Sample(REFERENCE).build(nbformat.read(release_nb, as_version=4),
                                                           samples.reference_answers(source)))
    score.copy_gradebook(folders.template / GRADEBOOK, job.gradebook)
    Job(student=REFERENCE, source=str(submission), release=str(release_nb),
               cell_timeout_s=settings.cell_timeout_s, allow_unsafe=bool(settings.protections_off),
               seed=_seed(folders)).write(job_dir)
    echo("Reference run: the reference answers through the same sandbox and checks, for verification...")
    result = runner.run_job(job_dir, job_env(course, opts, settings, job_dir, zygote), settings.notebook_timeout_s)
    problems = [result.reason] if result.status == "failed" else lab.load(course).reference_problems(
        evidence.Store(job.file(EVIDENCE)).load(),
        evidence.displayed(nbformat.read(job.notebook("autograded", course), as_version=4)), _seed(folders))
    if problems or result.total() < sum(result.max_tests.values()):
        raise SystemExit("The reference answers do not pass in this grading setup, so no submission can be "
                         f"verified. See {job.file(LOG)}. Problems: {'; '.join(problems) or result.reason}")
    echo(f"Reference run: full marks, evidence verified ({result.seconds:.0f} s).")
    return job_dir, result.seconds


def job_env(course: Course, opts: Options, settings: Settings, job_dir: Path,
            zygote: warm.Zygote | None = None) -> dict[str, str]:
    """The environment of a job's worker process (and its kernel's variables): the one place it is built."""
    env = grading_env(course, job_dir, online=opts.online, n_images=settings.n_images,
                      threads=settings.threads, gpu_stand_in=True)
    return env | ({warm.ENV_VAR: str(zygote.folder)} if zygote else {})


def warm_kernels(course: Course, opts: Options, settings: Settings, folders: BatchFolders, wanted: bool, echo):
    """The batch's zygote (a context: None when off), with the kernels' own variables and binds."""
    if not (wanted and opts.warm) or settings.protections_off:
        return contextlib.nullcontext()
    work = folders.work
    env, binds = course_kernel_spec(course, job_env(course, opts, settings, work))
    graded = lab.load(course)
    return warm.start([work], env, binds, work / "zygote.log", echo, sandbox.Limits.load(course.file),
                      graded.PRELOAD, graded.LIBRARIES)


def _clear(job_dir: Path) -> None:
    """An empty job folder; whatever a killed grading of it left elsewhere (its processes, cgroups,
    socket folders) is removed first, from the marker and manifests it left here."""
    if job_dir.exists():
        runner.kill_job(job_dir)
    shutil.rmtree(job_dir, ignore_errors=True)
    job_dir.mkdir(parents=True)


def _wants_regrade(opts: Options, sid: str) -> bool:
    return opts.regrade is True or (isinstance(opts.regrade, list) and sid in opts.regrade)


def jobs_phase(course: Course, opts: Options, settings: Settings, folders: BatchFolders, found, reference: Path, echo):
    """Job folders for what needs grading; results kept from an earlier run for the rest."""
    kept: dict[str, GradingResult] = {}
    todo = []
    release_nb = folders.template / "release" / course.assignment / f"{course.notebook}.ipynb"
    seed = _seed(folders)
    for sid, f in sorted(found.submissions.items()):
        job_dir = folders.job(sid).path
        if (job_dir / MERGED).exists() and not _wants_regrade(opts, sid):
            previous = GradingResult.read(job_dir / MERGED)
            if previous.sha256 == f.sha256:
                kept[sid] = previous
                continue
        _clear(job_dir)
        score.copy_gradebook(folders.template / GRADEBOOK, job_dir / GRADEBOOK)
        Job(student=sid, source=str(f.path), release=str(release_nb), cell_timeout_s=settings.cell_timeout_s,
                   file=f.relpath, sha256=f.sha256, allow_unsafe=bool(settings.protections_off),
                   seed=seed, reference_job=str(reference), keep_work=opts.keep_work).write(job_dir)
        todo.append((sid, f, job_dir))
    if kept:
        echo(f"{len(kept)} submissions already graded in {opts.out} (same files): kept. "
             "Use --regrade to grade them again.")
    return kept, todo


def _publish(course: Course, folders: BatchFolders, job_dir: Path, result: GradingResult) -> None:
    """Move one graded submission's files into the main nbgrader folder; link its feedback page."""
    name, student = course.notebook, result.student
    for kind in ("submitted", "autograded", "feedback"):
        src = notebook_path(job_dir, kind, student, course).parent
        dst = notebook_path(folders.main, kind, student, course).parent
        if dst.exists():
            shutil.rmtree(dst)
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(src, dst)
    page = folders.page(student, course)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.unlink(missing_ok=True)
    html = notebook_path(folders.main, "feedback", student, course, ".html")
    if result.status == "failed" or not html.exists():
        report.failure_feedback(student, name, result.reason or "no feedback was generated", page)
    else:
        try:
            os.link(html, page)  # the same file twice, without the space (pages hold the plots)
        except OSError:
            shutil.copyfile(html, page)


class Merger:
    """Merges finished submissions into the main gradebook, one at a time, and reports progress."""

    def __init__(self, course: Course, folders: BatchFolders, todo: list, roster: dict, tests, max_tests, echo,
                 keep_work: bool = False):
        self.course, self.folders, self.roster, self.echo = course, folders, roster, echo
        self.keep_work = keep_work
        self.tests, self.full = tests, sum(max_tests.values())
        self.total, self.done, self.started = len(todo), 0, time.monotonic()
        self.width = max((len(sid) for sid, _, _ in todo), default=8)
        self.results: dict[str, GradingResult] = {}
        self.lock = threading.Lock()

    def finish(self, sid: str, f, job_dir: Path, result: GradingResult) -> None:
        with self.lock:
            result.student, result.file, result.sha256 = sid, f.relpath, f.sha256
            if f.rule not in ("regexp", ""):
                result.notes.insert(0, f"student id from the {f.rule}")
            ok = result.status in ("graded", "review")
            score.merge(self.folders.main_db, self.course.assignment, sid, job_dir / GRADEBOOK if ok else None,
                        flag=result.status != "graded", info=self.roster.get(sid))
            _publish(self.course, self.folders, job_dir, result)
            result.write(job_dir / MERGED)
            if not self.keep_work:
                light.after_merge(self.folders.job(sid))
            self.results[sid] = result
            self.done += 1
            self.echo(self.progress_line(result))

    def progress_line(self, result: GradingResult) -> str:
        elapsed = time.monotonic() - self.started
        left = (self.total - self.done) * elapsed / self.done
        got = f"{result.total(self.tests):g}/{self.full:g}"
        why = f"  {text.terminal(result.reason)}" if result.status != "graded" else ""
        student = text.terminal(result.student)
        return (f"[{self.done:>{len(str(self.total))}}/{self.total}] {student:<{self.width}} {got:>7}  "
                f"{result.status:<6} {result.seconds:>5.0f} s | elapsed {_clock(elapsed)}, "
                f"~{_clock(left)} left{why}")


class LocalPool:
    """The executor of grade_phase on this machine: each submission in a worker process of its own
    (runner.run_job), `settings.workers` at once. grader/cluster.py's Executor is the other one:
    begin(), submit() -> a concurrent.futures.Future of the GradingResult, with the job folder
    holding what Merger.finish reads; poll() about once a second; stop() on interruption."""

    def __init__(self):
        self.running: dict[str, tuple] = {}
        self.pool = None

    def begin(self, course: Course, opts: Options, settings: Settings, folders: BatchFolders, zygote, echo) -> str:
        self.course, self.opts, self.settings, self.zygote = course, opts, settings, zygote
        self.pool = ThreadPoolExecutor(max_workers=settings.workers)
        return f"with {settings.workers} worker(s)"

    def submit(self, sid: str, f, job_dir: Path):
        env = job_env(self.course, self.opts, self.settings, job_dir, self.zygote)
        return self.pool.submit(runner.run_job, job_dir, env, self.settings.notebook_timeout_s, self.running)

    def poll(self) -> None:
        pass

    def stop(self) -> None:
        for pid, marker in list(self.running.values()):
            runner.kill_tree(pid, marker)

    def summary_lines(self) -> list[str]:
        return []

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def grade_phase(todo: list, merger: Merger, executor) -> None:
    """Grade each submission on the executor (LocalPool, or a cluster's); merge each as it finishes."""
    futures = {executor.submit(sid, f, job_dir): (sid, f, job_dir) for sid, f, job_dir in todo}
    pending = set(futures)
    try:
        while pending:
            finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            executor.poll()
            for fut in finished:
                sid, f, job_dir = futures[fut]
                try:
                    result = fut.result()
                except Exception as exc:  # the launcher itself failed: record, go on
                    result = GradingResult.failure(sid, f"could not run the grader ({exc})")
                merger.finish(sid, f, job_dir, result)
    except BaseException:
        for fut in pending:
            fut.cancel()
        with merger.lock:
            executor.stop()
        merger.echo(f"Interrupted: {merger.done} submissions were graded and saved in "
                    f"{merger.folders.main_db}. Run the same command again to grade the rest.")
        raise


def unsafe_lines(settings: Settings) -> list[str]:
    """What summary.md and the screen say when grading ran with protections off."""
    if not settings.protections_off:
        return []
    return ["", "## Protections that were OFF (--allow-unsafe)", "",
            *[f"- {line}" for line in settings.protections_off]]


GRADED_WITH = "## How this batch was graded"


def cold_reason(opts: Options, settings: Settings) -> str:
    """Why the batch's kernels are cold, in words."""
    if not opts.warm:
        return "--cold-kernels"
    if settings.protections_off:
        return "warm kernels need every protection on"
    from .kernel import probe

    caps = settings.caps or probe.probe()
    return warm.unavailable(caps) or "the warm-kernel process did not start (see work/zygote.log)"


def graded_with(settings: Settings, opts: Options, warm_used: bool) -> str:
    """One line: the protections and the kind of kernels this batch used."""
    from . import doctor
    from .kernel import probe

    caps = settings.caps or probe.probe()
    return "Graded with: " + doctor.statement(caps, warm_used, "" if warm_used else cold_reason(opts, settings))


def graded_with_lines(line: str) -> list[str]:
    return ["", GRADED_WITH, "", line]


def report_phase(course: Course, folders: BatchFolders, results: list[GradingResult], tests, max_tests,
                 extra: list[str] = (), manual: dict[str, float] | None = None):
    """grades.csv, results.csv, summary.md, scores.png, all read from the main gradebook (so a
    TA's manual scores count everywhere); returns (points, [per-test table, per-student table],
    waiting). `manual`: the written answers and their points, shown beside the tests, with the
    answers still waiting for a person."""
    out = folders.out
    manual = dict(manual or {})
    cells = score.cell_scores(folders.main_db, course.assignment)
    points = {sid: {t: cell.final for t, cell in by_test.items()} for sid, by_test in cells.items()}
    waiting = {sid: left for sid, by_test in cells.items() if (left := score.waiting(by_test, manual))}
    every = {**max_tests, **manual}
    columns = tests_in_order(course, every)
    report.export_grades(folders.main, out / "grades.csv", course)
    report.write_results(results, points, columns, every, out / "results.csv", waiting)
    per_test = report.write_summary(results, points, columns, every, out / "summary.md", extra, waiting, manual,
                                    str(course.source_notebook.relative_to(ROOT)))
    report.plot(results, points, columns, every, out / "scores.png", waiting)
    similarity.report(course, out)  # leads for a person (similarity.html, .png, summary.md); changes no score
    per_student = report.table_text(report.student_rows(results, points, columns, every, waiting),
                                    report.STUDENT_HEADER)
    return points, [per_test, per_student], waiting


PROTECTIONS_OFF = "## Protections that were OFF"


def _kept_summary_lines(summary: Path) -> list[str]:
    """The sections of an earlier summary.md that only the grading run knows (how it was graded,
    the protections that were off)."""
    text = summary.read_text(encoding="utf-8") if summary.exists() else ""
    kept = []
    for heading in (GRADED_WITH, PROTECTIONS_OFF):
        if heading in text:
            section = text[text.index(heading):].split("\n## ")[0]
            kept += ["", *section.rstrip("\n").splitlines()]
    return kept


def export(course: Course, out: Path, echo=print) -> tuple[report.Points, list[str], report.Waiting]:
    """Rewrite the feedback pages, grades.csv, results.csv, summary.md and scores.png of a batch
    already graded in `out` from its main gradebook, after a TA scored the written answers (or
    corrected a score) in formgrader (grader/feedback.py for the pages). Grades nothing, runs no
    notebook."""
    folders = BatchFolders(Path(out).resolve())
    if not folders.main_db.exists():
        raise SystemExit(f"{folders.main_db} not found: `python -m grader grade ... --out {out}` first")
    max_tests = score.max_scores(folders.main_db, course.assignment)
    manual = score.manual_max_scores(folders.main_db, course.assignment)
    results = [GradingResult.read(path) for path in sorted(folders.work.glob(f"*/{MERGED}"))]
    feedback.regenerate(course, folders, results, echo)
    points, tables, waiting = report_phase(course, folders, results, tests_in_order(course, max_tests), max_tests,
                                           _kept_summary_lines(folders.out / "summary.md"), manual)
    echo(tables[0] + "\n\n" + tables[1])
    left = sum(len(v) for v in waiting.values())
    echo(f"\nExported {len(results)} submissions from {folders.main_db}: wrote {folders.out / 'grades.csv'}, "
         f"results.csv, summary.md and scores.png in {folders.out}. "
         + (f"{left} written answers still wait for manual grading." if left else
            "No written answer waits for manual grading."))
    return points, tables, waiting


def grade(course: Course, opts: Options, echo=print, executor=None) -> Batch:
    """Grade a class (see the module's docstring); on `executor` (default: LocalPool, this machine's
    worker processes; grader/cluster.py gives a Dask cluster's)."""
    started = time.monotonic()
    folders = BatchFolders(opts.out.resolve())
    folders.out.mkdir(parents=True, exist_ok=True)
    settings = Settings.resolve(course, opts)
    for line in unsafe_lines(settings)[1:]:
        echo(line.replace("## ", "WARNING: "))
    found, roster = collect_phase(course, opts, folders.out, echo)
    max_tests = gradebooks_phase(course, folders, roster)
    manual = score.manual_max_scores(folders.main_db, course.assignment)
    tests = tests_in_order(course, max_tests)
    if opts.online:
        lab.load(course).prefetch(course.source_dir, grading_env(course, online=True, n_images=settings.n_images), echo)
    kept, todo = jobs_phase(course, opts, settings, folders, found, folders.job(REFERENCE).path, echo)
    merger = Merger(course, folders, todo, roster, tests, max_tests, echo, opts.keep_work)
    with warm_kernels(course, opts, settings, folders, bool(todo), echo) as zygote:
        if todo:
            _, seconds = reference_phase(course, opts, settings, folders, echo, zygote)
            settings = settings.after_reference(course, opts, seconds)
            used = graded_with(settings, opts, zygote is not None)
        executor = executor or LocalPool()
        where = executor.begin(course, opts, settings, folders, zygote, echo) if todo else \
            f"with {settings.workers} worker(s)"
        echo(f"Grading {len(todo)} submissions {where}, "
             f"{'online' if opts.online else 'offline'}, {settings.n_images} images, limits "
             f"{settings.cell_timeout_s} s per cell and {settings.notebook_timeout_s} s per notebook")
        if todo:
            echo(used)
        merger.started = time.monotonic()
        try:
            if todo:
                grade_phase(todo, merger, executor)
        finally:
            executor.close()
        used_by = executor.summary_lines()
    if not opts.keep_work:
        light.after_batch(folders)  # the copy of the input: a later run copies it again
    results = list({**kept, **merger.results}.values())
    # what this run graded with; with nothing graded now, what the earlier run said
    extra = graded_with_lines(used) + used_by + unsafe_lines(settings) if todo else \
        _kept_summary_lines(folders.out / "summary.md")
    points, tables, waiting = report_phase(course, folders, results, tests, max_tests, extra, manual)
    seconds = time.monotonic() - started
    counts = ", ".join(f"{sum(1 for r in results if r.status == s)} {s}" for s in STATUSES)
    echo("\n" + tables[0] + "\n\n" + tables[1])
    echo(f"\n{len(results)} submissions ({counts}) in {_clock(seconds)}. Wrote {folders.out / 'grades.csv'}, "
         f"results.csv, summary.md, scores.png and feedback/ in {folders.out}")
    left = sum(len(v) for v in waiting.values())
    if left:
        echo(f"{left} written answers wait for manual grading (see summary.md): score them with `python -m grader "
             f"formgrade --out {opts.out}`, then `python -m grader export --out {opts.out}` (grader/README-TA.md, "
             "*Written answers*).")
    return Batch(results, points, tests, max_tests, found, seconds, len(todo), tables, manual, waiting)
