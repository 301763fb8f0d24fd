"""Evidence: what the grader takes out of a student's kernel while the notebook runs, once.

A lab declares capture points (`Capture`): right after a given cell, the worker runs a snippet
in the same kernel, as an execution of its own that the notebook never holds. The snippet
evaluates named expressions on the student's variables and sends the results as ONE display
message of type MIME: an .npz archive of plain arrays (numbers and text only), base64. The
worker receives that message while the capture runs, checks it (`read_message`) and writes it
itself into the submission's evidence folder (`Store`), which the kernel cannot see. So:

- evidence leaves the kernel once: a later cell, or a thread, cannot rewrite it;
- the worker never opens a path inside the kernel's folder;
- what the kernel sends is still the kernel's word: a lab's verification compares it with
  trusted computation (the reference run, or trusted code run on the student's own data),
  never with another value the same kernel sent (grader/verdicts.py says how a check is based).

Each item is guarded in the kernel: a missing or broken variable loses that item only, and its
error message is sent under ERROR_PREFIX + name instead.
"""
from __future__ import annotations

import base64
import binascii
import io
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import cells

MIME = "application/x-grader-evidence"   # the display message a capture sends
ERROR_PREFIX = "error."                  # "error.split.g": why the item split.g could not be captured
ALLOWED_KINDS = "biufU"                  # bool, int, uint, float, unicode: no objects, no pickles
MAX_MESSAGE_BYTES = 128 * 2**20          # one capture's archive (the largest, the fit's crops, is a few MB)
MAX_MEMBERS = 200


class EvidenceError(ValueError):
    """Evidence that cannot be read safely (damaged, too big, not plain arrays)."""


@dataclass(frozen=True)
class Capture:
    """After cell `after` runs, evaluate each (name, expression) of `items` in the kernel and send
    the values as group `group` (their names are "<group>.<item>"). Items named in
    `reference_only` are evaluated in the reference run only: values the verification takes
    from the reference and never from a student."""
    after: str
    group: str
    items: tuple[tuple[str, str], ...]
    reference_only: frozenset[str] = frozenset()

    def names_for(self, reference: bool) -> tuple[str, ...]:
        return tuple(name for name, _ in self.items if reference or name not in self.reference_only)

    @property
    def names(self) -> tuple[str, ...]:
        return self.names_for(reference=True)


def capture(after: str, group: str, reference_only: tuple[str, ...] = (), **items: str) -> Capture:
    return Capture(after, group, tuple((f"{group}.{name}", expr) for name, expr in items.items()),
                   frozenset(f"{group}.{name}" for name in reference_only))


# ----------------------------------------------------------------------------- the kernel side

# Runs through exec() in a namespace of its own, with the real builtins, so that a student's
# variables named `sum`, `open` or `eval` cannot break it. HELPERS (the lab's kernel code)
# defines make_helpers(user, context) -> {name: value}: what the expressions may use besides
# the student's variables. Nothing is left behind in the student's namespace.
RUNNER = """\
import base64, builtins, contextlib, io
import numpy as np

def run(user, helpers_source, context, group, items, kinds, error_prefix, mime):
    space = {"__builtins__": builtins, "__name__": "grader_kernel_helpers"}
    exec(helpers_source, space)
    helpers = space["make_helpers"](user, context)
    scope = dict(vars(builtins), np=np, **helpers)
    saved = {}
    for name, expression in items:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                value = eval(expression, {**user, **scope})
            if hasattr(value, "detach") and hasattr(value, "numpy"):  # a tensor (torch's, or alike)
                value = value.detach().cpu().numpy()
            value = np.asarray(value)
            if value.dtype.kind not in kinds:
                raise TypeError(f"not plain numbers or text: {value.dtype}")
            saved[name] = value
        except BaseException as exc:  # any answer may be broken: lose this item only
            if isinstance(exc, KeyboardInterrupt):
                raise
            saved[error_prefix + name] = np.asarray(f"{type(exc).__name__}: {exc}"[:300])
    buffer = io.BytesIO()
    np.savez(buffer, **saved)
    from IPython.display import publish_display_data
    publish_display_data({mime: base64.b64encode(buffer.getvalue()).decode("ascii")},
                         metadata={mime: {"group": group}})

run(USER, *ARGS)
"""

SNIPPET = """\
import builtins as _grader_builtins
try:
    _grader_builtins.exec({code!r}, {{"__builtins__": _grader_builtins,
                                     "USER": _grader_builtins.globals(), "ARGS": {args!r}}})
except _grader_builtins.Exception as _grader_error:
    _grader_builtins.print("grader capture failed:", _grader_builtins.repr(_grader_error))
finally:
    del _grader_builtins
"""


def snippet(point: Capture, helpers: str, context: dict, reference: bool = False) -> str:
    """The code the worker runs in the kernel right after `point.after`. `context` holds what
    the lab's helpers get besides the student's variables (plain values: a secret seed, sizes)."""
    items = tuple(item for item in point.items if item[0] in point.names_for(reference))
    args = (helpers, context, point.group, items, ALLOWED_KINDS, ERROR_PREFIX, MIME)
    return SNIPPET.format(code=RUNNER, args=args)


# ----------------------------------------------------------------------------- reading it

def _read_member(data: bytes, name: str) -> np.ndarray:
    """One .npy member, its header checked before anything is allocated."""
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
        raise EvidenceError(f"{name}: unsupported .npy version {version}")
    shape, fortran, dtype = read_header(f)
    if dtype.hasobject or dtype.kind not in ALLOWED_KINDS or dtype.fields is not None:
        raise EvidenceError(f"{name}: dtype {dtype} is not plain numbers or text")
    body = data[f.tell():]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected != len(body):
        raise EvidenceError(f"{name}: header says {shape} {dtype} ({expected} bytes), the member holds {len(body)}")
    array = np.frombuffer(body, dtype=dtype)
    return array.reshape(shape, order="F" if fortran else "C").copy()


def parse(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, np.ndarray]:
    """The arrays of an .npz archive given as bytes; EvidenceError if damaged, too big or not plain."""
    if len(data) > max_bytes:
        raise EvidenceError(f"{len(data)} bytes, over the {max_bytes}-byte limit")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            unpacked = sum(m.file_size for m in members)
            if len(members) > MAX_MEMBERS or unpacked > max_bytes:
                raise EvidenceError(f"{len(members)} arrays, {unpacked} bytes unpacked: over the limits")
            arrays = {}
            for member in members:
                if not member.filename.endswith(".npy"):
                    raise EvidenceError(f"unexpected member {member.filename!r}")
                name = member.filename[:-4]
                arrays[name] = _read_member(archive.read(member), name)
            return arrays
    except EvidenceError:
        raise
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, RuntimeError) as exc:
        raise EvidenceError(f"damaged or unreadable ({type(exc).__name__}: {exc})") from exc


def read_message(outputs: list, group: str) -> tuple[dict[str, np.ndarray], str]:
    """The arrays one capture sent (from the outputs of its execution), or ({}, why not).

    Exactly one evidence message for `group` must be there: none means the snippet never got
    that far (or was stopped); more than one, or one for another group, means the kernel sent
    messages of its own, and none of them is taken."""
    sent = [out for out in outputs if out.get("output_type") == "display_data" and MIME in out.get("data", {})]
    if not sent:
        return {}, "no evidence was sent (the kernel never got there, or the capture was stopped)"
    if len(sent) > 1:
        return {}, f"{len(sent)} evidence messages instead of one (the kernel sent its own): none taken"
    said = (sent[0].get("metadata") or {}).get(MIME) or {}
    if said.get("group") != group:
        return {}, "the evidence message names another capture: not taken"
    text = sent[0]["data"][MIME]
    if not isinstance(text, str) or len(text) > MAX_MESSAGE_BYTES * 4 // 3 + 4:
        return {}, "the evidence message is not text of a bounded size: not taken"
    try:
        arrays = parse(base64.b64decode(text, validate=True))
    except (EvidenceError, binascii.Error, ValueError) as exc:
        return {}, f"the evidence message is unusable ({exc})"
    return arrays, ""


def strip_messages(outputs: list) -> list:
    """The outputs without evidence messages (a student cell that sends one gains nothing by it,
    and the notebook and feedback page should not carry it)."""
    return [out for out in outputs if not (out.get("output_type") == "display_data"
                                           and MIME in out.get("data", {}))]


@dataclass(frozen=True)
class Displayed:
    """What one code cell of an executed notebook displayed: its PNG figures, and whether it
    stopped on an error. Read from the notebook the worker itself assembled from the kernel's
    messages (the pictures are the kernel's; that this cell displayed them is what happened)."""
    pngs: tuple[bytes, ...] = ()
    error: bool = False


def displayed(nb) -> dict[str, Displayed]:
    """Cell -> what it displayed. Cells are named by their nbgrader grade_id (which the grader's
    repair puts back when an editor dropped the metadata), else by their cell id."""
    shown = {}
    for cell in nb["cells"]:
        name = cells.name(cell)
        if cell.get("cell_type") != "code" or not name:
            continue
        outputs = cell.get("outputs", [])
        pngs = []
        for out in outputs:
            data = out.get("data", {}) if out.get("output_type") in ("display_data", "execute_result") else {}
            try:
                pngs.append(base64.b64decode(data["image/png"])) if isinstance(data.get("image/png"), str) else None
            except (binascii.Error, ValueError):
                continue
        shown[name] = Displayed(tuple(pngs), any(out.get("output_type") == "error" for out in outputs))
    return shown


# ----------------------------------------------------------------------------- the trusted store

class Store:
    """A submission's evidence as the worker received it: one .npz file per group, written by the
    worker into a folder of the submission's job folder (which no kernel sees)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def put(self, group: str, arrays: dict[str, np.ndarray], names: tuple[str, ...] = (), why: str = "") -> None:
        """Keep the arrays of `group`; each of `names` missing from them gets an error entry (`why`)."""
        arrays = {k: np.asarray(v) for k, v in arrays.items() if k in names or k.startswith(ERROR_PREFIX) or not names}
        for name in names:
            if name not in arrays and ERROR_PREFIX + name not in arrays:
                arrays[ERROR_PREFIX + name] = np.asarray(why or "not sent with its capture")
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{group}.", suffix=".part", dir=self.folder)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, self.folder / f"{group}.npz")

    def load(self) -> dict[str, np.ndarray]:
        """Every group kept, as one dict of "<group>.<item>" (and error entries)."""
        found: dict[str, np.ndarray] = {}
        if not self.folder.is_dir():
            return found
        for path in sorted(self.folder.glob("*.npz")):
            found.update(parse(path.read_bytes()))
        return found
