"""Test-time inference of CCNet (arXiv 1811.11721, Sec. 4.2): one logit map per image at its full resolution
from whole-image or sliding-window inference, an optional keep-ratio ``test_size``, test ``scales`` and
horizontal ``flip``.

Sliding windows of ``crop_size`` every ``stride`` pixels are not padded: the last one is shifted back to
end at the border, so all have one size and go through the model ``crop_batch`` at a time. Every view's
logits (not probabilities, as in the original CCNet code) are resized back and averaged per pixel in
float32, also under AMP (docs/evaluation.md#evaluate-a-checkpoint-toolsevalpy).
"""

from __future__ import annotations

import math
import numbers
from collections import abc
from contextlib import nullcontext
from dataclasses import dataclass, fields
from typing import Any, ContextManager, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ccnet.errors import ConfigError

MODES = ("whole", "slide")
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}

SizeLike = Union[int, Sequence[int]]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _pair(value: SizeLike, key: str) -> Tuple[int, int]:
    """``value`` as (height, width): an int means a square."""
    sequence = isinstance(value, abc.Sequence) and not isinstance(value, str)  # list, tuple, ListConfig
    items: Optional[List[Any]] = [value, value] if _is_int(value) else list(value) if sequence else None  # type: ignore[arg-type]
    if items is None or len(items) != 2 or not all(_is_int(v) and v >= 1 for v in items):
        raise ConfigError(
            f"eval.{key} must be a positive integer or [height, width] of positive integers, got "
            f"{value!r}; e.g. eval.{key}=769 or eval.{key}=[512,1024]"
        )
    return int(items[0]), int(items[1])


@dataclass(frozen=True)
class InferenceSettings:
    """How to turn an image into logits (the ``eval`` config section).

    Args:
        mode: ``"whole"`` or ``"slide"``.
        crop_size: slide window (height, width); required for ``slide``.
        stride: slide step (height, width), at most ``crop_size``; required for ``slide``.
        scales: test scales relative to the input size; ``(1.0,)`` = full resolution only.
        test_size: optional (a, b): rescale each image, aspect kept, to fit a b x a or a x b box (whichever
            matches its orientation) before applying ``scales``.
        flip: also infer the horizontally flipped image.
        amp: ``"none"``, ``"bf16"`` or ``"fp16"`` autocast for the forward passes.
        channels_last: feed inputs in channels-last memory format.
        crop_batch: sliding windows per forward pass.

    Raises:
        ConfigError: a value out of range, naming its ``eval.`` key.
    """

    mode: str = "whole"
    crop_size: Optional[Tuple[int, int]] = None
    stride: Optional[Tuple[int, int]] = None
    scales: Tuple[float, ...] = (1.0,)
    test_size: Optional[Tuple[int, int]] = None
    flip: bool = False
    amp: str = "none"
    channels_last: bool = False
    crop_batch: int = 4

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"eval.mode must be one of {MODES}, got {self.mode!r}")
        for key in ("crop_size", "stride", "test_size"):
            if getattr(self, key) is not None:
                _pair(getattr(self, key), key)
        if self.mode == "slide" and (self.crop_size is None or self.stride is None):
            raise ConfigError(
                "eval.mode=slide needs eval.crop_size and eval.stride, e.g. eval.crop_size=769 eval.stride=513"
            )
        if self.crop_size is not None and self.stride is not None:
            if any(s > c for s, c in zip(self.stride, self.crop_size)):
                raise ConfigError(
                    f"eval.stride {list(self.stride)} exceeds eval.crop_size {list(self.crop_size)}: windows "
                    "would leave gaps; use a stride <= crop size"
                )
        if not self.scales or not all(
            isinstance(s, numbers.Real) and not isinstance(s, bool) and s > 0 and math.isfinite(s) for s in self.scales
        ):
            raise ConfigError(
                f"eval.scales must be a non-empty list of positive factors, got {list(self.scales)}; "
                "e.g. eval.scales=[1.0] or eval.scales=[0.75,1.0,1.25]"
            )
        if self.amp not in AMP_DTYPES:
            raise ConfigError(f"eval.amp must be one of {sorted(AMP_DTYPES)}, got {self.amp!r}")
        for key in ("flip", "channels_last"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"eval.{key} must be true or false, got {getattr(self, key)!r}")
        if not _is_int(self.crop_batch) or self.crop_batch < 1:
            raise ConfigError(f"eval.crop_batch must be an integer >= 1, got {self.crop_batch!r}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], amp: Optional[str] = None) -> "InferenceSettings":
        """Settings from an ``eval`` config mapping (other keys ignored); missing keys take the defaults.

        Args:
            amp: overrides ``cfg["amp"]`` when given (e.g. the trainer's ``train.amp``).

        Raises:
            ConfigError: a value of the wrong type or out of range, naming its ``eval.`` key.
        """
        crop = cfg.get("crop_size")
        stride = cfg.get("stride")
        test_size = cfg.get("test_size")
        scales = cfg.get("scales", (1.0,))
        scales = (scales,) if isinstance(scales, (numbers.Real, str)) or scales is None else tuple(scales)
        return cls(
            mode=str(cfg.get("mode", "whole")),
            crop_size=None if crop is None else _pair(crop, "crop_size"),
            stride=None if stride is None else _pair(stride, "stride"),
            scales=scales,
            test_size=None if test_size is None else _pair(test_size, "test_size"),
            flip=cfg.get("flip", False),
            amp=str(amp if amp is not None else cfg.get("amp", "none")),
            channels_last=cfg.get("channels_last", False),
            crop_batch=cfg.get("crop_batch", 4),
        )


EVAL_KEYS = (*(f.name for f in fields(InferenceSettings)), "num_workers")  # every key of an ``eval`` section


def check_eval_config(eval_cfg: Mapping[str, Any]) -> InferenceSettings:
    """Check every key of an ``eval`` section (the keys of :class:`InferenceSettings` and ``num_workers``, each
    optional) before anything is loaded; returns its inference settings.

    Raises:
        ConfigError: an unknown key, or a value of the wrong type or out of range, naming the key.
    """
    unknown = sorted(set(eval_cfg) - set(EVAL_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown eval setting(s) {['eval.' + k for k in unknown]}: the eval section takes {', '.join(EVAL_KEYS)}"
        )
    workers = eval_cfg.get("num_workers", 0)
    if not _is_int(workers) or workers < 0:
        raise ConfigError(
            f"eval.num_workers must be an integer >= 0 (DataLoader workers per process), got "
            f"{workers!r}; e.g. eval.num_workers=2"
        )
    return InferenceSettings.from_config(eval_cfg)


def fit_scale_factor(height: int, width: int, test_size: Optional[Tuple[int, int]]) -> float:
    """Factor that fits a ``height x width`` image into ``test_size``, aspect kept (mmsegmentation's
    ``Resize(keep_ratio=True)``): ``min(max(test_size) / long side, min(test_size) / short side)``; 1.0 without.
    """
    if test_size is None:
        return 1.0
    return min(max(test_size) / max(height, width), min(test_size) / min(height, width))


def autocast_context(device: torch.device, amp: str) -> ContextManager:
    """``torch.autocast`` for ``amp`` in ``{"bf16", "fp16"}`` on ``device``'s type; a no-op for ``"none"``."""
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _forward(model: nn.Module, x: torch.Tensor, settings: InferenceSettings) -> torch.Tensor:
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast_context(x.device, settings.amp):
        out = model(x)["out"]
    if out.shape[-2:] != x.shape[-2:]:
        out = F.interpolate(out.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
    return out.float()


def window_starts(length: int, crop: int, stride: int) -> List[int]:
    """Start offsets of windows of size ``min(crop, length)`` covering ``[0, length)``; the last ends at ``length``."""
    crop = min(crop, length)
    n = max(math.ceil((length - crop) / stride), 0) + 1
    return [min(i * stride, length - crop) for i in range(n)]


def slide_logits(model: nn.Module, images: torch.Tensor, settings: InferenceSettings) -> torch.Tensor:
    """Sliding-window logits: the mean of the window logits covering each pixel.

    Shape:
        images: (B, 3, H, W). Returns (B, K, H, W) float32.
    """
    assert settings.crop_size is not None and settings.stride is not None
    b, _, h, w = images.shape
    ch, cw = min(settings.crop_size[0], h), min(settings.crop_size[1], w)
    boxes = [(y, x) for y in window_starts(h, ch, settings.stride[0]) for x in window_starts(w, cw, settings.stride[1])]
    logit_sum: Optional[torch.Tensor] = None
    count = torch.zeros(1, 1, h, w, device=images.device, dtype=torch.float32)
    per_batch = max(1, settings.crop_batch // b)
    for i in range(0, len(boxes), per_batch):
        chunk = boxes[i : i + per_batch]
        crops = torch.cat([images[:, :, y : y + ch, x : x + cw] for y, x in chunk])  # (len(chunk)*B, 3, ch, cw)
        out = _forward(model, crops, settings)
        if logit_sum is None:
            logit_sum = images.new_zeros((b, out.shape[1], h, w), dtype=torch.float32)
        for j, (y, x) in enumerate(chunk):
            logit_sum[:, :, y : y + ch, x : x + cw] += out[j * b : (j + 1) * b]
            count[:, :, y : y + ch, x : x + cw] += 1
    assert logit_sum is not None and bool((count > 0).all())
    return logit_sum / count


def predict_logits(model: nn.Module, images: torch.Tensor, settings: InferenceSettings) -> torch.Tensor:
    """Logits of ``images`` at full resolution, averaged over scales, flips and windows, without gradients.

    The caller puts the model in eval mode and on ``images``' device.

    Args:
        model: returns a dict whose ``"out"`` entry holds (N, K, h, w) logits for (N, 3, h, w) inputs.

    Shape:
        images: (B, 3, H, W) normalised. Returns (B, K, H, W) float32 mean logits.
    """
    b, _, h, w = images.shape
    base = fit_scale_factor(h, w, settings.test_size)
    total: Optional[torch.Tensor] = None
    with torch.no_grad():
        for scale in settings.scales:
            size = (max(1, round(h * base * scale)), max(1, round(w * base * scale)))
            x = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            if settings.flip:
                x = torch.cat([x, x.flip(-1)])  # (2B, 3, h', w'): both views in one batch
            logits = slide_logits(model, x, settings) if settings.mode == "slide" else _forward(model, x, settings)
            if settings.flip:
                logits = logits[:b] + logits[b:].flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            total = logits if total is None else total + logits
    assert total is not None
    return total / (len(settings.scales) * (2 if settings.flip else 1))
