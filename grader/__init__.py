"""Grading and release tooling for the CRAFT lab kit (see README, "For TAs" and "For maintainers")."""
