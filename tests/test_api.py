"""The Python API (``from ccnet import init_model, inference_model``): the documented example runs,
every input kind gives the label map the model gives when run by hand, probabilities and
inference settings work, bad input is named, and loading never downloads ImageNet weights."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ccnet
from ccnet import inference_model, init_model
from ccnet.checkpoint import CheckpointError
from ccnet.errors import ConfigError
from ccnet.evaluation.inference import InferenceSettings, predict_logits
from ccnet.evaluation.predict import UnreadableImageError
from tests.evaluation.helpers import load_yaml, make_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def checkpoint(configs_dir, tmp_path):
    dataset = {
        **load_yaml(configs_dir, "dataset", "synthetic"),
        "image_size": 64,
        "min_gap": 16,
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.25, 0.3],
    }
    return make_checkpoint(tmp_path / "ck.pth", configs_dir, dataset)


@pytest.fixture
def picture():
    return np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)


def _by_hand(path, picture, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)):
    state = torch.load(path, weights_only=True)
    model = ccnet.models.build_model(state["config"]["model"], pretrained=False)
    model.load_state_dict(state["model"])
    x = torch.from_numpy(((picture / 255.0 - np.array(mean)) / np.array(std)).transpose(2, 0, 1)).float()[None]
    with torch.no_grad():
        return model.eval()(x)["out"][0]


def test_the_documented_example_runs(checkpoint, picture, tmp_path):
    """docs/evaluation.md's five lines, with the checkpoint and image paths replaced."""
    text = (REPO / "docs" / "evaluation.md").read_text()
    example = re.search(r"```python\n(from ccnet import init_model, inference_model.*?)```", text, re.S).group(1)
    assert len([line for line in example.splitlines() if line.strip()]) <= 5  # blank lines do not count
    Image.fromarray(picture).save(tmp_path / "photo.jpg", quality=100)
    code = example.replace("work_dirs/ccnet_tiny_synthetic/checkpoints/last.pth", str(checkpoint))
    code = code.replace("photo.jpg", str(tmp_path / "photo.jpg"))
    namespace: dict = {}
    exec(compile(code, "docs/evaluation.md", "exec"), namespace)  # noqa: S102  (our own documentation)
    assert namespace["labels"].shape == (40, 56) and namespace["labels"].dtype == np.int64


def test_every_input_kind_gives_the_models_labels(checkpoint, picture, tmp_path):
    model = init_model(checkpoint, device="cpu")
    assert model.dataset_meta["classes"][0] == "background" and len(model.dataset_meta["palette"]) == 5
    assert model.dataset_meta["mean"] == (0.5, 0.4, 0.3) and not model.training
    expected = _by_hand(checkpoint, picture).argmax(0).numpy()
    Image.fromarray(picture).save(tmp_path / "x.png")
    for image in (picture, Image.fromarray(picture), tmp_path / "x.png", str(tmp_path / "x.png")):
        labels = inference_model(model, image)
        assert labels.dtype == np.int64 and np.array_equal(labels, expected)
    both = inference_model(model, [picture, picture[:24, :32]])
    assert isinstance(both, list) and both[1].shape == (24, 32)


def test_probabilities_and_settings(checkpoint, picture):
    model = init_model(checkpoint)
    probs = inference_model(model, picture, probabilities=True)
    assert probs.shape == (5, 40, 56) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(probs), _by_hand(checkpoint, picture).softmax(0), atol=1e-5, rtol=1e-4)
    # slide + flip through keyword arguments == predict_logits with those settings
    slide = inference_model(model, picture, mode="slide", crop_size=32, stride=24, flip=True)
    settings = InferenceSettings(mode="slide", crop_size=(32, 32), stride=(24, 24), flip=True)
    x = torch.from_numpy(
        ((picture / 255.0 - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.3])).transpose(2, 0, 1)
    ).float()[None]
    assert np.array_equal(slide, predict_logits(model, x, settings).argmax(1)[0].numpy())


def test_bad_input_is_named(checkpoint, tmp_path):
    model = init_model(checkpoint)
    with pytest.raises(ConfigError, match=r"unknown inference settings \['mod'\]"):
        inference_model(model, np.zeros((8, 8, 3), np.uint8), mod="slide")
    with pytest.raises(ConfigError, match="eval.crop_batch must be an integer >= 1, got 0"):
        inference_model(model, np.zeros((8, 8, 3), np.uint8), crop_batch=0)
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 RGB array.*float64"):
        inference_model(model, np.zeros((8, 8, 3)))
    with pytest.raises(UnreadableImageError, match="cannot read image .*missing.png"):
        inference_model(model, tmp_path / "missing.png")
    (tmp_path / "fake.png").write_bytes(b"not a picture")
    with pytest.raises(UnreadableImageError, match=f"^cannot read image {tmp_path / 'fake.png'}: Cannot decode"):
        inference_model(model, str(tmp_path / "fake.png"))  # one image: one error, nothing skipped


def test_init_model_refuses_non_finite_weights(checkpoint, tmp_path):
    state = torch.load(checkpoint, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name][...] = float("inf")
    torch.save(state, tmp_path / "inf.pth")
    with pytest.raises(CheckpointError, match=re.escape(f"holds NaN or inf in 1 tensor(s), e.g. ['{name}']")):
        init_model(tmp_path / "inf.pth")


def test_init_model_never_downloads(configs_dir, tmp_path, monkeypatch):
    """A checkpoint whose stored config names torchvision ImageNet weights loads offline."""

    def no_network(*args, **kwargs):
        raise AssertionError("init_model tried to download ImageNet weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    model_cfg = {**load_yaml(configs_dir, "model", "ccnet_r50"), "num_classes": 19}
    assert model_cfg["weights"] == "IMAGENET1K_V2"
    model = ccnet.models.build_model(model_cfg, pretrained=False)
    dataset = load_yaml(configs_dir, "dataset", "cityscapes")
    torch.save({"model": model.state_dict(), "config": {"model": model_cfg, "dataset": dataset}}, tmp_path / "r50.pth")
    loaded = init_model(tmp_path / "r50.pth")
    assert len(loaded.dataset_meta["classes"]) == 19
