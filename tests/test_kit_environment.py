"""The pinned environment: one set of pins for Python 3.11 to 3.13 (another version of a package only
where it forces it, by an environment marker), environment.yml agrees with them, setup picks a
supported Python, and the venv holds the pins."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata

import pytest
import yaml
from packaging.requirements import Requirement

from conftest import ROOT

SETUP = ROOT / "scripts" / "setup.sh"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def supported_pythons() -> list[str]:
    """The versions setup.sh accepts, newest first (its SUPPORTED line)."""
    found = re.search(r'^SUPPORTED="([\d. ]+)"', SETUP.read_text(), re.M)
    assert found, "scripts/setup.sh has no SUPPORTED=\"...\" line"
    return found.group(1).split()


def parse_pin(text: str, where: str) -> Requirement:
    req = Requirement(text)
    spec = list(req.specifier)
    assert len(spec) == 1 and spec[0].operator == "==", f"{where}: '{text}' is not pinned with =="
    return req


def read_pins(path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [parse_pin(line, path.name) for line in lines if line]


def marker_env(python: str) -> dict[str, str]:
    """The marker variables of a Python: python_version "3.11" and python_full_version "3.11.2"
    (a bare "3.11" stands for its first release, 3.11.0)."""
    full = python if python.count(".") == 2 else f"{python}.0"
    return {"python_version": ".".join(full.split(".")[:2]), "python_full_version": full}


def pins_for(pins: list[Requirement], python: str) -> dict[str, str]:
    """name -> version of the pins that apply on this Python ("3.11" or "3.11.2"; markers evaluated)."""
    chosen: dict[str, list[str]] = {}
    for req in pins:
        if req.marker is None or req.marker.evaluate(marker_env(python)):
            chosen.setdefault(canonical(req.name), []).append(next(iter(req.specifier)).version)
    twice = {name: versions for name, versions in chosen.items() if len(versions) > 1}
    assert not twice, f"more than one pin applies on Python {python}: {twice}"
    return {name: versions[0] for name, versions in chosen.items()}


def pythons_to_check(pins: list[Requirement]) -> list[str]:
    """Each supported Python at its first and a late release, at every version a marker names
    and at the release just before it: where the pins that apply can change."""
    named = {v for req in pins if req.marker for v in re.findall(r'"(\d+\.\d+(?:\.\d+)?)"', str(req.marker))}
    points = set()
    for minor in supported_pythons():
        points |= {f"{minor}.0", f"{minor}.99"}
        for version in named:
            parts = [int(x) for x in version.split(".")]
            if ".".join(map(str, parts[:2])) == minor and len(parts) == 3:
                points |= {version, f"{minor}.{parts[2] - 1}"} if parts[2] else {version}
    return sorted(points, key=lambda v: tuple(map(int, v.split("."))))


# The Pythons TAs have, each checked by `pip install --dry-run --no-deps -r requirements.txt`:
# Debian 12's own, Ubuntu 24.04's, and a 3.13.
TA_PYTHONS = ["3.11.2", "3.12.3", "3.13.0"]


def key(req: Requirement) -> tuple[str, str, str]:
    return canonical(req.name), str(req.specifier), str(req.marker or "")


def environment_yml() -> tuple[list[str], list[Requirement]]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return conda, [parse_pin(entry, "environment.yml") for entry in pip]


def test_setup_supports_python_3_11_to_3_13_newest_first():
    assert supported_pythons() == ["3.13", "3.12", "3.11"]


def test_environment_yml_agrees_with_requirements():
    conda, pip = environment_yml()
    versions = sorted(supported_pythons(), key=lambda v: tuple(map(int, v.split("."))))
    major, newest = versions[-1].split(".")
    assert f"python>={versions[0]},<{major}.{int(newest) + 1}" in conda, conda
    pins = read_pins(ROOT / "requirements.txt")
    requirements = {key(req) for req in pins}
    disagree = sorted(str(req) for req in pip if key(req) not in requirements)
    assert not disagree, f"environment.yml pins that requirements.txt does not have: {disagree}"
    listed = {canonical(req.name) for req in pip}
    for python in pythons_to_check(pins):  # a package listed there gets the same version on every Python
        wanted = {name: v for name, v in pins_for(pins, python).items() if name in listed}
        assert pins_for(pip, python) == wanted, f"environment.yml and requirements.txt differ on Python {python}"


def test_markers_are_evaluated_on_the_full_python_version():
    pins = [Requirement('soupsieve==2.10 ; python_full_version < "3.11.5"'),
            Requirement('soupsieve==4.1.3 ; python_full_version >= "3.11.5"')]
    assert [pins_for(pins, v)["soupsieve"] for v in ("3.11.2", "3.11.4", "3.11.5", "3.12", "3.13.0")] == \
        ["2.10", "2.10", "4.1.3", "4.1.3", "4.1.3"]
    assert {"3.11.4", "3.11.5", "3.11.0", "3.13.99"} <= set(pythons_to_check(pins))
    with pytest.raises(AssertionError, match="more than one pin applies on Python 3.12"):
        pins_for(pins + [Requirement('soupsieve==3.0 ; python_version >= "3.11"')], "3.12")


def test_environment_yml_covers_the_direct_requirements():
    _, pip = environment_yml()
    direct = {"torch", "torchvision", "tensorflow", "tensorflow-probability", "tf-keras", "numpy",
              "scipy", "scikit-learn", "scikit-image", "matplotlib", "nbgrader", "nbval", "pytest",
              "einops", "deprecated"}
    for python in supported_pythons():
        names = set(pins_for(pip, python))
        assert direct <= names, f"missing from environment.yml on {python}: {sorted(direct - names)}"


def test_each_supported_python_gets_exactly_one_pin_per_package():
    pins = read_pins(ROOT / "requirements.txt")
    names = {canonical(req.name) for req in pins}
    for python in pythons_to_check(pins) + TA_PYTHONS:
        missing = names - set(pins_for(pins, python))
        assert not missing, f"no pin applies on Python {python} for {sorted(missing)}"


def test_debian_12s_python_gets_a_soupsieve_it_can_run():
    """soupsieve 3.0 and later require Python >= 3.11.5; Debian 12's /usr/bin/python3.11 is 3.11.2."""
    pins = read_pins(ROOT / "requirements.txt")
    assert pins_for(pins, "3.11.2")["soupsieve"] == "2.10"
    assert pins_for(pins, "3.11.5")["soupsieve"] == pins_for(pins, "3.13.0")["soupsieve"] == "4.1.3"


def test_xplique_is_pinned_apart_and_installed_without_deps():
    nodeps = pins_for(read_pins(ROOT / "requirements-nodeps.txt"), "3.11")
    assert nodeps == {"xplique": "2.0.2"}
    assert "xplique" not in {canonical(req.name) for req in read_pins(ROOT / "requirements.txt")}
    assert "requirements-nodeps.txt" in (ROOT / "environment.yml").read_text()
    assert "--no-deps -r requirements-nodeps.txt" in SETUP.read_text()


def test_the_running_python_is_supported():
    assert "%d.%d" % sys.version_info[:2] in supported_pythons(), sys.version


def test_the_running_environment_holds_the_pins():
    python = "%d.%d.%d" % sys.version_info[:3]
    pins = pins_for(read_pins(ROOT / "requirements.txt") + read_pins(ROOT / "requirements-nodeps.txt"),
                    python)
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


FAKE_PYTHON = """#!/bin/sh
# stands in for Python {version}: answers setup's version probe, refuses anything else
[ "$1" = -c ] && {{ echo {version}; exit 0; }}
echo "fake python{version} called with: $*" >&2; exit 3
"""


def run_setup_with_fakes(tmp_path, versions: list[str], python: str | None = None):
    """setup.sh with only fake interpreters on PATH; it stops when it tries to create the venv."""
    bin_dir = tmp_path / "bin"  # the tools setup.sh uses, and no real Python
    bin_dir.mkdir()
    for tool in ["cat", "cut", "dirname", "grep", "id", "ls", "sha256sum", "sort", "tail"]:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for version in versions:
        fake = bin_dir / f"python{version}"
        fake.write_text(FAKE_PYTHON.format(version=version))
        fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "PYENV_VERSION")}
    env.update(PATH=str(bin_dir), PYENV_ROOT=str(tmp_path / "no-pyenv"),
               CRAFT_LAB_VENV=str(tmp_path / "venv"))
    if python:
        env["PYTHON"] = python
    return subprocess.run([shutil.which("bash"), str(SETUP)], capture_output=True, text=True, env=env,
                          timeout=60)


@pytest.mark.parametrize("found, python, chosen", [
    (["3.11", "3.12", "3.13"], None, "python3.13"),
    (["3.11", "3.12"], None, "python3.12"),
    (["3.11"], None, "python3.11"),
    (["3.11", "3.13"], "python3.11", "python3.11"),
    (["3.11", "3.13"], "3.11", "python3.11"),
])
def test_setup_builds_with_the_newest_supported_python_unless_told(tmp_path, found, python, chosen):
    result = run_setup_with_fakes(tmp_path, found, python)
    assert f"with {chosen} (Python {chosen[6:]})" in result.stdout, result.stdout + result.stderr
    assert f"fake {chosen} called with: -m venv" in result.stderr


@pytest.mark.parametrize("found, python", [(["3.10"], None), (["3.14"], None), (["3.10"], "python3.10"),
                                           (["3.13"], "python3.12")])
def test_setup_refuses_an_unsupported_or_missing_python(tmp_path, found, python):
    result = run_setup_with_fakes(tmp_path, found, python)
    assert result.returncode == 1
    assert "The kit runs on Python 3.13, 3.12 or 3.11" in result.stderr
    assert not (tmp_path / "venv").exists()


def test_setup_is_idempotent():
    if sys.prefix == sys.base_prefix:
        pytest.skip("not running in a venv built by setup.sh")
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env["CRAFT_LAB_VENV"] = sys.prefix  # the venv running these tests, wherever it is
    result = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=600,
                            cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout
