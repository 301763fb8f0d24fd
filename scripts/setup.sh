#!/usr/bin/env bash
# One-command, idempotent setup of the kit's Python environment in .venv/.
#
#   bash scripts/setup.sh        (or: make setup)
#
# Re-running it is cheap: the pins are hashed and the install is skipped when
# .venv already holds exactly this set. Delete .venv/ to start over.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${CRAFT_LAB_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

stamp="$VENV/.craft-lab-pins.sha256"
want=$(cat requirements.txt requirements-nodeps.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
    echo "setup: $VENV is up to date with requirements.txt (nothing to do)"
    exit 0
fi

version=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$version" != "3.11" ]; then
    echo "setup: the pins are tested on Python 3.11, but $PY is Python $version." >&2
    echo "       Install Python 3.11 or point PYTHON= at it, e.g. PYTHON=python3.11 make setup" >&2
    exit 1
fi

started=$(date +%s)
[ -x "$VENV/bin/python" ] || { echo "setup: creating $VENV with $PY"; "$PY" -m venv "$VENV"; }
echo "setup: installing the pinned packages (first run: a few minutes, ~8 GB; torch comes from the local disk)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip==26.3
# (pipefail keeps pip's exit status; the filter only drops noise lines)
"$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off -r requirements.txt \
    | { grep -v -E "^(Requirement already satisfied|WARNING: Location)" || true; }
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt

# triton (pulled in by torch's Linux wheel) only compiles GPU kernels. Its 3.8.0 build
# crashes the process (segfault, "Kernel died" in Jupyter) when TensorFlow is imported
# before torchvision. Without it, both import orders work on this CPU-only setup.
if "$VENV/bin/python" -m pip show triton >/dev/null 2>&1; then
    echo "setup: removing triton (GPU-only compiler; crashes beside TensorFlow, see README)"
    "$VENV/bin/python" -m pip uninstall --quiet --yes triton
fi

echo "setup: checking that the key packages import"
"$VENV/bin/python" - <<'EOF'
import torch, torchvision  # torch first: the kit's import order
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow, xplique, nbgrader, nbval
from xplique.concepts import CraftTorch
print(f"setup: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"tensorflow {tensorflow.__version__}, xplique {xplique.__version__}, nbgrader {nbgrader.__version__}")
EOF
echo "$want" > "$stamp"
echo "setup: done in $(( $(date +%s) - started )) s"
