"""The sample submissions the tests grade, and the score each one must get.

One table, SAMPLES (the Sample type and the file transformations are in grader/samples.py,
shared with `make demo`). Add a row for each new graded cell or new way of failing.
"""
from __future__ import annotations

import json

import nbformat

from gpu_sample import gpu_edits
from grader.course import load
from grader.labs.craft_lab.samples import DEMO_CLASS, HANDOUT_H  # noqa: F401
from grader.samples import (  # noqa: F401
    ALL,
    Sample,
    delete_cells,
    max_points,
    one_big_cell,
    reference_answers,
    strip_nbgrader,
    then,
    truncate,
    write_samples,
)

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


def import_xplique_first(nb: dict) -> bytes:
    """A student who adds a cell at the very top importing Xplique (TensorFlow) before torch."""
    nb["cells"].insert(0, {"cell_type": "code", "metadata": {}, "source": "import xplique\n"
                           "from xplique.concepts import CraftTorch", "outputs": [], "execution_count": None})
    return json.dumps(nb, indent=1).encode()


SAMPLES: list[Sample] = [
    # The demo's class: the reference, the blank notebook, the handout's two mistakes.
    *DEMO_CLASS,
    # One wrong answer per graded step: each loses that step's points and no others.
    Sample("g_7_children", {"answer_split": SPLIT.format(n=7, fc="model.fc")}, {"check_g": 1}),
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
    Sample("gf_recursion_ascending",  # the right crops count, every dominated crop, the wrong order
           {"gf_answer_recursion_select": "parent = int(np.argmax(importances))\n"
                                          "dominated = crops_u.argmax(axis=1) == parent\n"
                                          "ranked = np.lexsort((crops_u[:, parent], ~dominated))\n"
                                          "sub_idx = ranked[:max(int(dominated.sum()), MIN_SUB_CROPS)]"},
           {"gf_check_recursion_select": 1}),
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
    Sample("xplique_first", transform=import_xplique_first, filename="Copy of craft_lab (1).ipynb",
           says="submitted as 'Copy of craft_lab (1).ipynb'"),
    # Written on a Colab GPU (device='cuda', .cuda(), ...): on the CPU-only grader, full marks.
    Sample("gpu_written", gpu_edits(reference_answers(nbformat.read(load().source_notebook, as_version=4)))),
    Sample("metadata_stripped", transform=strip_nbgrader(), says="nbgrader metadata was missing"),
    Sample("metadata_stripped_answer_gone", transform=then(delete_cells("answer_plot_maps"), strip_nbgrader()),
           lost={"check_plots": 2}, status="review", says="answer cells not found: answer_plot_maps"),
    Sample("not_the_lab", transform=one_big_cell, status="failed", says="does not look like craft_lab.ipynb"),
    Sample("invalid_json", transform=truncate, status="failed", says="invalid JSON"),
]


