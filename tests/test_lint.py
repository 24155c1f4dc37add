"""House style is checked, not hoped for: ruff (E, F, W, I, T; line length 120) over the whole repository."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    # run by the interpreter the tests run in (a venv need not be activated for its ruff to be found)
    if importlib.util.find_spec("ruff") is None:
        pytest.skip(f"ruff is not installed for {sys.executable} (bash dev.sh test installs it from "
                    "requirements-dev.txt)")
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
