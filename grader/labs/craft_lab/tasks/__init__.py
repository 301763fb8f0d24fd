"""The CRAFT lab's graded tasks, one module each, in notebook order (craft_lab/__init__.py lists them).

Each module holds everything about its task's grading: CAPTURES (what is taken from the student's
kernel, after which cell), REPLAYS (trusted functions run in a replay kernel on the student's own
data, shipped there as source: self-contained, their imports inside), `requests(c)` (the replays
this student needs: none when their inputs are the reference run's) and RULES (graded cell ->
verification rule)."""
