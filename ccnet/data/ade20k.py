"""ADE20K SceneParsing (ADEChallengeData2016), 150 classes (CCNet, arXiv 1811.11721, Sec. 4.3).

Layout (``ROOT`` is ``dataset.root``, or the ``ADEChallengeData2016`` folder itself)::

    ROOT/ADEChallengeData2016/images/{training,validation}/ADE_*.jpg
    ROOT/ADEChallengeData2016/annotations/{training,validation}/ADE_*.png

Annotation 0 ("other objects") is ignored (255); 1..150 are classes 0..149 ("reduce zero label"). Class
names and colours as in mmsegmentation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple

import numpy as np

from ccnet.data.base import DatasetSpec, SegmentationDataset
from ccnet.data.config import check_label_spec, mean_std, resolve_split, root_from_cfg, transform_from_cfg
from ccnet.data.transforms import SizeLike
from ccnet.errors import ConfigError

log = logging.getLogger(__name__)

CLASSES: Tuple[str, ...] = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television receiver",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
)

PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (120, 120, 120),
    (180, 120, 120),
    (6, 230, 230),
    (80, 50, 50),
    (4, 200, 3),
    (120, 120, 80),
    (140, 140, 140),
    (204, 5, 255),
    (230, 230, 230),
    (4, 250, 7),
    (224, 5, 255),
    (235, 255, 7),
    (150, 5, 61),
    (120, 120, 70),
    (8, 255, 51),
    (255, 6, 82),
    (143, 255, 140),
    (204, 255, 4),
    (255, 51, 7),
    (204, 70, 3),
    (0, 102, 200),
    (61, 230, 250),
    (255, 6, 51),
    (11, 102, 255),
    (255, 7, 71),
    (255, 9, 224),
    (9, 7, 230),
    (220, 220, 220),
    (255, 9, 92),
    (112, 9, 255),
    (8, 255, 214),
    (7, 255, 224),
    (255, 184, 6),
    (10, 255, 71),
    (255, 41, 10),
    (7, 255, 255),
    (224, 255, 8),
    (102, 8, 255),
    (255, 61, 6),
    (255, 194, 7),
    (255, 122, 8),
    (0, 255, 20),
    (255, 8, 41),
    (255, 5, 153),
    (6, 51, 255),
    (235, 12, 255),
    (160, 150, 20),
    (0, 163, 255),
    (140, 140, 140),
    (250, 10, 15),
    (20, 255, 0),
    (31, 255, 0),
    (255, 31, 0),
    (255, 224, 0),
    (153, 255, 0),
    (0, 0, 255),
    (255, 71, 0),
    (0, 235, 255),
    (0, 173, 255),
    (31, 0, 255),
    (11, 200, 200),
    (255, 82, 0),
    (0, 255, 245),
    (0, 61, 255),
    (0, 255, 112),
    (0, 255, 133),
    (255, 0, 0),
    (255, 163, 0),
    (255, 102, 0),
    (194, 255, 0),
    (0, 143, 255),
    (51, 255, 0),
    (0, 82, 255),
    (0, 255, 41),
    (0, 255, 173),
    (10, 0, 255),
    (173, 255, 0),
    (0, 255, 153),
    (255, 92, 0),
    (255, 0, 255),
    (255, 0, 245),
    (255, 0, 102),
    (255, 173, 0),
    (255, 0, 20),
    (255, 184, 184),
    (0, 31, 255),
    (0, 255, 61),
    (0, 71, 255),
    (255, 0, 204),
    (0, 255, 194),
    (0, 255, 82),
    (0, 10, 255),
    (0, 112, 255),
    (51, 0, 255),
    (0, 194, 255),
    (0, 122, 255),
    (0, 255, 163),
    (255, 153, 0),
    (0, 255, 10),
    (255, 112, 0),
    (143, 255, 0),
    (82, 0, 255),
    (163, 255, 0),
    (255, 235, 0),
    (8, 184, 170),
    (133, 0, 255),
    (0, 255, 92),
    (184, 0, 255),
    (255, 0, 31),
    (0, 184, 255),
    (0, 214, 255),
    (255, 0, 112),
    (92, 255, 0),
    (0, 224, 255),
    (112, 224, 255),
    (70, 184, 160),
    (163, 0, 255),
    (153, 0, 255),
    (71, 255, 0),
    (255, 0, 163),
    (255, 204, 0),
    (255, 0, 143),
    (0, 255, 235),
    (133, 255, 0),
    (255, 0, 235),
    (245, 0, 255),
    (255, 0, 122),
    (255, 245, 0),
    (10, 190, 212),
    (214, 255, 0),
    (0, 204, 255),
    (20, 0, 255),
    (255, 255, 0),
    (0, 153, 255),
    (0, 41, 255),
    (0, 255, 204),
    (41, 0, 255),
    (41, 255, 0),
    (173, 0, 255),
    (0, 245, 255),
    (71, 0, 255),
    (122, 0, 255),
    (0, 255, 184),
    (0, 92, 255),
    (184, 255, 0),
    (0, 133, 255),
    (255, 214, 0),
    (25, 194, 194),
    (102, 255, 0),
    (92, 0, 255),
)

NUM_CLASSES = len(CLASSES)
IGNORE_INDEX = 255

# Stored value -> class: 0 ("other") is ignored, k -> k - 1; values above 150 cannot occur.
LABEL_LUT = np.full(256, -1, dtype=np.int16)
LABEL_LUT[0] = IGNORE_INDEX
LABEL_LUT[1 : NUM_CLASSES + 1] = np.arange(NUM_CLASSES)

LAYOUT = """expected layout:
  ROOT/ADEChallengeData2016/images/<split>/ADE_*.jpg
  ROOT/ADEChallengeData2016/annotations/<split>/ADE_*.png      (<split>: training or validation)
Download ADEChallengeData2016.zip (http://sceneparsing.csail.mit.edu), unzip it into ROOT and set
dataset.root=ROOT."""


def find_pairs(root: Path, split: str) -> Tuple[List[Path], List[Path]]:
    """List the images of a split and their annotations, checking the layout and the pairing.

    Raises:
        FileNotFoundError: Missing root, split directory, or an annotation for an image (or vice versa).
    """
    if not root.is_dir():
        raise FileNotFoundError(f"ADE20K root {root} does not exist; {LAYOUT}")
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    image_dir, label_dir = base / "images" / split, base / "annotations" / split
    for d in (image_dir, label_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"ADE20K split directory {d} not found; {LAYOUT}")
    images = sorted(image_dir.glob("*.jpg"))
    if not images:
        raise FileNotFoundError(f"No .jpg images in {image_dir}; {LAYOUT}")
    labels = [label_dir / (p.stem + ".png") for p in images]
    for image, label in zip(images, labels):
        if not label.is_file():
            raise FileNotFoundError(f"Image {image} has no annotation: expected {label}; {LAYOUT}")
    orphans = sorted(set(label_dir.glob("*.png")) - set(labels))
    if orphans:
        raise FileNotFoundError(
            f"Annotation {orphans[0]} has no image: expected "
            f"{image_dir / orphans[0].stem}.jpg ({len(orphans)} annotation(s) without image); "
            f"{LAYOUT}"
        )
    return images, labels


def build_ade20k(
    dataset_cfg: Mapping[str, Any], split: str, crop_size: Optional[SizeLike] = None
) -> SegmentationDataset:
    """ADE20K dataset for ``split`` from ``configs/dataset/ade20k.yaml``.

    Args:
        dataset_cfg: ``root``, split names and the pipeline keys of :func:`ccnet.data.config.transform_from_cfg`.
        split: ``"train"``, ``"val"`` (resolved to ``training`` / ``validation``) or a split name.
        crop_size: training crop, overrides ``dataset_cfg.crop_size``.
    """
    num_classes, ignore = check_label_spec(
        dataset_cfg.get("num_classes", NUM_CLASSES), dataset_cfg.get("ignore_index", IGNORE_INDEX), "ade20k"
    )
    if (num_classes, ignore) != (NUM_CLASSES, IGNORE_INDEX):
        raise ConfigError(
            f"ade20k: num_classes={num_classes}, ignore_index={ignore} do not match the "
            f"{NUM_CLASSES} SceneParsing classes and ignore {IGNORE_INDEX}"
        )
    name, is_train = resolve_split(dataset_cfg, split)
    images, labels = find_pairs(root_from_cfg(dataset_cfg, LAYOUT), name)
    log.info("ade20k %s: %d images", name, len(images))
    return SegmentationDataset(
        images,
        labels,
        CLASSES,
        PALETTE,
        IGNORE_INDEX,
        LABEL_LUT,
        transform_from_cfg(dataset_cfg, is_train, crop_size),
        *mean_std(dataset_cfg),
    )


def metainfo(dataset_cfg: Mapping[str, Any]) -> Tuple[List[str], List[Tuple[int, int, int]], int]:
    """Class names, palette and ignore index (no file is read)."""
    return list(CLASSES), list(PALETTE), int(dataset_cfg.get("ignore_index", 255))


DATASET = DatasetSpec(build_ade20k, metainfo)
