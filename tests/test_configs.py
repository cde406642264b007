"""Every model config composes through configs/train.yaml with every dataset config and builds
(weights none): the model's class count follows the dataset's."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ccnet.models import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODELS = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))
DATASETS = {"synthetic": 5, "cityscapes": 19, "ade20k": 150}


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_the_documented_model_configs_exist():
    assert set(MODELS) >= {"ccnet_r50", "ccnet_r101", "ccnet_r101_official", "ccnet_tiny"}


@pytest.mark.parametrize("model", MODELS)
def test_model_config_composes_and_builds(model):
    cfg = _compose(f"model={model}", "model.weights=null")
    net = build_model(cfg.model)
    assert cfg.model.name == model
    assert net.num_classes == cfg.dataset.num_classes


@pytest.mark.parametrize("dataset,classes", sorted(DATASETS.items()))
def test_num_classes_comes_from_the_dataset(dataset, classes):
    cfg = _compose(f"dataset={dataset}", "model.context=nonlocal", "model.recurrence=1")
    assert cfg.model.num_classes == classes
    assert build_model(cfg.model).head.bottleneck[-1].out_channels == classes
