"""Losses: cross-entropy with ignore/class weights, OHEM pixel selection, main + 0.4 * aux."""

from __future__ import annotations

import math

import pytest
import torch

from ccnet.engine.losses import SegmentationLoss, build_criterion, cross_entropy, ohem_mask


def reference_ce(logits, target, ignore=255, weight=None):
    """Pixel loop: sum_i w_{y_i} * -log softmax(x_i)[y_i] / sum_i w_{y_i} over non-ignored pixels."""
    num, den = 0.0, 0.0
    b, k, h, w = logits.shape
    for n in range(b):
        for y in range(h):
            for x in range(w):
                t = int(target[n, y, x])
                if t == ignore:
                    continue
                z = [float(v) for v in logits[n, :, y, x]]
                logp = z[t] - math.log(sum(math.exp(v) for v in z))
                wt = 1.0 if weight is None else float(weight[t])
                num -= wt * logp
                den += wt
    return num / den


def test_cross_entropy_matches_pixel_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, generator=g)
    target = torch.randint(0, 4, (2, 3, 5), generator=g)
    target[0, 1, :] = 255
    weight = torch.tensor([0.5, 1.0, 2.0, 0.25])
    assert cross_entropy(logits, target).item() == pytest.approx(reference_ce(logits, target), rel=1e-5)
    assert cross_entropy(logits, target, weight=weight).item() == pytest.approx(
        reference_ce(logits, target, weight=weight), rel=1e-5
    )


def test_all_ignored_batch_gives_zero_not_nan():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = cross_entropy(logits, torch.full((1, 4, 4), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0


def two_class_logits(p_true):
    """Logits of a (1, 2, 1, N) map whose class-0 probability is p_true (target all 0)."""
    p = torch.tensor(p_true, dtype=torch.float64)
    return torch.stack([torch.log(p), torch.log1p(-p)]).view(1, 2, 1, -1)


def test_ohem_keeps_hard_pixels_below_threshold():
    p = [0.9, 0.2, 0.65, 0.95, 0.71, 0.1]
    logits, target = two_class_logits(p), torch.zeros(1, 1, 6, dtype=torch.long)
    keep = ohem_mask(logits, target, 255, thresh=0.7, min_kept=2)
    assert keep.view(-1).tolist() == [False, True, True, False, False, True]  # p <= 0.7


def test_ohem_min_kept_raises_the_threshold():
    p = [0.9, 0.2, 0.65, 0.95, 0.71, 0.1]
    logits, target = two_class_logits(p), torch.zeros(1, 1, 6, dtype=torch.long)
    keep = ohem_mask(logits, target, 255, thresh=0.7, min_kept=5)
    # 5 smallest: 0.1, 0.2, 0.65, 0.71, 0.9 -> threshold 0.9
    assert keep.view(-1).tolist() == [True, True, True, False, True, True]
    keep_all = ohem_mask(logits, target, 255, thresh=0.7, min_kept=100)  # fewer valid pixels than min_kept
    assert keep_all.all()


def test_ohem_ignores_void_pixels():
    p = [0.1, 0.2, 0.3, 0.4]
    logits = two_class_logits(p)
    target = torch.tensor([[[0, 255, 0, 255]]])
    keep = ohem_mask(logits, target, 255, thresh=0.05, min_kept=1)
    assert keep.view(-1).tolist() == [True, False, False, False]


def test_total_is_main_plus_weighted_aux_and_ohem_only_on_main():
    g = torch.Generator().manual_seed(1)
    out, aux = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 4, 4), generator=g)
    losses = SegmentationLoss(aux_weight=0.4)({"out": out, "aux": aux}, target)
    assert losses["main"].item() == pytest.approx(reference_ce(out, target), rel=1e-5)
    assert losses["aux"].item() == pytest.approx(reference_ce(aux, target), rel=1e-5)
    assert losses["loss"].item() == pytest.approx(losses["main"].item() + 0.4 * losses["aux"].item(), rel=1e-6)
    assert set(SegmentationLoss()({"out": out}, target)) == {"loss", "main"}  # model without aux head

    ohem = SegmentationLoss(aux_weight=0.4, ohem_thresh=0.5, ohem_min_kept=4)({"out": out, "aux": aux}, target)
    kept = target.masked_fill(~ohem_mask(out, target, 255, 0.5, 4), 255)
    assert ohem["main"].item() == pytest.approx(reference_ce(out, kept), rel=1e-5)
    assert ohem["aux"].item() == pytest.approx(losses["aux"].item(), rel=1e-6)


def test_build_criterion_reads_config_and_rejects_bad_weights():
    crit = build_criterion(
        {"aux_weight": 0.3, "class_weights": [1, 2, 3], "ohem": {"enabled": True, "thresh": 0.6, "min_kept": 10}},
        num_classes=3,
    )
    assert crit.aux_weight == 0.3 and crit.ohem_thresh == 0.6 and crit.ohem_min_kept == 10
    assert crit.class_weights.tolist() == [1.0, 2.0, 3.0]
    assert build_criterion({"ohem": {"enabled": False}}, num_classes=3).ohem_thresh is None
    with pytest.raises(ValueError, match="2 entries, the dataset has 3 classes"):
        build_criterion({"class_weights": [1, 2]}, num_classes=3)
    with pytest.raises(ValueError, match="ohem.thresh"):
        build_criterion({"ohem": {"enabled": True, "thresh": 1.5}}, num_classes=3)
