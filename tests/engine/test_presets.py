"""Every experiment preset composes with configs/train.yaml and builds what training builds (model
without pretrained weights, criterion, optimiser, schedule), and the quickstart defaults are what the
README promises."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from ccnet.engine.losses import build_criterion
from ccnet.engine.optim import build_optimizer, build_scheduler
from ccnet.engine.settings import check_train_config
from ccnet.models import build_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PRESETS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
# Recipe numbers from the paper / official release and mmsegmentation's configs: (model, classes,
# crop, total batch on 4 processes, iterations, weight decay, min lr, val mIoU target in the header).
RECIPES = {
    "cityscapes_r101_official": ("ccnet_r101_official", 19, [769, 769], 8, 60000, 1e-4, 0.0, "79.7"),
    "cityscapes_r101_769_80k": ("ccnet_r101", 19, [769, 769], 8, 80000, 5e-4, 1e-4, "79.45"),
    "ade20k_r101_512_80k": ("ccnet_r101", 150, [512, 512], 16, 80000, 5e-4, 1e-4, "43.97"),
}


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_every_preset_has_a_recipe_row():
    assert PRESETS == sorted(RECIPES)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_and_builds(name):
    model_name, classes, crop, total_batch, iters, wd, min_lr, target = RECIPES[name]
    assert f"{target} val mIoU" in (CONFIGS / "experiment" / f"{name}.yaml").read_text()
    cfg = compose_train(f"experiment={name}", "model.weights=null")
    check_train_config(cfg)  # every value the preset sets passes the settings schema
    assert cfg.model.name == model_name and cfg.model.num_classes == classes and cfg.model.recurrence == 2
    train_cfg = cfg.train
    assert list(train_cfg.crop_size) == crop and train_cfg.batch_size * 4 == total_batch
    assert (train_cfg.max_iters, train_cfg.weight_decay, train_cfg.min_lr) == (iters, wd, min_lr)
    assert (train_cfg.lr, train_cfg.momentum, train_cfg.poly_power, train_cfg.aux_weight) == (0.01, 0.9, 0.9, 0.4)
    # No warm-up and the paper's zero-initialised attention (not the quickstart's choices).
    assert train_cfg.warmup_iters == 0 and cfg.model.context_init == 0.0
    assert cfg.work_dir == f"work_dirs/{name}"

    model = build_model(cfg.model)
    criterion = build_criterion(train_cfg, model.num_classes, cfg.dataset.ignore_index)
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg)
    images = torch.randn(1, 3, 33, 33)
    target = torch.randint(0, classes, (1, 33, 33))
    losses = criterion(model(images), target)
    assert set(losses) == {"loss", "main", "aux"} and torch.isfinite(losses["loss"])
    scheduler.last_epoch = train_cfg.max_iters - 1
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(min_lr, abs=1e-12)


def test_quickstart_defaults():
    cfg = compose_train()
    assert (cfg.model.name, cfg.dataset.name, cfg.train.device) == ("ccnet_tiny", "synthetic", "auto")
    assert cfg.resume is False and cfg.load_from is None
    assert cfg.work_dir == "work_dirs/ccnet_tiny_synthetic"
