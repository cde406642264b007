"""The code passes the project's checks, the same ones pre-commit runs (settings in pyproject.toml):
ruff's lint (pycodestyle, pyflakes, import order, bugbear), ruff's formatter, and mypy on ccnet/."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "command",
    [["ruff", "check", "--no-cache", "."], ["ruff", "format", "--check", "--no-cache", "."], ["mypy"]],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_check_passes(repo_root, command):
    proc = subprocess.run([sys.executable, "-m", *command], cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
