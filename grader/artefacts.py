"""What the grader captures from a student's kernel, and how it reads it back.

The student's kernel runs the notebook with the visible tests only. At fixed points of that
run, right after given cells, the grader runs a small CAPTURE snippet in the same kernel (the
snippets are not stored in the notebook). Each snippet evaluates a few expressions on the
student's variables and saves the results as plain numpy arrays in
<run folder>/ARTEFACT_DIR/<group>.npz. Every item is guarded: a missing or broken variable
loses that item only (its error message is saved under ERROR_PREFIX + name instead).

Student code controls that kernel, so what it saves may be forged: the trusted side
(grader/verify.py) compares NUMBERS with a trusted reference run made through the same
snippets, so a forgery only pays if it holds the right numbers.

The PROBE is a random input the trusted grader writes into the run folder (write_probe) just
before the first snippet that reads it (after answer_split): the split and the layer3 split
are checked on it, so no answer can be tuned to a fixed input.

One table, CAPTURE_POINTS, names every artefact once (group.item) with the expression that
makes it; verify.py reads artefacts by these names only.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ARTEFACT_DIR = "craft_lab_artefacts"  # inside the run folder (the kernel's working directory)
PROBE_FILE = "probe.npy"              # inside ARTEFACT_DIR
PROBE_BEFORE = "answer_split"         # the probe is written just before this cell's snippet runs
PROBE_SHAPE = (2, 3, 256, 256)        # two images, as check_g and check_h use
SMALL_SIDE = 128                      # its top-left 128x128 corner, as gf_check_split3 uses
ERROR_PREFIX = "error."               # "error.split.g": why the item split.g could not be captured
MAX_FILE_BYTES = 64 * 2**20           # one group file (the largest, preprocess, is ~3 MB)
MAX_MEMBERS = 200
ALLOWED_KINDS = "biufU"               # bool, int, uint, float, unicode: no objects, no pickles


class ArtefactError(ValueError):
    """An artefact file that cannot be read safely (damaged, too big, not plain arrays)."""


@dataclass(frozen=True)
class CapturePoint:
    after: str                 # cell id: the snippet runs right after this cell
    group: str                 # file name: ARTEFACT_DIR/<group>.npz
    items: tuple[tuple[str, str], ...]  # (artefact name, expression evaluated in the kernel)


def _point(after: str, group: str, **items: str) -> CapturePoint:
    return CapturePoint(after, group, tuple((f"{group}.{name}", expr) for name, expr in items.items()))


# Expressions see the student's variables plus these helpers (defined in CAPTURE_CODE below):
#   _out(m, x): deep copy of module m in eval mode, applied to x under no_grad (m is untouched)
#   _first(n, side=None): the first n children of model, on the probe (memoised)
#   _probe(side=None): the probe, on `device`; with side, its top-left side x side corner
#   SMALL:      SMALL_SIDE
#   _item(name): an item this snippet already saved, as a tensor on `device`
#   _bn(m):     (sum, sum of squares) of every BatchNorm running statistic of m
#   _recorder(): the kit's recorder, read from the CraftTorch class (not the global `recorder`)
#   _fit_rng(): numpy's global generator state when the last CRAFT fit started
# Each point sits right after the last answer cell before the checks it serves, so it sees
# what those checks see (and, after answer_split, what continue_split is about to replace).
CALLS = "len(_recorder().plot_calls)"
CAPTURE_POINTS: tuple[CapturePoint, ...] = (
    _point("answer_eval", "eval",                               # check_eval
           model_training="model.training",
           modules_training="sum(bool(m.training) for m in model.modules())",
           bn="_bn(model)"),
    _point("answer_split", "split",                             # check_g, check_h
           g_is_module="isinstance(g, torch.nn.Module)",
           h_is_module="isinstance(h, torch.nn.Module)",
           g="_out(g, _probe())",
           first8="_first(8)",
           h="_out(h, _first(8))",
           model="_out(model, _probe())",
           fc_w="model.fc.weight[RABBIT_CLASS]",
           fc_b="model.fc.bias[RABBIT_CLASS]"),
    _point("answer_transform", "transform",                     # check_transform
           images="images[:3]",
           is_tensor="isinstance(transform(images[0]), torch.Tensor)",
           shape="tuple(transform(images[0]).shape)",
           dtype="str(transform(images[0]).dtype)",
           out="torch.stack([transform(img) for img in images[:3]])"),
    _point("answer_preprocess", "preprocess",                   # check_preprocess
           n_images="len(images)",
           is_tensor="isinstance(images_preprocessed, torch.Tensor)",
           shape="tuple(images_preprocessed.shape)",
           device="images_preprocessed.device.type",
           rows="images_preprocessed[[0, len(images) - 1]]",
           transformed="torch.stack([transform(images[0]), transform(images[len(images) - 1])])"),
    _point("answer_craft", "craft",                             # check_craft
           is_craft="isinstance(craft, _CraftTorch)",
           concepts="craft.number_of_concepts",
           patch="craft.patch_size",
           batch="craft.batch_size",
           device="str(craft.device)",
           kernel_device="str(device)",
           uses_g="craft.input_to_latent_model is g",
           uses_h="craft.latent_to_logit_model is h"),
    _point("answer_fit", "fit",                                 # check_fit, check_model_untouched
           crops_shape="tuple(crops.shape)",
           crops_ends="np.stack([np.asarray(crops[0]), np.asarray(crops[-1])])",
           u="crops_u",
           w="concept_bank_w",
           channels="_out(g, _probe(SMALL)).shape[1]",
           rng="_fit_rng()",
           threads="torch.get_num_threads()",
           class_id="craft.factorization.class_id",
           model_training="model.training",
           modules_training="sum(bool(m.training) for m in model.modules())",
           bn="_bn(model)"),
    _point("answer_importance", "importance",                   # check_importance
           value="importances",
           is_ndarray="isinstance(importances, np.ndarray)",
           sensitivity="craft.sensitivity.importances",
           concepts="craft.number_of_concepts"),
    # Plot calls the kit's recorder holds after each plot cell: which cell made which call.
    _point("check_importance", "plots_start", calls=CALLS),
    _point("answer_plot_image", "plot_image", calls=CALLS),
    _point("answer_plot_importances", "plot_importances", calls=CALLS),
    _point("answer_plot_crops", "plot_crops", calls=CALLS),
    _point("answer_plot_maps", "plots",                         # check_plots
           names="[str(call[0]) for call in _recorder().plot_calls]",
           on_cpu="[bool(call[1]) for call in _recorder().plot_calls]",
           counts="[int(call[2]) for call in _recorder().plot_calls]",
           n_images="len(images_preprocessed)"),
    _point("gf_answer_split3", "split3",                        # gf_check_split3
           g_is_module="isinstance(g3, torch.nn.Module)",
           h_is_module="isinstance(h3, torch.nn.Module)",
           g="_out(g3, _probe(SMALL))",
           first7="_first(7, SMALL)",
           h="_out(h3, _item('split3.g'))",
           model="_out(model, _probe(SMALL))"),
    _point("gf_answer_importance3", "fit3",                     # gf_check_fit3
           is_craft="isinstance(craft3, _CraftTorch)",
           distinct="craft3 is not craft",
           settings="(craft3.number_of_concepts, craft3.patch_size, craft3.batch_size)",
           device="str(craft3.device)",
           uses_split3="craft3.input_to_latent_model is g3 and craft3.latent_to_logit_model is h3",
           crops_shape="tuple(crops3.shape)",
           crops_ends="np.stack([np.asarray(crops3[0]), np.asarray(crops3[-1])])",
           u="crops_u3",
           w="concept_bank_w3",
           channels="_out(g3, _probe(SMALL)).shape[1]",
           rng="_fit_rng()",
           threads="torch.get_num_threads()",
           class_id="craft3.factorization.class_id",
           importances="importances3",
           is_ndarray="isinstance(importances3, np.ndarray)",
           sensitivity="craft3.sensitivity.importances",
           bn="_bn(model)"),
    _point("gf_local_before", "local_start", calls=CALLS),
    _point("gf_answer_local", "local_answer", calls=CALLS),
    _point("gf_answer_local_plot", "local",                     # gf_check_local
           value="local_importances",
           is_ndarray="isinstance(local_importances, np.ndarray)",
           order="local_order",
           names="[str(call[0]) for call in _recorder().plot_calls]",
           concepts="craft.number_of_concepts",
           expected="craft.estimate_importance(inputs=images_preprocessed[0])"),
    _point("gf_deletion_setup", "setup",                        # U before student code can touch it
           u_images="U_images",
           random_orders="random_orders"),
    _point("gf_answer_deletion_plot", "deletion",               # gf_check_deletion, _random, _auc
           order="deletion_order",
           curve="deletion_curve",
           random_curves="random_curves",
           auc_importance="auc_importance",
           auc_random="auc_random",
           importances="importances",
           w="craft.factorization.concept_bank_w",
           concepts="craft.number_of_concepts"),
    _point("gf_answer_recursion_select", "rec_select",          # gf_check_recursion_select
           parent="parent",
           parent_is_int="isinstance(parent, (int, np.integer))",
           sub_idx="sub_idx",
           u="crops_u",
           importances="importances"),
    _point("gf_answer_recursion_fit", "rec_fit",                # gf_check_recursion_fit
           is_craft="isinstance(craft_sub, _CraftTorch)",
           distinct="craft_sub is not craft and craft_sub is not craft3",
           uses_split3="craft_sub.input_to_latent_model is g3 and craft_sub.latent_to_logit_model is h3",
           settings="(craft_sub.number_of_concepts, craft_sub.patch_size)",
           side="images_preprocessed.shape[-1]",
           sub_idx="sub_idx",
           crops_shape="tuple(sub_crops.shape)",
           crops_ends="np.stack([np.asarray(sub_crops[0]), np.asarray(sub_crops[-1])])",
           source_ends="np.stack([np.asarray(crops[i]) for i in np.asarray(sub_idx)[[0, -1]]])",
           u="sub_u",
           w="sub_w",
           channels="_out(g3, _probe(SMALL)).shape[1]",
           rng="_fit_rng()",
           threads="torch.get_num_threads()",
           class_id="craft_sub.factorization.class_id"),
)

NAMES: frozenset[str] = frozenset(name for point in CAPTURE_POINTS for name, _ in point.items)

# The kernel side: CAPTURE_CODE runs through exec() in a namespace of its own, with the real
# builtins, so that a student's variable named `sum`, `open` or `eval` cannot break it. It
# reads the student's variables from USER; expressions see them too, under the real builtins,
# numpy, torch and the helpers (the names the expressions use are none of those).
CAPTURE_CODE = """\
import builtins, contextlib, copy, io, os, sys
import numpy as np
import torch

def capture(user, folder, group, items, probe_file, small, kinds, error_prefix):
    device = user.get("device", "cpu")
    memo, saved = {}, {}

    def _probe(side=None):
        probe = np.load(os.path.join(folder, probe_file), allow_pickle=False)
        return torch.from_numpy(np.ascontiguousarray(probe[..., :side, :side])).to(device)

    def _out(module, x):
        with torch.no_grad():
            return copy.deepcopy(module).eval()(x)

    def _first(n, side=None):
        if (n, side) not in memo:
            memo[n, side] = _out(torch.nn.Sequential(*list(user["model"].children())[:n]), _probe(side))
        return memo[n, side]

    def _item(name):
        return torch.from_numpy(saved[name]).to(device)

    def _bn(module):
        stats = [value.detach().double().cpu() for name, value in module.state_dict().items()
                 if name.endswith(("running_mean", "running_var", "num_batches_tracked"))]
        return np.array([[s.sum().item(), (s * s).sum().item()] for s in stats])

    def _recorder():
        return sys.modules["xplique.concepts"].CraftTorch._craft_lab_recorder

    def _fit_rng():
        state = _recorder().fit_rng_states[-1]
        return np.concatenate([np.asarray(state[1], dtype=np.int64), np.asarray(state[2:4], dtype=np.int64)])

    helpers = dict(vars(builtins), np=np, torch=torch, SMALL=small, _out=_out, _first=_first, _probe=_probe,
                   _item=_item, _bn=_bn, _recorder=_recorder, _fit_rng=_fit_rng,
                   _CraftTorch=getattr(sys.modules.get("xplique.concepts"), "CraftTorch", None))
    for name, expression in items:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                value = eval(expression, {**user, **helpers})
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().numpy()
            value = np.asarray(value)
            if value.dtype.kind not in kinds:
                raise TypeError(f"not plain numbers or text: {value.dtype}")
            saved[name] = value
        except BaseException as exc:  # any answer may be broken: lose this item only
            if isinstance(exc, KeyboardInterrupt):
                raise
            saved[error_prefix + name] = np.asarray(f"{type(exc).__name__}: {exc}"[:300])
    os.makedirs(folder, exist_ok=True)
    partial = os.path.join(folder, group + ".npz.part")
    with open(partial, "wb") as f:
        np.savez(f, **saved)
    os.replace(partial, os.path.join(folder, group + ".npz"))

capture(USER, *ARGS)
"""

SNIPPET = """\
import builtins as _craft_lab_builtins
try:
    _craft_lab_builtins.exec({code!r}, {{"__builtins__": _craft_lab_builtins,
                                        "USER": _craft_lab_builtins.globals(), "ARGS": {args!r}}})
except _craft_lab_builtins.Exception as _craft_lab_error:
    _craft_lab_builtins.print("grader capture failed:", _craft_lab_builtins.repr(_craft_lab_error))
finally:
    del _craft_lab_builtins
"""


def capture_source(point: CapturePoint, folder: str = ARTEFACT_DIR) -> str:
    """The snippet for one capture point; `folder` as the kernel sees it (relative: to its cwd)."""
    args = (str(folder), point.group, point.items, PROBE_FILE, SMALL_SIDE, ALLOWED_KINDS, ERROR_PREFIX)
    return SNIPPET.format(code=CAPTURE_CODE, args=args)


def captures(folder: str = ARTEFACT_DIR) -> dict[str, str]:
    """Cell id -> the snippet to run right after that cell, in notebook order."""
    return {point.after: capture_source(point, folder) for point in CAPTURE_POINTS}


CAPTURES: dict[str, str] = captures()


# ----------------------------------------------------------------------------- the probe

def write_probe(run_dir: Path, seed: int) -> Path:
    """Write the probe (float32 PROBE_SHAPE, standard normal from `seed`) where the snippets read it."""
    path = Path(run_dir) / ARTEFACT_DIR / PROBE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    probe = np.random.default_rng(seed).standard_normal(PROBE_SHAPE, dtype=np.float32)
    np.save(path, probe, allow_pickle=False)
    return path


# ----------------------------------------------------------------------------- reading back

def _read_member(data: bytes, name: str) -> np.ndarray:
    """One .npy member, its header checked before anything is allocated."""
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
        raise ArtefactError(f"{name}: unsupported .npy version {version}")
    shape, fortran, dtype = read_header(f)
    if dtype.hasobject or dtype.kind not in ALLOWED_KINDS or dtype.fields is not None:
        raise ArtefactError(f"{name}: dtype {dtype} is not plain numbers or text")
    body = data[f.tell():]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected != len(body):
        raise ArtefactError(f"{name}: header says {shape} {dtype} ({expected} bytes), file holds {len(body)}")
    array = np.frombuffer(body, dtype=dtype)
    return array.reshape(shape, order="F" if fortran else "C").copy()


def load(path: Path, max_bytes: int = MAX_FILE_BYTES) -> dict[str, np.ndarray]:
    """The arrays of one .npz artefact file; ArtefactError if it is damaged, too big or not plain arrays."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ArtefactError(f"{path.name} is {size} bytes, over the {max_bytes}-byte limit")
        arrays = {}
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_MEMBERS or sum(m.file_size for m in members) > max_bytes:
                raise ArtefactError(f"{path.name} holds {len(members)} arrays, "
                                    f"{sum(m.file_size for m in members)} bytes unpacked: over the limits")
            for member in members:
                if not member.filename.endswith(".npy"):
                    raise ArtefactError(f"{path.name}: unexpected member {member.filename!r}")
                name = member.filename[:-4]
                arrays[name] = _read_member(archive.read(member), f"{path.name}:{name}")
        return arrays
    except ArtefactError:
        raise
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, RuntimeError) as exc:
        raise ArtefactError(f"{path.name} is damaged or unreadable ({type(exc).__name__}: {exc})") from exc


def _plain_file_inside(path: Path, run_dir: Path) -> bool:
    """No link anywhere between run_dir and path: what is read is what the kernel wrote there."""
    here = path
    while here != run_dir and here != here.parent:
        if here.is_symlink():
            return False
        here = here.parent
    return path.is_file() and path.resolve().is_relative_to(run_dir.resolve())


def load_run(run_dir: Path) -> dict[str, np.ndarray]:
    """Every artefact of one run, by name (plus ERROR_PREFIX + name entries saying why one is missing).

    Only the names a group declares are taken from its file; a missing group file or a
    damaged one leaves its items missing, with the reason as their error entry.
    """
    folder = Path(run_dir) / ARTEFACT_DIR
    found: dict[str, np.ndarray] = {}
    for point in CAPTURE_POINTS:
        path = folder / f"{point.group}.npz"
        names = [name for name, _ in point.items]
        if not path.exists():
            reason = f"no capture after {point.after} (the kernel never got there, or the snippet was stopped)"
            found.update({ERROR_PREFIX + name: np.asarray(reason) for name in names})
            continue
        try:
            if not _plain_file_inside(path, Path(run_dir)):  # a link could point at another student's
                raise ArtefactError(f"{path.name} is not a plain file inside the run folder (a link?)")
            arrays = load(path)
        except ArtefactError as exc:
            found.update({ERROR_PREFIX + name: np.asarray(str(exc)) for name in names})
            continue
        for name in names:
            for key in (name, ERROR_PREFIX + name):
                if key in arrays:
                    found[key] = arrays[key]
    return found


@dataclass(frozen=True)
class Shown:
    """What one code cell of the executed notebook shows: how many figures, and whether it stopped on an error."""
    figures: int = 0
    error: bool = False

    def to_dict(self) -> dict:
        return {"figures": self.figures, "error": self.error}


def cell_outputs(nb) -> dict[str, Shown]:
    """Cell -> what that code cell shows, read from an executed notebook's JSON. Cells are named
    by their nbgrader grade_id (which the grader's repair puts back when an editor dropped the
    metadata and the cell ids with it), else by their cell id."""
    shown = {}
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        name = (meta.get("grade_id") if isinstance(meta, dict) else None) or cell.get("id")
        if cell.get("cell_type") == "code" and name:
            outputs = cell.get("outputs", [])
            shown[name] = Shown(
                figures=sum(1 for out in outputs if any(kind.startswith("image/") for kind in out.get("data", {}))),
                error=any(out.get("output_type") == "error" for out in outputs))
    return shown
