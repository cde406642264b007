"""tools/visualize_attention.py: PNG overlays for a checkpoint, input from a file or the checkpoint's
dataset (tests/models/test_attention_maps.py tests the maps themselves); never written over a file the
tool did not write, and user mistakes reported in one line with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from ccnet.apps.attention import attention_input
from ccnet.checkpoint import save_checkpoint
from ccnet.data.synthetic import build_synthetic, region_masks
from ccnet.errors import ConfigError
from ccnet.evaluation.loading import CheckpointMismatchError
from ccnet.utils.manifest import HEADER, OutputConflictError
from ccnet.utils.visualize import add_colorbar, add_headings
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
    ckpt = save_checkpoint(
        {"model": model.state_dict(), "config": {"model": _model_cfg(configs_dir), "dataset": dataset}},
        tmp_path / "ck.pth",
    )
    written = main(["--checkpoint", str(ckpt), "--index", "1", "--output-dir", str(tmp_path / "maps")])
    assert [p.name for p in written] == ["input.png", "loop1.png", "loop2.png"]
    heading = add_headings(np.zeros((SIZE, SIZE, 3), np.uint8), ["x"]).shape[0]  # each picture says what it shows
    pictures = [np.asarray(Image.open(path)) for path in written]
    assert pictures[0].shape == (heading, SIZE, 3)  # the input, titled
    scale = add_colorbar(np.zeros((heading, SIZE, 3), np.uint8), "0", "max", "caption").shape[0]
    assert all(p.shape == (scale, SIZE, 3) for p in pictures[1:])  # loops: titled, with the colour scale below
    assert (
        tmp_path / "maps" / "manifest.txt"
    ).read_text() == HEADER + "attention input.png\nattention loop1.png\nattention loop2.png\n"
    # the same command again replaces its own pictures
    assert main(["--checkpoint", str(ckpt), "--index", "1", "--output-dir", str(tmp_path / "maps")]) == written
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == [
        "input.png",
        "loop1.png",
        "loop2.png",
        "manifest.txt",
    ]
    with pytest.raises(ConfigError, match=r"--pixel 64 0 lies outside the 64x64 image: expected a row in 0\.\.63"):
        main(["--checkpoint", str(ckpt), "--pixel", "64", "0", "--output-dir", str(tmp_path / "maps")])


def test_pictures_never_replace_a_file_the_tool_did_not_write(configs_dir: Path, tmp_path: Path) -> None:
    from tools.visualize_attention import main

    model = _model(configs_dir)
    ckpt = save_checkpoint(
        {
            "model": model.state_dict(),
            "config": {"model": _model_cfg(configs_dir), "dataset": _synthetic_cfg(configs_dir)},
        },
        tmp_path / "ck.pth",
    )
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "loop1.png").write_bytes(b"the user's picture")
    command = ["--checkpoint", str(ckpt), "--output-dir", str(maps)]
    with pytest.raises(OutputConflictError, match=r"loop1\.png \(exists, and no earlier attention run wrote it"):
        main(command)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).parents[2] / "tools" / "visualize_attention.py"), *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2 and "Traceback" not in output and len(output.splitlines()) == 1
    assert output.startswith(f"refusing to write into {maps}: 1 file(s)") and "(--output-dir=...)" in output
    assert (maps / "loop1.png").read_bytes() == b"the user's picture"
    assert [p.name for p in maps.iterdir()] == ["loop1.png"]  # no other picture, no manifest

    save_checkpoint({"model": model.state_dict()}, tmp_path / "bare.pth")
    with pytest.raises(CheckpointMismatchError, match="bare.pth holds no config"):
        main(["--checkpoint", str(tmp_path / "bare.pth"), "--output-dir", str(tmp_path / "other")])
    assert not (tmp_path / "other").exists()


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
