"""The segmentor: named outputs, upsampling to the input size, norm choices, config errors."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from ccnet.models import build_model

TINY = {"backbone": "tiny", "num_classes": 4, "head_channels": 16, "bottleneck_channels": 16,
        "aux_channels": 8}


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


@pytest.mark.parametrize("key,value,match", [("context", "global", "rcca, nonlocal, none"),
                                             ("backbone", "vgg", "resnet50"),
                                             ("norm", "gn", "bn, syncbn, frozen_bn"),
                                             ("num_classes", 0, "positive integer"),
                                             ("activation", "gelu", "leaky_relu")])
def test_bad_config_values_name_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        build_model({**TINY, key: value})
