"""Synthetic long-range-context dataset: the CCNet argument (arXiv 1811.11721, Sec. 3.2, Eq. 3-4) made measurable.

Every image holds one coloured *key* square, labelled with its colour class, and grey *shapes* carrying
the same class, readable only from the key at least ``min_gap`` pixels away. *Aligned* shapes lie in the
key's row or column band of feature cells (one criss-cross hop); *diagonal* shapes are ``min_gap`` from
both bands (two hops: u -> (row of u, column of the key) -> key). Geometry is aligned to
``feature_stride``; samples are a pure function of ``(seed, split, index)``, in memory, without
augmentation; :func:`write_to_disk` writes them as PNGs. Why this design: docs/reproducing.md.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ccnet.data.base import DatasetSpec
from ccnet.errors import ConfigError
from ccnet.utils.manifest import OutputManifest

log = logging.getLogger(__name__)

BACKGROUND = "background"
# Key colours (RGB). Saturated and far apart, so the key's class is a purely local decision.
KEY_COLORS: Tuple[Tuple[str, Tuple[int, int, int]], ...] = (
    ("red", (220, 40, 40)),
    ("green", (40, 200, 60)),
    ("blue", (50, 80, 230)),
    ("yellow", (230, 210, 40)),
    ("magenta", (210, 50, 210)),
    ("cyan", (40, 210, 220)),
)
_SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}
SPLITS = tuple(_SPLIT_STREAMS)

Box = Tuple[int, int, int, int]  # (row0, col0, row1, col1) in feature cells, end exclusive


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator settings, read from ``configs/dataset/synthetic.yaml`` (see the comments there)."""

    num_classes: int = 5
    ignore_index: int = 255
    image_size: int = 128
    feature_stride: int = 8
    key_cells: int = 2
    shape_cells: Tuple[int, int] = (2, 4)
    num_shapes: int = 2
    min_gap: int = 48
    noise_std: float = 8.0
    seed: int = 0
    num_train: int = 20000
    num_val: int = 200

    @property
    def grid(self) -> int:
        """Side of the image in feature cells."""
        return self.image_size // self.feature_stride

    @property
    def gap_cells(self) -> int:
        """``min_gap`` pixels rounded up to whole feature cells."""
        return math.ceil(self.min_gap / self.feature_stride)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> "SyntheticConfig":
        """Build and validate the settings from a (Hydra) mapping; unknown keys are ignored.

        Raises:
            ValueError: a value out of range or a geometry in which the key and the shapes cannot fit.
        """
        fields = {name: cfg[name] for name in cls.__dataclass_fields__ if name in cfg and cfg[name] is not None}
        if "shape_cells" in fields:
            fields["shape_cells"] = tuple(int(v) for v in fields["shape_cells"])
        out = cls(**fields)
        out.validate()
        return out

    def validate(self) -> None:
        """Raise a ``ValueError`` naming the ``dataset.*`` key to change when the settings cannot work."""
        n_colors = self.num_classes - 1
        if not 2 <= n_colors <= len(KEY_COLORS):
            raise ConfigError(
                f"dataset.num_classes={self.num_classes} for the synthetic set: expected 3..."
                f"{len(KEY_COLORS) + 1} (background + 2..{len(KEY_COLORS)} key colours)"
            )
        if self.image_size % self.feature_stride:
            raise ConfigError(
                f"dataset.image_size={self.image_size} must be a multiple of dataset.feature_stride="
                f"{self.feature_stride} (shapes are aligned to the feature grid)"
            )
        lo, hi = self.shape_cells
        if not 1 <= lo <= hi:
            raise ConfigError(f"dataset.shape_cells={list(self.shape_cells)}: expected [min, max] with 1 <= min <= max")
        if self.key_cells < 1 or self.num_shapes < 1 or self.min_gap < 0:
            raise ConfigError(
                f"dataset.key_cells={self.key_cells}, num_shapes={self.num_shapes} must be >= 1 and "
                f"min_gap={self.min_gap} >= 0"
            )
        if not self.feasible_key_positions():
            raise ConfigError(
                f"synthetic geometry does not fit: image_size={self.image_size} px is {self.grid} cells of "
                f"{self.feature_stride} px; a diagonal shape needs key_cells={self.key_cells} + gap "
                f"{self.gap_cells} cells (min_gap={self.min_gap} px) + {lo} cells on one side of the key in both "
                f"axes. Increase dataset.image_size or decrease dataset.min_gap / key_cells / shape_cells"
            )
        if self.num_train < 1 or self.num_val < 1:
            raise ConfigError(f"dataset.num_train={self.num_train} and num_val={self.num_val} must be >= 1")

    def feasible_key_positions(self) -> List[int]:
        """Key start cells (same for rows and columns) that leave room for every kind of shape: on one side of the
        key, the gap plus the smallest shape.
        """
        need = self.gap_cells + self.shape_cells[0]
        return [r for r in range(self.grid - self.key_cells + 1) if max(r, self.grid - r - self.key_cells) >= need]


@dataclass
class SyntheticSample:
    """One generated scene.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        label: (H, W) uint8 class indices (0 = background, c >= 1 = key colour c - 1).
        color: the key's class index.
        key: the key square in feature cells (row0, col0, row1, col1), end exclusive.
        shapes: (box, kind) per shape, kind ``"aligned"`` (one criss-cross hop from the key) or
            ``"diagonal"`` (two hops).
    """

    image: np.ndarray
    label: np.ndarray
    color: int
    key: Box
    shapes: List[Tuple[Box, str]]


def _cells_to_pixels(mask_cells: np.ndarray, stride: int) -> np.ndarray:
    return np.repeat(np.repeat(mask_cells, stride, axis=0), stride, axis=1)


def _sample_span(rng: np.random.Generator, lo: int, hi: int, length: int) -> Tuple[int, int]:
    """A random ``[start, start + length)`` inside ``[lo, hi)`` (``hi - lo >= length``)."""
    start = int(rng.integers(lo, hi - length + 1))
    return start, start + length


def _sample_far_span(rng: np.random.Generator, cfg: SyntheticConfig, k0: int, k1: int) -> Tuple[int, int]:
    """A span of ``shape_cells`` cells on one side of the key's span ``[k0, k1)``, beyond the gap."""
    shortest, longest = cfg.shape_cells
    sides = [(lo, hi) for lo, hi in ((0, k0 - cfg.gap_cells), (k1 + cfg.gap_cells, cfg.grid)) if hi - lo >= shortest]
    assert sides, "key positions are drawn from SyntheticConfig.feasible_key_positions()"
    lo, hi = sides[int(rng.integers(len(sides)))]
    return _sample_span(rng, lo, hi, int(rng.integers(shortest, min(longest, hi - lo) + 1)))


def _sample_shape(rng: np.random.Generator, cfg: SyntheticConfig, key: Box, kind: str) -> Box:
    kr0, kc0, kr1, kc1 = key
    if kind == "diagonal":
        rows = _sample_far_span(rng, cfg, kr0, kr1)
        cols = _sample_far_span(rng, cfg, kc0, kc1)
        return rows[0], cols[0], rows[1], cols[1]
    # Aligned: thickness within the key's band on one axis, far from the key along the other axis.
    along_rows = bool(rng.integers(2))
    b0, b1, o0, o1 = (kr0, kr1, kc0, kc1) if along_rows else (kc0, kc1, kr0, kr1)
    band = _sample_span(rng, b0, b1, int(rng.integers(1, b1 - b0 + 1)))
    far = _sample_far_span(rng, cfg, o0, o1)
    return (band[0], far[0], band[1], far[1]) if along_rows else (far[0], band[0], far[1], band[1])


def generate_sample(cfg: SyntheticConfig, split: str, index: int) -> SyntheticSample:
    """Generate scene ``index`` of ``split``; a pure function of ``(cfg, split, index)``.

    Shapes alternate aligned / diagonal (the first aligned), so a scene with two or more shapes needs both
    one and two hops; shapes of one kind may overlap.

    Args:
        cfg: generator settings (``cfg.seed`` selects the whole dataset).
        split: ``"train"``, ``"val"`` or ``"test"``; each split is an independent stream.
        index: sample index within the split.
    """
    if split not in _SPLIT_STREAMS:
        raise ValueError(f"synthetic split {split!r} unknown: expected one of {sorted(_SPLIT_STREAMS)}")
    rng = np.random.default_rng([cfg.seed, _SPLIT_STREAMS[split], index])
    positions = cfg.feasible_key_positions()
    stride, size = cfg.feature_stride, cfg.image_size
    kr, kc = (int(rng.choice(positions)) for _ in range(2))
    key = (kr, kc, kr + cfg.key_cells, kc + cfg.key_cells)
    kinds = ["aligned" if i % 2 == 0 else "diagonal" for i in range(cfg.num_shapes)]
    shapes = [(_sample_shape(rng, cfg, key, kind), kind) for kind in kinds]

    color = int(rng.integers(cfg.num_classes - 1)) + 1
    label_cells = np.zeros((cfg.grid, cfg.grid), dtype=np.uint8)
    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = rng.uniform(20, 70)  # dark grey background, brightness varies per image
    for (r0, c0, r1, c1), _ in shapes:
        label_cells[r0:r1, c0:c1] = color
        # Grey with a per-shape brightness: the same distribution for every class, so carries no class.
        image[r0 * stride : r1 * stride, c0 * stride : c1 * stride] = rng.uniform(110, 190)
    r0, c0, r1, c1 = key
    label_cells[r0:r1, c0:c1] = color
    rgb = np.asarray(KEY_COLORS[color - 1][1], dtype=np.float32)
    image[r0 * stride : r1 * stride, c0 * stride : c1 * stride] = rgb + rng.uniform(-20, 20, size=3)
    image += rng.normal(0.0, cfg.noise_std, size=image.shape)
    label = _cells_to_pixels(label_cells, stride)
    return SyntheticSample(np.clip(image + 0.5, 0, 255).astype(np.uint8), label, color, key, shapes)


def region_masks(sample: SyntheticSample, stride: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixels whose class needs long-range context, and the subset that needs two criss-cross hops.

    Args:
        stride: the feature stride of the grid the scene was generated on.

    Returns:
        ``(long_range, two_hop)`` (H, W) boolean masks: every shape pixel, and the pixels of diagonal shapes.
    """
    size = sample.label.shape[0] // stride
    long_range = np.zeros((size, size), dtype=bool)
    two_hop = np.zeros((size, size), dtype=bool)
    for (r0, c0, r1, c1), kind in sample.shapes:
        long_range[r0:r1, c0:c1] = True
        if kind == "diagonal":
            two_hop[r0:r1, c0:c1] = True
    return _cells_to_pixels(long_range, stride), _cells_to_pixels(two_hop, stride)


class SyntheticDataset(Dataset):
    """In-memory synthetic long-range-context dataset; items ``(image, label)``.

    Args:
        cfg: generator settings.
        split: ``"train"``, ``"val"`` or ``"test"``.
        mean, std: normalisation ``(x / 255 - mean) / std`` per RGB channel.

    Shape:
        image: (3, H, W) float32 normalised. label: (H, W) int64.
    """

    has_labels = True

    def __init__(self, cfg: SyntheticConfig, split: str, mean: Sequence[float], std: Sequence[float]) -> None:
        if split not in _SPLIT_STREAMS:
            raise ValueError(f"synthetic split {split!r} unknown: expected one of {sorted(_SPLIT_STREAMS)}")
        self.cfg = cfg
        self.split = split
        self.classes: List[str] = [BACKGROUND] + [name for name, _ in KEY_COLORS[: cfg.num_classes - 1]]
        self.palette: List[Tuple[int, int, int]] = [(0, 0, 0)] + [rgb for _, rgb in KEY_COLORS[: cfg.num_classes - 1]]
        self.num_classes = cfg.num_classes
        self.ignore_index = cfg.ignore_index
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        length = cfg.num_train if split == "train" else cfg.num_val
        self.image_paths = [Path("synthetic") / split / f"{i:06d}.png" for i in range(length)]
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.image_paths)

    def sample(self, index: int) -> SyntheticSample:
        """The raw scene behind item ``index`` (uint8 image, label and geometry)."""
        if not 0 <= index < len(self):
            raise IndexError(f"synthetic {self.split} index {index} out of range [0, {len(self)})")
        return generate_sample(self.cfg, self.split, index)

    def region_masks(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(long_range, two_hop)`` pixel masks of item ``index``; see :func:`region_masks`."""
        return region_masks(self.sample(index), self.cfg.feature_stride)

    def two_hop_pixel(self, index: int) -> Optional[Tuple[int, int]]:
        """(row, column) of the centre of item ``index``'s first diagonal shape, or None when the scene has none."""
        stride = self.cfg.feature_stride
        diagonal = [box for box, kind in self.sample(index).shapes if kind == "diagonal"]
        if not diagonal:
            return None
        r0, c0, r1, c1 = diagonal[0]
        return (r0 + r1) * stride // 2, (c0 + c1) * stride // 2

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        scene = self.sample(index)
        image = torch.from_numpy(scene.image).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
        image = (image - self._mean) / self._std
        return image, torch.from_numpy(scene.label.astype(np.int64))


def _size_pair(crop_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(crop_size, int):
        return crop_size, crop_size
    values = [int(v) for v in crop_size]
    if len(values) == 1:
        return values[0], values[0]
    return values[0], values[1]


def build_synthetic(
    dataset_cfg: Mapping[str, Any], split: str, crop_size: Optional[Union[int, Sequence[int]]] = None
) -> SyntheticDataset:
    """Build the synthetic dataset for ``split`` from ``cfg.dataset`` (``configs/dataset/synthetic.yaml``).

    Args:
        dataset_cfg: the dataset config; ``train_split`` / ``val_split`` name the generator streams.
        split: ``"train"``, ``"val"`` (or the configured split names), or ``"test"``.
        crop_size: None or the full image size: a crop could cut the key off.
    """
    cfg = SyntheticConfig.from_mapping(dataset_cfg)
    aliases = {dataset_cfg.get("train_split", "train"): "train", dataset_cfg.get("val_split", "val"): "val"}
    stream = aliases.get(split, split)
    if crop_size is not None and _size_pair(crop_size) != (cfg.image_size, cfg.image_size):
        raise ConfigError(
            f"train.crop_size={crop_size} for the synthetic dataset: crops would cut the key off "
            f"and make labels undecidable; use train.crop_size=null (or {cfg.image_size}, the "
            f"dataset.image_size)"
        )
    mean = dataset_cfg.get("mean", (0.485, 0.456, 0.406))
    std = dataset_cfg.get("std", (0.229, 0.224, 0.225))
    return SyntheticDataset(cfg, stream, mean, std)


WRITER = "write_synthetic"  # the name its files are recorded under in out/manifest.txt


def write_to_disk(
    cfg: SyntheticConfig, out: Path, splits: Sequence[str] = ("train", "val"), limit: Optional[int] = None
) -> int:
    """Write the generated samples as ``out/images/<split>/NNNNNN.png`` (RGB) and ``out/masks/<split>/NNNNNN.png``
    (class indices), the pixels the in-memory dataset yields.

    Every path is claimed before the first file is written and each file recorded in ``out/manifest.txt``,
    so a later run replaces these files and no others.

    Args:
        limit: at most this many samples per split (all when None).

    Returns:
        The number of samples written.

    Raises:
        OutputConflictError: a path holds a file no earlier write_synthetic run wrote; nothing is written.
    """
    from PIL import Image

    out = Path(out)
    counts = {split: (cfg.num_train if split == "train" else cfg.num_val) for split in splits}
    counts = {split: count if limit is None else min(count, limit) for split, count in counts.items()}
    names = {split: [f"{index:06d}.png" for index in range(count)] for split, count in counts.items()}
    manifest = OutputManifest(out, WRITER)
    manifest.claim(
        (out / kind / split / name for split in splits for name in names[split] for kind in ("images", "masks")),
        key="--out",
    )
    written = 0
    for split in splits:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "masks" / split).mkdir(parents=True, exist_ok=True)
        for index, name in enumerate(names[split]):
            scene = generate_sample(cfg, split, index)
            for kind, pixels in (("images", scene.image), ("masks", scene.label)):
                Image.fromarray(pixels).save(out / kind / split / name)
                manifest.record(out / kind / split / name)
            written += 1
        log.info("wrote %d %s samples to %s", counts[split], split, out)
    return written


def metainfo(dataset_cfg: Mapping[str, Any]) -> Tuple[List[str], List[Tuple[int, int, int]], int]:
    """Class names, palette and ignore index (nothing is generated)."""
    keys = KEY_COLORS[: int(dataset_cfg.get("num_classes", 5)) - 1]
    return (
        [BACKGROUND] + [n for n, _ in keys],
        [(0, 0, 0)] + [rgb for _, rgb in keys],
        int(dataset_cfg.get("ignore_index", 255)),
    )


DATASET = DatasetSpec(build_synthetic, metainfo)
