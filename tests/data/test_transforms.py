"""Albumentations pipelines: nearest-only labels, ignore survival, crop/pad geometry, cat_max_ratio."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from ccnet.data.transforms import (
    CatMaxRatioCrop,
    KeepRatioResize,
    RandomRescale,
    build_train_transform,
    build_val_transform,
    keep_ratio_size,
    to_hw,
)
from tests.data.datagen import normalise

PHOTOMETRIC = dict(p=1.0, brightness_delta=32, contrast_range=[0.5, 1.5], saturation_range=[0.5, 1.5], hue_delta=18)


def _pair(h: int = 40, w: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.choice(np.array([0, 1, 2, 5, 255], dtype=np.uint8), size=(h, w))
    label[: h // 3] = 255  # a large ignored band
    return image, label


def _train(crop, ratio=(1.0, 1.0), flip=0.0, photometric=None, cat_max_ratio=1.0, seed=0, base=None):
    return build_train_transform(
        crop_size=crop,
        base_size=base,
        ratio_range=ratio,
        cat_max_ratio=cat_max_ratio,
        flip_prob=flip,
        photometric=photometric,
        seed=seed,
    )


def test_keep_ratio_size_matches_mmseg_rule() -> None:
    assert keep_ratio_size(1024, 2048, 512, 1024) == (512, 1024)  # Cityscapes at ratio 0.5
    assert keep_ratio_size(512, 683, 512, 2048) == (512, 683)  # ADE20K landscape: short side bound
    assert keep_ratio_size(600, 400, 512, 2048) == (768, 512)  # portrait: short side 400 -> 512
    assert keep_ratio_size(300, 3000, 512, 2048) == (205, 2048)  # panorama: long side bound
    assert to_hw(7) == (7, 7) and to_hw([3, 5]) == (3, 5)
    with pytest.raises(ValueError, match="crop_size"):
        to_hw([0, 4])


def test_rescale_by_half_is_nearest_subsampling_of_the_label() -> None:
    image, label = _pair()
    out = _train(crop=(20, 30), ratio=(0.5, 0.5))(image=image, mask=label)
    np.testing.assert_array_equal(out["mask"].numpy(), label[::2, ::2])
    expected = cv2.resize(image, (30, 20), interpolation=cv2.INTER_LINEAR)  # images: bilinear
    np.testing.assert_allclose(out["image"].numpy(), normalise(expected), atol=1e-5)


def _is_window_of(out: np.ndarray, label: np.ndarray) -> bool:
    h, w = out.shape
    return any(
        np.array_equal(out, label[y : y + h, x : x + w])
        for y in range(label.shape[0] - h + 1)
        for x in range(label.shape[1] - w + 1)
    )


def _padded_ok(out: np.ndarray, label: np.ndarray) -> bool:
    h, w = label.shape
    return np.array_equal(out[:h, :w], label) and (out[h:] == 255).all() and (out[:, w:] == 255).all()


@pytest.mark.parametrize(
    "transform, check",
    [
        # Resizes: nearest sampling keeps the share of ignored pixels (a third of the rows and 1/5 of the rest).
        (RandomRescale(None, (0.37, 1.9)), None),
        (RandomRescale((100, 50), (0.5, 2.0)), None),
        (KeepRatioResize((23, 71)), None),
        (CatMaxRatioCrop((17, 23), cat_max_ratio=0.75), _is_window_of),
        (A.HorizontalFlip(p=1.0), lambda out, label: np.array_equal(out, label[:, ::-1])),
        (
            A.PadIfNeeded(
                min_height=50, min_width=70, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=255
            ),
            _padded_ok,
        ),
    ],
    ids=lambda t: type(t).__name__,
)
def test_each_geometric_step_keeps_label_values_and_ignore(transform, check) -> None:
    image, label = _pair()
    compose = A.Compose([transform], mask_interpolation=cv2.INTER_NEAREST, seed=0)
    for _ in range(5):
        out = compose(image=image, mask=label)["mask"]
        assert out.dtype == np.uint8
        assert set(np.unique(out).tolist()) <= set(np.unique(label).tolist())
        if check is None:
            assert abs((out == 255).mean() - (label == 255).mean()) < 0.08
        else:
            assert check(out, label)


@pytest.mark.parametrize("seed", range(4))
def test_full_train_pipeline_geometry_and_ignore(seed: int) -> None:
    image, label = _pair(seed=seed)
    # Ratio 0.5 makes the image 20x30, smaller than the 24x40 crop: the crop is the whole image, the rest
    # is padding (image 0 after normalisation, label 255) at the bottom/right; flips are random.
    out = _train(crop=(24, 40), ratio=(0.5, 0.5), flip=0.5, photometric=PHOTOMETRIC, cat_max_ratio=0.75, seed=seed)(
        image=image, mask=label
    )
    img, lab = out["image"], out["mask"].numpy()
    assert img.dtype == torch.float32 and img.shape == (3, 24, 40) and lab.shape == (24, 40)
    assert (lab[20:] == 255).all() and (lab[:, 30:] == 255).all()
    assert (img[:, 20:] == 0).all() and (img[:, :, 30:] == 0).all()
    small = label[::2, ::2]
    assert np.array_equal(lab[:20, :30], small) or np.array_equal(lab[:20, :30], small[:, ::-1])


def test_val_pipeline_normalises_and_optionally_resizes() -> None:
    image, label = _pair()
    out = build_val_transform()(image=image, mask=label)
    np.testing.assert_allclose(out["image"].numpy(), normalise(image), atol=1e-5)
    np.testing.assert_array_equal(out["mask"].numpy(), label)
    out = build_val_transform(base_size=(20, 300))(image=image, mask=label)  # short side bound: 40 -> 20
    np.testing.assert_array_equal(out["mask"].numpy(), label[::2, ::2])
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    out = build_val_transform(mean=mean, std=std)(image=image, mask=label)
    np.testing.assert_allclose(out["image"].numpy(), (image.transpose(2, 0, 1) / 255.0 - 0.5) / 0.25, atol=1e-5)


def test_photometric_distortion_changes_image_only() -> None:
    image, label = _pair()
    plain = _train(crop=(40, 60))(image=image, mask=label)
    distorted = _train(crop=(40, 60), photometric=PHOTOMETRIC)(image=image, mask=label)
    np.testing.assert_array_equal(distorted["mask"].numpy(), label)
    np.testing.assert_allclose(plain["image"].numpy(), normalise(image), atol=1e-5)
    assert not torch.allclose(plain["image"], distorted["image"])
    off = _train(crop=(40, 60), photometric=dict(PHOTOMETRIC, p=0.0))(image=image, mask=label)
    torch.testing.assert_close(off["image"], plain["image"])


def _crop_is_balanced(crop: np.ndarray, ratio: float) -> bool:
    counts = np.bincount(crop.ravel(), minlength=256)[:255]
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max() / counts.sum() < ratio


def test_cat_max_ratio_rejects_crops_dominated_by_one_class() -> None:
    # Class 0 everywhere but a 12x12 block of class 1 in a corner, plus an ignored band: 34 of the 289
    # 16x16 crop positions have less than 75% class 0 among their labelled pixels.
    label = np.zeros((32, 32), dtype=np.uint8)
    label[:12, :12] = 1
    label[28:30] = 255
    image = np.zeros((32, 32, 3), dtype=np.uint8)

    def balanced_share(cat_max_ratio: float) -> float:
        compose = A.Compose([CatMaxRatioCrop((16, 16), cat_max_ratio)], seed=0)
        crops = [compose(image=image, mask=label)["mask"] for _ in range(300)]
        assert all(c.shape == (16, 16) for c in crops)
        return float(np.mean([_crop_is_balanced(c, 0.75) for c in crops]))

    without, with_rule = balanced_share(1.0), balanced_share(0.75)
    assert abs(without - 34 / 289) < 0.06
    # Up to 10 tries: 1 - (1 - 34/289)^10 = 0.71 of the crops qualify.
    assert abs(with_rule - (1.0 - (1.0 - 34 / 289) ** 10)) < 0.08


def test_same_seed_same_augmentation() -> None:
    image, label = _pair()
    outs = [
        _train(crop=(16, 16), ratio=(0.5, 2.0), flip=0.5, photometric=PHOTOMETRIC, seed=s)(image=image, mask=label)
        for s in (3, 3, 4)
    ]
    torch.testing.assert_close(outs[0]["image"], outs[1]["image"])
    assert torch.equal(outs[0]["mask"], outs[1]["mask"])
    assert not torch.allclose(outs[0]["image"], outs[2]["image"])
