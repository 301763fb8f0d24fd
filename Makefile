# The CRAFT lab kit. Two commands do everything on a fresh machine:
#   make demo   set up, then grade a sample class offline through the batch grader, each score checked
#   make test   set up, then run the test suite (what CI runs; `make test-full` adds the full-size run)
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup demo student record check-sync test test-quick test-full clean

setup:
	bash scripts/setup.sh

demo: setup
	$(PY) -m grader demo

student: setup
	$(PY) -m grader student

record: setup
	$(PY) -m grader record

check-sync: setup
	$(PY) -m grader check-sync

test: setup
	$(PY) -m pytest

test-quick: setup
	$(PY) -m pytest -m "not slow and not fullsize"

test-full: setup
	$(PY) -m pytest -m fullsize

clean:
	rm -rf .grading .pytest_cache
