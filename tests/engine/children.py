"""Child processes that run tools/train.py itself (through ``runpy``) with ``train_step`` wrapped, so a
test decides at which iteration something happens (a signal, a kill, a pause) instead of depending on
timing. Used by test_preemption.py and test_run_dir.py."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

_HEAD = """\
import os, runpy, signal, sys, time
import torch
import ccnet.engine.trainer as trainer
from ccnet.engine.signals import DUPLICATE_WINDOW_S

step = trainer.train_step
"""
_TAIL = """
trainer.train_step = wrapped
torch.set_num_threads(1)
sys.argv = ["tools/train.py", *sys.argv[sys.argv.index("--") + 1:]]
runpy.run_path(os.path.join(os.environ["REPO"], "tools", "train.py"), run_name="__main__")
"""


def child_script(wrapper: str) -> str:
    """A child's source: ``wrapper`` defines ``wrapped(run, it, *args)`` around ``step`` (the real
    ``train_step``) and reads its own arguments from ``sys.argv`` before ``--``; the overrides of
    tools/train.py follow ``--``."""
    return _HEAD + textwrap.dedent(wrapper) + _TAIL


def child_env(repo_root: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "REPO": str(repo_root), "PYTHONUNBUFFERED": "1"}
