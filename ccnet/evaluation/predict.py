"""Segmenting one image with a checkpoint's model: the code behind ``ccnet.init_model`` /
``ccnet.inference_model`` and ``tools/infer.py``; images are normalised with the training dataset's
mean/std and inferred with :class:`~ccnet.evaluation.inference.InferenceSettings`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from ccnet.data import dataset_metainfo
from ccnet.errors import UserError
from ccnet.evaluation.inference import InferenceSettings, predict_logits
from ccnet.evaluation.loading import (
    CheckpointMismatchError,
    load_checkpoint_for_eval,
    load_model,
    resolve_model_and_dataset,
)
from ccnet.utils.visualize import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


class UnreadableImageError(UserError, ValueError):
    """An input image cannot be read or decoded (the message names the file and why)."""


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of an image file.

    Raises:
        UnreadableImageError: the file is missing, unreadable or cannot be decoded (names it).
    """
    from ccnet.data.base import read_image

    try:
        return read_image(path)
    except (OSError, ValueError) as exc:
        raise UnreadableImageError(f"cannot read image {path}: {exc}") from exc


def to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float], device: torch.device) -> torch.Tensor:
    """``(x / 255 - mean) / std`` as the datasets normalise.

    Shape:
        image: (H, W, 3) uint8. Returns (1, 3, H, W) float32.
    """
    x = torch.tensor(image, device=device).permute(2, 0, 1).float().div_(255.0)  # (3, H, W); copies read-only input
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1)
    return ((x - m) / s).unsqueeze(0)


ImageLike = Union[str, Path, np.ndarray, "Image.Image"]


def as_rgb(image: ImageLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of a path, a PIL image or an array.

    Raises:
        UnreadableImageError: an unreadable file.
        ValueError: an array that is not (H, W, 3) uint8 (or (H, W) grey).
    """
    if isinstance(image, (str, Path)):
        return read_rgb(Path(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 3 and image.shape[2] == 3 or image.ndim == 2):
            raise ValueError(
                f"expected an (H, W, 3) uint8 RGB array (or (H, W) uint8 grey), got shape "
                f"{image.shape} dtype {image.dtype}; convert with np.asarray(pil_image.convert('RGB'))"
            )
        return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    raise ValueError(f"expected an image path, a PIL image or an (H, W, 3) uint8 array, got {type(image).__name__}")


def load_for_inference(
    ckpt_path: Path,
    device: torch.device,
    model_given: Optional[Mapping[str, Any]] = None,
    dataset_given: Optional[Mapping[str, Any]] = None,
    model_group: bool = False,
    dataset_group: bool = False,
) -> nn.Module:
    """The checkpoint's model on ``device`` with ``dataset_meta`` and ``inference_settings`` attached
    (see :func:`ccnet.init_model`); command-line groups/keys may override the stored configs.

    Raises:
        CheckpointError: unreadable file, or NaN/inf weights.
        CheckpointMismatchError: no stored config, weights that do not fit, or a class count that
            differs from the palette's.
        ConfigError: bad ``eval`` settings stored in the checkpoint.
    """
    ckpt, stored = load_checkpoint_for_eval(ckpt_path)
    model_cfg, dataset_cfg = resolve_model_and_dataset(
        stored, model_given or {}, dataset_given or {}, model_group, dataset_group, ckpt_path
    )
    classes, palette, ignore = dataset_metainfo(dataset_cfg)
    if model_cfg["num_classes"] != len(palette):
        raise CheckpointMismatchError(
            f"checkpoint {ckpt_path} predicts {model_cfg['num_classes']} classes but the {dataset_cfg['name']!r} "
            f"palette has {len(palette)} colours ({len(classes)} classes); choose the dataset the checkpoint was "
            "trained on (dataset=<name>) or give a folder dataset with matching dataset.num_classes/palette"
        )
    model: Any = load_model(model_cfg, ckpt, ckpt_path, device)  # gains two attributes below
    model.dataset_meta = {
        "classes": list(classes),
        "palette": [tuple(c) for c in palette],
        "ignore_index": ignore,
        "mean": tuple(dataset_cfg.get("mean") or IMAGENET_MEAN),
        "std": tuple(dataset_cfg.get("std") or IMAGENET_STD),
        "name": dataset_cfg.get("name"),
    }
    model.inference_settings = InferenceSettings.from_config((stored or {}).get("eval") or {})
    return model


@torch.no_grad()
def predict_image(
    model: nn.Module, image: ImageLike, settings: InferenceSettings, probabilities: bool = False
) -> np.ndarray:
    """Class map (or softmax) of one image at its own size, normalised as ``model.dataset_meta`` says.

    Shape:
        Returns (H, W) int64, or (K, H, W) float32 with ``probabilities``.
    """
    meta = getattr(model, "dataset_meta", {})
    device = next(model.parameters()).device
    x = to_tensor(as_rgb(image), meta.get("mean", IMAGENET_MEAN), meta.get("std", IMAGENET_STD), device)
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    logits = predict_logits(model, x, settings)  # (1, K, H, W)
    if probabilities:
        return logits[0].float().softmax(0).cpu().numpy()
    return logits.argmax(dim=1)[0].cpu().numpy().astype(np.int64)
