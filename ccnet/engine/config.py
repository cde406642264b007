"""Checks of the training settings (``configs/train.yaml``) before anything runs.

Hydra turns ``train.lr=abc`` into the string ``"abc"`` and ``train.batch_size=2.5`` into a float;
without a check the first reads either fail deep inside PyTorch without naming the key, or
silently truncate. :func:`check_train_config` names the key, the value and what is expected.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ccnet.errors import ConfigError
from ccnet.evaluation.inference import check_eval_config

__all__ = ["ConfigError", "TRAIN_RULES", "check_train_config", "config_changes", "describe", "flatten_config"]


def _int(minimum: Optional[int] = None) -> Tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and (minimum is None or v >= minimum)
    return ok, "an integer" + (f" >= {minimum}" if minimum is not None else "")


def _number(low: float = 0.0, high: Optional[float] = None, low_open: bool = False,
            high_open: bool = False) -> Tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v):
            return False
        above = v > low if low_open else v >= low
        below = high is None or (v < high if high_open else v <= high)
        return above and below
    upper = "" if high is None else f" and {'<' if high_open else '<='} {high:g}"
    return ok, f"a finite number {'>' if low_open else '>='} {low:g}{upper}"


def _bool() -> Tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, bool)), "true or false"


def _optional(rule: Tuple[Callable[[Any], bool], str]) -> Tuple[Callable[[Any], bool], str]:
    check, text = rule
    return (lambda v: v is None or check(v)), f"null or {text}"


def _size() -> Tuple[Callable[[Any], bool], str]:
    """A positive int or [height, width] of positive ints (crop sizes)."""
    positive = _int(1)[0]

    def ok(v: Any) -> bool:
        if positive(v):
            return True
        return isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2 and all(positive(x) for x in v)
    return ok, "a positive integer or [height, width] of positive integers"


def _choice(*values: str) -> Tuple[Callable[[Any], bool], str]:
    return (lambda v: v in values), "one of " + ", ".join(values)


TRAIN_RULES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "max_iters": _int(1),
    "batch_size": _int(1),
    "crop_size": _optional(_size()),
    "lr": _number(0, low_open=True),
    "momentum": _number(0, 1, high_open=True),
    "weight_decay": _number(0),
    "no_decay_norm_bias": _bool(),
    "head_lr_mult": _number(0, low_open=True),
    "warmup_iters": _int(0),
    "warmup_ratio": _number(0, 1),
    "poly_power": _number(0),
    "min_lr": _number(0),
    "amp": _choice("none", "bf16", "fp16"),
    "channels_last": _bool(),
    "compile": _bool(),
    "grad_clip": _optional(_number(0, low_open=True)),
    "cudnn_benchmark": _bool(),
    "sync_bn": _bool(),
    "eval_interval": _int(0),
    "checkpoint_interval": _int(0),
    "keep_checkpoints": _int(0),
    "log_interval": _int(1),
    "vis_images": _int(0),
    "vis_attention": _bool(),
    "seed": _int(),
    "cpu_threads": _optional(_int(1)),
    "num_workers": _int(0),
    "aux_weight": _number(0),
    "skip_nonfinite": _bool(),
    "dist_timeout_s": _number(0, low_open=True),
}


def describe(value: Any) -> str:
    """``'abc' (a string)``, ``2.5 (a float)``: the value and its type, as the user wrote it."""
    kinds = {str: "a string", float: "a float", int: "an integer", bool: "a boolean", type(None): "null"}
    if isinstance(value, Sequence) and not isinstance(value, str):  # lists, also OmegaConf's ListConfig
        return f"{list(value)!r} (a list)"
    return f"{value!r} ({kinds.get(type(value), type(value).__name__)})"


def check_train_config(cfg: Mapping[str, Any]) -> None:
    """Check the types and ranges of ``cfg.train``, of the validation's ``cfg.eval`` and of ``resume``
    / ``load_from_partial``: a wrong value fails now, not hours later at the first validation.

    Raises:
        ConfigError: naming the key, the value received and what is expected.
    """
    train = cfg.get("train") or {}
    for key, (ok, expected) in TRAIN_RULES.items():
        if key in train and not ok(train[key]):
            raise ConfigError(f"train.{key} must be {expected}, got {describe(train[key])}")
    check_eval_config(cfg.get("eval") or {})
    resume = cfg.get("resume")
    if not (resume is None or isinstance(resume, bool) or isinstance(resume, str)):
        raise ConfigError(f"resume must be false, true, auto or a checkpoint path, got {describe(resume)}")
    partial = cfg.get("load_from_partial", False)
    if not isinstance(partial, bool):
        raise ConfigError(f"load_from_partial must be true or false, got {describe(partial)}")


def flatten_config(value: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"train.lr": 0.01, ...}``: a nested plain mapping as dotted keys (the ones the command line uses)."""
    if isinstance(value, Mapping):
        out: Dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten_config(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def config_changes(cfg: Mapping[str, Any], baseline: Mapping[str, Any],
                   skip: Sequence[str] = ("work_dir",)) -> List[str]:
    """``key: value`` for every setting of ``cfg`` that differs from ``baseline`` (both resolved plain
    mappings), sorted; keys only in one of them are listed too."""
    now, before = flatten_config(cfg), flatten_config(baseline)
    return [f"{key}: {now.get(key, '(absent)')!r}" for key in sorted(set(now) | set(before))
            if key not in skip and now.get(key, "(absent)") != before.get(key, "(absent)")]
