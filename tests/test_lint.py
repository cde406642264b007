"""The code passes the project's linter (ruff: pycodestyle, pyflakes, import order, bugbear; settings
in pyproject.toml), the same check pre-commit runs."""

from __future__ import annotations

import subprocess
import sys


def test_ruff_check_passes(repo_root):
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", str(repo_root)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
