"""Tiny training configs for the engine tests: configs/train.yaml composed with overrides that shrink
the quickstart (64 px synthetic images, a narrow ccnet_tiny, no worker processes) to seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

TINY_SYNTHETIC = ["dataset.image_size=64", "dataset.min_gap=16", "dataset.num_train=512", "dataset.num_val=8"]
TINY = TINY_SYNTHETIC + [
    "model.tiny_widths=[8,16,32]",
    "model.head_channels=16",
    "model.bottleneck_channels=16",
    "model.aux_channels=8",
    "train.batch_size=4",
    "train.num_workers=0",
    "eval.num_workers=0",
    "train.device=cpu",
    "train.log_interval=5",
    "train.vis_images=1",
    "train.warmup_iters=0",
]


@pytest.fixture
def tiny_cfg(configs_dir: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """``tiny_cfg(*overrides, work_dir=..., synthetic=True)`` -> composed config with work_dir under
    ``tmp_path``; ``synthetic=False`` leaves out the synthetic dataset's size overrides."""

    def make(*overrides: str, work_dir: str = "run", synthetic: bool = True) -> DictConfig:
        base = TINY if synthetic else TINY[len(TINY_SYNTHETIC) :]
        with initialize_config_dir(config_dir=str(configs_dir), version_base="1.3"):
            cfg = compose("train", overrides=base + list(overrides))
        with open_dict(cfg):
            cfg.work_dir = str(tmp_path / work_dir)
        return cfg

    return make


@pytest.fixture
def tiny_overrides() -> List[str]:
    """The overrides behind ``tiny_cfg``, for runs composed in a child process."""
    return list(TINY)


@pytest.fixture(autouse=True)
def _engine_tests_use_one_thread(one_thread):
    """Every engine test runs with one intra-op thread (``one_thread`` in tests/conftest.py)."""
