"""SGD parameter groups and the poly schedule, checked against torch's own schedulers."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn
from torch.optim.lr_scheduler import ChainedScheduler, LinearLR, PolynomialLR

from ccnet.engine.optim import build_optimizer, build_scheduler, lr_factor, param_groups


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Conv2d(4, 2, 1)
        self.gamma = nn.Parameter(torch.zeros(1))


def lrs(scheduler, optimizer, steps):
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("warmup", [0, 5])
def test_schedule_equals_torch_linear_warmup_times_polynomial(warmup):
    cfg = {"lr": 0.01, "max_iters": 20, "poly_power": 0.9, "warmup_iters": warmup, "warmup_ratio": 0.1}
    ours_opt = build_optimizer(Net(), cfg)
    ours = lrs(build_scheduler(ours_opt, cfg), ours_opt, 20)
    ref_opt = torch.optim.SGD(Net().parameters(), lr=0.01)
    ref_sched = [PolynomialLR(ref_opt, total_iters=20, power=0.9)]
    if warmup:
        ref_sched.insert(0, LinearLR(ref_opt, start_factor=0.1, total_iters=warmup))
    ref = lrs(ChainedScheduler(ref_sched), ref_opt, 20)
    assert [r[0] for r in ours] == pytest.approx([r[0] for r in ref], rel=1e-9, abs=1e-15)


def test_min_lr_is_mmseg_poly_floor_per_group():
    cfg = {"lr": 0.01, "max_iters": 10, "poly_power": 0.9, "min_lr": 1e-4, "head_lr_mult": 10.0}
    opt = build_optimizer(Net(), cfg)
    history = lrs(build_scheduler(opt, cfg), opt, 11)
    for step, group_lrs in enumerate(history):
        poly = (1 - min(step, 10) / 10) ** 0.9
        assert group_lrs[0] == pytest.approx((0.01 - 1e-4) * poly + 1e-4)  # backbone
        assert group_lrs[1] == pytest.approx((0.1 - 1e-4) * poly + 1e-4)  # head, x10
    assert history[-1] == pytest.approx([1e-4, 1e-4])


def test_param_groups_split_backbone_head_and_no_decay():
    groups = {
        g["name"]: g for g in param_groups(Net(), lr=0.1, weight_decay=1e-4, no_decay_norm_bias=True, head_lr_mult=10.0)
    }
    net = Net()
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert [p.shape for p in groups["backbone"]["params"]] == [net.backbone[0].weight.shape]
    assert len(groups["backbone_no_decay"]["params"]) == 3  # conv bias, BN weight and bias
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0 and groups["backbone"]["weight_decay"] == 1e-4
    assert groups["head"]["lr"] == pytest.approx(1.0) and groups["backbone"]["lr"] == 0.1
    assert {p.shape for p in groups["head_no_decay"]["params"]} == {torch.Size([2]), torch.Size([1])}

    plain = param_groups(Net(), lr=0.1, weight_decay=1e-4)
    assert [g["name"] for g in plain] == ["backbone", "head"]
    assert all(g["weight_decay"] == 1e-4 for g in plain)


def test_bad_schedule_settings():
    opt = build_optimizer(Net(), {"lr": 0.01})
    with pytest.raises(ValueError, match="warmup_iters must be >= 0"):
        build_scheduler(opt, {"max_iters": 10, "warmup_iters": -1})


def test_warmup_longer_than_the_run_still_follows_the_formula(caplog):
    opt = build_optimizer(Net(), {"lr": 0.01})
    with caplog.at_level(logging.WARNING, logger="ccnet"):
        sched = build_scheduler(opt, {"max_iters": 10, "warmup_iters": 100})
    assert "warms up during the whole run" in caplog.text
    for step in range(10):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * lr_factor(step, 10, 0.9, 100, 0.1))
        assert lr_factor(step, 10, 0.9, 100, 0.1) == pytest.approx((1 - step / 10) ** 0.9 * (0.1 + 0.9 * step / 100))
        opt.step()
        sched.step()
    with pytest.raises(ValueError, match="min_lr=0.1 exceeds"):
        build_scheduler(opt, {"max_iters": 10, "min_lr": 0.1})
    with pytest.raises(ValueError, match="train.lr must be positive"):
        build_optimizer(Net(), {"lr": 0})
