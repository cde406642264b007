"""Cityscapes: the official labelId -> trainId table checked against the real sample, and the dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ccnet.data import build_dataset
from ccnet.data.cityscapes import CLASSES, PALETTE, label_ids_to_train_ids, train_ids_to_label_ids
from tests.data.datagen import block_label, normalise, random_image, write_image, write_label

SAMPLE_STEM = "frankfurt/frankfurt_000000_000294"


def _sample_files(root: Path):
    image = root / "leftImg8bit" / "val" / f"{SAMPLE_STEM}_leftImg8bit.png"
    label_ids = root / "gtFine" / "val" / f"{SAMPLE_STEM}_gtFine_labelIds.png"
    train_ids = root / "gtFine" / "val" / f"{SAMPLE_STEM}_gtFine_labelTrainIds.png"
    return image, label_ids, train_ids


def _cfg(configs_dir: Path, root: Path, **overrides):
    cfg = OmegaConf.load(configs_dir / "dataset" / "cityscapes.yaml")
    cfg.root = str(root)
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def _sample_arrays(root: Path):
    _, label_ids_file, train_ids_file = _sample_files(root)
    label_ids, train_ids = Image.open(label_ids_file), Image.open(train_ids_file)
    assert label_ids.mode == "L" and train_ids.mode == "L"  # 8-bit grey, not palette: values are ids
    return np.asarray(label_ids), np.asarray(train_ids)


def test_sample_label_ids_map_to_shipped_train_ids(cityscapes_sample: Path) -> None:
    label_ids, shipped = _sample_arrays(cityscapes_sample)
    mapped = label_ids_to_train_ids(label_ids)
    assert mapped.dtype == np.uint8 and mapped.shape == shipped.shape
    # The sample exercises 14 label ids, void included.
    present = np.unique(label_ids)
    assert len(present) >= 10 and (mapped == 255).any()
    # Every label id maps to the train id the shipped file gives its pixels.
    for label_id in present:
        values, counts = np.unique(shipped[label_ids == label_id], return_counts=True)
        assert mapped[label_ids == label_id][0] == values[counts.argmax()], label_id
    # Pixel for pixel: the shipped 256x128 labelIds/labelTrainIds were downscaled from 2048x1024
    # independently, so 77 boundary pixels (0.23%) disagree; no per-pixel table can produce those (the
    # same labelId there has different shipped trainIds). Each of them has its shipped value within 2 px.
    disagree = mapped != shipped
    assert disagree.mean() < 0.003
    padded = np.pad(mapped, 2, mode="edge")
    h, w = mapped.shape
    window = np.stack([padded[dy : dy + h, dx : dx + w] for dy in range(5) for dx in range(5)])
    assert (window == shipped[None]).any(axis=0)[disagree].all()
    np.testing.assert_array_equal(mapped[~disagree], shipped[~disagree])


def test_table_against_cityscapes_scripts_values() -> None:
    # Independent restatement of cityscapesScripts' labels.py: labelId -> trainId for the 19 classes.
    expected = {
        7: 0,
        8: 1,
        11: 2,
        12: 3,
        13: 4,
        17: 5,
        19: 6,
        20: 7,
        21: 8,
        22: 9,
        23: 10,
        24: 11,
        25: 12,
        26: 13,
        27: 14,
        28: 15,
        31: 16,
        32: 17,
        33: 18,
    }
    ids = np.arange(256, dtype=np.uint8)
    mapped = label_ids_to_train_ids(ids)
    for label_id in range(256):
        assert mapped[label_id] == expected.get(label_id, 255), label_id
    # License plate has id -1: stored as 255 in uint8, it must be ignored.
    assert label_ids_to_train_ids(np.array([-1 % 256], dtype=np.uint8))[0] == 255
    assert len(CLASSES) == 19 and CLASSES[0] == "road" and CLASSES[18] == "bicycle"
    assert PALETTE[0] == (128, 64, 128) and PALETTE[13] == (0, 0, 142) and len(set(PALETTE)) == 19


def test_inverse_mapping_round_trips_and_maps_ignore_to_unlabeled() -> None:
    train_ids = np.array([[0, 18, 255], [13, 7, 200]], dtype=np.uint8)
    label_ids = train_ids_to_label_ids(train_ids)
    np.testing.assert_array_equal(label_ids, [[7, 33, 0], [26, 20, 0]])
    all_ids = np.arange(34, dtype=np.int64)
    round_trip = train_ids_to_label_ids(label_ids_to_train_ids(all_ids))
    has_train = label_ids_to_train_ids(all_ids) != 255
    np.testing.assert_array_equal(round_trip[has_train], all_ids[has_train])


def test_mapping_rejects_out_of_range_integers() -> None:
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        label_ids_to_train_ids(np.array([3, 300]))
    with pytest.raises(TypeError, match="integer"):
        label_ids_to_train_ids(np.array([1.0]))


@pytest.mark.parametrize("label_type", ["labelIds", "labelTrainIds"])
def test_dataset_reads_sample(cityscapes_sample: Path, configs_dir: Path, label_type: str) -> None:
    cfg = _cfg(configs_dir, cityscapes_sample, label_type=label_type)
    ds = build_dataset(cfg, "val")
    image_file = _sample_files(cityscapes_sample)[0]
    assert len(ds) == 1 and ds.has_labels and ds.num_classes == 19 and ds.ignore_index == 255
    assert ds.image_paths == [image_file]
    image, label = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 128, 256)
    assert label.dtype == torch.int64 and label.shape == (128, 256)
    label_ids, shipped = _sample_arrays(cityscapes_sample)
    expected = shipped if label_type == "labelTrainIds" else label_ids_to_train_ids(label_ids)
    np.testing.assert_array_equal(label.numpy(), expected)
    np.testing.assert_allclose(image.numpy(), normalise(np.asarray(Image.open(image_file))), atol=1e-5)


def test_sample_through_symlinked_train_split(cityscapes_sample: Path, configs_dir: Path, tmp_path: Path) -> None:
    # A root whose "train" split is the sample's val split: the training pipeline on real data.
    for top in ("leftImg8bit", "gtFine"):
        (tmp_path / top).mkdir()
        (tmp_path / top / "train").symlink_to(cityscapes_sample / top / "val")
    torch.manual_seed(0)
    ds = build_dataset(_cfg(configs_dir, tmp_path), "train", crop_size=[64, 96])
    image, label = ds[0]
    assert image.shape == (3, 64, 96) and label.shape == (64, 96)
    shipped = set(np.unique(np.asarray(Image.open(_sample_files(cityscapes_sample)[2]))).tolist())
    assert set(label.unique().tolist()) <= shipped | {255}


def test_test_split_is_unlabelled(configs_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_image(
        tmp_path / "leftImg8bit" / "test" / "berlin" / "berlin_000000_000019_leftImg8bit.png", random_image(rng, 16, 32)
    )
    ds = build_dataset(_cfg(configs_dir, tmp_path), "test")
    assert not ds.has_labels
    image, label = ds[0]
    assert image.shape == (3, 16, 32)
    assert (label == 255).all() and label.shape == (16, 32)


def test_generated_split_maps_void_and_license_plate(configs_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    stem = "aachen/aachen_000000_000019"
    write_image(tmp_path / "leftImg8bit" / "val" / f"{stem}_leftImg8bit.png", random_image(rng, 8, 8))
    raw = block_label(8, 8, values=(7, 26, 3, 255))  # road, car, out of roi (void), license plate
    write_label(tmp_path / "gtFine" / "val" / f"{stem}_gtFine_labelIds.png", raw)
    ds = build_dataset(_cfg(configs_dir, tmp_path), "val")
    _, label = ds[0]
    np.testing.assert_array_equal(label.numpy(), block_label(8, 8, values=(0, 13, 255, 255)))
