"""Whole / slide / multi-scale / flip inference against explicit loop references and symmetries."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ccnet.errors import ConfigError
from ccnet.evaluation.inference import (
    InferenceSettings,
    check_eval_config,
    fit_scale_factor,
    predict_logits,
    window_starts,
)


class ContextNet(nn.Module):
    """3x3 conv features plus a global-average term: its output depends on the whole input, so any
    windowing or padding would change it."""

    def __init__(self, k: int = 4, symmetric: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.cls = nn.Conv2d(8, k, 1)
        if symmetric:  # kernels mirrored left-right make the network flip-equivariant
            with torch.no_grad():
                self.conv.weight.copy_(0.5 * (self.conv.weight + self.conv.weight.flip(-1)))

    def forward(self, x):
        f = torch.relu(self.conv(x))
        f = f + f.mean(dim=(2, 3), keepdim=True)
        return {"out": self.cls(f)}


def make(k=4, symmetric=False, seed=0):
    torch.manual_seed(seed)
    return ContextNet(k, symmetric).eval()


def images(b=2, h=13, w=18, seed=1):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_window_starts_cover_and_end_at_border():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(5, 8, 4) == [0]  # crop larger than the image: one window, the whole dimension


def test_slide_equals_whole_when_crop_covers_image():
    model, x = make(), images()
    whole = predict_logits(model, x, InferenceSettings())
    slide = predict_logits(model, x, InferenceSettings(mode="slide", crop_size=(20, 20), stride=(10, 10)))
    assert torch.allclose(slide, whole, atol=1e-6, rtol=0)


def test_slide_matches_window_loop_reference():
    model, x = make(), images(b=2, h=13, w=18)
    settings = InferenceSettings(mode="slide", crop_size=(8, 10), stride=(5, 6), crop_batch=3)
    got = predict_logits(model, x, settings)
    # Reference: windows at rows {0, 5} and cols {0, 6, 8}, each run alone, averaged per pixel.
    acc = torch.zeros(2, 4, 13, 18)
    cnt = torch.zeros(1, 1, 13, 18)
    with torch.no_grad():
        for y in (0, 5):
            for xs in (0, 6, 8):
                acc[:, :, y : y + 8, xs : xs + 10] += model(x[:, :, y : y + 8, xs : xs + 10])["out"]
                cnt[:, :, y : y + 8, xs : xs + 10] += 1
    assert torch.allclose(got, acc / cnt, atol=1e-5)
    assert cnt.min() >= 1


def test_flip_averages_mirrored_prediction():
    model, x = make(), images()
    got = predict_logits(model, x, InferenceSettings(flip=True))
    with torch.no_grad():
        ref = 0.5 * (model(x)["out"] + model(x.flip(-1))["out"].flip(-1))
    assert got.shape == (2, 4, 13, 18)
    assert torch.allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_flip_is_identity_for_flip_equivariant_model(mode):
    model, x = make(symmetric=True), images()
    # Column windows {0, 9} of an 18-wide image are their own mirror image, so the grid is symmetric too.
    kw = dict(mode=mode, crop_size=(9, 9), stride=(6, 9)) if mode == "slide" else {}
    plain = predict_logits(model, x, InferenceSettings(**kw))
    flipped = predict_logits(model, x, InferenceSettings(flip=True, **kw))
    assert torch.allclose(plain, flipped, atol=1e-5)


def test_multiscale_shapes_and_average_of_resized_logits():
    model, x = make(), images(b=1, h=15, w=21)
    scales = (0.5, 1.0, 1.75)
    got = predict_logits(model, x, InferenceSettings(scales=scales, flip=True))
    assert got.shape == (1, 4, 15, 21)
    ref = torch.zeros_like(got)
    with torch.no_grad():
        for s in scales:
            size = (round(15 * s), round(21 * s))
            xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            for view, unflip in ((xs, lambda t: t), (xs.flip(-1), lambda t: t.flip(-1))):
                out = unflip(model(view)["out"])
                ref += F.interpolate(out, size=(15, 21), mode="bilinear", align_corners=False)
    assert torch.allclose(got, ref / 6, atol=1e-5)


def test_test_size_rescales_before_scales_and_returns_full_resolution():
    model, x = make(), images(b=1, h=32, w=48)
    assert fit_scale_factor(32, 48, (24, 16)) == 0.5 and fit_scale_factor(1024, 2048, (512, 2048)) == 0.5
    fitted = predict_logits(model, x, InferenceSettings(test_size=(16, 24)))  # fits 32x48 at factor 0.5
    assert fitted.shape == (1, 4, 32, 48)
    assert torch.allclose(fitted, predict_logits(model, x, InferenceSettings(scales=(0.5,))), atol=1e-6)
    both = predict_logits(model, x, InferenceSettings(test_size=(16, 24), scales=(0.5, 1.0)))
    assert torch.allclose(both, predict_logits(model, x, InferenceSettings(scales=(0.25, 0.5))), atol=1e-6)


def test_multiscale_slide_combination_shape():
    model, x = make(), images(b=1, h=16, w=24)
    settings = InferenceSettings(mode="slide", crop_size=(10, 10), stride=(7, 7), scales=(0.75, 1.5), flip=True)
    assert predict_logits(model, x, settings).shape == (1, 4, 16, 24)


@pytest.mark.parametrize("amp, tol", [("bf16", 0.01), ("fp16", 0.002)])
def test_autocast_close_to_fp32(amp, tol):
    # Stated tolerance (README): max |logit error| <= 1% (bf16) / 0.2% (fp16) of the fp32 logit range.
    model, x = make(), images(b=1, h=32, w=40)
    slide = dict(mode="slide", crop_size=(24, 24), stride=(16, 16))
    ref = predict_logits(model, x, InferenceSettings(**slide))
    low = predict_logits(model, x, InferenceSettings(amp=amp, **slide))
    assert low.dtype == torch.float32
    err = float((low - ref).abs().max())
    assert 0 < err <= tol * float(ref.max() - ref.min())  # > 0: autocast really ran in low precision


def test_channels_last_equals_fp32():
    model, x = make(), images(b=1, h=32, w=40)
    ref = predict_logits(model, x, InferenceSettings(flip=True))
    cl = predict_logits(
        model.to(memory_format=torch.channels_last), x, InferenceSettings(flip=True, channels_last=True)
    )
    assert torch.allclose(cl, ref, atol=1e-5)


def test_settings_from_config_and_errors():
    s = InferenceSettings.from_config(
        {
            "mode": "slide",
            "crop_size": 769,
            "stride": [513, 500],
            "scales": [0.75, 1.0],
            "flip": True,
            "num_workers": 2,
            "test_size": 512,
        }
    )
    assert s.crop_size == (769, 769) and s.stride == (513, 500) and s.scales == (0.75, 1.0) and s.flip
    assert s.test_size == (512, 512)
    assert InferenceSettings.from_config({"amp": "none"}, amp="bf16").amp == "bf16"
    with pytest.raises(ValueError, match="eval.crop_size and eval.stride"):
        InferenceSettings.from_config({"mode": "slide"})
    with pytest.raises(ValueError, match="exceeds"):
        InferenceSettings(mode="slide", crop_size=(8, 8), stride=(9, 4))
    with pytest.raises(ValueError, match="eval.mode"):
        InferenceSettings(mode="sliding")
    with pytest.raises(ValueError, match="eval.amp"):
        InferenceSettings(amp="fp8")
    with pytest.raises(ValueError, match="eval.scales"):
        InferenceSettings(scales=())


def test_check_eval_config_accepts_the_shipped_sections(configs_dir):
    from omegaconf import OmegaConf

    for name in ("infer", "train"):  # every key of their eval sections is known and in range
        check_eval_config(OmegaConf.to_container(OmegaConf.load(configs_dir / f"{name}.yaml").eval))
    settings = check_eval_config(OmegaConf.load(configs_dir / "eval.yaml").eval)  # a DictConfig works too
    assert settings == InferenceSettings(mode="whole", crop_size=(769, 769), stride=(513, 513), scales=(1.0,))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mode": "foo"}, "eval.mode must be one of ('whole', 'slide'), got 'foo'"),
        ({"mode": "slide", "crop_size": 64, "stride": 65}, "eval.stride [65, 65] exceeds eval.crop_size [64, 64]"),
        ({"scales": [0.0]}, "eval.scales must be a non-empty list of positive factors, got [0.0]"),
        ({"scales": "large"}, "eval.scales must be a non-empty list of positive factors, got ['large']"),
        ({"crop_batch": 0}, "eval.crop_batch must be an integer >= 1, got 0"),
        ({"test_size": [0, 0]}, "eval.test_size must be a positive integer or [height, width]"),
        ({"crop_size": [769, 769, 3]}, "eval.crop_size must be a positive integer or [height, width]"),
        ({"stride": True}, "eval.stride must be a positive integer or [height, width]"),
        ({"flip": "yes"}, "eval.flip must be true or false, got 'yes'"),
        ({"channels_last": 1}, "eval.channels_last must be true or false, got 1"),
        ({"amp": "fp8"}, "eval.amp must be one of ['bf16', 'fp16', 'none'], got 'fp8'"),
        ({"num_workers": -1}, "eval.num_workers must be an integer >= 0 (DataLoader workers per process), got -1"),
        ({"num_workers": "two"}, "eval.num_workers must be an integer >= 0"),
        ({"num_worker": 2}, "unknown eval setting(s) ['eval.num_worker']: the eval section takes mode, crop_size"),
    ],
)
def test_every_bad_eval_value_is_a_config_error_naming_the_key(change, message):
    with pytest.raises(ConfigError) as refused:
        check_eval_config({"mode": "whole", "num_workers": 2, **change})
    assert message in str(refused.value)
    assert isinstance(refused.value, ValueError)  # callers that catch ValueError keep working
