"""The pinned environment: environment.yml agrees with the pip pins, and the venv holds them."""
from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata

import yaml

from conftest import ROOT


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: '{line}' is not pinned with =="
            pins[canonical(name)] = version
    return pins


def conda_pip_pins() -> tuple[list[str], dict[str, str]]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = {}
    for entry in pip:
        name, sep, version = entry.partition("==")
        assert sep, f"environment.yml: pip entry '{entry}' is not pinned with =="
        pins[canonical(name)] = version
    return conda, pins


def test_environment_yml_agrees_with_requirements():
    conda, pins = conda_pip_pins()
    assert "python=3.11" in conda
    requirements = read_pins(ROOT / "requirements.txt")
    disagree = {name: (version, requirements.get(name)) for name, version in pins.items()
                if requirements.get(name) != version}
    assert not disagree, f"environment.yml vs requirements.txt (yml, txt): {disagree}"


def test_environment_yml_covers_the_direct_requirements():
    _, pins = conda_pip_pins()
    direct = {"torch", "torchvision", "tensorflow", "tensorflow-probability", "tf-keras", "numpy",
              "scipy", "scikit-learn", "scikit-image", "matplotlib", "nbgrader", "nbval", "pytest",
              "einops", "deprecated"}
    assert direct <= set(pins), f"missing from environment.yml: {sorted(direct - set(pins))}"


def test_xplique_is_pinned_apart_and_installed_without_deps():
    nodeps = read_pins(ROOT / "requirements-nodeps.txt")
    assert nodeps == {"xplique": "2.0.2"}
    assert "xplique" not in read_pins(ROOT / "requirements.txt")
    assert "requirements-nodeps.txt" in (ROOT / "environment.yml").read_text()
    assert "--no-deps -r requirements-nodeps.txt" in (ROOT / "scripts" / "setup.sh").read_text()


def test_the_running_environment_holds_the_pins():
    pins = read_pins(ROOT / "requirements.txt") | read_pins(ROOT / "requirements-nodeps.txt")
    wrong = {}
    for name, version in pins.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed is None or installed.split("+")[0] != version.split("+")[0]:
            wrong[name] = (version, installed)
    assert not wrong, f"pinned vs installed: {wrong}. Run `make setup`."


def test_tensorflow_before_torchvision_does_not_crash():
    """With triton 3.8.0 this order is a segfault (exit 139); setup removes triton."""
    code = ("import os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'\n"
            "import tensorflow, xplique\nimport torchvision\n"
            "m = torchvision.models.resnet50(weights=None)\nprint('built', type(m).__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert "built ResNet" in result.stdout


def test_setup_is_idempotent():
    result = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], capture_output=True,
                            text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout
