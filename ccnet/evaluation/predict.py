"""``tools/infer.py`` as a function: segment image files with a checkpoint and write masks/overlays.

Inputs are a single image, a folder (searched recursively for image files) or a glob pattern. Each
image is normalised with the training dataset's mean/std, inferred with the configured
:class:`~ccnet.evaluation.inference.InferenceSettings` (whole/slide, scales, flip, AMP) and written
with :class:`~ccnet.evaluation.writers.PredictionWriter` using the dataset's palette.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from ccnet.data import dataset_metainfo
from ccnet.dist import resolve_device
from ccnet.evaluation.inference import InferenceSettings, predict_logits
from ccnet.evaluation.loading import load_checkpoint_for_eval, load_model, resolve_model_and_dataset
from ccnet.evaluation.writers import PredictionWriter, check_unique_outputs
from ccnet.utils.visualize import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


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
        ValueError: the file cannot be decoded (names it).
    """
    from ccnet.data.base import read_image

    try:
        return read_image(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


def to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float], device: torch.device) -> torch.Tensor:
    """``(x / 255 - mean) / std`` as the datasets normalise.

    Shape:
        image: (H, W, 3) uint8. Returns (1, 3, H, W) float32.
    """
    x = torch.tensor(image, device=device).permute(2, 0, 1).float().div_(255.0)  # (3, H, W); copies read-only input
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1)
    return ((x - m) / s).unsqueeze(0)


def run_infer(cfg: Any, model_group: bool = False, dataset_group: bool = False) -> List[Dict[str, Path]]:
    """Segment ``cfg.input`` with ``cfg.checkpoint`` as configured by ``configs/infer.yaml``.

    Args:
        cfg: ``checkpoint, input, output_dir, device, formats, alpha, model, dataset, eval``.
        model_group: a ``model=<name>`` config group was chosen.
        dataset_group: a ``dataset=<name>`` config group was chosen (its palette and normalisation
            are used).

    Returns:
        The written files, one dict (format -> path) per input image.

    Raises:
        FileNotFoundError: no input images.
        ValueError: unreadable image, a class count that does not match the palette, bad settings.
    """
    from ccnet.evaluation.runner import plain_config

    settings = InferenceSettings.from_config(plain_config(cfg.get("eval"), resolve=True))
    device = resolve_device(str(cfg.get("device", "auto")), key="device")
    inputs, input_root = list_inputs(str(cfg.input))
    ckpt_path = Path(str(cfg.checkpoint)).expanduser()
    ckpt, stored = load_checkpoint_for_eval(ckpt_path)
    model_cfg, dataset_cfg = resolve_model_and_dataset(stored, plain_config(cfg.get("model")),
                                                       plain_config(cfg.get("dataset")), model_group, dataset_group,
                                                       ckpt_path)
    classes, palette, ignore = dataset_metainfo(dataset_cfg)
    if model_cfg["num_classes"] != len(palette):
        raise ValueError(f"checkpoint {ckpt_path} predicts {model_cfg['num_classes']} classes but the "
                         f"{dataset_cfg['name']!r} palette has {len(palette)} colours ({len(classes)} classes); "
                         "choose the dataset the checkpoint was trained on (dataset=<name>) or give a folder "
                         "dataset with matching dataset.num_classes/palette")
    writer = PredictionWriter(cfg.output_dir, cfg.get("formats", ["color", "overlay"]), palette, ignore,
                              alpha=float(cfg.get("alpha", 0.5)), num_classes=len(palette), input_root=input_root)
    check_unique_outputs(writer, inputs)
    model = load_model(model_cfg, ckpt, ckpt_path, device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mean = tuple(dataset_cfg.get("mean") or IMAGENET_MEAN)
    std = tuple(dataset_cfg.get("std") or IMAGENET_STD)
    log.info("segmenting %d image(s) with %s on %s into %s", len(inputs), ckpt_path, device, writer.save_dir)
    written = []
    for path in tqdm(inputs, desc="infer", dynamic_ncols=True):
        image = read_rgb(path)
        logits = predict_logits(model, to_tensor(image, mean, std, device), settings)  # (1, K, H, W)
        pred = logits.argmax(dim=1)[0].cpu().numpy()
        written.append(writer.write(pred, path, image))
    log.info("wrote %s for %d image(s) to %s", ", ".join(writer.formats), len(inputs), writer.save_dir)
    return written
