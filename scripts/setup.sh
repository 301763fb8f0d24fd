#!/usr/bin/env bash
# One-command, idempotent setup of the kit's Python environment in .venv/.
#
#   bash scripts/setup.sh            (or: make setup)
#   PYTHON=python3.12 make setup     use this Python (a command, or a version such as 3.12)
#   CRAFT_LAB_VENV=dir make setup    build the venv in dir instead of .venv/
#   bash scripts/setup.sh --check    only run the import check on the venv
#
# The kit runs on Python 3.13, 3.12 and 3.11; without PYTHON the newest one found is used.
# Re-running it is cheap: the pins are hashed and the install is skipped when the venv
# already holds exactly this set. Delete the venv to start over (or to change its Python).
# It also installs bubblewrap, the grading sandbox, when it can (root on Debian/Ubuntu), and ends
# with `python -m grader doctor`: how grading will run on this machine, and the fix for each
# missing piece (a refusal there does not fail setup).
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${CRAFT_LAB_VENV:-.venv}
SUPPORTED="3.13 3.12 3.11"  # newest first

say() { echo "setup: $*"; }
die() { echo "setup: $*" >&2; exit 1; }

# "3.13" for a Python that runs, nothing for a command that does not.
py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true; }

# Prints a command that runs Python $1 (e.g. 3.13), or fails. pyenv puts a shim for every
# version it holds on PATH, but a shim only runs the activated ones: its folders are tried too.
find_python() {
    local cmd
    for cmd in "python$1" $(ls -d "${PYENV_ROOT:-${HOME:-/nonexistent}/.pyenv}/versions/$1".*/bin/"python$1" 2>/dev/null | sort -V | tail -n 1); do
        if [ "$(py_version "$cmd")" = "$1" ]; then echo "$cmd"; return 0; fi
    done
    return 1
}

# The Python to build the venv with: PYTHON if set, else the newest supported one found.
pick_python() {
    local v
    case "${PYTHON:-}" in
        "") for v in $SUPPORTED; do find_python "$v" && return 0; done; return 1 ;;
        3.*|python3.*) find_python "${PYTHON#python}" ;;
        *) echo "$PYTHON" ;;
    esac
}

# The grader runs each submission inside bubblewrap (bwrap). As root with apt-get it is installed
# here; otherwise one line says how. Setup goes on either way.
ensure_bubblewrap() {
    command -v bwrap >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing bubblewrap (the grading sandbox): apt-get update && apt-get install -y bubblewrap"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null && return 0
    fi
    echo "setup: WARNING bubblewrap is not installed, and grading refuses to run without it (unless" \
         "given --allow-unsafe). Install it: sudo apt-get install bubblewrap (Debian/Ubuntu)" \
         "or sudo dnf install bubblewrap (Fedora)." >&2
}

check_imports() {
    say "checking that the key packages import ($VENV)"
    "$VENV/bin/python" - <<'EOF'
import importlib.util, os, sys
import torch, torchvision  # torch first: the kit's import order
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow, xplique, nbgrader, nbval
from xplique.concepts import CraftTorch
assert importlib.util.find_spec("triton") is None, "triton is installed: it crashes beside TensorFlow"
print(f"setup: Python {sys.version.split()[0]}, torch {torch.__version__}, "
      f"torchvision {torchvision.__version__}, tensorflow {tensorflow.__version__}, "
      f"xplique {xplique.__version__}, nbgrader {nbgrader.__version__}")
EOF
}

# What grading will look like here (grader/doctor.py); its verdict never fails setup.
doctor() {
    say "checking how grading will run on this machine (python -m grader doctor)"
    "$VENV/bin/python" -m grader doctor || true
}

if [ "${1:-}" = "--check" ]; then check_imports; exit; fi

ensure_bubblewrap

if [ -x "$VENV/bin/python" ] && [ -z "${PYTHON:-}" ]; then
    PY=$VENV/bin/python  # an existing venv keeps its Python
else
    PY=$(pick_python) || true
fi
version=$(py_version "${PY:-none}")
if [[ " $SUPPORTED " != *" ${version:-none} "* ]]; then
    if [ -z "${PY:-}" ]; then problem="found no ${PYTHON:-Python 3.13, 3.12 or 3.11}"
    elif [ -z "$version" ]; then problem="$PY does not run"
    else problem="$PY is Python $version"; fi
    die "$problem. The kit runs on Python 3.13, 3.12 or 3.11: install one, or point PYTHON at" \
        "it (e.g. PYTHON=python3.12 make setup)."
fi
if [ -x "$VENV/bin/python" ] && [ "$(py_version "$VENV/bin/python")" != "$version" ]; then
    die "$VENV holds Python $(py_version "$VENV/bin/python"), not $version ($PY). Delete $VENV," \
        "or use another folder: CRAFT_LAB_VENV=dir make setup"
fi

stamp="$VENV/.craft-lab-pins.sha256"
want=$(cat requirements.txt requirements-nodeps.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "$VENV (Python $version) is up to date with requirements.txt (nothing to do)"
    doctor
    exit 0
fi

started=$SECONDS
[ -x "$VENV/bin/python" ] || { say "creating $VENV with $PY (Python $version)"; "$PY" -m venv "$VENV"; }
say "installing the pinned packages into $VENV (first run: minutes and GBs: torch brings CUDA libraries)"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
# pip install, minus its noise lines (pipefail keeps pip's exit status)
pip_install() { "${pip[@]}" install "$@" 2>&1 | { grep -v -E "^(Requirement already satisfied|WARNING: Location)" || true; }; }
pip_install --quiet --upgrade pip==26.3
pip_install --progress-bar off -r requirements.txt
pip_install --quiet --no-deps -r requirements-nodeps.txt

# triton (pulled in by torch's Linux wheel) only compiles GPU kernels. Its 3.8.0 build
# crashes the process (segfault, "Kernel died" in Jupyter) when TensorFlow is imported
# before torchvision. Without it, both import orders work on this CPU-only setup.
if "${pip[@]}" show triton >/dev/null 2>&1; then
    say "removing triton (GPU-only compiler; crashes beside TensorFlow, see README)"
    "${pip[@]}" uninstall --quiet --yes triton
fi

check_imports
echo "$want" > "$stamp"
say "done in $(( SECONDS - started )) s"
doctor
