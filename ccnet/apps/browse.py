"""``tools/browse_dataset.py`` (configs/browse.yaml): dataset samples after their transforms, as
``image | colourised label`` PNGs with a legend of the classes shown; ignored pixels are black.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Mapping

import numpy as np
import torch
from PIL import Image

from ccnet.data.base import SegmentationData
from ccnet.data.build import build_dataset
from ccnet.errors import ConfigError
from ccnet.utils.manifest import OutputManifest
from ccnet.utils.visualize import add_headings, add_legend, colorize, denormalize

log = logging.getLogger(__name__)


def render_sample(
    image: torch.Tensor, label: torch.Tensor, dataset: SegmentationData, legend: bool = True
) -> np.ndarray:
    """Side-by-side picture of one item: de-normalised image left, label in the dataset's palette right.

    Args:
        dataset: gives ``mean, std, palette, classes, ignore_index``.
        legend: append a legend of the classes in ``label`` below.

    Shape:
        image: (3, H, W) normalised float. label: (H, W) int. Returns (headings + H + legend height, 2 * W, 3)
        uint8.
    """
    rgb = denormalize(image, dataset.mean, dataset.std)
    label_map = label.numpy()
    panel = np.concatenate([rgb, colorize(label_map, dataset.palette, dataset.ignore_index)], axis=1)
    if legend:
        panel = add_legend(panel, dataset.palette, dataset.classes, [label_map], dataset.ignore_index)
    return add_headings(panel, ["network input", "label"])


def write_samples(dataset: SegmentationData, out_dir: Path, num_samples: int, seed: int = 0) -> List[Path]:
    """Render ``num_samples`` items (a seeded random order, cycling when the dataset is smaller) to PNGs
    ``<k>_<image stem>.png`` in ``out_dir``; an image drawn twice is augmented twice.

    Returns:
        The written files.

    Raises:
        OutputConflictError: a file of that name exists in ``out_dir`` that no earlier browse run wrote there
            (``out_dir/manifest.txt``), or is one of the dataset's images; nothing is written.
    """
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    out_dir = Path(out_dir)
    order = np.random.default_rng(seed).permutation(len(dataset))
    indices = [int(order[k % len(order)]) for k in range(num_samples)]
    paths = [out_dir / f"{k:03d}_{Path(dataset.image_paths[i]).stem}.png" for k, i in enumerate(indices)]
    manifest = OutputManifest(out_dir, "browse")
    manifest.claim(paths, inputs=dataset.image_paths)
    for index, path in zip(indices, paths):
        image, label = dataset[index]
        Image.fromarray(render_sample(image, label, dataset)).save(path)
        manifest.record(path)
    log.info("Wrote %d samples (image | label) to %s", len(paths), out_dir)
    return paths


def browse(cfg: Mapping[str, Any]) -> List[Path]:
    """Build ``cfg.dataset`` for ``cfg.split`` and write ``cfg.num_samples`` PNGs to ``cfg.output_dir``.

    ``cfg.seed`` seeds torch before the dataset is built, which fixes the augmentation and the sample order.
    """
    torch.manual_seed(int(cfg["seed"]))
    dataset = build_dataset(cfg["dataset"], str(cfg["split"]), crop_size=cfg.get("crop_size"))
    return write_samples(dataset, Path(str(cfg["output_dir"])), int(cfg["num_samples"]), int(cfg["seed"]))
