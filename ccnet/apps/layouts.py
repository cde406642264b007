"""Generated datasets in the real on-disk layouts of Cityscapes and ADE20K, at their real sizes, for
``tools/rehearse_presets.py`` and ``tools/benchmark.py data``. Street-like pictures (colour fields, boxes,
sensor noise) so a PNG compresses like a photo (~2.3 MB at 2048x1024; real Cityscapes ~2.2 MB).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from ccnet.data.cityscapes import LABELS

CITYSCAPES_SIZE = (1024, 2048)  # (height, width) of every leftImg8bit image
ADE20K_SIZE = (512, 683)  # a typical ADE20K validation image (the short side is 512 for many)


def street_scene(
    rng: np.random.Generator, height: int, width: int, label_values: np.ndarray, background: Tuple[int, int] = (7, 23)
) -> Tuple[np.ndarray, np.ndarray]:
    """An RGB picture and a label map of the same regions.

    Args:
        label_values: values the boxes are drawn from (the dataset's stored label values).
        background: the values of the lower and upper half (Cityscapes: road, sky).

    Shape:
        Returns ((height, width, 3) uint8, (height, width) uint8).
    """
    label = np.full((height, width), background[0], dtype=np.uint8)
    label[: height // 2] = background[1]
    coarse = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    for _ in range(40):
        y0, x0 = int(rng.integers(0, height - 8)), int(rng.integers(0, width - 8))
        y1 = min(height, y0 + int(rng.integers(8, max(9, height // 3))))
        x1 = min(width, x0 + int(rng.integers(8, max(9, width // 4))))
        label[y0:y1, x0:x1] = rng.choice(label_values)
        image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * 0.5 + rng.integers(0, 256, 3).astype(np.float32) * 0.5
    image += np.asarray(rng.normal(0.0, 1.2, image.shape), dtype=np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), label


def cityscapes_layout_files(root: Path, counts: Dict[str, int], city: str = "gen") -> List[Tuple[Path, Path]]:
    """The ``(image, label)`` paths :func:`write_cityscapes_layout` writes, in its order."""
    pairs = []
    for split, count in counts.items():
        for i in range(count):
            stem = f"{city}_{i:06d}_000019"
            pairs.append(
                (
                    root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                    root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                )
            )
    return pairs


def ade20k_layout_files(root: Path, counts: Dict[str, int]) -> List[Tuple[Path, Path]]:
    """The ``(image, annotation)`` paths :func:`write_ade20k_layout` writes, in its order."""
    base = root / "ADEChallengeData2016"
    pairs = []
    for split, count in counts.items():
        for i in range(count):
            stem = f"ADE_{split[:5]}_{i + 1:08d}"
            pairs.append((base / "images" / split / f"{stem}.jpg", base / "annotations" / split / f"{stem}.png"))
    return pairs


def _write_pair(
    image_path: Path, label_path: Path, image: np.ndarray, label: np.ndarray, record: Optional[Callable[[Path], None]]
) -> None:
    for path, pixels in ((image_path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)), (label_path, label)):
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), pixels)
        if record is not None:
            record(path)


def write_cityscapes_layout(
    root: Path,
    counts: Dict[str, int],
    size: Tuple[int, int] = CITYSCAPES_SIZE,
    seed: int = 0,
    city: str = "gen",
    record: Optional[Callable[[Path], None]] = None,
) -> List[Path]:
    """``root/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` and
    ``root/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`` (Cityscapes label ids) for each split.

    Args:
        root: the dataset root (``dataset.root``).
        counts: images per split, e.g. ``{"train": 2, "val": 1}``.
        size: (height, width).
        seed: selects the pictures.
        city: the city folder name.
        record: called with each file just written (e.g. an output manifest's ``record``).

    Returns:
        The images written.
    """
    rng = np.random.default_rng(seed)
    label_ids = np.array([label_id for _, label_id, _, _ in LABELS if label_id >= 0], dtype=np.uint8)
    written = []
    for image_path, label_path in cityscapes_layout_files(root, counts, city):
        _write_pair(image_path, label_path, *street_scene(rng, *size, label_ids), record)
        written.append(image_path)
    return written


def write_ade20k_layout(
    root: Path,
    counts: Dict[str, int],
    size: Tuple[int, int] = ADE20K_SIZE,
    seed: int = 0,
    record: Optional[Callable[[Path], None]] = None,
) -> List[Path]:
    """``root/ADEChallengeData2016/images/<split>/ADE_<split>_<n>.jpg`` and ``annotations/<split>/*.png``
    (values 0 = other, 1..150 = the SceneParsing classes) for each split (``training``, ``validation``);
    ``record`` is called with each file just written.

    Returns:
        The images written.
    """
    rng = np.random.default_rng(seed)
    classes = np.arange(1, 151, dtype=np.uint8)
    written = []
    for image_path, label_path in ade20k_layout_files(root, counts):
        image, label = street_scene(rng, *size, classes, background=(4, 3))  # floor, sky
        label[: size[0] // 20] = 0  # an "other" band: ignored in training and scoring
        _write_pair(image_path, label_path, image, label, record)
        written.append(image_path)
    return written
