"""tools/infer.py: masks and overlays for a file, a folder or a glob; clear errors for unreadable
images and for a checkpoint whose class count does not match the palette."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from ccnet.checkpoint import load_checkpoint
from ccnet.data.cityscapes import PALETTE
from ccnet.evaluation.predict import list_inputs, run_infer
from ccnet.models import build_model
from tests.evaluation.helpers import load_yaml, make_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 44, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (26, 40, 3), dtype=np.uint8)).save(folder / "sub" / "b.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture()
def cityscapes_ckpt(configs_dir, tmp_path):
    return make_checkpoint(tmp_path / "ck.pth", configs_dir, load_yaml(configs_dir, "dataset", "cityscapes"))


def infer_cfg(configs_dir, *overrides):
    with initialize_config_dir(config_dir=str(configs_dir), version_base="1.3"):
        return compose("infer", overrides=["device=cpu", *overrides])


def test_list_inputs_file_folder_glob(photos):
    assert list_inputs(str(photos / "a.png")) == ([photos / "a.png"], photos)
    assert list_inputs(str(photos)) == ([photos / "a.png", photos / "sub" / "b.jpg"], photos)
    assert list_inputs(str(photos / "**" / "*.jpg")) == ([photos / "sub" / "b.jpg"], photos)
    with pytest.raises(FileNotFoundError, match="no files match"):
        list_inputs(str(photos / "*.bmp"))
    with pytest.raises(FileNotFoundError, match="neither"):
        list_inputs(str(photos / "missing.png"))


def test_masks_match_the_model_run_by_hand(configs_dir, photos, cityscapes_ckpt, tmp_path):
    out = tmp_path / "out"
    written = run_infer(infer_cfg(configs_dir, f"checkpoint={cityscapes_ckpt}", f"input={photos}",
                                  f"output_dir={out}", "formats=[color,trainid,overlay]"))
    assert [sorted(w) for w in written] == [["color", "overlay", "trainid"]] * 2
    assert written[1]["trainid"] == out / "trainid" / "sub" / "b.png"
    # Reference: the checkpoint's model on the image normalised here with ImageNet statistics.
    ckpt = load_checkpoint(cityscapes_ckpt)
    model = build_model(ckpt["config"]["model"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for source, files in zip((photos / "a.png", photos / "sub" / "b.jpg"), written):
        rgb = np.asarray(Image.open(source).convert("RGB"))
        x = torch.from_numpy(((rgb / 255.0 - mean) / std).transpose(2, 0, 1)).float()[None]
        with torch.no_grad():
            expected = model(x)["out"].argmax(1)[0].numpy()
        ids = np.asarray(Image.open(files["trainid"]))
        assert np.array_equal(ids, expected)
        assert np.array_equal(np.asarray(Image.open(files["color"])), np.asarray(PALETTE, dtype=np.uint8)[ids])
        blend = np.asarray(Image.open(files["overlay"])).astype(float)
        assert np.abs(blend - (0.5 * rgb + 0.5 * np.asarray(PALETTE)[ids])).max() <= 1.0


def test_legend_true_reaches_infer_overlays(configs_dir, photos, cityscapes_ckpt, tmp_path):
    [written] = run_infer(infer_cfg(configs_dir, f"checkpoint={cityscapes_ckpt}", f"input={photos / 'a.png'}",
                                    f"output_dir={tmp_path / 'out'}", "formats=[overlay]", "legend=true"))
    with Image.open(written["overlay"]) as framed:
        assert framed.width == 44 and framed.height > 30


def test_unreadable_image_is_named(configs_dir, photos, cityscapes_ckpt, tmp_path):
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        run_infer(infer_cfg(configs_dir, f"checkpoint={cityscapes_ckpt}", f"input={photos}",
                            f"output_dir={tmp_path / 'out'}"))


def test_class_count_must_match_palette(configs_dir, photos, cityscapes_ckpt, tmp_path):
    cfg = infer_cfg(configs_dir, f"checkpoint={cityscapes_ckpt}", f"input={photos}", f"output_dir={tmp_path}",
                    "dataset=ade20k")
    with pytest.raises(ValueError, match="predicts 19 classes but the 'ade20k' palette has 150 colours"):
        run_infer(cfg, dataset_group=True)


def test_cli_single_image_and_glob(repo_root, configs_dir, photos, tmp_path):
    synthetic = {**load_yaml(configs_dir, "dataset", "synthetic"), "image_size": 64, "min_gap": 16}
    ckpt = make_checkpoint(tmp_path / "syn.pth", configs_dir, synthetic)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(repo_root / "tools" / "infer.py"), f"checkpoint={ckpt}",
                           f"input={photos / '*.png'}", f"output_dir={tmp_path / 'out'}", "formats=color",
                           "eval.flip=true", "device=auto"], cwd=repo_root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    color = np.asarray(Image.open(tmp_path / "out" / "a.png"))  # one format: no subfolder; glob root: photos/
    assert color.shape == (30, 44, 3)
    assert {tuple(c) for c in color.reshape(-1, 3)} <= {(0, 0, 0), (220, 40, 40), (40, 200, 60), (50, 80, 230),
                                                        (230, 210, 40)}  # the synthetic palette


def test_output_layout_is_what_the_docs_show(configs_dir, photos, cityscapes_ckpt, tmp_path):
    """docs/evaluation.md: a file x.jpg -> out/color/x.png; a folder's sub/x.jpg -> out/color/sub/x.png."""
    out = tmp_path / "single"
    written = run_infer(infer_cfg(configs_dir, f"checkpoint={cityscapes_ckpt}", f"input={photos / 'sub' / 'b.jpg'}",
                                  f"output_dir={out}"))
    assert written == [{"color": out / "color" / "b.png", "overlay": out / "overlay" / "b.png"}]
    out = tmp_path / "folder"
    written = run_infer(infer_cfg(configs_dir, f"checkpoint={cityscapes_ckpt}", f"input={photos}",
                                  f"output_dir={out}", "formats=[trainid]"))
    assert [w["trainid"] for w in written] == [out / "a.png", out / "sub" / "b.png"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a.png", "sub/b.png"]
