"""The tamper suite: submissions that attack the grader, and what each one must get.

Two families, each class covered by more than one way of doing it:

- CHEATS try to earn points they do not deserve. Every cheat below comes with a wrong
  answer that a *visible* check catches, plus an attack that makes that check pass inside
  the kernel. The points come from the trusted verification outside the kernel, so the
  attack earns nothing, and the disagreement marks the submission `review` as possible
  tampering. Classes: patching IPython's execution machinery, redefining the functions the
  checks call, overwriting the kit's recorder, rewriting later cells before they run, and
  writing the gradebook directly.
- LIMITS try to reach what the sandbox must keep out of reach: the network, files outside
  the submission's folder (the hidden tests among them), writing outside it, more memory
  than allowed, processes that outlive the kernel, a fork storm. Each prints what it got,
  so the tests can read the outcome in the autograded notebook; the answers are otherwise
  right, so each deserves full marks unless its attack kills its own kernel.

Each attack is a few lines prepended to an answer cell; `{marker}` strings let the tests
find what the attacks left behind (processes, files).
"""
from __future__ import annotations

import nbformat

from grader.course import load
from grader.samples import Sample, reference_answers

REFERENCE = reference_answers(nbformat.read(load().source_notebook, as_version=4))  # cell id -> answer

DETACHED_MARKER = "craft-lab-tamper-detached"
OUTSIDE_FILE = "craft-lab-tamper-was-here"

# ----------------------------------------------------------------------------- cheats

FORGE_REPLY = '''import ipykernel.ipkernel as _ik
_do_execute = _ik.IPythonKernel.do_execute
async def _always_ok(self, *args, **kwargs):
    reply = await _do_execute(self, *args, **kwargs)
    if reply.get("status") == "error":
        for key in ("ename", "evalue", "traceback"):
            reply.pop(key, None)
        reply["status"] = "ok"
    return reply
_ik.IPythonKernel.do_execute = _always_ok
get_ipython()._showtraceback = lambda *args, **kwargs: None
'''

SWALLOW_ERRORS = '''_shell = get_ipython()
_shell.set_custom_exc((AssertionError,), lambda shell, etype, value, tb, tb_offset=None: None)
for _name in ("run_cell", "run_cell_async"):
    _original = getattr(_shell, _name)
    if _name == "run_cell":
        def _quiet(*args, _original=_original, **kwargs):
            result = _original(*args, **kwargs)
            result.error_in_exec = None
            return result
    else:
        async def _quiet(*args, _original=_original, **kwargs):
            result = await _original(*args, **kwargs)
            result.error_in_exec = None
            return result
    setattr(_shell, _name, _quiet)
'''

NUMPY_ALL = '''np.all = lambda *args, **kwargs: True
np.diff = lambda a, *args, **kwargs: np.zeros(max(len(a) - 1, 0))
'''

ALWAYS_IN_RANGE = '''class _InRange(float):
    "A number that compares as inside any range."
    __le__ = __ge__ = __lt__ = __gt__ = lambda self, other: True
'''

RECORDER_SEED = '''recorder.fit_was_seeded_with = lambda seed: True
'''

RECORDER_PLOTS = '''recorder.plotted = lambda name: True
recorder.plot_calls.extend((name, True) for name in recorder.PLOTS)
'''

ASSERTS_DEFUSED = '''get_ipython().input_transformers_post.append(
    lambda lines: [line.replace("assert ", "assert True or ") for line in lines])
'''

ASSERTS_REMOVED = '''import ast as _ast
class _NoAsserts(_ast.NodeTransformer):
    def visit_Assert(self, node):
        return _ast.Pass()
get_ipython().ast_transformers.append(_NoAsserts())
'''

GRADEBOOK_BY_PATH = '''import pathlib, sqlite3
_written = []
for _up in range(2, 9):
    _db = pathlib.Path.cwd().joinpath(*[".."] * _up, "gradebook.db")
    for _candidate in (_db, _db.parent / "nbgrader" / "gradebook.db"):
        try:
            if _candidate.exists():
                with sqlite3.connect(_candidate) as _con:
                    _con.execute("UPDATE grade SET auto_score = 100")
                    _con.execute("CREATE TRIGGER IF NOT EXISTS forge AFTER UPDATE ON grade "
                                 "BEGIN UPDATE grade SET auto_score = 100; END")
                _written.append(str(_candidate))
        except Exception as _exc:
            print("gradebook write refused:", type(_exc).__name__)
print("GRADEBOOKS WRITTEN:", _written)
'''

GRADEBOOK_BY_SEARCH = '''import os, sqlite3
_written, _seen = [], 0
for _top in ("/", os.path.expanduser("~")):
    for _root, _dirs, _files in os.walk(_top):
        _seen += 1
        _dirs[:] = [d for d in _dirs if d not in ("proc", "sys", "dev")]
        for _f in _files:
            if _f == "gradebook.db":  # only nbgrader's gradebooks, never anything else
                try:
                    with sqlite3.connect(os.path.join(_root, _f)) as _con:
                        _con.execute("UPDATE grade SET auto_score = 100")
                    _written.append(os.path.join(_root, _f))
                except Exception:
                    pass
        if _seen > 20000:  # bounded
            break
print("GRADEBOOKS WRITTEN:", _written)
'''

HANDOUT_SPLIT = '''children = list(model.children())
g = nn.Sequential(*children[:8])
h = nn.Sequential(model.avgpool, nn.Flatten(), nn.Linear(2048, 1000))'''

FORGOT_EVAL = "# model.eval()  (forgotten)"
NO_PLOT = "# craft.plot_concepts_crops(...)  (forgotten)"
UNSEEDED_FIT = "crops, crops_u, concept_bank_w = craft.fit(images_preprocessed, class_id=RABBIT_CLASS)"
ASCENDING_LOCAL = ('local_importances = craft.estimate_importance(images_preprocessed[0:1])\n'
                   'local_order = np.argsort(local_importances)')
UNNORMALISED_AUC = ("r = craft.number_of_concepts\n"
                    "auc_importance = _InRange(np.trapezoid(deletion_curve))\n"
                    "auc_random = _InRange(np.trapezoid(random_curves, axis=1).mean())")

TAMPERING = "possible tampering"
EVAL_POINTS = {"check_eval": 1, "check_model_untouched": 1}

CHEATS: list[Sample] = [
    # Patching IPython's execution machinery: failing cells report success.
    Sample("cheat_forged_reply", {"answer_eval": FORGE_REPLY + FORGOT_EVAL}, EVAL_POINTS,
           status="review", says=TAMPERING),
    Sample("cheat_swallowed_errors", {"answer_eval": "model.eval()\n" + SWALLOW_ERRORS,
                                      "answer_plot_crops": NO_PLOT}, {"check_plots": 2},
           status="review", says=TAMPERING),
    # Redefining the functions and comparisons the checks rely on.
    # (redefining np.diff breaks matplotlib too: the plot cells raise and display nothing)
    Sample("cheat_numpy_redefined", {"answer_eval": "model.eval()\n" + NUMPY_ALL,
                                     "gf_answer_local": ASCENDING_LOCAL}, {"gf_check_local": 2, "check_plots": 2},
           status="review", says=TAMPERING),
    Sample("cheat_comparison_redefined", {"answer_eval": "model.eval()\n" + ALWAYS_IN_RANGE,
                                          "gf_answer_auc": UNNORMALISED_AUC}, {"gf_check_auc": 1},
           status="review", says=TAMPERING),
    # Overwriting the kit's recorder, which the checks read.
    Sample("cheat_recorder_seed", {"answer_eval": "model.eval()\n" + RECORDER_SEED, "answer_fit": UNSEEDED_FIT},
           {"check_fit": 2}, status="review", says=TAMPERING),
    Sample("cheat_recorder_plots", {"answer_eval": "model.eval()\n" + RECORDER_PLOTS,
                                    "answer_plot_crops": NO_PLOT}, {"check_plots": 2},
           status="review", says=TAMPERING),
    # Rewriting later cells (the checks) before IPython runs them.
    Sample("cheat_input_transformer", {"answer_eval": ASSERTS_DEFUSED + FORGOT_EVAL}, EVAL_POINTS,
           status="review", says=TAMPERING),
    Sample("cheat_ast_transformer", {"answer_eval": "model.eval()\n" + ASSERTS_REMOVED,
                                     "answer_plot_crops": NO_PLOT}, {"check_plots": 2},
           status="review", says=TAMPERING),
    # Writing scores straight into a gradebook (the wrong h is an ordinary mistake: no flag).
    Sample("cheat_gradebook_by_path", {"answer_eval": "model.eval()\n" + GRADEBOOK_BY_PATH,
                                       "answer_split": HANDOUT_SPLIT}, {"check_h": 2}),
    Sample("cheat_gradebook_by_search", {"answer_eval": "model.eval()\n" + GRADEBOOK_BY_SEARCH,
                                         "answer_split": HANDOUT_SPLIT}, {"check_h": 2}),
]

# ----------------------------------------------------------------------------- limits

NETWORK = '''import socket, urllib.request
_got = []
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
    _got.append("tcp")
except OSError as _exc:
    print("tcp refused:", type(_exc).__name__)
try:
    urllib.request.urlopen("http://localhost:{port}/", timeout=3).read()
    _got.append("http")
except OSError as _exc:
    print("http refused:", type(_exc).__name__)
print("NETWORK REACHED:", _got)
'''

READ_OUTSIDE = '''import glob, os, pathlib
_read = []
for _pattern in ({solutions!r}, {repo!r} + "/grader/*.py", os.path.expanduser("~") + "/.bash_history",
                 "/root/*", {out!r} + "/work/*/*.ipynb", {out!r} + "/**/gradebook.db", "*.ipynb",
                 "../*/*.ipynb", "../../*/*/*.ipynb", "/tmp/**/*.ipynb"):
    for _path in glob.glob(_pattern, recursive=True):
        try:
            _text = pathlib.Path(_path).read_text(errors="replace")
            _read.append(_path)
            if "HIDDEN TESTS" in _text or "### BEGIN SOLUTION" in _text:
                print("LEAKED:", _path, _text[:2000])
        except OSError:
            pass
print("FILES READ OUTSIDE:", [p for p in _read if not p.startswith(os.getcwd())])
'''

WRITE_OUTSIDE = '''import pathlib
_written = []
for _folder in ({repo!r}, {repo!r} + "/solutions", {out!r}, "/root", "/var/tmp", "..", "../.."):
    try:
        (pathlib.Path(_folder) / "{name}").write_text("x")
        _written.append(_folder)
    except OSError as _exc:
        print("write refused in", _folder, type(_exc).__name__)
print("WRITTEN OUTSIDE:", _written)
'''

MEMORY_NUMPY = '''_hog = np.ones(int({gib} * 2**30) // 8)  # more than the sandbox allows
print("MEMORY GOT", _hog.nbytes)
'''

MEMORY_BYTES = '''_hog = []
for _ in range(int({gib} * 8)):
    _hog.append(bytearray(2**27))  # 128 MiB at a time, and touched
print("MEMORY GOT", sum(len(b) for b in _hog))
'''

DETACHED = '''import os, subprocess, sys
_code = "import time\\nwhile True: time.sleep(1)  # {marker}"
subprocess.Popen([sys.executable, "-c", _code], start_new_session=True, env={{}},
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
if os.fork() == 0:  # a double fork: the grandchild belongs to no one
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", _code])
    os._exit(0)
os.wait()
print("DETACHED: started")
'''

FORK_STORM = '''import subprocess
_children, _refused = [], 0
for _ in range(2000):  # bounded: stops by itself
    try:
        _children.append(subprocess.Popen(["sleep", "30"]))
    except OSError:
        _refused += 1
        if _refused > 20:
            break
for _child in _children:
    _child.kill()
    _child.wait()
print("FORK STORM: started", len(_children), "refused", _refused)
'''


def limit_samples(port: int, repo: str, out: str, memory_gib: float) -> list[Sample]:
    """The limit probes, built for this run: the loopback server's port, the kit's and the
    batch's folders (what a student would guess or find), the memory limit in GiB."""
    solutions = repo + "/solutions/**/*.ipynb"
    return [
        Sample("limit_network", {"answer_eval": "model.eval()\n" + NETWORK.format(port=port)}),
        Sample("limit_read_outside", {"answer_eval": "model.eval()\n" + READ_OUTSIDE.format(
            solutions=solutions, repo=repo, out=out)}),
        Sample("limit_write_outside", {"answer_eval": "model.eval()\n" + WRITE_OUTSIDE.format(
            repo=repo, out=out, name=OUTSIDE_FILE)}),
        Sample("limit_memory_numpy", {"answer_eval": "model.eval()\n" + MEMORY_NUMPY.format(gib=1.5 * memory_gib)},
               lost_after="answer_eval", status="review", says="kernel died in answer_eval"),
        Sample("limit_memory_bytes", {"answer_eval": "model.eval()\n" + MEMORY_BYTES.format(gib=1.5 * memory_gib)},
               lost_after="answer_eval", status="review", says="kernel died in answer_eval"),
        Sample("limit_detached", {"answer_eval": "model.eval()\n" + DETACHED.format(marker=DETACHED_MARKER)}),
        Sample("limit_fork_storm", {"answer_eval": "model.eval()\n" + FORK_STORM}),
    ]

# ----------------------------------------------------------------------------- forged evidence
# Every capture sends its values once, as a display message the worker takes while the capture
# runs (grader/evidence.py); points come only from trusted computation (grader/verdicts.py).
# Each attack below tries to make the grader take values that are not the right numbers.

EVIDENCE_MIME = "application/x-grader-evidence"
SEEDED_STATE = ("np.concatenate([np.asarray(np.random.RandomState(SEED).get_state()[1], dtype=np.int64), "
                "np.asarray(np.random.RandomState(SEED).get_state()[2:4], dtype=np.int64)])")

# A later cell sends evidence of its own for an earlier capture (the old "rewrite split.npz").
LATE_MESSAGE = f'''import base64 as _b64, copy as _copy, io as _io
from IPython.display import publish_display_data as _publish
with torch.no_grad():
    _logits = _copy.deepcopy(model).eval()(torch.randn(2, 3, 256, 256))
_buffer = _io.BytesIO()
np.savez(_buffer, **{{"split.h": _logits.numpy(), "split.h_is_module": np.asarray(True)}})
_publish({{"{EVIDENCE_MIME}": _b64.b64encode(_buffer.getvalue()).decode()}},
         metadata={{"{EVIDENCE_MIME}": {{"group": "split"}}}})
print("LATE EVIDENCE SENT")
'''

# A thread keeps writing forged artefact files where the grader used to read them back.
FILE_THREAD = '''import os as _os, threading as _threading, time as _time
def _forge_files():
    _os.makedirs("craft_lab_artefacts", exist_ok=True)
    while True:
        for _group in ("fit", "split", "importance"):
            try:
                np.savez(f"craft_lab_artefacts/{_group}.npz", **{f"{_group}.u": np.ones((18, 10))})
            except OSError:
                pass
        _time.sleep(0.05)
_threading.Thread(target=_forge_files, daemon=True).start()
'''

# The display call the capture sends through is replaced: the fit's evidence is rewritten on its
# way out (numpy "seeded", other thread counts, so that the U of an unseeded fit looks fine).
PATCHED_PUBLISH = f'''import base64 as _b64, io as _io, IPython.display as _display
_real_publish = _display.publish_display_data
def _forging_publish(data, metadata=None, **kwargs):
    if "{EVIDENCE_MIME}" in data and (metadata or {{}}).get("{EVIDENCE_MIME}", {{}}).get("group") == "fit":
        with np.load(_io.BytesIO(_b64.b64decode(data["{EVIDENCE_MIME}"]))) as _z:
            _arrays = {{k: _z[k] for k in _z.files}}
        _arrays["fit.rng"] = {SEEDED_STATE}
        _arrays["fit.threads"] = np.asarray([2, 1])
        _buffer = _io.BytesIO()
        np.savez(_buffer, **_arrays)
        data = {{"{EVIDENCE_MIME}": _b64.b64encode(_buffer.getvalue()).decode()}}
    return _real_publish(data, metadata, **kwargs)
_display.publish_display_data = _forging_publish
'''

# A tracer watches the capture code run and rewrites its values before they are sent.
TRACER = f'''import sys as _sys
def _watch(frame, event, arg):
    if frame.f_code.co_name != "run" or frame.f_code.co_filename != "<string>":
        return None
    def _line(f, e, a):
        saved = f.f_locals.get("saved")
        if isinstance(saved, dict) and "fit.rng" in saved:
            saved["fit.rng"] = {SEEDED_STATE}
            saved["fit.threads"] = np.asarray([3, 3])
        return _line
    return _line
_sys.settrace(_watch)
'''

# numpy's savez, which the capture calls, is replaced: the eval flags are forged on the way.
PATCHED_SAVEZ = '''_real_savez = np.savez
def _forging_savez(file, *args, **arrays):
    if "eval.training" in arrays:
        arrays.update({"eval.training": np.asarray(False), "eval.modules_training": np.asarray(0)})
    return _real_savez(file, *args, **arrays)
np.savez = _forging_savez
'''

# Records of plots that were never made, and a blank picture where the crops should be.
FAKE_FIGURE = '''recorder.plot_calls.append(("plot_concepts_crops", True, 0))
plt.figure(figsize=(7, 2.5))
plt.axis("off")
plt.show()'''

CHEATS += [
    Sample("cheat_late_message", {"answer_split": HANDOUT_SPLIT,
                                  "answer_transform": LATE_MESSAGE + "\n" + REFERENCE["answer_transform"]},
           {"check_h": 2}),
    Sample("cheat_file_thread", {"answer_eval": "model.eval()\n" + FILE_THREAD, "answer_fit": UNSEEDED_FIT},
           {"check_fit": 2}),
    Sample("cheat_patched_publish", {"answer_eval": "model.eval()\n" + PATCHED_PUBLISH + RECORDER_SEED,
                                     "answer_fit": UNSEEDED_FIT}, {"check_fit": 2}, status="review", says=TAMPERING),
    Sample("cheat_tracer", {"answer_eval": "model.eval()\n" + TRACER + RECORDER_SEED, "answer_fit": UNSEEDED_FIT},
           {"check_fit": 2}, status="review", says=TAMPERING),
    Sample("cheat_patched_savez", {"answer_eval": ASSERTS_DEFUSED + PATCHED_SAVEZ + FORGOT_EVAL}, EVAL_POINTS,
           status="review", says=TAMPERING),
    Sample("cheat_fake_figure", {"answer_plot_crops": FAKE_FIGURE}, {"check_plots": 2}, status="review",
           says=TAMPERING),
    Sample("cheat_unseeded_threads", {"answer_eval": "model.eval()\n" + RECORDER_SEED,
                                      "answer_fit": "torch.set_num_threads(2)\n" + UNSEEDED_FIT},
           {"check_fit": 2}, status="review", says=TAMPERING),
]


# ----------------------------------------------------------------------------- the TA's machine and eyes
# Answers right, attacks on what the grader does with the kernel's folder and outputs: links for
# the host to follow, live HTML and scripts for the TA's browser, escape sequences for the TA's
# terminal, and more files, disk, output and time than a submission may use.

INJECTED = "INJECTED-BY-A-STUDENT"
HTML_ATTACK = f"""from IPython.display import HTML, Javascript, display
display(HTML('<script>document.title="{INJECTED}"</script><img src=x onerror="document.title=1">'))
display(Javascript('document.title = "{INJECTED}"'))
"""
SVG_ATTACK = f"""from IPython.display import SVG, display
display(SVG('<svg xmlns="http://www.w3.org/2000/svg" onload="document.title=2">'
            '<script>document.title="{INJECTED}"</script><circle cx="5" cy="5" r="5"/></svg>'))
"""
WRITTEN_ATTACK = ('<img src=x onerror="document.title=3"> The three concepts are eyes, ears and fur. '
                  '<a href="javascript:document.title=4">more</a>')
LINKS = """import os
_planted = []
os.makedirs("craft_lab_artefacts", exist_ok=True)
for _link, _target in {links!r}:
    try:
        os.symlink(_target, _link)
        _planted.append(_link)
    except OSError as _exc:
        print("link refused:", _link, type(_exc).__name__)
print("LINKS PLANTED:", _planted)
"""
TERMINAL_TEXT = r"\x1b[2J\x1b]0;pwned\x07| fake | cell |\n[99/99] fake_student 25/25 graded | CUDA error: device-side assert"
LATE_ERROR = f'\nraise RuntimeError("{TERMINAL_TEXT}")'
MANY_FILES = """import os
_made, _written = 0, 0
try:
    for _i in range(100_000):
        open(f"f{_i}", "w").close()
        _made += 1
except OSError as _exc:
    print("files stopped:", type(_exc).__name__)
try:
    with open("big.bin", "wb") as _f:
        for _ in range(3 * 1024):
            _f.write(bytes(2**20))
            _written += 1
except OSError as _exc:
    print("disk stopped:", type(_exc).__name__)
print("FILES MADE", _made, "MB WRITTEN", _written)
for _i in range(_made):
    os.remove(f"f{_i}")
if os.path.exists("big.bin"):
    os.remove("big.bin")
"""
MUCH_OUTPUT = """for _ in range(200):
    print("x" * 2**20)
"""
# Each cell stays just under the cell limit (the tests' is 120 s), five times over: only the
# per-notebook limit, derived from the reference run, stops it.
SLEEP = "\nimport time\ntime.sleep(110)"
SLEEPY_CELLS = ("answer_eval", "answer_split", "answer_transform", "answer_preprocess", "answer_craft")


def machine_samples(out: str) -> list[Sample]:
    """Attacks on the TA's machine, browser and terminal, two ways each; `out` is the batch's folder."""
    gradebook = f"{out}/nbgrader/gradebook.db"
    links_1 = [("craft_lab_artefacts/probe.npy", gradebook),
               ("craft_lab_artefacts/split.npz", f"{out}/work/_reference/evidence/split.npz")]
    links_2 = [("gradebook.db", gradebook), ("craft_lab_artefacts/fit.npz", "/etc/passwd"),
               ("escape", "/"), ("reference", f"{out}/work/_reference")]
    plot = REFERENCE["gf_answer_deletion_plot"]
    return [
        Sample("attack_html_links", {"answer_eval": "model.eval()\n" + HTML_ATTACK + LINKS.format(links=links_1),
                                     "gf_answer_deletion_plot": plot + LATE_ERROR},
               says="errors in: gf_answer_deletion_plot (RuntimeError"),
        Sample("attack_svg_answer_links", {"answer_eval": "model.eval()\n" + SVG_ATTACK + LINKS.format(links=links_2),
                                           "written_concepts": WRITTEN_ATTACK}),
        Sample("limit_files_and_disk", {"answer_eval": "model.eval()\n" + MANY_FILES}),
        Sample("limit_output", {"answer_eval": "model.eval()\n" + MUCH_OUTPUT}),
        Sample("limit_sleeps", {cell: REFERENCE[cell] + SLEEP for cell in SLEEPY_CELLS}, status="failed",
               says="per-notebook time limit"),
    ]
