"""Users' own data: an ``images/`` and a ``masks/`` directory whose files match by name.

Layout (``ROOT`` is ``dataset.root``; directory names configurable)::

    ROOT/images/<name>.{png,jpg,jpeg,bmp,tif,tiff}    RGB images (subdirectories allowed)
    ROOT/masks/<name>.{png,bmp,tif,tiff,...}          single-channel class-index masks, same size
    ROOT/splits/<split>.txt                          optional: one <name> per line (path relative to
                                                     images/, extension optional)

A split comes from ``ROOT/splits/<split>.txt``, else ``ROOT/images/<split>/`` with ``ROOT/masks/<split>/``,
else (no split lists or folders at all) from all files, with a warning. Mask values are class indices
``0..num_classes-1`` or ``ignore_index``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ccnet.data.base import IMAGE_EXTENSIONS, DatasetError, DatasetSpec, SegmentationDataset, make_label_lut
from ccnet.data.config import check_label_spec, mean_std, resolve_split, root_from_cfg, transform_from_cfg
from ccnet.data.transforms import SizeLike
from ccnet.errors import ConfigError
from ccnet.utils.visualize import distinct_palette

log = logging.getLogger(__name__)

LAYOUT = """expected layout:
  ROOT/images/<name>.png|jpg|jpeg|bmp|tif     (any subfolders)
  ROOT/masks/<name>.png                       (same <name>, single-channel class indices)
  ROOT/splits/<split>.txt                     (optional: one <name> per line)
or per-split folders ROOT/images/<split>/ and ROOT/masks/<split>/."""


def generate_palette(num_classes: int) -> List[Tuple[int, int, int]]:
    """Default colours of ``num_classes`` classes (:func:`ccnet.utils.visualize.distinct_palette`; never black)."""
    return distinct_palette(num_classes)


def _index_files(directory: Path) -> Dict[str, Path]:
    """Map ``relative/path/stem`` -> file for every image-like file under ``directory``.

    Raises:
        ValueError: two files share a name with different extensions (ambiguous pairing).
    """
    index: Dict[str, Path] = {}
    for path in sorted(directory.rglob("*")):
        # "._name" files are macOS metadata, not images.
        if path.suffix.lower() not in IMAGE_EXTENSIONS or path.name.startswith(".") or not path.is_file():
            continue
        key = path.relative_to(directory).with_suffix("").as_posix()
        if key in index:
            raise DatasetError(
                f"Ambiguous files {index[key]} and {path}: the same name with two extensions; keep one of them."
            )
        index[key] = path
    return index


def _read_split_list(list_file: Path) -> List[str]:
    keys = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keys.append(line[: -len(Path(line).suffix)] if Path(line).suffix.lower() in IMAGE_EXTENSIONS else line)
    if not keys:
        raise DatasetError(f"Split list {list_file} is empty; write one image name per line.")
    return keys


def _pair(
    images: Dict[str, Path], masks: Dict[str, Path], keys: Sequence[str], image_dir: Path, mask_dir: Path, source: str
) -> Tuple[List[Path], List[Path]]:
    """Images and masks for ``keys``, checking both directions of the pairing."""
    for key in keys:
        if key not in images:
            raise FileNotFoundError(
                f"{source} lists {key!r} but there is no image {image_dir / key}.<ext> "
                f"(extensions {', '.join(IMAGE_EXTENSIONS)}); {LAYOUT}"
            )
        if key not in masks:
            raise FileNotFoundError(
                f"Image {images[key]} has no mask: expected {mask_dir / key}.png (or another image extension); {LAYOUT}"
            )
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise FileNotFoundError(
            f"Mask {masks[orphans[0]]} has no image: expected {image_dir / orphans[0]}.<ext> "
            f"({len(orphans)} mask(s) without image); {LAYOUT}"
        )
    return [images[k] for k in keys], [masks[k] for k in keys]


def find_pairs(
    root: Path,
    split: str,
    img_dir: str = "images",
    mask_dir: str = "masks",
    split_dir: str = "splits",
    known_splits: Sequence[str] = (),
) -> Tuple[List[Path], List[Path]]:
    """Locate the image/mask pairs of ``split``, in the module docstring's lookup order.

    Args:
        known_splits: all configured split names; if the images are organised in any of their
            subdirectories the "use all files" fallback is not taken.

    Raises:
        FileNotFoundError: missing root/directories/split, or unpaired files (the message names them).
    """
    images_root, masks_root = root / img_dir, root / mask_dir
    if not root.is_dir():
        raise FileNotFoundError(f"Folder dataset root {root} does not exist; {LAYOUT}")
    for d in (images_root, masks_root):
        if not d.is_dir():
            raise FileNotFoundError(f"Folder dataset directory {d} not found; {LAYOUT}")
    list_file = root / split_dir / f"{split}.txt"
    if list_file.is_file():
        images, masks = _index_files(images_root), _index_files(masks_root)
        keys = _read_split_list(list_file)
        return _pair(images, masks, keys, images_root, masks_root, f"Split list {list_file}")
    if (images_root / split).is_dir():
        image_dir, split_mask_dir = images_root / split, masks_root / split
        if not split_mask_dir.is_dir():
            raise FileNotFoundError(
                f"Images of split {split!r} are in {image_dir} but {split_mask_dir} is missing; {LAYOUT}"
            )
        images, masks = _index_files(image_dir), _index_files(split_mask_dir)
        if not images:
            raise FileNotFoundError(f"No images in {image_dir}; {LAYOUT}")
        return _pair(images, masks, sorted(images), image_dir, split_mask_dir, f"Directory {image_dir}")
    split_dirs = [s for s in known_splits if (images_root / s).is_dir()]
    if (root / split_dir).is_dir() or split_dirs:
        raise FileNotFoundError(f"Split {split!r} not found: expected {list_file} or {images_root / split}/; {LAYOUT}")
    images, masks = _index_files(images_root), _index_files(masks_root)
    if not images:
        raise FileNotFoundError(f"No images in {images_root}; {LAYOUT}")
    log.warning(
        "Folder dataset %s has no split lists (%s/<split>.txt) or split folders: split %r uses all "
        "%d images, so training and validation images are the same.",
        root,
        root / split_dir,
        split,
        len(images),
    )
    return _pair(images, masks, sorted(images), images_root, masks_root, f"Directory {images_root}")


def metainfo(dataset_cfg: Mapping[str, Any]) -> Tuple[List[str], List[Tuple[int, int, int]], int]:
    """Class names, palette (generated when not configured) and ignore index from the config."""
    classes_cfg, palette_cfg = dataset_cfg.get("classes"), dataset_cfg.get("palette")
    num_classes = dataset_cfg.get("num_classes")
    if num_classes is None:
        if not classes_cfg:
            raise ConfigError("folder dataset: set dataset.num_classes (and optionally dataset.classes)")
        num_classes = len(classes_cfg)
    num_classes, ignore = check_label_spec(num_classes, dataset_cfg.get("ignore_index", 255), "folder dataset")
    if classes_cfg:
        classes = [str(c) for c in classes_cfg]
        if len(classes) != num_classes:
            raise ConfigError(
                f"folder dataset: dataset.classes has {len(classes)} names but "
                f"dataset.num_classes is {num_classes}; make them agree"
            )
    else:
        classes = [f"class_{i}" for i in range(num_classes)]
    if palette_cfg:
        if len(palette_cfg) != num_classes or any(
            len(c) != 3 or not all(0 <= int(v) <= 255 for v in c) for c in palette_cfg
        ):
            raise ConfigError(
                f"folder dataset: dataset.palette must hold {num_classes} [r, g, b] colours with "
                f"values 0..255, got {palette_cfg}"
            )
        palette = [(int(r), int(g), int(b)) for r, g, b in palette_cfg]
    else:
        palette = generate_palette(num_classes)
    return classes, palette, ignore


def build_folder(
    dataset_cfg: Mapping[str, Any], split: str, crop_size: Optional[SizeLike] = None
) -> SegmentationDataset:
    """Folder dataset for ``split`` from ``configs/dataset/folder.yaml``.

    Args:
        dataset_cfg: ``root, img_dir, mask_dir, split_dir, num_classes, classes, palette, ignore_index``,
            split names and the pipeline keys of :func:`ccnet.data.config.transform_from_cfg`.
        split: ``"train"``, ``"val"`` or a split name.
        crop_size: training crop, overrides ``dataset_cfg.crop_size``.
    """
    classes, palette, ignore = metainfo(dataset_cfg)
    name, is_train = resolve_split(dataset_cfg, split)
    known = [str(dataset_cfg[k]) for k in ("train_split", "val_split", "test_split") if dataset_cfg.get(k)]
    images, masks = find_pairs(
        root_from_cfg(dataset_cfg, LAYOUT),
        name,
        img_dir=str(dataset_cfg.get("img_dir", "images")),
        mask_dir=str(dataset_cfg.get("mask_dir", "masks")),
        split_dir=str(dataset_cfg.get("split_dir", "splits")),
        known_splits=known,
    )
    log.info("folder dataset %s: %d images, %d classes", name, len(images), len(classes))
    return SegmentationDataset(
        images,
        masks,
        classes,
        palette,
        ignore,
        make_label_lut(len(classes), ignore),
        transform_from_cfg(dataset_cfg, is_train, crop_size),
        *mean_std(dataset_cfg),
    )


DATASET = DatasetSpec(build_folder, metainfo)
