"""build_dataset dispatch and split roles; augmentation reproducible from a seed, with DataLoader workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ccnet.data import DATASETS, build_dataset, dataset_metainfo, seed_worker
from ccnet.data.base import DatasetSpec
from ccnet.errors import ConfigError
from tests.data.datagen import folder_cfg, random_image, write_image, write_label

AUGMENT = dict(
    ratio_range=[0.5, 2.0],
    crop_size=[24, 24],
    flip_prob=0.5,
    photometric=dict(p=0.5, brightness_delta=32, contrast_range=[0.5, 1.5], saturation_range=[0.5, 1.5], hue_delta=18),
)


def test_split_roles_and_crop_size(folder_root: Path) -> None:
    cfg = folder_cfg(folder_root, train_split="train", val_split="val")
    assert build_dataset(cfg, "train")[0][0].shape == (3, 32, 32)  # dataset crop_size
    assert build_dataset(cfg, "train", crop_size=16)[0][0].shape == (3, 16, 16)
    assert build_dataset(cfg, "train", crop_size=[8, 12])[0][1].shape == (8, 12)
    assert build_dataset(cfg, "val", crop_size=8)[0][0].shape == (3, 40, 48)  # val: full resolution
    # Roles resolve through <role>_split; the configured train split name is augmented too.
    renamed = dict(cfg, train_split="val", val_split="train")
    assert [p.stem for p in build_dataset(renamed, "train").image_paths] == ["img_4", "img_5"]
    assert build_dataset(renamed, "val")[0][0].shape == (3, 40, 48)
    assert build_dataset(cfg, "val", crop_size=8).has_labels


def test_build_dataset_dispatches_through_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    spec = DatasetSpec(
        build=lambda cfg, split, crop_size=None: calls.append((split, crop_size)) or "ds",
        metainfo=lambda cfg: (["a"], [(1, 2, 3)], 255),
    )
    monkeypatch.setitem(DATASETS, "toy", spec)
    assert build_dataset({"name": "toy"}, "val", crop_size=None) == "ds" and calls == [("val", None)]
    assert dataset_metainfo({"name": "toy"}) == (["a"], [(1, 2, 3)], 255)
    with pytest.raises(ConfigError, match="valid names: ade20k, cityscapes, folder, synthetic, toy"):
        build_dataset({"name": "voc"}, "val")


def _batches(dataset, generator_seed: int, epochs: int = 2):
    loader = DataLoader(
        dataset,
        batch_size=2,
        shuffle=True,
        num_workers=2,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(generator_seed),
    )
    return [batch for _ in range(epochs) for batch in loader]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def test_dataloader_workers_reproducible_from_seed(folder_root: Path) -> None:
    dataset = build_dataset(folder_cfg(folder_root, **AUGMENT), "train")
    first, again, other = _batches(dataset, 0), _batches(dataset, 0), _batches(dataset, 1)
    assert len(first) == 4 and first[0][0].shape == (2, 3, 24, 24)
    assert _same(first, again)
    assert not _same(first, other)
    # Epochs differ (workers are re-seeded from a new base seed each epoch).
    assert not _same(first[:2], first[2:])


def test_workers_draw_different_augmentations(folder_root: Path) -> None:
    # Four copies of one image: without per-worker seeding both workers would replay the same stream.
    (folder_root / "splits" / "same.txt").write_text("img_0\n" * 4)
    dataset = build_dataset(folder_cfg(folder_root, train_split="same", **AUGMENT), "train")
    loader = DataLoader(dataset, batch_size=2, shuffle=False, num_workers=2, worker_init_fn=seed_worker)
    from_worker0, from_worker1 = list(loader)
    assert not torch.equal(from_worker0[0], from_worker1[0])


def test_main_process_augmentation_follows_torch_manual_seed(folder_root: Path) -> None:
    cfg = folder_cfg(folder_root, **AUGMENT)

    def items(seed: int):
        torch.manual_seed(seed)
        ds = build_dataset(cfg, "train")
        return [ds[i] for i in (0, 1, 0)]

    a, b, c = items(5), items(5), items(6)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c))
    assert not torch.equal(a[0][0], a[2][0])  # the same image is augmented differently each time
    assert np.isfinite(a[0][0].numpy()).all()


@pytest.mark.parametrize("name", ["cityscapes", "ade20k", "folder"])
def test_shipped_configs_meet_the_item_contract(
    name: str, configs_dir: Path, folder_root: Path, cityscapes_sample: Path, tmp_path: Path
) -> None:
    cfg = OmegaConf.load(configs_dir / "dataset" / f"{name}.yaml")
    if name == "cityscapes":
        cfg.root, cfg.train_split = str(cityscapes_sample), "val"
    elif name == "ade20k":
        for split in ("training", "validation"):
            write_image(tmp_path / "images" / split / "ADE_x.jpg", random_image(np.random.default_rng(0), 20, 30))
            write_label(tmp_path / "annotations" / split / "ADE_x.png", np.full((20, 30), 3, np.uint8))
        cfg.root = str(tmp_path)
    else:
        cfg.root, cfg.num_classes = str(folder_root), 3
    for split, crop in (("train", [24, 32]), ("val", None)):
        ds = build_dataset(cfg, split, crop_size=crop)
        assert ds.num_classes == cfg.num_classes == len(ds.classes) == len(ds.palette)
        assert ds.ignore_index == cfg.ignore_index == 255 and ds.has_labels
        assert tuple(ds.mean) == tuple(cfg.mean) and tuple(ds.std) == tuple(cfg.std)
        assert len(ds.image_paths) == len(ds) and all(isinstance(p, Path) and p.is_file() for p in ds.image_paths)
        image, label = ds[0]
        assert image.dtype == torch.float32 and label.dtype == torch.int64
        assert image.ndim == 3 and image.shape[0] == 3 and image.shape[1:] == label.shape
        if crop is not None:
            assert tuple(label.shape) == tuple(crop)
        valid = (label == 255) | ((label >= 0) & (label < ds.num_classes))
        assert bool(valid.all())


def test_augmentation_follows_the_requested_role_not_the_folder():
    """With train_split == val_split (overfitting the val images), "val" must stay un-augmented."""
    from ccnet.data.config import resolve_split

    cfg = {"train_split": "val", "val_split": "val", "test_split": "test"}
    assert resolve_split(cfg, "train") == ("val", True)
    assert resolve_split(cfg, "val") == ("val", False)
    assert resolve_split(cfg, "test") == ("test", False)
    assert resolve_split({"train_split": "training"}, "training") == ("training", True)
    assert resolve_split({"train_split": "training"}, "validation") == ("validation", False)


def test_dataset_metainfo_needs_no_files():
    from ccnet.data import dataset_metainfo
    from ccnet.data.cityscapes import CLASSES

    classes, palette, ignore = dataset_metainfo({"name": "cityscapes", "root": "/nonexistent"})
    assert classes == list(CLASSES) and len(palette) == 19 and ignore == 255
    classes, palette, _ = dataset_metainfo({"name": "folder", "num_classes": 3, "classes": ["a", "b", "c"]})
    assert classes == ["a", "b", "c"] and len(palette) == 3
    assert len(dataset_metainfo({"name": "ade20k"})[0]) == 150
    with pytest.raises(ValueError, match="valid names"):
        dataset_metainfo({"name": "voc"})
