"""The CRAFT lab's demo class: what `make demo` grades through the batch grader, as a TA would.

Each Sample (grader/samples.py) is the student notebook with some answers replaced, and the
points each graded cell loses against full marks. tests/submissions.py grades the full table.
"""
from __future__ import annotations

from grader.samples import ALL, Sample

# The original lab sheet's h: a fresh, untrained classifier head (the kit's first correction).
HANDOUT_H = """children = list(model.children())
g = nn.Sequential(*children[:8])
h = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Dropout(p=0.0),
                  nn.Linear(in_features=2048, out_features=1000, bias=True), nn.Identity())
h = h.to(device)"""

DEMO_CLASS = [
    Sample("reference"),
    Sample("blank", blank=True, lost=ALL, says="not answered: answer_eval"),
    Sample("handout_h", {"answer_split": HANDOUT_H}, {"check_h": 2}),
    Sample("train_mode", {"answer_eval": "# model.eval()  (forgotten)"},
           {"check_eval": 1, "check_model_untouched": 1}),
]
