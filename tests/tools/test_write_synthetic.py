"""tools/write_synthetic.py: the PNG files hold exactly the in-memory dataset's pixels; a rerun replaces its
own files and never a file it did not write; user mistakes end in one line with exit status 2."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from ccnet.data.synthetic import build_synthetic
from ccnet.utils.manifest import HEADER
from tools.write_synthetic import main


def test_write_to_disk_round_trip(configs_dir, tmp_path):
    config = configs_dir / "dataset" / "synthetic.yaml"
    assert main(["--out", str(tmp_path), "--config", str(config), "--limit", "2"]) == 0
    ds = build_synthetic(OmegaConf.to_container(OmegaConf.load(config), resolve=True), "val")
    for index in range(2):
        scene = ds.sample(index)
        image = np.asarray(Image.open(tmp_path / "images" / "val" / f"{index:06d}.png"))
        mask = np.asarray(Image.open(tmp_path / "masks" / "val" / f"{index:06d}.png"))
        assert np.array_equal(image, scene.image) and np.array_equal(mask, scene.label)
    assert len(list((tmp_path / "images" / "train").glob("*.png"))) == 2
    files = [
        f"{kind}/{split}/{index:06d}.png"
        for split in ("train", "val")
        for index in range(2)
        for kind in ("images", "masks")
    ]
    assert (tmp_path / "manifest.txt").read_text() == HEADER + "".join(f"write_synthetic {f}\n" for f in files)
    # the same command again replaces its own files (and records nothing twice)
    assert main(["--out", str(tmp_path), "--config", str(config), "--limit", "2"]) == 0
    assert (tmp_path / "manifest.txt").read_text() == HEADER + "".join(f"write_synthetic {f}\n" for f in files)


def test_never_replaces_a_file_it_did_not_write(configs_dir, tmp_path, caplog):
    config = configs_dir / "dataset" / "synthetic.yaml"
    mine = tmp_path / "masks" / "val" / "000001.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's mask")
    with caplog.at_level(logging.ERROR, logger="write_synthetic"), pytest.raises(SystemExit) as exit_:
        main(["--out", str(tmp_path), "--config", str(config), "--limit", "3"])
    assert exit_.value.code == 2
    assert caplog.messages == [
        f"refusing to write into {tmp_path}: 1 file(s) this run would write are not its own to replace: {mine} "
        "(exists, and no earlier write_synthetic run wrote it here). Nothing was written. Give the run a folder of "
        "its own (--out=...) or move those files away"
    ]
    assert mine.read_bytes() == b"the user's mask"
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "masks",
        "masks/val",
        "masks/val/000001.png",
    ]


def test_a_missing_config_is_one_line_and_status_2(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="write_synthetic"), pytest.raises(SystemExit) as exit_:
        main(["--out", str(tmp_path / "out"), "--config", str(tmp_path / "nope.yaml")])
    assert exit_.value.code == 2
    assert caplog.messages == [f"synthetic dataset config not found at {tmp_path / 'nope.yaml'}; pass --config PATH"]
    assert not (tmp_path / "out").exists()
