"""Python API: a trained model in two calls, as mmsegmentation users know it (docs/evaluation.md)::

    from ccnet import init_model, inference_model
    model = init_model("work_dirs/ccnet_tiny_synthetic/checkpoints/last.pth", device="cpu")
    labels = inference_model(model, "photo.jpg")              # (H, W) int64 class indices
    print(model.dataset_meta["classes"][labels[0, 0]])

``tools/infer.py`` runs the same code.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ccnet.dist import resolve_device
from ccnet.errors import ConfigError
from ccnet.evaluation.inference import InferenceSettings
from ccnet.evaluation.predict import ImageLike, load_for_inference, predict_image

PathLike = Union[str, Path]


def init_model(checkpoint: PathLike, device: Union[str, torch.device] = "cpu") -> nn.Module:
    """The model of a checkpoint, ready for :func:`inference_model`.

    Args:
        checkpoint: a ``.pth`` written by ``tools/train.py`` or ``tools/convert_checkpoint.py``.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.

    Returns:
        The model in eval mode on ``device``, with ``model.dataset_meta`` (``classes``, ``palette``,
        ``ignore_index``, ``mean``, ``std``) and ``model.inference_settings`` (the checkpoint's
        ``eval`` settings, whole-image inference for converted checkpoints).

    Raises:
        ccnet.checkpoint.CheckpointError: missing or unreadable file, a stored config that is not
            plain data, or weights holding NaN/inf.
        ccnet.evaluation.loading.CheckpointMismatchError: the checkpoint stores no model/dataset
            config, or its weights do not fit.
    """
    device = device if isinstance(device, torch.device) else resolve_device(str(device), key="device")
    return load_for_inference(Path(checkpoint).expanduser(), device)


def inference_model(
    model: nn.Module,
    images: Union[ImageLike, Sequence[ImageLike]],
    probabilities: bool = False,
    settings: Optional[InferenceSettings] = None,
    **overrides: Any,
) -> Union[np.ndarray, List[np.ndarray]]:
    """Segment one image or a list of images with a model from :func:`init_model`.

    Args:
        model: from :func:`init_model` (any CCNet with ``dataset_meta`` works).
        images: a path, a ``PIL.Image``, an (H, W, 3) uint8 RGB array, or a list of them.
        probabilities: return the per-class softmax instead of the label map.
        settings: inference settings; default ``model.inference_settings``.
        **overrides: fields of :class:`~ccnet.evaluation.inference.InferenceSettings` to change,
            e.g. ``mode="slide", crop_size=(769, 769), stride=(513, 513)``, ``scales=(0.75, 1.0, 1.25)``,
            ``flip=True``, ``amp="bf16"``.

    Returns:
        For one image an (H, W) int64 label map at the image's size, or with ``probabilities`` a
        (K, H, W) float32 array; a list of those for a list.

    Raises:
        ccnet.evaluation.predict.UnreadableImageError: an image file that cannot be read (names it).
        ccnet.errors.ConfigError: an unknown setting or a value out of range (names it).
        ValueError: an array that is not (H, W, 3) uint8.
    """
    base = settings or getattr(model, "inference_settings", None) or InferenceSettings()
    if overrides:
        known = set(InferenceSettings.__dataclass_fields__)
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown inference settings {unknown}: expected some of {sorted(known)}")
        base = InferenceSettings.from_config({**asdict(base), **overrides})
    single = not isinstance(images, (list, tuple))
    batch: Sequence[Any] = [images] if single else images  # type: ignore[assignment]
    outputs = [predict_image(model, image, base, probabilities=probabilities) for image in batch]
    return outputs[0] if single else outputs
