"""The extension recipe of docs/design.md ("Adding a backbone, head, dataset, schedule or attention"),
done as a user would: each new piece is one entry in its registry, named by a config value, and trains
through the public route (``train(cfg)``) without touching any other module."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from ccnet.data import DATASETS, dataset_metainfo
from ccnet.data.base import DatasetSpec
from ccnet.data.synthetic import build_synthetic
from ccnet.data.synthetic import metainfo as synthetic_metainfo
from ccnet.engine import optim, train
from ccnet.models import backbones, heads
from ccnet.models.cca import IMPLEMENTATIONS, Implementation
from ccnet.models.cca.reference import reference_attention
from tests.engine.conftest import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


class ToyBackbone(nn.Module):
    """Two strided convolutions to output stride 8 and one more for layer4."""

    def __init__(self, width: int, norm_layer) -> None:
        super().__init__()
        self.layer3 = nn.Sequential(nn.Conv2d(3, width, 3, stride=8, padding=1), norm_layer(width), nn.ReLU())
        self.layer4 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), norm_layer(width), nn.ReLU())
        self.out_channels = {"layer3": width, "layer4": width}
        self.trains_from_scratch = True

    def forward(self, x):
        c3 = self.layer3(x)
        return {"layer3": c3, "layer4": self.layer4(c3)}


class ToyHead(nn.Module):
    """A 1×1 classifier: the smallest context head (features, classify)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, 8, 1)
        self.cls = nn.Conv2d(8, num_classes, 1)

    def features(self, x):
        return torch.relu(self.proj(x))

    def classify(self, features):
        return self.cls(features)

    def forward(self, x):
        return self.classify(self.features(x))


def _cfg(configs_dir, tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(configs_dir), version_base="1.3"):
        cfg = compose(
            "train", overrides=[*TINY, "train.max_iters=3", "train.eval_interval=0", "train.vis_images=0", *overrides]
        )
    with open_dict(cfg):
        cfg.work_dir = str(tmp_path / "run")
    return cfg


def test_a_new_backbone_dataset_schedule_and_attention_train_through_the_public_route(
    configs_dir, tmp_path, monkeypatch
):
    calls = {"attention": 0, "dataset": []}

    def counting_attention(*args):
        calls["attention"] += 1
        return reference_attention(*args)

    def toy_dataset(cfg, split, crop_size=None):
        calls["dataset"].append(split)
        return build_synthetic(cfg, split, crop_size=crop_size)

    monkeypatch.setitem(backbones.BACKBONES, "toy", lambda cfg, norm: ToyBackbone(int(cfg["toy_width"]), norm))
    monkeypatch.setitem(DATASETS, "toy", DatasetSpec(toy_dataset, synthetic_metainfo))
    monkeypatch.setitem(optim.SCHEDULES, "constant", lambda cfg, base_lr: lambda step: 1.0)
    monkeypatch.setitem(IMPLEMENTATIONS, "toy", Implementation(counting_attention))
    cfg = _cfg(
        configs_dir,
        tmp_path,
        "model.backbone=toy",
        "+model.toy_width=16",
        "dataset.name=toy",
        "train.lr_schedule=constant",
        "train.warmup_iters=0",
        "model.cca_impl=toy",
    )
    result = train(cfg)
    assert result["iteration"] == 3 and 0.0 <= result["val/mIoU"] <= 1.0
    assert calls["dataset"] == ["train", "val"] and calls["attention"] > 0
    state = torch.load(result["checkpoint"], weights_only=True)
    assert state["model"]["backbone.layer3.0.weight"].shape == (16, 3, 3, 3)
    assert all(group["lr"] == cfg.train.lr for group in state["optimizer"]["param_groups"])  # constant
    assert dataset_metainfo(cfg.dataset)[0][0] == "background"


def test_a_new_context_head_trains_through_the_public_route(configs_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(heads.HEADS, "toy", lambda c, k, cfg, norm: ToyHead(c, k))
    result = train(_cfg(configs_dir, tmp_path, "model.context=toy"))
    state = torch.load(result["checkpoint"], weights_only=True)
    assert result["iteration"] == 3 and "head.cls.weight" in state["model"]
