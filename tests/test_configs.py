"""Every model config composes with a dataset's class count and builds (weights none)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ccnet.models import build_model

MODEL_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "model").glob("*.yaml"))


def test_model_configs_exist():
    assert {p.stem for p in MODEL_CONFIGS} >= {"ccnet_r50", "ccnet_r101", "ccnet_r101_official", "ccnet_tiny"}


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_model_config_builds(path):
    cfg = OmegaConf.create({"dataset": {"num_classes": 19}, "model": OmegaConf.load(path)})
    cfg.model.weights = None
    model = build_model(cfg.model)
    assert model.num_classes == 19
    assert cfg.model.name == path.stem
