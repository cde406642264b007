"""Bad input gives specific errors: missing root/split, unpaired files, corrupt files, bad labels, sizes."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from ccnet.data import DatasetError, build_dataset
from tests.data.datagen import folder_cfg, random_image, write_image, write_label

CITYSCAPES = dict(
    name="cityscapes",
    label_type="labelIds",
    train_split="train",
    val_split="val",
    test_split="test",
    base_size=[1024, 2048],
    crop_size=[8, 8],
)
ADE20K = dict(name="ade20k", train_split="training", val_split="validation", base_size=[512, 2048], crop_size=8)


def _cityscapes(root: Path, stems=("a/a_000000_000001",), labels=True) -> dict:
    rng = np.random.default_rng(0)
    for stem in stems:
        write_image(root / "leftImg8bit" / "val" / f"{stem}_leftImg8bit.png", random_image(rng, 8, 8))
        if labels:
            write_label(root / "gtFine" / "val" / f"{stem}_gtFine_labelIds.png", np.full((8, 8), 7, np.uint8))
    return dict(CITYSCAPES, root=str(root))


@pytest.mark.parametrize(
    "cfg, layout_hint",
    [
        (CITYSCAPES, "leftImg8bit/<split>/<city>/<name>_leftImg8bit.png"),
        (ADE20K, "ADEChallengeData2016/images/<split>/ADE_*.jpg"),
        (folder_cfg("unused"), "ROOT/images/<name>.png|jpg|jpeg|bmp|tif"),
    ],
)
def test_missing_root_names_path_and_layout(tmp_path: Path, cfg: dict, layout_hint: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        build_dataset(dict(cfg, root=str(missing)), "val")
    assert str(missing) in str(err.value) and "expected layout" in str(err.value)
    assert layout_hint in str(err.value)


def test_missing_split_names_path_and_present_splits(tmp_path: Path) -> None:
    cfg = _cityscapes(tmp_path)
    with pytest.raises(
        FileNotFoundError,
        match=re.escape(str(tmp_path / "leftImg8bit" / "train")) + r".*splits present: \['val'\].*expected layout",
    ):
        build_dataset(cfg, "train")
    (tmp_path / "ADEChallengeData2016" / "images" / "training").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "ADEChallengeData2016" / "annotations"))):
        build_dataset(dict(ADE20K, root=str(tmp_path)), "train")


def test_folder_missing_split_with_split_lists(folder_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder_root / "splits" / "test.txt"))):
        build_dataset(folder_cfg(folder_root), "test")
    (folder_root / "splits" / "val.txt").write_text("img_4\nimg_99\n")
    with pytest.raises(FileNotFoundError, match=r"val\.txt lists 'img_99' but there is no image"):
        build_dataset(folder_cfg(folder_root), "val")


def test_image_without_label(tmp_path: Path, folder_root: Path) -> None:
    cfg = _cityscapes(tmp_path / "cs")
    stem = "a/a_000000_000002"
    image = write_image(
        tmp_path / "cs" / "leftImg8bit" / "val" / f"{stem}_leftImg8bit.png",
        random_image(np.random.default_rng(0), 8, 8),
    )
    with pytest.raises(
        FileNotFoundError,
        match=f"Image {re.escape(str(image))} has no label: expected .*{re.escape(stem)}_gtFine_labelIds.png",
    ):
        build_dataset(cfg, "val")
    (folder_root / "masks" / "img_5.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"img_5\.png has no mask: expected .*masks/img_5\.png"):
        build_dataset(folder_cfg(folder_root), "val")


def test_label_without_image(tmp_path: Path, folder_root: Path) -> None:
    cfg = _cityscapes(tmp_path / "cs")
    orphan = write_label(
        tmp_path / "cs" / "gtFine" / "val" / "a" / "a_000000_000009_gtFine_labelIds.png", np.zeros((8, 8), np.uint8)
    )
    with pytest.raises(FileNotFoundError, match=f"Label {re.escape(str(orphan))} has no image"):
        build_dataset(cfg, "val")
    orphan = write_label(folder_root / "masks" / "stray.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(FileNotFoundError, match=f"Mask {re.escape(str(orphan))} has no image"):
        build_dataset(folder_cfg(folder_root), "train")


def _png_bytes(h: int = 16, w: int = 16, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(random_image(np.random.default_rng(0), h, w)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty \\(0 bytes\\)"),
        (b"this is not an image at all", "Cannot decode image"),
        (_png_bytes(64, 64)[:300], "Cannot decode image"),  # truncated PNG
        (_png_bytes(64, 64, "JPEG")[:400], "Cannot decode image"),  # truncated JPEG
    ],
    ids=["zero-byte", "garbage", "truncated-png", "truncated-jpeg"],
)
def test_unreadable_image_is_an_error_naming_the_file(folder_root: Path, content: bytes, message: str) -> None:
    bad = folder_root / "images" / "img_5.png"
    bad.write_bytes(content)
    ds = build_dataset(folder_cfg(folder_root), "val")
    ds[0]  # the healthy sample still loads
    with pytest.raises(DatasetError, match=message) as err:
        ds[1]
    assert str(bad) in str(err.value)


def test_unreadable_image_fails_the_dataloader_too(folder_root: Path) -> None:
    (folder_root / "images" / "img_5.png").write_bytes(b"")
    loader = DataLoader(build_dataset(folder_cfg(folder_root), "val"), batch_size=1, num_workers=1)
    with pytest.raises(DatasetError, match=r"img_5\.png is empty"):
        list(loader)


def test_unreadable_label(folder_root: Path) -> None:
    (folder_root / "masks" / "img_5.png").write_bytes(b"")
    ds = build_dataset(folder_cfg(folder_root), "val")
    with pytest.raises(DatasetError, match=r"Label .*masks/img_5\.png is empty"):
        ds[1]
    write_image(folder_root / "masks" / "img_5.png", random_image(np.random.default_rng(0), 40, 48))
    with pytest.raises(DatasetError, match=r"masks/img_5\.png has mode 'RGB'.*single-channel"):
        ds[1]


def test_label_values_out_of_range_are_listed(folder_root: Path) -> None:
    mask = np.zeros((40, 48), np.uint8)
    mask[0, :3] = [3, 7, 254]
    write_label(folder_root / "masks" / "img_5.png", mask)
    ds = build_dataset(folder_cfg(folder_root), "val")  # 3 classes, ignore 255
    with pytest.raises(
        DatasetError,
        match=r"masks/img_5\.png contains invalid values \[3, 7, 254\]; valid "
        r"stored values are \[0-2, 255\]",
    ):
        ds[1]
    Image.fromarray(np.full((40, 48), 300, np.uint16)).save(folder_root / "masks" / "img_5.png")
    with pytest.raises(DatasetError, match=r"invalid values \[300\]"):
        ds[1]


def test_cityscapes_label_id_outside_the_table(tmp_path: Path) -> None:
    cfg = _cityscapes(tmp_path)
    label_file = next((tmp_path / "gtFine").rglob("*_labelIds.png"))
    write_label(label_file, np.full((8, 8), 40, np.uint8))
    with pytest.raises(DatasetError, match=f"{re.escape(str(label_file))} contains invalid values \\[40\\]"):
        build_dataset(cfg, "val")[0]


def test_size_mismatch_names_both_sizes(folder_root: Path) -> None:
    write_label(folder_root / "masks" / "img_5.png", np.zeros((40, 47), np.uint8))
    ds = build_dataset(folder_cfg(folder_root), "val")
    with pytest.raises(DatasetError, match=r"img_5\.png is 48x40 \(WxH\) but label .*img_5\.png is 47x40"):
        ds[1]


def test_ambiguous_names_are_rejected(folder_root: Path) -> None:
    write_image(folder_root / "images" / "img_5.jpg", random_image(np.random.default_rng(0), 40, 48))
    with pytest.raises(ValueError, match=r"Ambiguous files .*img_5\.(png|jpg) and .*img_5\.(png|jpg)"):
        build_dataset(folder_cfg(folder_root), "val")


def test_sixteen_bit_grey_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    """A 16-bit grey PNG (PIL mode I;16) used to become white wherever it exceeded 255."""
    from ccnet.data.base import read_image

    values = np.array([[0, 257, 32896, 65535], [128, 383, 1000, 65278]], dtype=np.uint16)  # 383 / 257 = 1.49
    Image.fromarray(values).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    rgb = read_image(tmp_path / "grey16.png")
    expected = np.array([[0, 1, 128, 255], [0, 1, 4, 254]], dtype=np.uint8)  # round(v / 257)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 2], expected)
    Image.fromarray(np.full((2, 2), 0.5, np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(DatasetError, match=r"float.tif holds floating-point pixels \(mode F\)"):
        read_image(tmp_path / "float.tif")
