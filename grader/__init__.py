"""The grading engine: collect, check and autograde a class of notebooks in sandboxes, verify, report.

The lab being graded is a package of grader/labs/ (grader/lab.py says what the engine asks of it);
kernel confinement is in grader/kernel/. See docs/ARCHITECTURE.md.
"""
