# The CRAFT lab kit. Two commands do everything on a fresh machine:
#   make demo   set up, generate the student notebook, run the solution offline, autograde it
#   make test   set up, then run the whole test suite (what CI runs)
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup demo student record check-sync test test-quick clean

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
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf .grading .pytest_cache
