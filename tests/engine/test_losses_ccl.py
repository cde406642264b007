"""Category-consistent loss: a hand-written loop oracle, gradients, degenerate batches, the model's
``ccl_proj`` hook and a training step with ``model.ccl=true``."""

from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ccnet.engine.losses import CategoryConsistentLoss, build_criterion, ccl_from_config
from ccnet.models import build_model

IGNORE = 255
DV, DD = 0.5, 1.5


def _norm(v):
    return math.sqrt(sum(x * x for x in v))


def loop_ccl(features: torch.Tensor, labels: torch.Tensor, alpha=1.0, beta=1.0, gamma=0.001):
    """Pixel-by-pixel, class-by-class Python loops over lists of floats; labels already at the feature
    size. Per image, then the mean over images with labelled pixels."""
    per_image = []
    for f, lab in zip(features.tolist(), labels.tolist()):
        d_feat, h, w = len(f), len(lab), len(lab[0])
        pixels = {}
        for y in range(h):
            for x in range(w):
                if lab[y][x] != IGNORE:
                    pixels.setdefault(lab[y][x], []).append([f[c][y][x] for c in range(d_feat)])
        if not pixels:
            continue
        centres = {c: [sum(p[k] for p in ps) / len(ps) for k in range(d_feat)] for c, ps in pixels.items()}
        var = 0.0
        for c, ps in pixels.items():
            total = 0.0
            for p in ps:
                d = _norm([a - b for a, b in zip(centres[c], p)])
                if d > DD:
                    total += d - DD + (DD - DV) ** 2
                elif d > DV:
                    total += (d - DV) ** 2
            var += total / len(ps)
        var /= len(pixels)
        pairs = [(a, b) for a in centres for b in centres if a != b]
        dis = 0.0
        for a, b in pairs:
            d = _norm([x - y for x, y in zip(centres[a], centres[b])])
            if d <= 2 * DD:
                dis += (2 * DD - d) ** 2
        dis = dis / len(pairs) if pairs else 0.0
        reg = sum(_norm(c) for c in centres.values()) / len(centres)
        per_image.append((var, dis, reg))
    if not per_image:
        return 0.0, 0.0, 0.0, 0.0
    var, dis, reg = (sum(t[i] for t in per_image) / len(per_image) for i in range(3))
    return alpha * var + beta * dis + gamma * reg, var, dis, reg


def _example(seed=0, b=3, d=4, h=5, w=6, classes=4):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(b, d, h, w, generator=gen) * 0.6  # distances span all three φ_var regimes
    labels = torch.randint(0, classes, (b, h, w), generator=gen)
    labels[torch.rand(b, h, w, generator=gen) < 0.2] = IGNORE
    labels[1] = IGNORE  # an image without labelled pixels is left out of the batch mean
    labels[2] = 1
    labels[2, 0, 0] = 3  # a one-pixel class sits on its centre (norm 0)
    return features, labels


@pytest.mark.parametrize("weights, weight", [((1.0, 1.0, 0.001), 1.0), ((0.5, 2.0, 0.1), 0.1)])
def test_matches_loop_reference(weights, weight):
    features, labels = _example()
    out = CategoryConsistentLoss(DV, DD, *weights, weight=weight, ignore_index=IGNORE)(features, labels)
    expected = list(loop_ccl(features, labels, *weights))
    expected[0] *= weight  # λ scales the sum, not the logged terms
    got = [out[k].item() for k in ("loss", "var", "dis", "reg")]
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert expected[1] > 0 and expected[2] > 0  # the example exercises every term


def test_labels_are_downsampled_nearest_to_the_feature_size():
    features, labels = _example(seed=1)
    full = labels.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # (B, 2h, 2w)
    full[:, 1::2, :] = 7  # rows nearest-downsampling never reads
    full[:, :, 1::2] = 7
    out = CategoryConsistentLoss()(features, full)
    assert out["loss"].item() == pytest.approx(loop_ccl(features, labels)[0], rel=1e-5)


def test_gradient_flows_and_is_finite():
    features, labels = _example(seed=2)
    features.requires_grad_(True)
    CategoryConsistentLoss()(features, labels)["loss"].backward()
    grad = features.grad
    assert torch.isfinite(grad).all()
    assert grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0
    assert grad[1].abs().sum() == 0  # the all-ignore image takes no part


@pytest.mark.parametrize("case", ["one_class", "one_pixel", "no_labels", "equal_centres"])
def test_degenerate_batches_give_no_nan(case):
    features = torch.randn(2, 3, 4, 4)
    labels = torch.full((2, 4, 4), IGNORE)
    if case == "one_class":
        labels[:] = 2
    elif case == "one_pixel":
        labels[0, 1, 1] = 0
    elif case == "equal_centres":  # two classes with identical features: centre distance exactly 0
        features = torch.ones(2, 3, 4, 4)
        labels[:, :2] = 0
        labels[:, 2:] = 1
    features.requires_grad_(True)
    out = CategoryConsistentLoss()(features, labels)
    out["loss"].backward()
    assert all(torch.isfinite(v) for v in out.values()) and torch.isfinite(features.grad).all()
    assert out["loss"].item() == pytest.approx(loop_ccl(features.detach(), labels)[0], rel=1e-5, abs=1e-6)
    if case == "no_labels":
        assert out["loss"].item() == 0 and features.grad.abs().sum() == 0
    if case == "equal_centres":
        assert out["dis"].item() == pytest.approx((2 * DD) ** 2)


def test_train_yaml_ccl_block_holds_the_paper_defaults(configs_dir):
    from omegaconf import OmegaConf

    block = OmegaConf.to_container(OmegaConf.load(configs_dir / "train.yaml").train.ccl)
    assert block == {"delta_v": 0.5, "delta_d": 1.5, "alpha": 1.0, "beta": 1.0, "gamma": 0.001, "weight": 0.1}
    loss, default = ccl_from_config(block), CategoryConsistentLoss()
    assert all(getattr(loss, k) == getattr(default, k) for k in block if k != "weight")
    assert default.weight == 1.0 and loss.weight == 0.1  # the paper's formula; training scales it (README)


def test_config_errors():
    assert ccl_from_config({"alpha": 2, "delta_d": 2.0}).alpha == 2.0
    with pytest.raises(ValueError, match="unknown train.ccl keys"):
        ccl_from_config({"delta": 1})
    with pytest.raises(ValueError, match="delta_v < delta_d"):
        CategoryConsistentLoss(delta_v=2.0, delta_d=1.0)


TINY = {"backbone": "tiny", "num_classes": 4, "head_channels": 16, "bottleneck_channels": 24, "aux_channels": 8}


def test_model_ccl_projection_only_when_enabled():
    assert build_model(TINY).ccl_proj is None
    model = build_model({**TINY, "ccl": True})
    assert model.ccl_proj.in_channels == 24 and model.ccl_proj.out_channels == 16
    out = model(torch.randn(2, 3, 40, 48))
    assert set(out) == {"out", "aux", "ccl_features"} and out["ccl_features"].shape == (2, 16, 5, 6)
    model.eval()
    assert set(model(torch.randn(1, 3, 40, 48))) == {"out"}


def test_criterion_adds_ccl_when_the_model_returns_features():
    torch.manual_seed(0)
    model = build_model({**TINY, "ccl": True, "ccl_channels": 8})
    criterion = build_criterion({"aux_weight": 0.4, "ccl": {"gamma": 0.01, "weight": 0.1}}, 4)
    images, target = torch.randn(2, 3, 40, 48), torch.randint(0, 4, (2, 40, 48))
    outputs = model(images)
    losses = criterion(outputs, target)
    reference = CategoryConsistentLoss(gamma=0.01)(outputs["ccl_features"], target)
    ccl = 0.1 * reference["loss"]
    assert losses["ccl"].item() == pytest.approx(ccl.item(), rel=1e-6)
    for term in ("var", "dis", "reg"):  # logged unweighted, not added again
        assert losses[f"ccl_{term}"].item() == pytest.approx(reference[term].item(), rel=1e-6)
    assert losses["loss"].item() == pytest.approx((losses["main"] + 0.4 * losses["aux"] + ccl).item(), rel=1e-6)
    losses["loss"].backward()
    assert model.ccl_proj.weight.grad.abs().sum() > 0
    assert "ccl" not in criterion(build_model(TINY)(images), target)


def test_training_run_with_ccl(configs_dir, tmp_path, monkeypatch):
    from ccnet.checkpoint import load_checkpoint
    from ccnet.engine import train

    calls = []
    forward = CategoryConsistentLoss.forward

    def spy(self, features, target):
        out = forward(self, features, target)
        calls.append((self.alpha, out["loss"].item()))
        return out

    monkeypatch.setattr(CategoryConsistentLoss, "forward", spy)

    overrides = [
        "model.ccl=true",
        "dataset.image_size=64",
        "dataset.min_gap=16",
        "dataset.num_train=16",
        "dataset.num_val=2",
        "model.tiny_widths=[8,16,32]",
        "model.head_channels=16",
        "model.bottleneck_channels=16",
        "model.aux_channels=8",
        "train.batch_size=2",
        "train.max_iters=2",
        "train.num_workers=0",
        "eval.num_workers=0",
        "train.device=cpu",
        "train.log_interval=1",
        "train.vis_images=0",
        "train.ccl.alpha=2.0",
    ]
    with initialize_config_dir(config_dir=str(configs_dir), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.work_dir = str(tmp_path / "run")
    result = train(cfg)
    assert math.isfinite(result["train/loss"])
    # one CCL evaluation per training step, with the train.ccl override, contributing a positive term
    assert len(calls) == 2 and all(alpha == 2.0 and value > 0 for alpha, value in calls)
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth")
    assert "ccl_proj.weight" in last["model"] and last["config"]["model"]["ccl"] is True
    # every CCL term on the console/log line and in TensorBoard
    log_line = next(line for line in (tmp_path / "run" / "train.log").read_text().splitlines() if "iter 2/2" in line)
    assert all(f"{term} " in log_line for term in ("ccl", "ccl_var", "ccl_dis", "ccl_reg"))
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert {"train/loss_ccl", "train/loss_ccl_var", "train/loss_ccl_dis", "train/loss_ccl_reg"} <= set(
        events.Tags()["scalars"]
    )
