"""tools/convert_checkpoint.py end to end: published-style files in, a checkpoint that the evaluation
loader (tools/eval.py's path) rebuilds and that predicts like the source model; never written over the
source or a file no conversion wrote, and user mistakes reported in one line with exit status 2."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ccnet.checkpoint import load_checkpoint, save_checkpoint
from ccnet.data.config import transform_from_cfg
from ccnet.evaluation.loading import load_model, resolve_model_and_dataset
from ccnet.utils.manifest import HEADER
from tests.convert.upstream import MMSegCCNet, OfficialCCNet, randomize_

REPO = Path(__file__).resolve().parents[2]
MMSEG_NAME = "ccnet_r50-d8_769x769_40k_cityscapes_20200616_145125-76d11884.pth"


def _tool():
    spec = importlib.util.spec_from_file_location("convert_checkpoint", REPO / "tools" / "convert_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mmseg_model():
    torch.manual_seed(2)
    return randomize_(MMSegCCNet(19, depth=50, align_corners=True), seed=2)


def test_mmseg_file_converts_and_evaluation_loader_reproduces_it(tmp_path, mmseg_model):
    src = tmp_path / MMSEG_NAME
    save_checkpoint({"meta": {"mmseg_version": "0.5.0", "iter": 40000}, "state_dict": mmseg_model.state_dict()}, src)
    dst = tmp_path / "converted.pth"
    assert _tool().main(["--from", "mmseg", str(src), str(dst), "--num-classes", "19"]) == 0

    ckpt = load_checkpoint(dst)
    assert ckpt["iteration"] == 0 and ckpt["converted_from"] == {"format": "mmseg", "path": str(src)}
    stored = ckpt["config"]
    assert stored["model"]["name"] == "ccnet_r50_mmseg" and stored["model"]["num_classes"] == 19
    assert stored["model"]["align_corners"] is True  # a 769x769 recipe
    assert stored["dataset"]["name"] == "cityscapes"
    assert stored["dataset"]["mean"] == [0.485, 0.456, 0.406] and stored["dataset"]["std"] == [0.229, 0.224, 0.225]

    # exactly what tools/eval.py does with `checkpoint=dst dataset.root=...`
    model_cfg, dataset_cfg = resolve_model_and_dataset(stored, {}, {"root": "data/cityscapes"}, False, False, dst)
    assert dataset_cfg["root"] == "data/cityscapes"
    model = load_model(model_cfg, ckpt, dst, torch.device("cpu"))
    x = torch.randn(1, 3, 33, 41)
    with torch.no_grad():
        out, ref = model(x)["out"], mmseg_model(x)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max().clamp_min(1.0)

    # the same command again replaces the conversion's own file, recorded in its folder's manifest
    assert (tmp_path / "manifest.txt").read_text() == HEADER + "convert converted.pth\n"
    dst.write_bytes(b"stale")
    assert _tool().main(["--from", "mmseg", str(src), str(dst), "--num-classes", "19"]) == 0
    assert load_checkpoint(dst)["converted_from"]["format"] == "mmseg"
    assert (tmp_path / "manifest.txt").read_text() == HEADER + "convert converted.pth\n"


def test_mismatch_writes_nothing_and_names_the_keys(tmp_path, mmseg_model, caplog):
    state = dict(mmseg_model.state_dict())
    del state["decode_head.conv_cat.bn.running_var"]
    state["decode_head.unknown.weight"] = torch.zeros(2)
    src = tmp_path / "broken.pth"
    save_checkpoint({"state_dict": state}, src)
    dst = tmp_path / "out.pth"
    with caplog.at_level(logging.ERROR):
        assert _tool().main(["--from", "mmseg", str(src), str(dst)]) == 2
    assert not dst.exists() and not (tmp_path / "manifest.txt").exists()
    assert "decode_head.unknown.weight" in caplog.text and "head.bottleneck.1.running_var" in caplog.text


def test_missing_source_file_fails_cleanly(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert _tool().main(["--from", "official", str(tmp_path / "nope.pth"), str(tmp_path / "o.pth")]) == 2
    assert caplog.messages == [f"conversion failed, nothing written: checkpoint not found: {tmp_path / 'nope.pth'}"]
    assert list(tmp_path.iterdir()) == []


def test_official_checkpoint_keeps_the_release_preprocessing(tmp_path):
    torch.manual_seed(3)
    src = tmp_path / "CS_scenes_60000.pth"
    save_checkpoint({f"module.{k}": v for k, v in OfficialCCNet(19).state_dict().items()}, src)
    dst = tmp_path / "official.pth"
    assert _tool().main(["--from", "official", str(src), str(dst), "--recurrence", "1"]) == 0
    stored = load_checkpoint(dst)["config"]
    assert stored["model"]["name"] == "ccnet_r101_official" and stored["model"]["align_corners"] is True
    assert stored["model"]["recurrence"] == 1  # the release's R=1 model; the weights do not record R
    # our val pipeline with the stored mean/std must produce the release's input: RGB pixels minus
    # IMG_MEAN (BGR 104.008, 116.669, 122.679), no scaling (conv1 was flipped to take RGB)
    image = np.random.default_rng(0).integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    got = transform_from_cfg(stored["dataset"], is_train=False)(image=image, mask=np.zeros((4, 5), np.uint8))["image"]
    expected = image.astype(np.float64) - np.array([122.67891434, 116.66876762, 104.00698793])
    np.testing.assert_allclose(got.numpy().transpose(1, 2, 0), expected, atol=1e-3)


def test_never_writes_over_the_source_or_a_file_no_conversion_wrote(tmp_path, mmseg_model, caplog):
    src = tmp_path / MMSEG_NAME
    save_checkpoint({"state_dict": mmseg_model.state_dict()}, src)
    source_bytes = src.read_bytes()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "ccnet.pth").write_bytes(b"the user's own checkpoint")

    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "convert_checkpoint.py"),
            "--from",
            "mmseg",
            str(src),
            str(mine / "ccnet.pth"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output
    assert output.strip() == (
        f"conversion failed, nothing written: refusing to write into {mine}: 1 file(s) this run "
        f"would write are not its own to replace: {mine / 'ccnet.pth'} (exists, and no earlier "
        "convert run wrote it here). Nothing was written. Choose another DST or move that file "
        "away"
    )
    assert (mine / "ccnet.pth").read_bytes() == b"the user's own checkpoint"
    assert [p.name for p in mine.iterdir()] == ["ccnet.pth"]  # no manifest, no temporary file

    with caplog.at_level(logging.ERROR):  # DST is SRC (here through a symlink): refused before SRC is read
        (tmp_path / "link.pth").symlink_to(src)
        assert _tool().main(["--from", "mmseg", str(src), str(tmp_path / "link.pth")]) == 2
    assert f"{tmp_path / 'link.pth'} (an input of this run)" in caplog.text
    assert src.read_bytes() == source_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["link.pth", "mine", MMSEG_NAME])
