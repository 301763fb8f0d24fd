"""The lab as a student on a Colab GPU runtime writes it: CUDA hard-coded wherever a device shows.

`gpu_edits(reference_answers)` returns the answers with `device` replaced by literal CUDA
devices ('cuda', torch.device('cuda'), torch.device('cuda:0')), modules and tensors moved
with .cuda() / .to('cuda'), and the usual torch.cuda calls (empty_cache, synchronize,
manual_seed_all). Every answer stays correct on a GPU: the sample must get full marks from a
CPU-only grader whose kernel lets the CPU stand in for CUDA (grader/kernel/boot.py).
Images stay on the CPU (Task 4 and the plots require it, on a GPU too).
"""
from __future__ import annotations

# cell id -> (text in the reference answer, what a GPU student writes instead)
EDITS: dict[str, list[tuple[str, str]]] = {
    "answer_eval": [
        ("model.eval()", "model = model.to(torch.device('cuda:0'))\nmodel.eval()"),
    ],
    "answer_split": [
        ("g = nn.Sequential(*children[:8])", "g = nn.Sequential(*children[:8]).cuda()"),
        ("h = nn.Sequential(model.avgpool, nn.Flatten(), model.fc)",
         "h = nn.Sequential(model.avgpool, nn.Flatten(), model.fc).to('cuda')"),
    ],
    "answer_craft": [
        ("device=device)", "device='cuda')"),
    ],
    "answer_fit": [
        ("np.random.seed(SEED)", "torch.cuda.empty_cache()\nnp.random.seed(SEED)"),
        ("class_id=RABBIT_CLASS)", "class_id=RABBIT_CLASS)\ntorch.cuda.synchronize()"),
    ],
    "gf_answer_split3": [
        ("h3 = nn.Sequential(model.layer4, model.avgpool, nn.Flatten(), model.fc)",
         "h3 = nn.Sequential(model.layer4, model.avgpool, nn.Flatten(), model.fc).cuda()"),
    ],
    "gf_answer_fit3": [
        ("device=device)", "device=torch.device('cuda'))"),
    ],
    "gf_answer_importance3": [
        ("importances3 = craft3.estimate_importance(nb_design=4)",
         "torch.cuda.manual_seed_all(SEED)\nimportances3 = craft3.estimate_importance(nb_design=4)\n"
         "torch.cuda.synchronize()"),
    ],
    "gf_answer_recursion_fit": [
        ("device=device)", "device='cuda')"),
    ],
    "gf_answer_deletion": [
        ("activations = torch.from_numpy(u @ concept_bank_w)",
         "activations = torch.from_numpy(u @ concept_bank_w).to('cuda')"),
        ("h(activations.permute(0, 3, 1, 2).to(device))", "h(activations.permute(0, 3, 1, 2))"),
    ],
}


def gpu_edits(answers: dict[str, str]) -> dict[str, str]:
    """The GPU student's answers (cell id -> source), from the reference ones.

    Raises ValueError if a reference answer no longer holds the text an edit replaces, so a
    change of the lab cannot silently turn this sample back into the reference.
    """
    edited = dict(answers)
    for cell_id, replacements in EDITS.items():
        source = edited[cell_id]
        for old, new in replacements:
            if source.count(old) != 1:
                raise ValueError(f"gpu_edits: {cell_id} should hold {old!r} once; update tests/gpu_sample.py")
            source = source.replace(old, new)
        edited[cell_id] = source
    return edited
