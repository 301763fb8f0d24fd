"""Sample submissions, built from the student notebook, and the score each one must get.

One table, SAMPLES. A row is a student notebook with the reference answers (read from the
source notebook's solution cells) or the blank answers, some cells replaced by id, and
optionally a last transformation of the file (delete a cell, strip metadata, break the
JSON, rename it). `lost` says how many points each graded cell loses against full marks;
full marks per cell come from the notebook's metadata, so rows for new graded cells only
need a new entry here.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nbformat

ALL = "all"  # every graded cell scores 0


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def reference_answers(source_nb) -> dict[str, str]:
    """Solution cell id -> the reference answer (the source cell without the solution markers)."""
    answers = {}
    for cell in source_nb.cells:
        if _meta(cell).get("solution"):
            lines = [line for line in cell.source.splitlines()
                     if line.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION")]
            answers[cell.id] = "\n".join(lines)
    return answers


def max_points(source_nb) -> dict[str, float]:
    return {_meta(c)["grade_id"]: float(_meta(c)["points"]) for c in source_nb.cells if _meta(c).get("grade")}


# ----------------------------------------------------------------------------- file transformations

def delete_cells(*ids: str) -> Callable[[dict], bytes]:
    def apply(nb: dict) -> bytes:
        nb["cells"] = [c for c in nb["cells"] if c.get("id") not in ids]
        return json.dumps(nb, indent=1).encode()
    return apply


def strip_nbgrader(keep_ids: bool = False) -> Callable[[dict], bytes]:
    """What an editor that does not know nbgrader may do: drop its metadata (and the cell ids)."""
    def apply(nb: dict) -> bytes:
        for cell in nb["cells"]:
            cell["metadata"].pop("nbgrader", None)
            cell["metadata"].pop("deletable", None)
            cell["metadata"].pop("editable", None)
            if not keep_ids:
                cell.pop("id", None)
        if not keep_ids:
            nb["nbformat_minor"] = 4
        return json.dumps(nb, indent=1).encode()
    return apply


def then(*steps: Callable[[dict], bytes]) -> Callable[[dict], bytes]:
    def apply(nb: dict) -> bytes:
        for step in steps:
            nb = json.loads(step(nb))
        return json.dumps(nb, indent=1).encode()
    return apply


def one_big_cell(nb: dict) -> bytes:
    """All code pasted into one cell, metadata gone: nothing left to match."""
    code = "\n\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                       for c in nb["cells"] if c["cell_type"] == "code")
    nb["cells"] = [{"cell_type": "code", "metadata": {}, "source": code, "outputs": [], "execution_count": None}]
    nb["nbformat_minor"] = 4
    return json.dumps(nb, indent=1).encode()


def truncate(nb: dict) -> bytes:
    """A download that stopped half-way: not valid JSON."""
    data = json.dumps(nb, indent=1).encode()
    return data[: len(data) // 2]


# ----------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class Sample:
    name: str                                   # also the student id
    edits: dict[str, str] = field(default_factory=dict)
    lost: dict[str, float] | str = field(default_factory=dict)
    lost_after: str | None = None               # every graded cell after this cell scores 0 too
    blank: bool = False                         # start from the blank student notebook
    transform: Callable[[dict], bytes] | None = None
    filename: str = "craft_lab.ipynb"
    status: str = "graded"                      # graded, review or failed
    says: str = ""                              # in the reason or the notes

    def expected(self, source_nb) -> dict[str, float]:
        """Points each graded cell must get, from the notebook's metadata and `lost`."""
        points = max_points(source_nb)
        if self.lost == ALL or self.status == "failed":
            return {g: 0.0 for g in points}
        expected = {g: max(0.0, p - self.lost.get(g, 0.0)) for g, p in points.items()}
        if self.lost_after:
            ids = [c.get("id") for c in source_nb.cells]
            for c in source_nb.cells[ids.index(self.lost_after) + 1:]:
                if _meta(c).get("grade"):
                    expected[_meta(c)["grade_id"]] = 0.0
        return expected

    def build(self, student_nb, answers: dict[str, str]) -> bytes:
        nb = copy.deepcopy(student_nb)
        sources = {} if self.blank else dict(answers)
        sources.update(self.edits)
        for cell in nb.cells:
            if cell.get("id") in sources:
                cell.source = sources[cell.id]
        data = json.loads(nbformat.writes(nb))
        return self.transform(data) if self.transform else json.dumps(data, indent=1).encode()


SPLIT = """children = list(model.children())
g = nn.Sequential(*children[:{n}])
h = nn.Sequential(model.avgpool, nn.Flatten(), {fc})"""
TRANSFORM = """transform = transforms.Compose([
    transforms.ToPILImage(),
    transforms.Resize({size}),
    transforms.CenterCrop(256),
    transforms.ToTensor(),
    transforms.Normalize(mean={mean}, std={std}),
])"""
IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
CRAFT = """craft = CraftTorch(input_to_latent_model=g, latent_to_logit_model=h,
                   number_of_concepts={k}, patch_size={patch}, batch_size=64, device=device)"""

DELETION = '''def deletion_curve_for(order):
    "Class-330 logit, averaged over the images, after deleting the first k concepts of order, k = 0..r."
    curve = []
    for k in range(len(order) + 1):
        u = U_images.copy()
        u[..., np.asarray(order[:k], dtype=int)] = 0
        activations = torch.from_numpy(u @ concept_bank_w)
        with torch.no_grad():
            logits = h(activations.permute(0, 3, 1, 2).to(device))
        curve.append(logits[:, RABBIT_CLASS].mean().item())
    return np.array(curve)


deletion_order = {order}
deletion_curve = deletion_curve_for(deletion_order)
random_curves = np.stack([deletion_curve_for(order) for order in {orders}])'''

SAMPLES: list[Sample] = [
    Sample("reference"),
    Sample("blank", blank=True, lost=ALL, says="not answered: answer_eval"),
    # One wrong answer per graded step: each loses that step's points and no others.
    Sample("train_mode", {"answer_eval": "# model.eval()  (forgotten, as in the handout)"},
           {"check_eval": 1, "check_model_untouched": 1}),
    Sample("g_7_children", {"answer_split": SPLIT.format(n=7, fc="model.fc")}, {"check_g": 1}),
    Sample("h_fresh_linear", {"answer_split": SPLIT.format(n=8, fc="nn.Linear(2048, 1000)")}, {"check_h": 2}),
    Sample("normalize_wrong", {"answer_transform": TRANSFORM.format(size=256, mean=[0.5] * 3, std=[0.5] * 3)},
           {"check_transform": 1}),
    Sample("resize_224", {"answer_transform": TRANSFORM.format(size=224, **IMAGENET)}, {"check_transform": 1}),
    Sample("preprocess_reversed",
           {"answer_preprocess": "images_preprocessed = torch.stack([transform(img) for img in images[::-1]])"},
           {"check_preprocess": 1}),
    Sample("patch_64", {"answer_craft": CRAFT.format(k=10, patch=64)}, {"check_craft": 1}),
    Sample("concepts_12", {"answer_craft": CRAFT.format(k=12, patch=80)}, {"check_craft": 1}),
    Sample("fit_unseeded",
           {"answer_fit": "crops, crops_u, concept_bank_w = craft.fit(images_preprocessed, class_id=RABBIT_CLASS)"},
           {"check_fit": 2}),
    Sample("importance_sorted", {"answer_importance": "importances = np.sort(craft.estimate_importance())"},
           {"check_importance": 1}),
    Sample("plot_missing", {"answer_plot_crops": "# craft.plot_concepts_crops(...)  (forgotten)"},
           {"check_plots": 2}),
    # Going further: one wrong answer per new task, each losing only its own points.
    Sample("gf_split3_fresh_linear",
           {"gf_answer_split3": "children = list(model.children())\ng3 = nn.Sequential(*children[:7])\n"
                                "h3 = nn.Sequential(model.layer4, model.avgpool, nn.Flatten(), nn.Linear(2048, 1000))"},
           {"gf_check_split3": 2}),
    Sample("gf_fit3_unseeded",
           {"gf_answer_fit3": "craft3 = CraftTorch(input_to_latent_model=g3, latent_to_logit_model=h3, "
                              "number_of_concepts=10, patch_size=80, batch_size=64, device=device)\n"
                              "crops3, crops_u3, concept_bank_w3 = craft3.fit(images_preprocessed, class_id=RABBIT_CLASS)"},
           {"gf_check_fit3": 1}),
    Sample("gf_local_is_global",
           {"gf_answer_local": "local_importances = craft.estimate_importance()\n"
                               "local_order = np.argsort(local_importances)[::-1]"},
           {"gf_check_local": 2}),
    Sample("gf_deletion_increasing",
           {"gf_answer_deletion": DELETION.format(order="np.argsort(importances)", orders="random_orders")},
           {"gf_check_deletion": 2}),
    Sample("gf_random_unseeded",
           {"gf_answer_deletion": DELETION.format(
               order="np.argsort(importances)[::-1]",
               orders="[np.random.permutation(craft.number_of_concepts) for _ in range(10)]")},
           {"gf_check_random": 1}),
    Sample("gf_auc_unnormalised",
           {"gf_answer_auc": "r = craft.number_of_concepts\nauc_importance = np.trapezoid(deletion_curve)\n"
                             "auc_random = np.trapezoid(random_curves, axis=1).mean()"},
           {"gf_check_auc": 1}),
    # Broken submissions: graded without stopping the batch, with a clear reason.
    Sample("syntax_error", {"answer_eval": "model.eval("}, {"check_eval": 1, "check_model_untouched": 1},
           says="answer_eval (SyntaxError"),
    Sample("endless_loop", {"answer_plot_maps": "while True:\n    pass"}, {"check_plots": 2},
           status="review", says="cell limit and was interrupted: answer_plot_maps"),
    Sample("kernel_dies", {"answer_importance": "import os\nos._exit(1)"}, lost_after="answer_importance",
           status="review", says="kernel died in answer_importance"),
    Sample("test_deleted", transform=delete_cells("check_h"), status="review",
           says="test cells missing from the submission (deleted?): check_h"),
    Sample("locked_edited", {"check_h": "print('OK: trust me')",
                             "answer_split": SPLIT.format(n=8, fc="nn.Linear(2048, 1000)")},
           {"check_h": 2}, says="provided cells edited, nbgrader puts the originals back: check_h"),
    Sample("renamed", filename="Copy of craft_lab (1).ipynb", says="submitted as 'Copy of craft_lab (1).ipynb'"),
    Sample("metadata_stripped", transform=strip_nbgrader(), says="nbgrader metadata was missing"),
    Sample("metadata_stripped_answer_gone", transform=then(delete_cells("answer_plot_maps"), strip_nbgrader()),
           lost={"check_plots": 2}, status="review", says="answer cells not found: answer_plot_maps"),
    Sample("not_the_lab", transform=one_big_cell, status="failed", says="does not look like craft_lab.ipynb"),
    Sample("invalid_json", transform=truncate, status="failed", says="invalid JSON"),
]


def write_samples(samples: list[Sample], folder: Path, source_path: Path, student_path: Path) -> None:
    """One folder per student id, as TAs receive them: <folder>/<name>/<filename>."""
    source = nbformat.read(source_path, as_version=4)
    student = nbformat.read(student_path, as_version=4)
    answers = reference_answers(source)
    for sample in samples:
        dest = folder / sample.name / sample.filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(sample.build(student, answers))
