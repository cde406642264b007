"""The segmentor: named outputs, upsampling to the input size, norm choices, config errors."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from ccnet.models import build_model

TINY = {"backbone": "tiny", "num_classes": 4, "head_channels": 16, "bottleneck_channels": 16, "aux_channels": 8}


def test_outputs_in_train_and_eval_mode():
    model = build_model(TINY)
    out = model(torch.randn(2, 3, 50, 70))
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == out["aux"].shape == (2, 4, 50, 70)
    model.eval()
    assert set(model(torch.randn(1, 3, 32, 32))) == {"out"}
    feats = model(torch.randn(1, 3, 32, 32), return_features=True)
    assert feats["features"].shape == (1, 16, 4, 4)


def test_no_aux_head():
    model = build_model({**TINY, "aux": False})
    assert model.aux_head is None and set(model(torch.randn(1, 3, 32, 32))) == {"out"}


@pytest.mark.parametrize("context", ["rcca", "nonlocal", "none"])
def test_contexts_build_and_run(context):
    model = build_model({**TINY, "context": context}).eval()
    assert model(torch.randn(1, 3, 40, 24))["out"].shape == (1, 4, 40, 24)


def test_frozen_bn():
    model = build_model({**TINY, "norm": "frozen_bn"})
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("context", "global", "rcca, none, nonlocal"),
        ("backbone", "vgg", "resnet50"),
        ("norm", "gn", "bn, syncbn, frozen_bn"),
        ("num_classes", 0, "positive integer"),
        ("activation", "gelu", "leaky_relu"),
        ("cca_impl", "fast", "auto, reference, lean, triton"),
    ],
)
def test_bad_config_values_name_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        build_model({**TINY, key: value})


@pytest.mark.parametrize("cca_impl", [None, "auto", "reference", "lean", "triton"])
def test_cca_impl_is_the_attention_modules_setting(cca_impl):
    assert build_model({**TINY, "cca_impl": cca_impl}).head.cca.implementation == cca_impl
    assert build_model(TINY).head.cca.implementation is None  # absent: inherit CCNET_CCA_IMPL, else auto


def test_cca_impl_decides_over_the_environment(monkeypatch):
    """model.cca_impl=reference runs the reference even with CCNET_CCA_IMPL=lean: the reference calls
    the 1×1 convolutions as modules (their hooks fire once per recurrence), the lean block does not."""
    monkeypatch.setenv("CCNET_CCA_IMPL", "lean")
    calls = []
    for cca_impl in (None, "reference"):
        model = build_model({**TINY, "cca_impl": cca_impl}).eval()
        model.head.cca.query_conv.register_forward_hook(lambda *_, impl=cca_impl: calls.append(impl))
        with torch.no_grad():
            model(torch.randn(1, 3, 32, 32))
    assert calls == ["reference", "reference"]
