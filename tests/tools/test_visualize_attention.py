"""tools/visualize_attention.py: PNG overlays for a checkpoint, input from a file or the checkpoint's
dataset (tests/models/test_attention_maps.py tests the maps themselves)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from ccnet.checkpoint import save_checkpoint
from ccnet.data.synthetic import build_synthetic, region_masks
from ccnet.evaluation.attention import attention_input
from tests.models.test_attention_maps import SIZE, _model, _model_cfg

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _synthetic_cfg(configs_dir: Path) -> dict:
    dataset = OmegaConf.to_container(OmegaConf.load(configs_dir / "dataset" / "synthetic.yaml"))
    dataset.update(image_size=SIZE, min_gap=16, num_val=2)
    return dataset


def test_tool_writes_overlays_for_a_synthetic_checkpoint(configs_dir: Path, tmp_path: Path) -> None:
    from tools.visualize_attention import main

    dataset = _synthetic_cfg(configs_dir)
    model = _model(configs_dir)
    ckpt = save_checkpoint({"model": model.state_dict(), "config": {"model": _model_cfg(configs_dir),
                                                                    "dataset": dataset}}, tmp_path / "ck.pth")
    written = main(["--checkpoint", str(ckpt), "--index", "1", "--output-dir", str(tmp_path / "maps")])
    assert [p.name for p in written] == ["input.png", "loop1.png", "loop2.png"]
    for path in written:
        assert np.asarray(Image.open(path)).shape == (SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="outside the 64x64 image"):
        main(["--checkpoint", str(ckpt), "--pixel", "64", "0", "--output-dir", str(tmp_path / "maps")])


def test_input_defaults_to_a_two_hop_pixel_of_a_synthetic_scene(configs_dir: Path) -> None:
    dataset_cfg = _synthetic_cfg(configs_dir)
    image, pixel = attention_input(dataset_cfg, index=1)
    dataset = build_synthetic(dataset_cfg, "val")
    assert image.shape == (3, SIZE, SIZE) and np.array_equal(image.numpy(), dataset[1][0].numpy())
    _, two_hop = region_masks(dataset.sample(1), dataset.cfg.feature_stride)
    assert pixel is not None and two_hop[pixel]


def test_input_from_an_image_file_and_clear_errors(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    image, pixel = attention_input({"mean": [0.5] * 3, "std": [0.25] * 3}, tmp_path / "x.png")
    assert pixel is None
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), (rgb / 255.0 - 0.5) / 0.25, atol=1e-6)
    with pytest.raises(ValueError, match="does not exist"):
        attention_input({}, tmp_path / "missing.png")
    folder = {"name": "folder", "root": str(tmp_path / "nowhere"), "num_classes": 3}
    with pytest.raises(ValueError, match=r"(?s)no validation image of the checkpoint's dataset 'folder'.*--image PATH"):
        attention_input(folder)
