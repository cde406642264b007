"""Synthetic long-range dataset: determinism, the long-range property on raw pixels, the dataset contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ccnet.data.synthetic import KEY_COLORS, SyntheticConfig, build_synthetic, generate_sample, region_masks

N_CHECKED = 60  # scenes per property check: enough to hit every placement branch, fast on 2 cores


@pytest.fixture(scope="module")
def yaml_cfg(configs_dir: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(configs_dir / "dataset" / "synthetic.yaml"), resolve=True)


def _key_and_shape_masks(image: np.ndarray, label: np.ndarray):
    """Key pixels from the picture alone (saturated colour) and shape pixels (labelled, grey)."""
    rgb = image.astype(np.int32)
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    key = chroma > 80  # key colours have chroma >= 130 after jitter; grey + noise stays far below 80
    return key, (label > 0) & ~key


def _nearest_class(rgb: np.ndarray) -> int:
    dist = [np.abs(rgb - np.asarray(c)).sum() for _, c in KEY_COLORS]
    return int(np.argmin(dist)) + 1


def test_yaml_matches_code_defaults(yaml_cfg: dict) -> None:
    cfg = SyntheticConfig.from_mapping(yaml_cfg)
    assert cfg == SyntheticConfig(), "configs/dataset/synthetic.yaml and SyntheticConfig defaults drifted apart"


def test_deterministic_from_seed(yaml_cfg: dict) -> None:
    a, b = build_synthetic(yaml_cfg, "train"), build_synthetic(yaml_cfg, "train")
    for index in (0, 7, 123):
        xa, ya = a[index]
        xb, yb = b[index]
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_seeds_and_splits_differ(yaml_cfg: dict) -> None:
    base = build_synthetic(yaml_cfg, "train")[3][0]
    other_seed = build_synthetic({**yaml_cfg, "seed": 1}, "train")[3][0]
    val = build_synthetic(yaml_cfg, "val")[3][0]
    assert not torch.equal(base, other_seed)
    assert not torch.equal(base, val)


@pytest.mark.parametrize("overrides", [{}, {"image_size": 96, "min_gap": 40, "num_classes": 4, "num_shapes": 3}])
def test_long_range_property_on_pixels(yaml_cfg: dict, overrides: dict) -> None:
    cfg = SyntheticConfig.from_mapping({**yaml_cfg, **overrides})
    stride, gap = cfg.feature_stride, cfg.min_gap
    kinds_seen = set()
    for index in range(N_CHECKED):
        scene = generate_sample(cfg, "train", index)
        key, shape = _key_and_shape_masks(scene.image, scene.label)
        kr, kc = np.nonzero(key)
        sr, sc = np.nonzero(shape)
        assert len(kr) == (cfg.key_cells * stride) ** 2 and len(sr) > 0
        # The label of every non-background pixel is the class of the key's colour.
        key_class = _nearest_class(scene.image[key].mean(axis=0))
        assert set(np.unique(scene.label[scene.label > 0])) == {key_class}
        # Shapes are grey: their pixels carry no colour, hence no class evidence.
        grey = scene.image[shape].astype(np.float64).mean(axis=0)
        assert grey.max() - grey.min() < 6
        # No key pixel within `gap` pixels (Chebyshev) of any shape pixel: no local evidence.
        drow = np.abs(sr[:, None] - kr[None, :])
        dcol = np.abs(sc[:, None] - kc[None, :])
        assert np.maximum(drow, dcol).min() > gap
        long_range, two_hop = region_masks(scene, stride)
        assert np.array_equal(long_range, shape)
        # Two-hop pixels: no key pixel within `gap` rows NOR within `gap` columns, so one
        # criss-cross step plus local convolutions of radius <= gap cannot reach the key.
        two = two_hop[sr, sc]
        if two.any():
            kinds_seen.add("diagonal")
            assert drow[two].min() > gap and dcol[two].min() > gap
        # One-hop pixels share a feature row band or column band with a key pixel.
        one = ~two
        if one.any():
            kinds_seen.add("aligned")
            same_row = (sr[one, None] // stride == kr[None, :] // stride).any(axis=1)
            same_col = (sc[one, None] // stride == kc[None, :] // stride).any(axis=1)
            assert (same_row | same_col).all()
    assert kinds_seen == {"aligned", "diagonal"}


def test_key_colour_is_uniform_over_classes(yaml_cfg: dict) -> None:
    cfg = SyntheticConfig.from_mapping(yaml_cfg)
    counts = np.bincount([generate_sample(cfg, "val", i).color for i in range(400)], minlength=cfg.num_classes)
    assert counts[0] == 0
    expected = 400 / (cfg.num_classes - 1)
    assert np.all(np.abs(counts[1:] - expected) < 0.35 * expected), counts


def test_item_contract_and_attributes(yaml_cfg: dict) -> None:
    ds = build_synthetic(yaml_cfg, "val")
    size = yaml_cfg["image_size"]
    image, label = ds[5]
    assert image.dtype == torch.float32 and image.shape == (3, size, size)
    assert label.dtype == torch.int64 and label.shape == (size, size)
    assert len(ds) == yaml_cfg["num_val"] and len(ds.image_paths) == len(ds)
    assert ds.image_paths[12] == Path("synthetic/val/000012.png")
    assert ds.classes == ["background", "red", "green", "blue", "yellow"]
    assert len(ds.palette) == ds.num_classes == yaml_cfg["num_classes"]
    assert ds.has_labels is True and ds.ignore_index == 255
    # Normalisation is (x / 255 - mean) / std of the raw uint8 scene.
    raw = torch.from_numpy(ds.sample(5).image).permute(2, 0, 1).double() / 255
    mean = torch.tensor(yaml_cfg["mean"], dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(yaml_cfg["std"], dtype=torch.float64).view(3, 1, 1)
    torch.testing.assert_close(image.double(), (raw - mean) / std, atol=1e-5, rtol=0)


def test_labels_in_range_and_ignore_index_from_config(yaml_cfg: dict) -> None:
    ds = build_synthetic({**yaml_cfg, "ignore_index": 254}, "train")
    assert ds.ignore_index == 254
    values = torch.unique(torch.stack([ds[i][1] for i in range(20)]))
    assert values.min() >= 0 and values.max() < ds.num_classes


def test_split_names_from_config(yaml_cfg: dict) -> None:
    renamed = {**yaml_cfg, "train_split": "training", "val_split": "validation"}
    assert torch.equal(build_synthetic(renamed, "validation")[0][0], build_synthetic(yaml_cfg, "val")[0][0])


def test_bad_settings_raise_specific_errors(yaml_cfg: dict) -> None:
    with pytest.raises(ValueError, match="train.crop_size"):
        build_synthetic(yaml_cfg, "train", crop_size=[64, 64])
    assert len(build_synthetic(yaml_cfg, "train", crop_size=yaml_cfg["image_size"])) == yaml_cfg["num_train"]
    with pytest.raises(ValueError, match="dataset.image_size"):
        build_synthetic({**yaml_cfg, "image_size": 64}, "train")
    with pytest.raises(ValueError, match="dataset.num_classes=9"):
        build_synthetic({**yaml_cfg, "num_classes": 9}, "train")
    with pytest.raises(ValueError, match="split 'bogus'"):
        build_synthetic(yaml_cfg, "bogus")
