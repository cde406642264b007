"""tools/write_synthetic.py: the PNG files hold exactly the in-memory dataset's pixels."""

from __future__ import annotations

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from ccnet.data.synthetic import build_synthetic
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
