"""What one tool prints, the next accepts as is: paths holding '=', ',', spaces, brackets, quotes and
non-ASCII letters work as checkpoint=, input=, output_dir=, work_dir= and dataset.root= values, and
the commands a training run prints at its end run when pasted."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from PIL import Image

from ccnet.utils.overrides import PATH_KEYS, hydra_quote, quote_path_overrides
from tests.tools.test_train_cli import TINY

AWKWARD = ["run a=b,c [x] ü", "it's", "back\\slash\\", "${not_a_variable}", "plain"]


@pytest.mark.parametrize("name", AWKWARD)
def test_hydra_reads_a_quoted_path_back_exactly(name):
    path = f"/data/{name}/last.pth"
    (override,) = OverridesParser.create().parse_overrides([f"checkpoint={hydra_quote(path)}"])
    assert override.value().replace("\\${", "${") == path  # OmegaConf unescapes \${ when it resolves


def test_only_path_settings_that_hydra_would_misread_are_quoted():
    argv = [
        "checkpoint=/a b/c=d,e/x.pth",
        "input=photos/**/*.jpg",
        "resume=true",
        "train.lr=0.1",
        "-m",
        "output_dir='already quoted'",
        "dataset.root=x,y",
        "+model.weights=w=1.pth",
        "work_dir=plain/dir",
    ]
    assert quote_path_overrides(argv) == [
        "checkpoint='/a b/c=d,e/x.pth'",
        "input=photos/**/*.jpg",
        "resume=true",
        "train.lr=0.1",
        "-m",
        "output_dir='already quoted'",
        "dataset.root='x,y'",
        "+model.weights='w=1.pth'",
        "work_dir=plain/dir",
    ]
    assert {"checkpoint", "input", "output_dir", "work_dir", "dataset.root"} <= set(PATH_KEYS)


@pytest.mark.slow  # three tool runs, ~25 s
def test_the_commands_a_run_prints_work_when_pasted_with_awkward_paths(repo_root, tmp_path):
    work = tmp_path / "run a=b,c [x] ü"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = subprocess.run(
        [sys.executable, "tools/train.py", *TINY, f"work_dir={work}"],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = train.stdout + train.stderr
    assert train.returncode == 0, log[-3000:]
    printed = log.split("next, ready to paste:\n", 1)[1].splitlines()
    eval_cmd = next(line.strip() for line in printed if "eval.py" in line)
    assert shlex.split(eval_cmd)[2] == f"checkpoint={work / 'checkpoints' / 'best.pth'}"
    out = tmp_path / "eval [1] = ü"
    evaluated = subprocess.run(
        [*shlex.split(eval_cmd), f"output_dir={out}", "device=cpu", "eval.num_workers=0"],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert evaluated.returncode == 0, (evaluated.stdout + evaluated.stderr)[-3000:]
    assert (out / "metrics.json").is_file()

    photos = tmp_path / "my photos, 2026=best"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photos / "a b.png")
    infer_cmd = next(line.strip() for line in printed if "infer.py" in line).replace("input=YOUR_IMAGES", "")
    masks = tmp_path / "masks (v2)"
    inferred = subprocess.run(
        [*shlex.split(infer_cmd), f"input={photos}", f"output_dir={masks}", "device=cpu", "formats=color"],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert inferred.returncode == 0, (inferred.stdout + inferred.stderr)[-3000:]
    assert (masks / "a b.png").is_file()
