"""Attention maps per criss-cross loop: loop 1 is the pixel's cross, loop 2 the whole image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ccnet.models import build_model
from ccnet.models.attention_maps import attention_panel, rcca_attention_maps
from ccnet.utils.visualize import add_colorbar, add_headings

SIZE = 64  # px; 8x8 feature cells with the tiny backbone


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _model_cfg(configs_dir: Path, **changes) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(configs_dir / "model" / "ccnet_tiny.yaml"))
    cfg.update(num_classes=5, tiny_widths=[8, 16, 32], head_channels=16, bottleneck_channels=16, aux_channels=8)
    cfg.update(changes)
    return cfg


def _model(configs_dir: Path, recurrence: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(_model_cfg(configs_dir, recurrence=recurrence))
    with torch.no_grad():
        model.head.cca.gamma.fill_(1.0)  # a fresh module is the identity; make loop 2 see loop 1's output
        for conv in (model.head.cca.query_conv, model.head.cca.key_conv):
            conv.weight.mul_(5.0)  # peaked, input-dependent attention rather than nearly uniform
    return model.eval()


def _reference_maps(model: torch.nn.Module, image: torch.Tensor, cell: tuple) -> list:
    """Loop-by-loop composition written with explicit sums over the criss-cross neighbours."""
    head = model.head
    with torch.no_grad():
        x = head.conva(model.backbone(image[None])["layer4"])
        _, _, h, w = x.shape
        mats = []
        for _ in range(head.recurrence):
            q, k = head.cca.query_conv(x)[0], head.cca.key_conv(x)[0]
            mat = torch.zeros(h * w, h * w, dtype=torch.float64)
            for r in range(h):
                for c in range(w):
                    cross = [(i, c) for i in range(h) if i != r] + [(r, j) for j in range(w)]
                    energy = torch.stack([q[:, r, c].double() @ k[:, i, j].double() for i, j in cross])
                    for (i, j), a in zip(cross, torch.softmax(energy, 0)):
                        mat[r * w + c, i * w + j] = a
            mats.append(mat)
            x = head.cca(x)
    maps, reach = [], torch.eye(h * w, dtype=torch.float64)
    for mat in mats:
        reach = mat @ reach
        maps.append(reach[cell[0] * w + cell[1]].reshape(h, w))
    return maps


def test_loop1_is_a_cross_and_loop2_covers_the_image(configs_dir: Path) -> None:
    model = _model(configs_dir, recurrence=2)
    torch.manual_seed(1)
    image = torch.randn(3, SIZE, SIZE)
    pixel = (20, 45)  # feature cell (2, 5)
    loop1, loop2 = rcca_attention_maps(model, image, pixel)
    assert loop1.shape == loop2.shape == (8, 8)
    on_cross = torch.zeros(8, 8, dtype=torch.bool)
    on_cross[2, :] = True
    on_cross[:, 5] = True
    assert (loop1[on_cross] > 0).all() and (loop1[~on_cross] == 0).all()
    assert (loop2 > 0).all()
    for m in (loop1, loop2):
        assert float(m.sum()) == pytest.approx(1.0, abs=1e-5)
    ref1, ref2 = _reference_maps(model, image, (2, 5))
    torch.testing.assert_close(loop1.double(), ref1, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(loop2.double(), ref2, atol=1e-5, rtol=1e-4)


def test_panel_and_non_attention_models(configs_dir: Path) -> None:
    model = _model(configs_dir, recurrence=3)
    panel = attention_panel(model, torch.randn(3, SIZE, SIZE))
    bare = np.zeros((SIZE, SIZE * 4, 3), np.uint8)  # input | loop 1 | 2 | 3, with headings and a colour scale
    framed = add_colorbar(add_headings(bare, ["input", "1", "2", "3"]), "0", "max", "caption")
    assert panel.dtype == np.uint8 and panel.shape == framed.shape
    head = framed.shape[0] - add_colorbar(bare, "0", "max", "caption").shape[0]
    assert (panel[:head] < 128).any() and (panel[head + SIZE :] != 255).any()  # text above, a colour ramp below
    plain = build_model(_model_cfg(configs_dir, context="none"))
    with pytest.raises(ValueError, match="model.context=rcca"):
        rcca_attention_maps(plain, torch.randn(3, SIZE, SIZE), (0, 0))
