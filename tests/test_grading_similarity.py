"""Similar hand-ins (grader/similarity.py): a synthetic class of the tiny lab, built from its
student notebook, graded by nobody. Eight students answer honestly, each in their own way, on
the same given code; two more hand in near-copies: one of s01's code (variables renamed, lines
reordered, comments reworded), one of s02's written answer (a few words changed). The report
must list the planted pairs, and no honest pair; a hostile hand-in is inert in the page; the
gradebook is never touched. A few seconds (one nbgrader generate_assignment).
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT, run_env
from grader import course as course_mod
from grader import release, similarity
from grader.jobs import BatchFolders, notebook_path

TINY = Path(__file__).resolve().parent / "tiny_lab" / "course.toml"

# Honest answers: (normalize, top_k, written answer), one student each.
HONEST = {
    "s01": ('''def normalize(x):
    values = np.asarray(x, dtype=float)
    centre = values.mean()
    width = values.std()
    if width == 0:
        raise ValueError("constant input: no spread to divide by")
    shifted = values - centre
    return shifted / width''',
            '''def top_k(x, k):
    order = np.argsort(x)
    picked = []
    for position in range(len(order) - 1, len(order) - 1 - k, -1):
        picked.append(int(order[position]))
    return np.array(picked)''',
            "Scores measured in different units or ranges cannot be compared directly; standardising puts "
            "them on one common scale with mean zero and unit variance."),
    "s02": ('''def normalize(x):
    arr = np.array(x, float)
    return (arr - np.mean(arr)) / np.std(arr)''',
            '''def top_k(x, k):
    return np.argsort(-np.asarray(x))[:k]''',
            "Because a raw score only means something relative to the others: after subtracting the mean "
            "and dividing by the standard deviation, each value says how many deviations it lies from "
            "the average, whatever the original scale was."),
    "s03": ('''def normalize(x):
    total = 0.0
    for v in x:
        total += v
    m = total / len(x)
    var = sum((v - m) ** 2 for v in x) / len(x)
    return np.array([(v - m) / var ** 0.5 for v in x])''',
            '''def top_k(x, k):
    ranked = sorted(range(len(x)), key=lambda i: x[i], reverse=True)
    return np.array(ranked[:k])''',
            "So big numbers do not dominate. An exam out of 100 and a quiz out of 10 only become "
            "comparable once both are expressed as z-scores."),
    "s04": ('''from statistics import pstdev, fmean

def normalize(x):
    mu, sigma = fmean(x), pstdev(x)
    out = np.empty(len(x))
    for i, v in enumerate(x):
        out[i] = (v - mu) / sigma
    return out''',
            '''def top_k(x, k):
    x = np.asarray(x)
    idx = np.argpartition(x, -k)[-k:]
    return idx[np.argsort(x[idx])[::-1]]''',
            "Standardising removes location and scale, which makes the shape of two distributions "
            "visible side by side, and lets us spot outliers with a single rule such as |z| > 3."),
    "s05": ('''def normalize(x):
    x = np.asarray(x, dtype=np.float64)
    z = x.copy()
    z -= z.mean(axis=0)
    z /= x.std(axis=0)
    return z''',
            '''def top_k(x, k):
    pairs = [(value, i) for i, value in enumerate(x)]
    pairs.sort(reverse=True)
    return np.array([i for _, i in pairs[:k]])''',
            "If one grader marks harshly and another generously, the raw numbers are biased; centring "
            "and scaling each set corrects for that before anything is compared."),
    "s06": ('''import math

def normalize(x):
    n = len(x)
    avg = sum(x) / n
    sd = math.sqrt(sum((xi - avg) * (xi - avg) for xi in x) / n)
    result = [(xi - avg) / sd for xi in x]
    return np.asarray(result)''',
            '''def top_k(x, k):
    remaining = list(x)
    chosen = []
    while len(chosen) < k:
        best = max(i for i in range(len(remaining)) if i not in chosen and remaining[i] == max(
            remaining[j] for j in range(len(remaining)) if j not in chosen))
        chosen.append(best)
    return np.array(chosen)''',
            "Comparing needs a shared reference point. The mean gives the reference and the standard "
            "deviation the unit, so a standardised value is unit free and tells how unusual it is."),
    "s07": ('''def normalize(x):
    data = np.asarray(x).astype(float)
    lo_hi = data - data.mean()
    scale = np.sqrt((lo_hi ** 2).mean())
    return lo_hi / scale''',
            '''def top_k(x, k):
    s = pd_free_sort = np.sort(np.unique(x))[::-1]
    keep = []
    for value in s:
        keep.extend(np.flatnonzero(np.asarray(x) == value).tolist())
    return np.array(keep[:k])''',
            "Different features vary on very different ranges. Without standardisation, distances and "
            "averages would be driven by whichever variable happens to have the largest numbers."),
    "s08": ('''def normalize(x):
    """z-scores of x"""
    x = np.asarray(x, dtype=float)
    mean, std = x.mean(), x.std()
    assert std > 0
    return np.divide(np.subtract(x, mean), std)''',
            '''def top_k(x, k):
    indices = list(np.argsort(x))
    indices.reverse()
    return np.asarray(indices[:k], dtype=int)''',
            "I think it is mainly about fairness: two people with the same position in their own group "
            "should get the same standardised score even if their groups had different averages."),
}

# s01's code, renamed, reordered and recommented; s02's written answer with small edits.
PLANTED = {
    "s11": ('''def normalize(x):
    # turn input into floats first
    vals = np.asarray(x, dtype=float)
    spread = vals.std()
    middle = vals.mean()
    if spread == 0:
        raise ValueError("input is constant, cannot scale")
    moved = vals - middle
    return moved / spread''',
            '''def top_k(x, k):
    # indices from biggest to smallest
    ranking = np.argsort(x)
    result = []
    for idx in range(len(ranking) - 1, len(ranking) - 1 - k, -1):
        result.append(int(ranking[idx]))
    return np.array(result)''',
            "Standardised values have a mean of 0 and a standard deviation of 1, which is what makes "
            "them easy to read."),
    "s12": ('''def normalize(x):
    y = np.asarray(x, dtype=float)
    out = (y - np.median(y)) / (np.percentile(y, 75) - np.percentile(y, 25))
    return out * 0.7413 + 0.0 if False else (y - y.mean()) / y.std()''',
            '''def top_k(x, k):
    best_first = np.flip(np.argsort(np.asarray(x, dtype=float)))
    return best_first[:k].copy()''',
            "Because a raw score only means something relative to the others: after we subtract the mean "
            "and divide by the standard deviation, every value tells how many deviations it lies from "
            "the average, whatever the original scale."),
}
HOSTILE = "s13\x1b[2J\u202e"    # and a near-copy of s04's code, with a script in it
PLANTED_PAIRS = {("s01", "s11"), ("s02", "s12"), ("s04", HOSTILE)}
HOSTILE_CODE = '''def normalize(x):
    """</pre><script>alert("pwned")</script><img src=x onerror=alert(1)>"""
    return (np.asarray(x) - np.mean(x)) / np.std(x)'''


def _hand_in(student_nb, answers: tuple[str, str, str]):
    nb = nbformat.from_dict(student_nb)
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        cell.source = {"answer_normalize": answers[0], "answer_topk": answers[1],
                       "written_why": answers[2]}.get(grade_id, cell.source)
    return nb


@pytest.fixture(scope="module")
def batch_out(tmp_path_factory):
    """A batch's output folder as `grade` leaves it, for the class above (nothing graded)."""
    course = course_mod.load(TINY)
    out = tmp_path_factory.mktemp("similar")
    folders = BatchFolders(out)
    student = release.generate(course, folders.main / "release") / f"{course.notebook}.ipynb"
    student_nb = nbformat.read(student, as_version=4)
    hostile = (HOSTILE_CODE + "\n\n" + HONEST["s04"][0].replace("mu", "m_u"), "def top_k(x, k):\n    return 0",
               "<script>alert('written')</script> it was the <b>best</b> of times\x1b[31m, standardise!")
    for sid, answers in {**HONEST, **PLANTED, HOSTILE: hostile}.items():
        path = notebook_path(folders.main, "submitted", sid, course)
        path.parent.mkdir(parents=True)
        nbformat.write(_hand_in(student_nb, answers), path)
    folders.main_db.write_bytes(b"a gradebook a TA spent a week on")
    (out / "summary.md").write_text("# Grading summary\n\n## How this batch was graded\n\nGraded with: x\n")
    return course, out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_planted_pairs_are_found_and_no_honest_pair(batch_out):
    course, out = batch_out
    gradebook = _sha(BatchFolders(out).main_db)
    pairs = similarity.report(course, out, strict=True)
    hand_ins, *_ = similarity.compare(course, out)
    found = {tuple(sorted((hand_ins[p.a].student, hand_ins[p.b].student))) for p in pairs}
    assert found == PLANTED_PAIRS, found
    by_pair = {tuple(sorted((hand_ins[p.a].student, hand_ins[p.b].student))): p for p in pairs}
    assert by_pair[("s01", "s11")].code > 0.5 and by_pair[("s02", "s12")].written > 0.8
    assert by_pair[("s02", "s12")].question == "written_why"
    assert _sha(BatchFolders(out).main_db) == gradebook, "the gradebook is never touched"
    summary = (out / "summary.md").read_text()
    assert "## How this batch was graded" in summary and "3 pairs in 3 clusters" in summary
    assert (out / "similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    similarity.report(course, out, strict=True)
    assert (out / "summary.md").read_text().count(similarity.SECTION) == 1, "the section is replaced, not repeated"


def test_the_given_code_alone_is_no_lead(batch_out, tmp_path):
    """Two blank hand-ins (the student version as released) share only the given code: not compared."""
    course, out = batch_out
    folders, copy = BatchFolders(out), BatchFolders(tmp_path)
    blank = (folders.main / "release" / course.assignment / f"{course.notebook}.ipynb").read_bytes()
    for sid in ("b1", "b2", "b3"):
        path = notebook_path(copy.main, "submitted", sid, course)
        path.parent.mkdir(parents=True)
        path.write_bytes(blank)
    (copy.main / "release").symlink_to(folders.main / "release")
    hand_ins, pairs, code, written, *_ = similarity.compare(course, tmp_path)
    assert pairs == [] and all(h.cells == {} for h in hand_ins) and code.compared == 0


def test_hostile_text_is_inert_in_the_page_and_on_screen(batch_out):
    course, out = batch_out
    said = []
    similarity.report(course, out, echo=said.append, strict=True)
    page = (out / "similarity.html").read_text()
    head = page[:page.index("</head>")]
    assert "Content-Security-Policy" in head and "default-src 'none'" in head
    assert "<script" not in page and "<img" not in page and "\x1b" not in page and "\u202e" not in page
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in page or "pwned" not in page
    assert "s13\\x1b[2J\\u202e" in page and "worth a look" in page and "copied" not in page.lower()
    assert "\x1b" not in "".join(said)


def test_python_m_grader_similar(batch_out):
    course, out = batch_out
    env = run_env() | {course_mod.COURSE_VAR: str(TINY)}
    proc = subprocess.run([sys.executable, "-m", "grader", "similar", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 pairs worth a look among 11 hand-ins" in proc.stdout and "similarity.html" in proc.stdout


def test_a_settings_table_must_hold_exactly_its_settings(tmp_path):
    """[similarity], [lms] and [cluster] are read by one function: a missing, extra or mistyped
    setting is refused, naming the table."""
    from grader import course as course_mod
    from grader import similarity

    for body in ("code_floor = 0.5\nwritten_floor = 0.8\nspread = 4.0\n",
                 "code_floor = 0.5\nwritten_floor = 0.8\nspread = 4.0\ncommon_share = 0.25\nextra = 1\n",
                 "code_floor = 'x'\nwritten_floor = 0.8\nspread = 4.0\ncommon_share = 0.25\n"):
        path = tmp_path / "course.toml"
        path.write_text("[similarity]\n" + body)
        with pytest.raises(SystemExit, match=r"\[similarity\] in"):
            similarity.Settings.load(path)
    path.write_text("[similarity]\ncode_floor = 1\nwritten_floor = 0.8\nspread = 4\ncommon_share = 0.25\n")
    assert similarity.Settings.load(path).spread == 4.0 and course_mod.read(path)["similarity"]["spread"] == 4
