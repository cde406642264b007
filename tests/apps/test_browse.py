"""tools/browse_dataset.py: Hydra config composition, PNG content against the source files, the CLI, and
no picture written over a file browse did not write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from ccnet.apps.browse import browse
from ccnet.data.folder import generate_palette
from ccnet.utils.manifest import OutputConflictError
from ccnet.utils.visualize import add_headings
from tests.data.datagen import block_label


def _compose(configs_dir: Path, overrides):
    with initialize_config_dir(config_dir=str(configs_dir), version_base="1.3"):
        return compose(config_name="browse", overrides=overrides)


def test_val_samples_show_the_files_side_by_side(configs_dir: Path, folder_root: Path, tmp_path: Path) -> None:
    cfg = _compose(
        configs_dir,
        [
            "dataset=folder",
            f"dataset.root={folder_root}",
            "dataset.num_classes=3",
            "split=val",
            "num_samples=3",
            f"output_dir={tmp_path / 'out'}",
        ],
    )
    written = browse(cfg)
    assert len(written) == 3 and all(p.parent == tmp_path / "out" for p in written)
    palette = np.array(generate_palette(3) + [(0, 0, 0)], dtype=np.uint8)  # index 3 stands for ignore
    label = block_label(40, 48)
    expected_colour = palette[np.where(label == 255, 3, label)]
    head = add_headings(np.zeros((1, 96, 3), np.uint8), ["image", "label"]).shape[0] - 1  # the headings band
    for path in written:
        picture = np.asarray(Image.open(path))
        assert picture.shape[1:] == (96, 3) and picture.shape[0] > head + 40  # headings above, legend below
        assert (picture[:head] < 128).any()  # the headings' text
        picture, band = picture[head : head + 40], picture[head + 40 :]
        assert picture.shape == (40, 96, 3)
        stem = path.stem.split("_", 1)[1]  # "<k>_<image stem>"
        source = next((folder_root / "images").glob(f"{stem}.*"))
        np.testing.assert_allclose(picture[:, :48].astype(int), np.asarray(Image.open(source)).astype(int), atol=1)
        np.testing.assert_array_equal(picture[:, 48:], expected_colour)
        # legend: one square per class in the label (all 3) plus black "ignore", which the label has too
        colours, counts = np.unique(band.reshape(-1, 3), axis=0, return_counts=True)
        squares = {tuple(int(v) for v in c) for c, n in zip(colours, counts) if n >= 81 and len(set(c)) > 1}
        assert squares == {tuple(c) for c in generate_palette(3)[1:]}  # class 0 is grey: not counted here
        black = (band == 0).all(axis=-1)  # text strokes are 1-2 px wide: a solid 9 x 9 block is the square
        assert np.lib.stride_tricks.sliding_window_view(black, (9, 9)).all(axis=(-2, -1)).any()


def test_train_samples_are_augmented_crops(configs_dir: Path, folder_root: Path, tmp_path: Path) -> None:
    cfg = _compose(
        configs_dir,
        [
            "dataset=folder",
            f"dataset.root={folder_root}",
            "dataset.num_classes=3",
            "num_samples=6",
            "crop_size=[16,20]",
            f"output_dir={tmp_path}",
        ],
    )
    written = browse(cfg)
    assert len(written) == 6  # more samples than the 4 training images: some are re-augmented
    allowed = {tuple(c) for c in generate_palette(3)} | {(0, 0, 0)}
    head = add_headings(np.zeros((1, 40, 3), np.uint8), ["image", "label"]).shape[0] - 1
    for path in written:
        picture = np.asarray(Image.open(path))
        assert picture.shape[1:] == (40, 3) and picture.shape[0] > head + 16  # headings, panel, legend band
        picture = picture[head : head + 16]
        assert picture.shape == (16, 40, 3)
        assert {tuple(c) for c in picture[:, 20:].reshape(-1, 3)} <= allowed


def test_default_config_browses_the_synthetic_set(configs_dir: Path, tmp_path: Path) -> None:
    written = browse(_compose(configs_dir, ["num_samples=2", f"output_dir={tmp_path}"]))
    assert len(written) == 2 and np.asarray(Image.open(written[0])).ndim == 3


def test_cli(repo_root: Path, folder_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "browse"
    result = subprocess.run(
        [
            sys.executable,
            str(repo_root / "tools" / "browse_dataset.py"),
            "dataset=folder",
            f"dataset.root={folder_root}",
            "dataset.num_classes=3",
            "num_samples=2",
            f"output_dir={out}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(list(out.glob("*.png"))) == 2
    assert not (out / ".hydra").exists()


def test_a_rerun_replaces_its_own_pictures_but_never_a_file_it_did_not_write(
    configs_dir: Path, tmp_path: Path, repo_root: Path
) -> None:
    cfg = _compose(configs_dir, ["num_samples=2", f"output_dir={tmp_path}"])
    first = browse(cfg)
    assert browse(cfg) == first  # the same run again: its own files
    other = tmp_path / "other"
    other.mkdir()
    (other / first[0].name).write_bytes(b"a user's file of the same name")
    with pytest.raises(OutputConflictError, match=rf"{first[0].name} \(exists, and no earlier browse run wrote it"):
        browse(_compose(configs_dir, ["num_samples=2", f"output_dir={other}"]))
    assert (other / first[0].name).read_bytes() == b"a user's file of the same name"
    assert sorted(p.name for p in other.iterdir()) == [first[0].name]  # nothing else written

    proc = subprocess.run(
        [sys.executable, str(repo_root / "tools" / "browse_dataset.py"), "num_samples=2", f"output_dir={other}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "refusing to write into" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    assert (other / first[0].name).read_bytes() == b"a user's file of the same name"
