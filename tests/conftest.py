"""Shared fixtures. Every test runs offline: no test touches the network beyond loopback."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grader import course as course_mod  # noqa: E402

COURSE = course_mod.load()
sys.path.insert(0, str(COURSE.source_dir))  # craftlab.py

import craftlab  # noqa: E402


@pytest.fixture(scope="session")
def course():
    return COURSE


@pytest.fixture
def offline_env(monkeypatch):
    """Offline mode for code run in this process."""
    monkeypatch.setenv("CRAFT_LAB_OFFLINE", "1")
    monkeypatch.delenv("CRAFT_LAB_N_IMAGES", raising=False)
    return craftlab.Settings.from_env()


def run_env(**extra: str) -> dict[str, str]:
    """Environment for notebooks run by tests: offline, the venv first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["CRAFT_LAB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env
