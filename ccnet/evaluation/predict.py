"""Segmenting images with a checkpoint: the code behind ``ccnet.init_model`` / ``ccnet.inference_model``
and ``tools/infer.py``.

Inputs are a single image, a folder (searched recursively for image files) or a glob pattern. Each
image is normalised with the training dataset's mean/std, inferred with the configured
:class:`~ccnet.evaluation.inference.InferenceSettings` (whole/slide, scales, flip, AMP) and written
with :class:`~ccnet.evaluation.writers.PredictionWriter` using the dataset's palette. Before the
first image, every output path is checked (:class:`~ccnet.utils.manifest.OutputManifest`): a run
never writes over an input or a file that no earlier ``tools/infer.py`` run wrote there. An input
that cannot be read is skipped with a warning and reported at the end.
"""

from __future__ import annotations

import glob
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from ccnet.data import dataset_metainfo
from ccnet.dist import resolve_device
from ccnet.errors import UserError
from ccnet.evaluation.inference import InferenceSettings, check_eval_config, predict_logits
from ccnet.evaluation.loading import (
    CheckpointMismatchError,
    load_checkpoint_for_eval,
    load_model,
    resolve_model_and_dataset,
)
from ccnet.evaluation.writers import PredictionWriter, check_unique_outputs, parse_formats
from ccnet.utils.manifest import OutputManifest
from ccnet.utils.visualize import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
TOOL = "infer"  # the name its outputs are recorded under in output_dir/manifest.txt
NAMED = 10  # skipped inputs named in the closing line


class UnreadableImageError(UserError, ValueError):
    """An input image cannot be read or decoded (the message names the file and why)."""


@dataclass
class InferResult:
    """What :func:`run_infer` did.

    Attributes:
        written: the files of each segmented image (format -> path), in input order.
        skipped: ``(input, message)`` of each input that could not be read, in input order.
    """

    written: List[Dict[str, Path]] = field(default_factory=list)
    skipped: List[Tuple[Path, str]] = field(default_factory=list)


def list_inputs(spec: str) -> Tuple[List[Path], Path]:
    """Image files named by ``spec`` — a file, a folder (recursive, by extension) or a glob pattern —
    and the folder their outputs are laid out from: the file's folder, the folder itself, or the
    glob's part before its first wildcard.

    Raises:
        FileNotFoundError: nothing matches, naming what was searched.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return [path], path.parent
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under folder {path}")
        return files, path
    if glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"no files match the pattern {spec!r}")
        first_wildcard = next(i for i, part in enumerate(path.parts) if glob.has_magic(part))
        return files, Path(*path.parts[:first_wildcard]) if first_wildcard else Path(".")
    raise FileNotFoundError(f"input {spec!r} is neither an image file, a folder, nor a glob pattern that matches")


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
            raise ValueError(f"expected an (H, W, 3) uint8 RGB array (or (H, W) uint8 grey), got shape "
                             f"{image.shape} dtype {image.dtype}; convert with np.asarray(pil_image.convert('RGB'))")
        return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    raise ValueError(f"expected an image path, a PIL image or an (H, W, 3) uint8 array, got {type(image).__name__}")


def load_for_inference(ckpt_path: Path, device: torch.device, model_given: Optional[Mapping[str, Any]] = None,
                       dataset_given: Optional[Mapping[str, Any]] = None, model_group: bool = False,
                       dataset_group: bool = False) -> nn.Module:
    """The checkpoint's model on ``device`` with ``dataset_meta`` and ``inference_settings`` attached
    (see :func:`ccnet.init_model`); command-line groups/keys may override the stored configs.

    Raises:
        CheckpointError: unreadable file, or NaN/inf weights.
        CheckpointMismatchError: no stored config, weights that do not fit, or a class count that
            differs from the palette's.
        ConfigError: bad ``eval`` settings stored in the checkpoint.
    """
    ckpt, stored = load_checkpoint_for_eval(ckpt_path)
    model_cfg, dataset_cfg = resolve_model_and_dataset(stored, model_given or {}, dataset_given or {}, model_group,
                                                       dataset_group, ckpt_path)
    classes, palette, ignore = dataset_metainfo(dataset_cfg)
    if model_cfg["num_classes"] != len(palette):
        raise CheckpointMismatchError(
            f"checkpoint {ckpt_path} predicts {model_cfg['num_classes']} classes but the {dataset_cfg['name']!r} "
            f"palette has {len(palette)} colours ({len(classes)} classes); choose the dataset the checkpoint was "
            "trained on (dataset=<name>) or give a folder dataset with matching dataset.num_classes/palette")
    model = load_model(model_cfg, ckpt, ckpt_path, device)
    model.dataset_meta = {"classes": list(classes), "palette": [tuple(c) for c in palette], "ignore_index": ignore,
                          "mean": tuple(dataset_cfg.get("mean") or IMAGENET_MEAN),
                          "std": tuple(dataset_cfg.get("std") or IMAGENET_STD), "name": dataset_cfg.get("name")}
    model.inference_settings = InferenceSettings.from_config((stored or {}).get("eval") or {})
    return model


@torch.no_grad()
def predict_image(model: nn.Module, image: ImageLike, settings: InferenceSettings,
                  probabilities: bool = False) -> np.ndarray:
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


def _outside(inputs: List[Path], input_root: Path, output_dir: Path, spec: str) -> List[Path]:
    """The inputs that do not lie in ``output_dir`` when that is a subfolder of the input folder: a
    second run would otherwise segment the first run's pictures. (``output_dir`` equal to the input
    folder is left to the manifest's check: an output must never replace an input.)

    Raises:
        FileNotFoundError: every input lies there.
    """
    out = output_dir.resolve()
    if input_root.resolve() not in out.parents:
        return inputs
    kept = [p for p in inputs if out not in p.resolve().parents]
    if len(kept) < len(inputs):
        log.info("input %s: %d file(s) under output_dir %s left out (earlier outputs, not inputs)", spec,
                 len(inputs) - len(kept), output_dir)
    if not kept:
        raise FileNotFoundError(f"every image of input {spec!r} lies in output_dir {output_dir}; point input at "
                                "your images, not at infer's outputs")
    return kept


def run_infer(cfg: Any, model_group: bool = False, dataset_group: bool = False) -> InferResult:
    """Segment ``cfg.input`` with ``cfg.checkpoint`` as configured by ``configs/infer.yaml``.

    Every output path is checked before the first image is read; an unreadable input is skipped
    with a warning naming it, and the closing log line counts and names the skipped ones.

    Args:
        cfg: ``checkpoint, input, output_dir, device, formats, alpha, model, dataset, eval``.
        model_group: a ``model=<name>`` config group was chosen.
        dataset_group: a ``dataset=<name>`` config group was chosen (its palette and normalisation
            are used).

    Returns:
        The files written per image and the inputs skipped.

    Raises:
        FileNotFoundError: no input images.
        ConfigError: bad ``eval.*``, ``formats`` or ``device`` values, naming the key.
        CheckpointError, CheckpointMismatchError: see :func:`load_for_inference`.
        OutputConflictError: an output path is an input, another input's output, or a file that no
            earlier infer run wrote into ``output_dir``; nothing was written.
    """
    from ccnet.evaluation.runner import plain_config

    settings = check_eval_config(plain_config(cfg.get("eval"), resolve=True))
    formats = parse_formats(cfg.get("formats", ["color", "overlay"]))
    device = resolve_device(str(cfg.get("device", "auto")), key="device")
    inputs, input_root = list_inputs(str(cfg.input))
    inputs = _outside(inputs, input_root, Path(str(cfg.output_dir)), str(cfg.input))
    ckpt_path = Path(str(cfg.checkpoint)).expanduser()
    model = load_for_inference(ckpt_path, device, plain_config(cfg.get("model")), plain_config(cfg.get("dataset")),
                               model_group, dataset_group)
    meta = model.dataset_meta
    manifest = OutputManifest(cfg.output_dir, TOOL)
    writer = PredictionWriter(cfg.output_dir, formats, meta["palette"], meta["ignore_index"],
                              alpha=float(cfg.get("alpha", 0.5)), num_classes=len(meta["palette"]),
                              input_root=input_root, legend=bool(cfg.get("legend", False)), classes=meta["classes"],
                              manifest=manifest)
    check_unique_outputs(writer, inputs)
    manifest.claim(writer.paths_for(inputs), inputs)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    log.info("segmenting %d image(s) with %s on %s into %s", len(inputs), ckpt_path, device, writer.save_dir)
    result = InferResult()
    for path in tqdm(inputs, desc="infer", dynamic_ncols=True, disable=not sys.stderr.isatty()):
        try:
            image = read_rgb(path)
        except UnreadableImageError as exc:
            log.warning("skipped: %s", exc)
            result.skipped.append((path, str(exc)))
            continue
        result.written.append(writer.write(predict_image(model, image, settings), path, image))
    summary = f"wrote {len(result.written)} of {len(inputs)} images ({', '.join(writer.formats)}) to {writer.save_dir}"
    if result.skipped:
        names = [p.relative_to(input_root).as_posix() if input_root in p.parents else str(p)
                 for p, _ in result.skipped]
        more = f", ... ({len(names) - NAMED} more)" if len(names) > NAMED else ""
        log.warning("%s; skipped %d unreadable: %s%s", summary, len(names), ", ".join(names[:NAMED]), more)
    else:
        log.info("%s", summary)
    return result
