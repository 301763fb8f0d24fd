"""Insert (or refresh) the graded "Going further" part of the CRAFT lab's source notebook.

    .venv/bin/python scripts/add_going_further.py [path/to/craft_lab.ipynb]

Idempotent: every cell of the part has an id starting with `gf_`. Existing `gf_` cells
are removed, then the part is inserted again just before the final markdown cell
(`wrap_up`). A cell whose source did not change keeps its recorded outputs, so running
the script twice leaves the notebook byte-identical. After a change, regenerate the
student notebook (`python -m grader student`) and re-record the outputs nbval compares
against (`python -m grader record`).

The part (9 points):
  G1  concepts at layer3: split, fit, importances, comparison with layer4;
  G2  local explanation of image 0;
  G3  fidelity by concept deletion: importance order vs 10 seeded random orders, AUCs;
  and, in prose, the 16-concept limit of Xplique's plots and how patch size sets the crops.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "solutions" / "craft_lab" / "craft_lab.ipynb"
PREFIX = "gf_"
ANCHOR = "wrap_up"
NBVAL = "nbval-check-output"


def _meta(grade_id, *, grade=False, solution=False, locked=True, points=None):
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3,
            "solution": solution, "task": False}
    if points is not None:
        meta["points"] = points
    return meta


def md(cell_id, text):
    cell = nbformat.v4.new_markdown_cell(text.strip("\n"), id=cell_id)
    cell.metadata["nbgrader"] = _meta(cell_id)
    return cell


def locked(cell_id, code, check_output=False):
    cell = nbformat.v4.new_code_cell(code.strip("\n"), id=cell_id)
    cell.metadata["nbgrader"] = _meta(cell_id)
    if check_output:
        cell.metadata["tags"] = [NBVAL]
    return cell


def answer(cell_id, code):
    cell = nbformat.v4.new_code_cell(code.strip("\n"), id=cell_id)
    cell.metadata["nbgrader"] = _meta(cell_id, solution=True, locked=False)
    return cell


def check(cell_id, code, points):
    cell = nbformat.v4.new_code_cell(code.strip("\n"), id=cell_id)
    cell.metadata["nbgrader"] = _meta(cell_id, grade=True, points=points)
    return cell


# ----------------------------------------------------------------------------- the part

INTRO = md("gf_intro", r"""
## Going further (9 points)

Three more graded tasks, then two limits worth knowing. They build on what you made above:
`model`, `images_preprocessed`, the fitted `craft` and its `importances`.

- **G1**: find concepts one block earlier, at `layer3`, and compare them with the `layer4` ones.
- **G2**: explain a single image with its own (*local*) ranking of the concepts.
- **G3**: test the ranking: delete concepts in order of importance and watch the rabbit score.

G1 runs a second CRAFT fit, so it takes about as long as Task 6 did; G2 and G3 take seconds.
""")

# ---- G1: another layer

LAYER3_MD = md("gf_layer3_md", r"""
### Task G1 (3 points): concepts one block earlier

Nothing forces the cut to sit after `layer4`. One block earlier, after `layer3`, each
activation sees a smaller part of the image and is less tied to any class: expect concepts
that look more like textures and parts than like whole objects.

Make the new split, and keep $f = h_3 \circ g_3$ exact, as in Task 2:

- `g3`: the first **7** children of `model` (`conv1` ... `layer3`). For a 256x256 image it
  returns a 1024x16x16 map, non-negative again (`layer3` ends with a ReLU).
- `h3`: all the rest, reusing the modules of `model`: `model.layer4`, the average pooling,
  a flatten, and the trained `model.fc`.
""")

ANSWER_SPLIT3 = answer("gf_answer_split3", r"""
### BEGIN SOLUTION
children = list(model.children())
g3 = nn.Sequential(*children[:7])
h3 = nn.Sequential(model.layer4, model.avgpool, nn.Flatten(), model.fc)
### END SOLUTION
""")

CHECK_SPLIT3 = check("gf_check_split3", r"""
import copy
assert isinstance(g3, nn.Module) and isinstance(h3, nn.Module), (
    "g3 and h3 must be torch modules, e.g. nn.Sequential(...).")
# Checked on copies in evaluation mode, so this check does not depend on Task 1.
model_copy, g3_copy, h3_copy = copy.deepcopy((model, g3, h3))
for module in (model_copy, g3_copy, h3_copy):
    module.eval()
# A 128x128 probe keeps the check quick: g3 maps it to 1024x8x8 (a 256x256 image: 1024x16x16).
probe = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(SEED)).to(device)
with torch.no_grad():
    latent3 = g3_copy(probe)
    logits3 = h3_copy(latent3)
assert tuple(latent3.shape) == (1, 1024, 8, 8), (
    f"g3(x) has shape {tuple(latent3.shape)} for one 128x128 image; expected (1, 1024, 8, 8): "
    "g3 should be the first 7 children of the ResNet50 (conv1 to layer3).")
assert tuple(logits3.shape) == (1, 1000), (
    f"h3(g3(x)) has shape {tuple(logits3.shape)}; expected (1, 1000): h3 starts with model.layer4 "
    "and ends with the classifier.")
print("OK: g3 maps (1, 3, 128, 128) to", tuple(latent3.shape), "and h3 maps that to", tuple(logits3.shape))
### BEGIN HIDDEN TESTS
with torch.no_grad():
    reference_latent3 = nn.Sequential(*list(model_copy.children())[:7])(probe)
    expected = model_copy(probe)
assert torch.allclose(latent3, reference_latent3, atol=1e-5), "g3 differs from the first 7 children of model."
gap = (logits3 - expected).abs().max().item()
assert gap < 1e-4, (
    f"h3(g3(x)) differs from model(x) by up to {gap:.3g} logits: h3 must reuse model.layer4 and "
    "model.fc, not new layers.")
### END HIDDEN TESTS
""", points=2)

FIT3_MD = md("gf_fit3_md", r"""
Now run CRAFT at `layer3`, on the same images and with the same settings as in Tasks 5 to 7:

1. `craft3`: a new `CraftTorch` with `g3` and `h3`, 10 concepts, crops of 80 pixels,
   batches of 64, on `device` (keep `craft`: G2 and G3 use it);
2. `np.random.seed(SEED)` right before the fit, then fit `craft3` on `images_preprocessed`
   for `RABBIT_CLASS`, into `crops3, crops_u3, concept_bank_w3`;
3. `importances3`: its global importances, `craft3.estimate_importance(nb_design=4)`.

The crops are the very same as in Task 6 (same images, same crop size); only the
activations that describe them change, and W now has 1024 columns instead of 2048.

Why `nb_design=4`? Each Sobol evaluation now runs h3, which holds the whole `layer4`,
where at `layer4` it was a pooling and one matrix product. 4 designs instead of the
default 32 make the importances 8 times cheaper, and noisier: good enough to see which
concepts dominate, not to trust small differences. With a GPU and time to spare, try the
default and compare.
""")

ANSWER_FIT3 = answer("gf_answer_fit3", r"""
### BEGIN SOLUTION
craft3 = CraftTorch(input_to_latent_model=g3,
                    latent_to_logit_model=h3,
                    number_of_concepts=10,
                    patch_size=80,
                    batch_size=64,
                    device=device)
np.random.seed(SEED)
crops3, crops_u3, concept_bank_w3 = craft3.fit(images_preprocessed, class_id=RABBIT_CLASS)
### END SOLUTION
""")

ANSWER_IMPORTANCE3 = answer("gf_answer_importance3", r"""
### BEGIN SOLUTION
importances3 = craft3.estimate_importance(nb_design=4)
### END SOLUTION
""")

SHOW_FIT3 = locked("gf_show_fit3", r"""
print("crops3:", tuple(crops3.shape), " U3:", crops_u3.shape, " W3:", concept_bank_w3.shape,
      " importances3:", importances3.shape)
""", check_output=True)

CHECK_FIT3 = check("gf_check_fit3", r"""
import copy
# Expected sizes follow from craft3's settings and from your g3, so a mistake in the split
# above does not count twice here.
assert isinstance(craft3, CraftTorch), "craft3 must be a CraftTorch(...)."
assert craft3 is not craft, "craft3 must be a new CraftTorch; keep craft (layer4) as it is."
r3 = craft3.number_of_concepts
assert (r3, craft3.patch_size, craft3.batch_size) == (10, 80, 64), (
    f"craft3 has {r3} concepts, patch_size {craft3.patch_size}, batch_size {craft3.batch_size}; "
    "use 10, 80 and 64, as for craft.")
side = images_preprocessed.shape[-1]
n_crops3 = len(images_preprocessed) * ((side - craft3.patch_size) // int(0.8 * craft3.patch_size) + 1) ** 2
with torch.no_grad():
    channels3 = copy.deepcopy(g3).eval()(images_preprocessed[:1].to(device)).shape[1]
assert tuple(crops3.shape) == (n_crops3, 3, craft3.patch_size, craft3.patch_size), (
    f"crops3 has shape {tuple(crops3.shape)}; expected {(n_crops3, 3, craft3.patch_size, craft3.patch_size)}: "
    "fit craft3 on images_preprocessed.")
assert crops_u3.shape == (n_crops3, r3), f"U3 has shape {crops_u3.shape}; expected {(n_crops3, r3)}."
assert concept_bank_w3.shape == (r3, channels3), (
    f"W3 has shape {concept_bank_w3.shape}; expected {(r3, channels3)}: one row per concept, "
    "one column per channel of g3's output.")
assert recorder.fit_was_seeded_with(SEED), (
    "numpy's random generator was not freshly seeded when craft3.fit started: call "
    "np.random.seed(SEED) on the line right before craft3.fit(...).")
assert isinstance(importances3, np.ndarray) and importances3.shape == (r3,), (
    f"importances3 must be the array returned by craft3.estimate_importance(...), one value per concept ({r3},).")
assert np.isfinite(importances3).all(), "importances3 holds NaN or inf values."
assert craft3.sensitivity is not None, (
    "call craft3.estimate_importance(nb_design=4) without inputs, for the global importances.")
print(f"OK: {n_crops3} crops, U3 {crops_u3.shape}, W3 {concept_bank_w3.shape}, {r3} importances")
### BEGIN HIDDEN TESTS
assert craft3.input_to_latent_model is g3 and craft3.latent_to_logit_model is h3, "craft3 must use g3 and h3."
assert str(craft3.device) == str(device), f"craft3's device is {craft3.device!r}; pass device={device!r}."
assert craft3.factorization.class_id == RABBIT_CLASS, (
    f"craft3 was fitted with class_id={craft3.factorization.class_id}; use RABBIT_CLASS (330).")
assert craft3.factorization.inputs is images_preprocessed or torch.equal(craft3.factorization.inputs, images_preprocessed), (
    "fit craft3 on images_preprocessed.")
assert (crops_u3 >= 0).all() and (concept_bank_w3 >= 0).all(), "U3 and W3 from NMF must be non-negative."
assert np.allclose(importances3, craft3.sensitivity.importances), "importances3 must be craft3's global importances."
### END HIDDEN TESTS
""", points=1)

COMPARE_MD = md("gf_compare_md", r"""
Compare the two sets of concepts. For each layer, the next cell prints the concepts from
most to least important, how many crops each one *dominates* (holds the largest
coefficient of that crop's row of U), and the share of the total importance held by the
3 most important concepts. Then it plots both importance profiles, and the best crops of
the 3 most important `layer3` concepts (compare them with your Task 8 crops).
""")

COMPARE = locked("gf_compare", r"""
def describe(name, crops_u_, importances_):
    order = np.argsort(importances_)[::-1]
    dominated = np.bincount(crops_u_.argmax(axis=1), minlength=len(importances_))
    top3 = importances_[order[:3]].sum() / importances_.sum()
    print(f"{name}: concepts by importance {order.tolist()}")
    print(f"  crops each of them dominates:  {dominated[order].tolist()}")
    print(f"  the 3 most important hold {top3:.0%} of the total importance")

describe("layer4", crops_u, importances)
describe("layer3", crops_u3, importances3)

fig, axes = plt.subplots(1, 2, figsize=(10, 3), sharey=True)
for ax, (name, imp) in zip(axes, [("layer4", importances), ("layer3", importances3)]):
    ax.bar(range(len(imp)), np.sort(imp)[::-1] / imp.sum())
    ax.set_title(f"{name}: importances, largest first")
    ax.set_xlabel("rank")
axes[0].set_ylabel("share of the total")
plt.show()
craft3.plot_concepts_crops(nb_crops=5, nb_most_important_concepts=3)
craftlab.remind_if_offline()
""")

COMPARE_EXPECT_MD = md("gf_compare_expect_md", r"""
What to look for, with the pretrained model: `layer3` concepts tend to be local patterns
(a fur texture, an eye, a tuft of grass), `layer4` ones larger and more rabbit-specific
parts (a head, ears). The importance can also spread differently: through h3, every
concept passes through `layer4`, which mixes concepts non-linearly, and Sobol *total*
indices count those interactions too. In offline mode the numbers mean nothing; only the
shapes are real.
""")

# ---- G2: local explanations

LOCAL_MD = md("gf_local_md", r"""
### Task G2 (2 points): explain one image

The importances of Task 7 are *global*: an average over all the images. A single image can
rely on other concepts, or on the same ones in another order. Given images,
`craft.estimate_importance(inputs=...)` computes the importances for those images only
(and leaves the global ones stored in `craft` untouched).

1. `local_importances`: the importances of the concepts for image 0 alone
   (`images_preprocessed[0]`), one value per concept;
2. `local_order`: the concepts from most to least important for that image;
3. in the cell after, plot image 0 with `craft.plot_image_concepts(...)` and
   `display_importance_order=DisplayImportancesOrder.LOCAL`, and compare it with your plot
   of image 0 in Task 8, which used the global order. A concept keeps its colour in both:
   Xplique assigns colours by global rank.
""")

LOCAL_BEFORE = locked("gf_local_before", r"""
plots_before_local = len(recorder.plot_calls)  # the check below looks at the plots made after this line
print("global order of the concepts:", np.argsort(importances)[::-1].tolist())
""")

ANSWER_LOCAL = answer("gf_answer_local", r"""
### BEGIN SOLUTION
local_importances = craft.estimate_importance(inputs=images_preprocessed[0])
local_order = np.argsort(local_importances)[::-1]
### END SOLUTION
""")

ANSWER_LOCAL_PLOT = answer("gf_answer_local_plot", r"""
### BEGIN SOLUTION
craft.plot_image_concepts(images_preprocessed[0], display_importance_order=DisplayImportancesOrder.LOCAL)
### END SOLUTION
""")

SHOW_LOCAL = locked("gf_show_local", r"""
print("local_importances:", np.shape(local_importances), " local_order:", np.shape(local_order))
""", check_output=True)

CHECK_LOCAL = check("gf_check_local", r"""
n_concepts = craft.number_of_concepts
assert isinstance(local_importances, np.ndarray) and local_importances.shape == (n_concepts,), (
    f"local_importances must be the array returned by craft.estimate_importance(inputs=...), "
    f"of shape ({n_concepts},).")
assert np.isfinite(local_importances).all(), "local_importances holds NaN or inf values."
assert sorted(np.asarray(local_order).tolist()) == list(range(n_concepts)), (
    f"local_order must hold each concept index 0..{n_concepts - 1} once.")
assert np.all(np.diff(local_importances[np.asarray(local_order)]) <= 0), (
    "local_order must go from the most to the least important concept (np.argsort, reversed).")
made = [call[0] for call in recorder.plot_calls[plots_before_local:]]
assert "plot_image_concepts" in made, (
    "plot image 0 with craft.plot_image_concepts(..., display_importance_order=DisplayImportancesOrder.LOCAL).")
print("OK: local importances for image 0; its concepts, most important first:", np.asarray(local_order).tolist())
### BEGIN HIDDEN TESTS
reference_local = craft.estimate_importance(inputs=images_preprocessed[0])
tolerance = 1e-3 * np.abs(reference_local).max()
assert np.allclose(local_importances, reference_local, rtol=1e-3, atol=tolerance), (
    "local_importances are not the importances of image 0 alone: pass inputs=images_preprocessed[0].")
assert np.all(np.diff(reference_local[np.asarray(local_order)]) <= tolerance), (
    "local_order does not rank the concepts by their importance for image 0.")
### END HIDDEN TESTS
""", points=2)

# ---- G3: fidelity by deletion

DELETION_MD = md("gf_deletion_md", r"""
### Task G3 (4 points): is the ranking faithful? Delete concepts

An importance ranking makes a claim: *these concepts matter most for the rabbit score*.
Put it to the test: delete the concepts one at a time, most important first, and follow
the class-330 logit. If the ranking is faithful, the logit falls faster than when the same
concepts are deleted in a random order. (This is the concept version of the *deletion*
test used for saliency maps; the CRAFT paper uses it to compare ways of ranking concepts.)

In CRAFT's terms, deleting a concept is simple: set its coefficients in U to zero, rebuild
the activations from what is left, A = U·W, and run h on them.
""")

DELETION_DEF_MD = md("gf_deletion_def_md", r"""
Precisely, with r = `craft.number_of_concepts` (10) and the N images:

- `U_images = craft.transform(images_preprocessed)` (next cell), shape (N, 8, 8, r): the
  coefficients of each concept at each of the 8x8 positions of each image;
- deleting concept c sets `U[..., c] = 0` at every position of every image; the activations
  are then `U @ concept_bank_w`, shape (N, 8, 8, 2048), which h takes as (N, 2048, 8, 8);
- for an order of the r concepts, the **deletion curve** has r + 1 points: `curve[k]` is
  the class-330 logit, averaged over the N images, after deleting the first k concepts of
  the order (k = 0 ... r). `curve[0]` deletes nothing: it is the logit of the NMF
  reconstruction U·W, close to but not exactly that of g(x). `curve[r]` deletes
  everything: A = 0;
- its **area** takes the x axis from 0 to 1 (the fraction of concepts deleted):
  `np.trapezoid(curve, dx=1 / r)`. It is the average logit along the way: the lower it is,
  the faster the order destroys the rabbit evidence.
""")

DELETION_TODO_MD = md("gf_deletion_todo_md", r"""
Your part:

1. complete `deletion_curve_for(order)`: it returns the curve of `order` as an array of
   r + 1 floats (run all N images through h in one batch, on `device`, under
   `torch.no_grad()`);
2. `deletion_order`: the concepts by decreasing global importance (`importances`, Task 7),
   and `deletion_curve`, its curve;
3. `random_curves`: the curves of the 10 `random_orders` given below, one row each,
   shape (10, r + 1);
4. `auc_importance`: the area under `deletion_curve`; `auc_random`: the mean of the 10 areas
   under the random curves;
5. plot `deletion_curve` and the random curves in one figure.
""")

DELETION_SETUP = locked("gf_deletion_setup", r"""
U_images = craft.transform(images_preprocessed)  # (N, 8, 8, r): concept coefficients at each position
rng = np.random.default_rng(SEED)
random_orders = np.stack([rng.permutation(craft.number_of_concepts) for _ in range(10)])
""")

SHOW_DELETION_SETUP = locked("gf_show_deletion_setup", r"""
print("U_images:", U_images.shape, " random_orders:", random_orders.shape)
""", check_output=True)

ANSWER_DELETION = answer("gf_answer_deletion", r"""
def deletion_curve_for(order):
    "Class-330 logit, averaged over the images, after deleting the first k concepts of order, k = 0..r."
    ### BEGIN SOLUTION
    curve = []
    for k in range(len(order) + 1):
        u = U_images.copy()
        u[..., np.asarray(order[:k], dtype=int)] = 0       # delete the first k concepts everywhere
        activations = torch.from_numpy(u @ concept_bank_w)  # (N, 8, 8, 2048)
        with torch.no_grad():
            logits = h(activations.permute(0, 3, 1, 2).to(device))
        curve.append(logits[:, RABBIT_CLASS].mean().item())
    return np.array(curve)
    ### END SOLUTION


### BEGIN SOLUTION
deletion_order = np.argsort(importances)[::-1]
deletion_curve = deletion_curve_for(deletion_order)
random_curves = np.stack([deletion_curve_for(order) for order in random_orders])
### END SOLUTION
""")

ANSWER_AUC = answer("gf_answer_auc", r"""
### BEGIN SOLUTION
r = craft.number_of_concepts
auc_importance = np.trapezoid(deletion_curve, dx=1 / r)
auc_random = np.trapezoid(random_curves, dx=1 / r, axis=1).mean()
### END SOLUTION
""")

ANSWER_DELETION_PLOT = answer("gf_answer_deletion_plot", r"""
### BEGIN SOLUTION
x = np.linspace(0, 1, len(deletion_curve))
plt.figure(figsize=(6, 4))
for curve in random_curves:
    plt.plot(x, curve, color="grey", alpha=0.4, linewidth=1)
plt.plot(x, random_curves.mean(axis=0), "k--", label=f"random orders, mean (area {auc_random:.2f})")
plt.plot(x, deletion_curve, "C3", linewidth=2.5, label=f"decreasing importance (area {auc_importance:.2f})")
plt.xlabel("fraction of the concepts deleted")
plt.ylabel(f"logit of class {RABBIT_CLASS}, mean over the images")
plt.legend()
plt.show()
### END SOLUTION
""")

SHOW_DELETION = locked("gf_show_deletion", r"""
print("deletion_curve:", np.shape(deletion_curve), " random_curves:", np.shape(random_curves))
""", check_output=True)

CHECK_DELETION = check("gf_check_deletion", r"""
import copy
n_concepts = craft.number_of_concepts
assert sorted(np.asarray(deletion_order).tolist()) == list(range(n_concepts)), (
    f"deletion_order must hold each concept index 0..{n_concepts - 1} once.")
assert np.shape(deletion_curve) == (n_concepts + 1,), (
    f"deletion_curve has shape {np.shape(deletion_curve)}; expected ({n_concepts + 1},): one point "
    f"for each number of deleted concepts, 0 to {n_concepts}.")
assert np.isfinite(deletion_curve).all(), "deletion_curve holds NaN or inf values."
# With every concept deleted, the activations are all zero, whatever the order.
h_copy = copy.deepcopy(h).eval()
with torch.no_grad():
    zeros = torch.zeros(1, concept_bank_w.shape[1], *U_images.shape[1:3], device=device)
    all_deleted = h_copy(zeros)[0, RABBIT_CLASS].item()
assert abs(deletion_curve[-1] - all_deleted) < 1e-3, (
    f"deletion_curve[-1] is {deletion_curve[-1]:.4g}, but with every concept deleted (A = 0) "
    f"h gives {all_deleted:.4g}.")
print(f"OK: a deletion curve of {n_concepts + 1} points, from {deletion_curve[0]:.3f} to {deletion_curve[-1]:.3f}")
### BEGIN HIDDEN TESTS
if "_gf_reference_u" not in globals():  # U recomputed once for the hidden checks of G3
    _gf_reference_u = craft.transform(images_preprocessed)

def reference_deletion_curves(orders):
    u_all = _gf_reference_u
    w = craft.factorization.concept_bank_w
    curves = []
    for order in orders:
        curve = []
        for k in range(len(order) + 1):
            u = u_all.copy()
            u[..., np.asarray(order[:k], dtype=int)] = 0
            with torch.no_grad():
                logits = h_copy(torch.from_numpy(u @ w).permute(0, 3, 1, 2).to(device))
            curve.append(logits[:, RABBIT_CLASS].double().mean().item())
        curves.append(curve)
    return np.array(curves)

assert np.all(np.diff(np.asarray(importances)[np.asarray(deletion_order)]) <= 0), (
    "deletion_order must go from the most to the least important concept (decreasing importances).")
reference = reference_deletion_curves([np.asarray(deletion_order)])[0]
assert np.allclose(deletion_curve, reference, rtol=1e-3, atol=1e-3), (
    "deletion_curve differs from the reference: curve[k] is the class-330 logit, averaged over the "
    "images, with the first k concepts of deletion_order set to 0 in U.")
### END HIDDEN TESTS
""", points=2)

CHECK_RANDOM = check("gf_check_random", r"""
n_concepts = craft.number_of_concepts
assert np.shape(random_curves) == (len(random_orders), n_concepts + 1), (
    f"random_curves has shape {np.shape(random_curves)}; expected {(len(random_orders), n_concepts + 1)}: "
    "one curve per order in random_orders.")
assert np.isfinite(random_curves).all(), "random_curves holds NaN or inf values."
# Whatever the order, nothing deleted is the same start and everything deleted the same end.
assert np.ptp(random_curves[:, 0]) < 1e-3 and np.ptp(random_curves[:, -1]) < 1e-3, (
    "the random curves should all start at the same value (nothing deleted) and end at the same "
    "value (everything deleted).")
print(f"OK: {len(random_curves)} random deletion curves of {n_concepts + 1} points")
### BEGIN HIDDEN TESTS
import copy
h_copy = copy.deepcopy(h).eval()

if "_gf_reference_u" not in globals():  # U recomputed once for the hidden checks of G3
    _gf_reference_u = craft.transform(images_preprocessed)

def reference_deletion_curves(orders):
    u_all = _gf_reference_u
    w = craft.factorization.concept_bank_w
    curves = []
    for order in orders:
        curve = []
        for k in range(len(order) + 1):
            u = u_all.copy()
            u[..., np.asarray(order[:k], dtype=int)] = 0
            with torch.no_grad():
                logits = h_copy(torch.from_numpy(u @ w).permute(0, 3, 1, 2).to(device))
            curve.append(logits[:, RABBIT_CLASS].double().mean().item())
        curves.append(curve)
    return np.array(curves)

seeded = np.random.default_rng(SEED)
expected_orders = np.stack([seeded.permutation(n_concepts) for _ in range(10)])
reference = reference_deletion_curves(expected_orders)
assert np.allclose(random_curves, reference, rtol=1e-3, atol=1e-3), (
    "random_curves[i] must be the deletion curve of random_orders[i], in the order given.")
### END HIDDEN TESTS
""", points=1)

CHECK_AUC = check("gf_check_auc", r"""
for name, value, curves in (("auc_importance", auc_importance, np.atleast_2d(deletion_curve)),
                            ("auc_random", auc_random, np.asarray(random_curves))):
    assert np.ndim(value) == 0 and np.isfinite(value), f"{name} must be one finite number."
    # With the x axis from 0 to 1, an area is an average of the curve: it lies within its range.
    assert curves.min() - 1e-6 <= value <= curves.max() + 1e-6, (
        f"{name} = {float(value):.4g} is outside the range of its curve(s), "
        f"[{curves.min():.4g}, {curves.max():.4g}]: take the x axis from 0 to 1 (dx = 1 / r).")
print(f"OK: auc_importance {float(auc_importance):.3f}, auc_random {float(auc_random):.3f}")
### BEGIN HIDDEN TESTS
n_concepts = craft.number_of_concepts
expected = np.trapezoid(deletion_curve, dx=1 / n_concepts)
assert np.isclose(auc_importance, expected, rtol=1e-6, atol=1e-6), (
    f"auc_importance is {float(auc_importance):.4g}; np.trapezoid(deletion_curve, dx=1 / r) is {expected:.4g}.")
expected = np.trapezoid(random_curves, dx=1 / n_concepts, axis=1).mean()
assert np.isclose(auc_random, expected, rtol=1e-6, atol=1e-6), (
    f"auc_random is {float(auc_random):.4g}; the mean of the areas under the random curves is {expected:.4g}.")
### END HIDDEN TESTS
""", points=1)

DELETION_REPORT = locked("gf_deletion_report", r"""
areas = np.trapezoid(random_curves, dx=1 / craft.number_of_concepts, axis=1)
print(f"area under the curve, decreasing importance: {auc_importance:.3f}")
print(f"area under the curve, random orders:         {auc_random:.3f} "
      f"(mean of {len(areas)}, from {areas.min():.3f} to {areas.max():.3f})")
print(f"the importance order has a smaller area than {int((areas > auc_importance).sum())} "
      f"of the {len(areas)} random orders")
craftlab.remind_if_offline()
""")

DELETION_DISCUSS_MD = md("gf_deletion_discuss_md", r"""
**What to expect.** In the offline grading run (8 synthetic images, random weights), the
importance order won clearly: an area of 4.9, against 16.9 on average for the random
orders (10.8 to 23.6), smaller than all 10 of them. With random weights it could as well
have gone the other way, which is why no check above assumes a direction.

With the pretrained model, expect the importance order to pull the rabbit logit down
faster than most random orders, but not as a law. A Sobol total index measures how much
the logit *varies* when a concept is masked, not in which direction it moves: a concept
whose presence *lowers* the rabbit score ranks as high as one that raises it, and deleting
it early makes the curve go up. On rabbit images the strong concepts are mostly evidence
for the rabbit, so the importance order usually wins; where the curve goes up instead,
look at the crops of the concept responsible.
""")

# ---- limits: number of concepts, patch size

LIMITS_MD = md("gf_limits_md", r"""
### Two limits to know

**At most 16 concepts.** `CraftTorch(number_of_concepts=20)`, which is even the default,
fits without complaint, then fails at the very end of the global `estimate_importance()`,
once all the Sobol evaluations have been paid for: `RuntimeError: Not enough colors in
cmaps (16)`. The cause is in the plotting, not in the method: Xplique gives each concept a
fixed colour for all its plots, from a list of 16 (6 of its own and the 10 of matplotlib's
`tab10`), and refuses to store more importances than it has colours. NMF has no such limit;
with Xplique 2.0.2, stay at 16 concepts or fewer.
""")

PATCH_MD = md("gf_patch_md", r"""
**The crop size sets the number of crops.** CRAFT slides a window of `patch_size` = p pixels
over each 256x256 image with a stride of `int(0.8 * p)`, and keeps only the windows that fit
entirely. A side thus holds `(256 - p) // int(0.8 * p) + 1` crops, an image the square of
that, and the pixels past the last window (at the right and bottom) are in no crop at all.
Every crop is resized to 256x256 before g, so each one costs the same whatever its size:
smaller crops mean more crops, a longer fit, and concepts of smaller things. The next cell
counts them, and checks the formula with `torch.nn.functional.unfold`, the call Xplique
uses to cut the crops.
""")

PATCH_SIZES = locked("gf_patch_sizes", r"""
side = images_preprocessed.shape[-1]
print(f"{'patch':>5} {'stride':>6} {'crops/image':>11} {'crops in all':>12} {'edge in no crop':>15}")
for p in (32, 64, 80, 128, 160):
    stride = int(0.8 * p)
    per_side = (side - p) // stride + 1
    windows = torch.nn.functional.unfold(torch.zeros(1, 1, side, side), kernel_size=p, stride=stride).shape[-1]
    assert windows == per_side ** 2
    edge = side - ((per_side - 1) * stride + p)
    print(f"{p:>5} {stride:>6} {per_side ** 2:>11} {len(images_preprocessed) * per_side ** 2:>12} {edge:>12} px")
""", check_output=True)

PATCH_AFTER_MD = md("gf_patch_after_md", r"""
With the lab's 80-pixel crops, 9 per image, the last 48 rows and columns of every image are
never cropped: a concept that lives only there cannot be found. 64-pixel crops would give
16 per image (a fit almost twice as long); 160-pixel crops only one, barely smaller than
the image.
""")

CELLS = [
    INTRO,
    LAYER3_MD, ANSWER_SPLIT3, CHECK_SPLIT3,
    FIT3_MD, ANSWER_FIT3, ANSWER_IMPORTANCE3, SHOW_FIT3, CHECK_FIT3,
    COMPARE_MD, COMPARE, COMPARE_EXPECT_MD,
    LOCAL_MD, LOCAL_BEFORE, ANSWER_LOCAL, ANSWER_LOCAL_PLOT, SHOW_LOCAL, CHECK_LOCAL,
    DELETION_MD, DELETION_DEF_MD, DELETION_TODO_MD, DELETION_SETUP, SHOW_DELETION_SETUP,
    ANSWER_DELETION, ANSWER_AUC, ANSWER_DELETION_PLOT, SHOW_DELETION,
    CHECK_DELETION, CHECK_RANDOM, CHECK_AUC, DELETION_REPORT, DELETION_DISCUSS_MD,
    LIMITS_MD, PATCH_MD, PATCH_SIZES, PATCH_AFTER_MD,
]


def apply(path: Path = NOTEBOOK) -> int:
    nb = nbformat.read(path, as_version=4)
    old = {c.id: c for c in nb.cells if c.get("id", "").startswith(PREFIX)}
    kept = [c for c in nb.cells if not c.get("id", "").startswith(PREFIX)]
    ids = [c.id for c in CELLS]
    assert len(set(ids)) == len(ids) and all(i.startswith(PREFIX) for i in ids)
    clash = set(ids) & {c.get("id") for c in kept}
    if clash:
        raise SystemExit(f"cell ids already used outside this part: {sorted(clash)}")
    anchor = next((i for i, c in enumerate(kept) if c.get("id") == ANCHOR), None)
    if anchor is None:
        raise SystemExit(f"{path}: no cell with id {ANCHOR!r}; the part goes just before it.")
    for cell in CELLS:  # keep the recorded outputs of unchanged cells (idempotent re-runs)
        previous = old.get(cell.id)
        if (cell.cell_type == "code" and previous is not None and previous.cell_type == "code"
                and previous.source == cell.source):
            cell.outputs = previous.outputs
            cell.execution_count = previous.execution_count
    if nb.nbformat_minor < 5:
        nb.nbformat_minor = 5  # cell ids
    nb.cells = kept[:anchor] + CELLS + kept[anchor:]
    nbformat.validate(nb)
    nbformat.write(nb, path)
    points = sum(c.metadata["nbgrader"].get("points", 0) for c in CELLS)
    print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
          f"{'replaced' if old else 'inserted'} the Going further part "
          f"({len(CELLS)} cells, {points} points) before {ANCHOR!r}")
    return 0


if __name__ == "__main__":
    sys.exit(apply(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else NOTEBOOK))
