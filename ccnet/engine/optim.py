"""Optimiser and learning-rate schedule of CCNet (arXiv 1811.11721, Sec. 4.1): SGD with momentum 0.9 and
weight decay, and the "poly" policy ``lr = base_lr * (1 - iter / max_iter) ** 0.9``, optionally with a
linear warm-up and a floor ``min_lr`` (mmsegmentation's ``PolyLR(eta_min=...)``). Schedules are pure
functions of the step (:data:`SCHEDULES`) driven by one ``LambdaLR`` (why: docs/design.md).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Dict, List, Mapping

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

from ccnet.errors import ConfigError

log = logging.getLogger(__name__)


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, no_decay_norm_bias: bool = False, head_lr_mult: float = 1.0
) -> List[Dict[str, Any]]:
    """Split trainable parameters into SGD parameter groups.

    Parameters under ``model.backbone`` keep ``lr``, all others get ``lr * head_lr_mult``. With
    ``no_decay_norm_bias``, parameters of at most one dimension (biases, norm scales, ``gamma``) get no decay.

    Returns:
        Non-empty groups in the order backbone, backbone_no_decay, head, head_no_decay, each with ``params``,
        ``lr``, ``weight_decay`` and its ``name``.
    """
    groups: Dict[str, Dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "backbone" if name.startswith("backbone.") else "head"
        no_decay = no_decay_norm_bias and param.ndim <= 1
        key = f"{part}{'_no_decay' if no_decay else ''}"
        if key not in groups:
            groups[key] = {
                "name": key,
                "params": [],
                "lr": lr * (head_lr_mult if part == "head" else 1.0),
                "weight_decay": 0.0 if no_decay else weight_decay,
            }
        groups[key]["params"].append(param)
    order = ("backbone", "backbone_no_decay", "head", "head_no_decay")  # backbone first: its lr is logged
    return [groups[k] for k in order if k in groups]


def build_optimizer(model: nn.Module, train_cfg: Mapping[str, Any]) -> torch.optim.SGD:
    """SGD from ``cfg.train``: ``lr``, ``momentum``, ``weight_decay``, ``no_decay_norm_bias``, ``head_lr_mult``."""
    lr = float(train_cfg["lr"])
    if lr <= 0:
        raise ConfigError(f"train.lr must be positive, got {lr}")
    groups = param_groups(
        model,
        lr,
        float(train_cfg.get("weight_decay", 0.0)),
        bool(train_cfg.get("no_decay_norm_bias", False)),
        float(train_cfg.get("head_lr_mult", 1.0)),
    )
    return torch.optim.SGD(groups, lr=lr, momentum=float(train_cfg.get("momentum", 0.9)))


def poly_factor(step: int, max_iters: int, power: float = 0.9, min_ratio: float = 0.0) -> float:
    """``min_ratio + (1 - min_ratio) * (1 - min(step, max_iters) / max_iters) ** power``: poly with a floor."""
    return min_ratio + (1.0 - min_ratio) * (1.0 - min(step, max_iters) / max_iters) ** power


def warmup_factor(step: int, warmup_iters: int, warmup_ratio: float) -> float:
    """mmcv's linear warm-up, ``warmup_ratio`` at step 0 rising to 1 at ``warmup_iters``; 1 after."""
    return warmup_ratio + (1.0 - warmup_ratio) * step / warmup_iters if step < warmup_iters else 1.0


def lr_factor(
    step: int,
    max_iters: int,
    power: float = 0.9,
    warmup_iters: int = 0,
    warmup_ratio: float = 0.1,
    min_ratio: float = 0.0,
) -> float:
    """Multiplier of a group's base lr after ``step`` steps of ``poly``, warm-up on top (LinearLR × PolynomialLR).

    Args:
        step: optimisation steps done so far (0 before the first step).
        max_iters: steps at which the poly term reaches 0.
        power: poly exponent (0.9 in the paper).
        warmup_iters: length of the linear warm-up (0: none).
        warmup_ratio: warm-up's starting factor.
        min_ratio: floor as a fraction of the group's base lr (``min_lr / lr``).
    """
    return poly_factor(step, max_iters, power, min_ratio) * warmup_factor(step, warmup_iters, warmup_ratio)


def poly_schedule(train_cfg: Mapping[str, Any], base_lr: float) -> Callable[[int], float]:
    """The paper's poly policy for one parameter group: ``train.poly_power``, floor ``train.min_lr``.

    Raises:
        ConfigError: ``min_lr`` above the group's base lr.
    """
    min_lr = float(train_cfg.get("min_lr", 0.0))
    if min_lr > base_lr:
        raise ConfigError(
            f"train.min_lr={min_lr} exceeds the base lr {base_lr} of a parameter group; lower train.min_lr"
        )
    # partial binds this group's floor now; a lambda in the caller's loop would see the last group's.
    return functools.partial(
        poly_factor,
        max_iters=int(train_cfg["max_iters"]),
        power=float(train_cfg.get("poly_power", 0.9)),
        min_ratio=min_lr / base_lr,
    )


ScheduleFactory = Callable[[Mapping[str, Any], float], Callable[[int], float]]

# train.lr_schedule -> factory(train config, a group's base lr) -> lr factor of the step (before warm-up).
SCHEDULES: Dict[str, ScheduleFactory] = {
    "poly": poly_schedule,
}


def build_scheduler(optimizer: torch.optim.Optimizer, train_cfg: Mapping[str, Any]) -> LambdaLR:
    """Per-iteration ``SCHEDULES[train.lr_schedule]`` times the linear warm-up, one factor per parameter group.

    Call ``scheduler.step()`` once per optimisation step.

    Raises:
        ConfigError: an unknown schedule (listing the names) or a setting it refuses.
    """
    name = train_cfg.get("lr_schedule") or "poly"
    if name not in SCHEDULES:
        raise ConfigError(f"unknown train.lr_schedule {name!r}: expected one of {', '.join(SCHEDULES)}")
    max_iters = int(train_cfg["max_iters"])
    warmup_iters = int(train_cfg.get("warmup_iters", 0))
    if warmup_iters < 0:
        raise ConfigError(f"train.warmup_iters must be >= 0, got {warmup_iters}")
    if warmup_iters >= max_iters > 0:  # e.g. a short trial run with the quickstart's 100-step warm-up
        log.warning(
            "train.warmup_iters=%d >= train.max_iters=%d: the lr warms up during the whole run "
            "(set train.warmup_iters=0 for none)",
            warmup_iters,
            max_iters,
        )
    warmup = functools.partial(
        warmup_factor, warmup_iters=warmup_iters, warmup_ratio=float(train_cfg.get("warmup_ratio", 0.1))
    )
    factors = [_product(SCHEDULES[name](train_cfg, group["lr"]), warmup) for group in optimizer.param_groups]
    return LambdaLR(optimizer, factors)


def _product(schedule: Callable[[int], float], warmup: Callable[[int], float]) -> Callable[[int], float]:
    return lambda step: schedule(step) * warmup(step)
