"""Optimiser and learning-rate schedule of CCNet (arXiv 1811.11721, Sec. 4.1): SGD with momentum 0.9
and weight decay, and the "poly" policy ``lr = base_lr * (1 - iter / max_iter) ** 0.9``, optionally
with a linear warm-up and a floor ``min_lr`` (mmsegmentation's ``PolyLR(eta_min=...)``).

The schedule is one pure function, :func:`lr_factor`, driven by ``torch.optim.lr_scheduler.LambdaLR``.
``PolynomialLR`` decays to exactly 0 and has no floor, and a chained ``LinearLR`` + ``PolynomialLR``
cannot express mmsegmentation's ``(base - min) * poly + min``; ``lr_factor`` reproduces
``ChainedScheduler([LinearLR, PolynomialLR])`` exactly when ``min_lr = 0`` (tested), and the
mmsegmentation recipes' floor otherwise.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Dict, List, Mapping

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

from ccnet.errors import ConfigError

log = logging.getLogger(__name__)


def param_groups(model: nn.Module, lr: float, weight_decay: float, no_decay_norm_bias: bool = False,
                 head_lr_mult: float = 1.0) -> List[Dict[str, Any]]:
    """Split trainable parameters into SGD parameter groups.

    Parameters under ``model.backbone`` keep ``lr``; all others (context head, auxiliary head)
    get ``lr * head_lr_mult``. With ``no_decay_norm_bias``, parameters with at most one dimension —
    biases, normalisation scales and the attention's ``gamma`` — get no weight decay.

    Returns:
        Non-empty groups in the order backbone, backbone_no_decay, head, head_no_decay, each with
        ``params``, ``lr``, ``weight_decay`` and its ``name``.
    """
    groups: Dict[str, Dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "backbone" if name.startswith("backbone.") else "head"
        no_decay = no_decay_norm_bias and param.ndim <= 1
        key = f"{part}{'_no_decay' if no_decay else ''}"
        if key not in groups:
            groups[key] = {"name": key, "params": [], "lr": lr * (head_lr_mult if part == "head" else 1.0),
                           "weight_decay": 0.0 if no_decay else weight_decay}
        groups[key]["params"].append(param)
    order = ("backbone", "backbone_no_decay", "head", "head_no_decay")  # backbone first: its lr is logged
    return [groups[k] for k in order if k in groups]


def build_optimizer(model: nn.Module, train_cfg: Mapping[str, Any]) -> torch.optim.SGD:
    """SGD from ``cfg.train``: ``lr``, ``momentum``, ``weight_decay``, ``no_decay_norm_bias``,
    ``head_lr_mult``."""
    lr = float(train_cfg["lr"])
    if lr <= 0:
        raise ConfigError(f"train.lr must be positive, got {lr}")
    groups = param_groups(model, lr, float(train_cfg.get("weight_decay", 0.0)),
                          bool(train_cfg.get("no_decay_norm_bias", False)),
                          float(train_cfg.get("head_lr_mult", 1.0)))
    return torch.optim.SGD(groups, lr=lr, momentum=float(train_cfg.get("momentum", 0.9)))


def lr_factor(step: int, max_iters: int, power: float = 0.9, warmup_iters: int = 0, warmup_ratio: float = 0.1,
              min_ratio: float = 0.0) -> float:
    """Multiplier of a group's base lr after ``step`` optimisation steps.

    ``poly = (1 - min(step, max_iters) / max_iters) ** power``; the factor is
    ``min_ratio + (1 - min_ratio) * poly``, times ``warmup_ratio + (1 - warmup_ratio) * step /
    warmup_iters`` during the first ``warmup_iters`` steps (mmcv's linear warm-up, applied on top of
    the decayed value like a chained ``LinearLR``).

    Args:
        step: optimisation steps done so far (0 before the first step).
        max_iters: steps at which the poly term reaches 0.
        power: poly exponent (0.9 in the paper).
        warmup_iters: length of the linear warm-up (0: none).
        warmup_ratio: warm-up's starting factor.
        min_ratio: floor as a fraction of the group's base lr (``min_lr / lr``).
    """
    poly = (1.0 - min(step, max_iters) / max_iters) ** power
    factor = min_ratio + (1.0 - min_ratio) * poly
    if step < warmup_iters:
        factor *= warmup_ratio + (1.0 - warmup_ratio) * step / warmup_iters
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, train_cfg: Mapping[str, Any]) -> LambdaLR:
    """Per-iteration poly schedule from ``cfg.train``: ``max_iters``, ``poly_power``, ``warmup_iters``,
    ``warmup_ratio``, ``min_lr`` (absolute, the same floor for every group, as in mmsegmentation).
    Call ``scheduler.step()`` once per optimisation step."""
    max_iters = int(train_cfg["max_iters"])
    min_lr = float(train_cfg.get("min_lr", 0.0))
    warmup_iters = int(train_cfg.get("warmup_iters", 0))
    if warmup_iters < 0:
        raise ValueError(f"train.warmup_iters must be >= 0, got {warmup_iters}")
    if warmup_iters >= max_iters > 0:  # e.g. a short trial run with the quickstart's 100-step warm-up
        log.warning("train.warmup_iters=%d >= train.max_iters=%d: the lr warms up during the whole run "
                    "(set train.warmup_iters=0 for none)", warmup_iters, max_iters)
    factors = []
    for group in optimizer.param_groups:
        if min_lr > group["lr"]:
            raise ValueError(f"train.min_lr={min_lr} exceeds the base lr {group['lr']} of parameter group "
                             f"{group.get('name', '?')}; lower train.min_lr")
        # partial binds this group's floor now; a lambda in the loop would see the last group's.
        factors.append(functools.partial(
            lr_factor, max_iters=max_iters, power=float(train_cfg.get("poly_power", 0.9)),
            warmup_iters=warmup_iters, warmup_ratio=float(train_cfg.get("warmup_ratio", 0.1)),
            min_ratio=min_lr / group["lr"]))
    return LambdaLR(optimizer, factors)
