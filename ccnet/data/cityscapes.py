"""Cityscapes fine annotations, 19 evaluation classes (the benchmark of CCNet, arXiv 1811.11721, Sec. 4).

Layout (as downloaded; ``ROOT`` is ``dataset.root``)::

    ROOT/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Label ids map to train ids with cityscapesScripts' ``labels.py`` (void, rare classes and the license
plate -> 255); ``label_type: labelTrainIds`` reads ``*_gtFine_labelTrainIds.png`` instead. The test split
is unlabelled (all-ignore labels, ``has_labels`` False).
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

# (name, labelId, trainId, RGB colour) from cityscapesScripts/helpers/labels.py.
LABELS: Tuple[Tuple[str, int, int, Tuple[int, int, int]], ...] = (
    ("unlabeled", 0, 255, (0, 0, 0)),
    ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)),
    ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)),
    ("dynamic", 5, 255, (111, 74, 0)),
    ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)),
    ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)),
    ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)),
    ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)),
    ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)),
    ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)),
    ("rider", 25, 12, (255, 0, 0)),
    ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)),
    ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)),
    ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
    ("license plate", -1, 255, (0, 0, 142)),
)

IGNORE_INDEX = 255
_TRAIN = sorted((train_id, name, color, label_id) for name, label_id, train_id, color in LABELS if train_id != 255)
CLASSES: Tuple[str, ...] = tuple(name for _, name, _, _ in _TRAIN)
PALETTE: Tuple[Tuple[int, int, int], ...] = tuple(color for _, _, color, _ in _TRAIN)
NUM_CLASSES = len(CLASSES)

# labelId (a uint8 file value; -1 is stored as 255) -> trainId. Values that are no label id map to 255.
_ID_TO_TRAIN = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _name, _label_id, _train_id, _ in LABELS:
    _ID_TO_TRAIN[_label_id % 256] = _train_id
# trainId -> labelId for submissions; ignore (and any non-class value) -> 0 "unlabeled".
_TRAIN_TO_ID = np.zeros(256, dtype=np.uint8)
for _train_id, _class_name, _color, _id in _TRAIN:
    _TRAIN_TO_ID[_train_id] = _id


def _as_uint8(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{what} must be an integer array, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"{what} values must be in [0, 255], got range [{array.min()}, {array.max()}]")
    return array.astype(np.uint8)


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map Cityscapes label ids (as stored in ``*_gtFine_labelIds.png``) to train ids 0..18, everything else to 255."""
    return _ID_TO_TRAIN[_as_uint8(label_ids, "label_ids")]


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map train ids (0..18) back to Cityscapes label ids for test-server submissions; others become 0 ("unlabeled")."""
    return _TRAIN_TO_ID[_as_uint8(train_ids, "train_ids")]


def _raw_label_lut(label_type: str) -> np.ndarray:
    """Stored value -> train id, -1 for values that cannot occur in that kind of file."""
    lut = np.full(256, -1, dtype=np.int16)
    if label_type == "labelIds":
        for _, label_id, train_id, _ in LABELS:
            lut[label_id % 256] = train_id
    else:
        lut[:NUM_CLASSES] = np.arange(NUM_CLASSES)
        lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


LAYOUT = """expected layout:
  ROOT/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
  ROOT/gtFine/<split>/<city>/<name>_gtFine_labelIds.png   (or _labelTrainIds.png with label_type: labelTrainIds)
Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com
and unzip both into ROOT, then set dataset.root=ROOT."""


def find_pairs(root: Path, split: str, label_type: str, labelled: bool) -> Tuple[List[Path], Optional[List[Path]]]:
    """List the images of a split and their label files, checking the layout and the pairing.

    Raises:
        FileNotFoundError: Missing root, split directory, or a label for an image (or vice versa);
            the message names the path and shows the expected layout.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"Cityscapes root {root} does not exist; {LAYOUT}")
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        have = sorted(p.name for p in (root / "leftImg8bit").iterdir()) if (root / "leftImg8bit").is_dir() else []
        raise FileNotFoundError(f"Cityscapes split directory {image_dir} not found (splits present: {have}); {LAYOUT}")
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise FileNotFoundError(f"No *_leftImg8bit.png images under {image_dir}/<city>/; {LAYOUT}")
    if not labelled:
        return images, None
    label_dir = root / "gtFine" / split
    if not label_dir.is_dir():
        raise FileNotFoundError(f"Cityscapes label directory {label_dir} not found; {LAYOUT}")
    suffix = f"_gtFine_{label_type}.png"
    labels = [label_dir / p.parent.name / (p.name[: -len("_leftImg8bit.png")] + suffix) for p in images]
    for image, label in zip(images, labels):
        if not label.is_file():
            raise FileNotFoundError(f"Image {image} has no label: expected {label}; {LAYOUT}")
    orphans = sorted(set(label_dir.glob(f"*/*{suffix}")) - set(labels))
    if orphans:
        expected = image_dir / orphans[0].parent.name / (orphans[0].name[: -len(suffix)] + "_leftImg8bit.png")
        raise FileNotFoundError(
            f"Label {orphans[0]} has no image: expected {expected} ({len(orphans)} label "
            f"file(s) without image); {LAYOUT}"
        )
    return images, labels


def build_cityscapes(
    dataset_cfg: Mapping[str, Any], split: str, crop_size: Optional[SizeLike] = None
) -> SegmentationDataset:
    """Cityscapes dataset for ``split`` from ``configs/dataset/cityscapes.yaml``.

    Args:
        dataset_cfg: ``root``, ``label_type`` (``labelIds`` | ``labelTrainIds``), split names and the pipeline
            keys read by :func:`ccnet.data.config.transform_from_cfg`.
        split: ``"train"``, ``"val"``, ``"test"`` or a split directory name.
        crop_size: training crop, overrides ``dataset_cfg.crop_size``.
    """
    num_classes, ignore = check_label_spec(
        dataset_cfg.get("num_classes", NUM_CLASSES), dataset_cfg.get("ignore_index", IGNORE_INDEX), "cityscapes"
    )
    if (num_classes, ignore) != (NUM_CLASSES, IGNORE_INDEX):
        raise ConfigError(
            f"cityscapes: num_classes={num_classes}, ignore_index={ignore} do not match the "
            f"official {NUM_CLASSES} train ids and ignore {IGNORE_INDEX}; use dataset=folder for "
            "other label sets"
        )
    label_type = str(dataset_cfg.get("label_type", "labelIds"))
    if label_type not in ("labelIds", "labelTrainIds"):
        raise ConfigError(f"cityscapes: label_type must be 'labelIds' or 'labelTrainIds', got {label_type!r}")
    name, is_train = resolve_split(dataset_cfg, split)
    labelled = name != str(dataset_cfg.get("test_split", "test"))
    images, labels = find_pairs(root_from_cfg(dataset_cfg, LAYOUT), name, label_type, labelled)
    log.info("cityscapes %s: %d images (%s)", name, len(images), label_type if labelled else "unlabelled")
    return SegmentationDataset(
        images,
        labels,
        CLASSES,
        PALETTE,
        IGNORE_INDEX,
        _raw_label_lut(label_type),
        transform_from_cfg(dataset_cfg, is_train, crop_size),
        *mean_std(dataset_cfg),
    )


def metainfo(dataset_cfg: Mapping[str, Any]) -> Tuple[List[str], List[Tuple[int, int, int]], int]:
    """Class names, palette and ignore index (no file is read)."""
    return list(CLASSES), list(PALETTE), int(dataset_cfg.get("ignore_index", 255))


DATASET = DatasetSpec(build_cityscapes, metainfo)
