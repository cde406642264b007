"""SegMetric against confusion matrices and scores worked out by hand / by pixel loops."""

from __future__ import annotations

import math

import pytest
import torch

from ccnet.evaluation import SegMetric

# 3 classes, ignore 255; the 7 is a "void" prediction outside [0, 3).
TARGET = torch.tensor([[0, 0, 1, 1], [2, 255, 0, 1]])
PRED = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 7]])
# Valid (target, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,0) (0,0) (1,void); the (255, 2) pixel is ignored.
EXPECTED_MATRIX = torch.tensor(
    [
        [2, 1, 0, 0],  # gt 0: 2 right, 1 -> class 1
        [0, 2, 0, 1],  # gt 1: 2 right, 1 void prediction
        [1, 0, 0, 0],  # gt 2: predicted as 0
    ]
)


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8])  # general and 8-bit code paths
def test_hand_computed_matrix_and_scores(dtype):
    metric = SegMetric(3)
    metric.update(PRED.to(dtype), TARGET.to(dtype))
    assert torch.equal(metric.matrix, EXPECTED_MATRIX)
    r = metric.compute()
    # class 0: tp 2, fn 1, fp 1 (the gt-2 pixel) -> 2/4; class 1: tp 2, fn 1 (void), fp 1 -> 2/4;
    # class 2: tp 0, fn 1, fp 0 (its only prediction is on an ignored pixel) -> 0.
    assert r["IoU"] == pytest.approx([0.5, 0.5, 0.0])
    assert r["Acc"] == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert r["mIoU"] == pytest.approx(1 / 3)
    assert r["mAcc"] == pytest.approx(4 / 9)
    assert r["aAcc"] == pytest.approx(4 / 7)
    assert all(isinstance(r[k], float) for k in ("mIoU", "mAcc", "aAcc"))


def test_absent_classes_are_nan_and_excluded_from_means():
    # 5 classes: class 3 only predicted (never in gt) -> IoU 0, Acc NaN; class 4 nowhere -> NaN, NaN.
    target = torch.tensor([0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 3, 1, 1, 2, 4])  # the 4 sits on an ignored pixel: still absent
    metric = SegMetric(5)
    metric.update(pred, target)
    r = metric.compute()
    iou = r["IoU"]
    assert iou[:4] == pytest.approx([0.5, 1.0, 1.0, 0.0]) and math.isnan(iou[4])
    acc = r["Acc"]
    assert acc[:3] == pytest.approx([0.5, 1.0, 1.0]) and math.isnan(acc[3]) and math.isnan(acc[4])
    assert r["mIoU"] == pytest.approx(2.5 / 4)
    assert r["mAcc"] == pytest.approx(2.5 / 3)


def test_empty_metric_is_nan():
    r = SegMetric(2).compute()
    assert math.isnan(r["mIoU"]) and math.isnan(r["aAcc"]) and all(math.isnan(v) for v in r["IoU"])


def _loop_reference(preds, targets, k, ignore):
    """Per-class tp/fp/fn by visiting every pixel; void predictions are a false positive for nobody."""
    tp, fp, fn = [0] * k, [0] * k, [0] * k
    for p_img, t_img in zip(preds, targets):
        for p, t in zip(p_img.flatten().tolist(), t_img.flatten().tolist()):
            if t == ignore:
                continue
            if p == t:
                tp[t] += 1
            else:
                fn[t] += 1
                if 0 <= p < k:
                    fp[p] += 1
    iou = [tp[c] / (tp[c] + fp[c] + fn[c]) if tp[c] + fp[c] + fn[c] else math.nan for c in range(k)]
    valid = [v for v in iou if not math.isnan(v)]
    return iou, sum(valid) / len(valid)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_batches_and_accumulation_match_pixel_loop(dtype):
    g = torch.Generator().manual_seed(0)
    k = 6
    targets = torch.randint(0, k, (3, 2, 9, 11), generator=g)
    targets[torch.rand(targets.shape, generator=g) < 0.2] = 255
    targets[targets == 5] = 4  # class 5 never in gt...
    preds = torch.randint(0, k + 2, (3, 2, 9, 11), generator=g)  # ... but predicted; k, k+1 are void
    metric = SegMetric(k)
    for p, t in zip(preds, targets):  # (B, H, W) batches
        metric.update(p.to(dtype), t.to(dtype))
    iou, miou = _loop_reference(preds.reshape(-1, 9, 11), targets.reshape(-1, 9, 11), k, 255)
    r = metric.compute()
    assert r["IoU"] == pytest.approx(iou, nan_ok=True)
    assert r["mIoU"] == pytest.approx(miou)
    single = SegMetric(k)
    for p, t in zip(preds.reshape(-1, 9, 11), targets.reshape(-1, 9, 11)):  # (H, W) images
        single.update(p, t)
    assert torch.equal(single.matrix, metric.matrix)


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8])
def test_reset_and_custom_ignore_index(dtype):
    metric = SegMetric(3, ignore_index=0)
    metric.update(torch.tensor([1, 2, 2], dtype=dtype), torch.tensor([0, 2, 1], dtype=dtype))
    assert metric.matrix.tolist() == [[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]]
    metric.reset()
    assert int(metric.matrix.sum()) == 0


def test_rejects_logits_bad_shapes_and_bad_labels():
    metric = SegMetric(3)
    with pytest.raises(TypeError, match="argmax"):
        metric.update(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="shapes differ"):
        metric.update(torch.zeros(2, 4, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[7\].*label encoding"):
        metric.update(torch.zeros(3, dtype=torch.long), torch.tensor([0, 7, 255]))


@pytest.mark.parametrize(
    "bad, dtype", [(3, torch.int64), (4, torch.int64), (-1, torch.int64), (3, torch.uint8), (254, torch.uint8)]
)
def test_targets_just_outside_the_class_range_are_errors_not_ignored(bad, dtype):
    metric = SegMetric(3)
    with pytest.raises(ValueError, match=rf"\[{bad}\]"):
        metric.update(torch.zeros(3, dtype=dtype), torch.tensor([0, bad, 255]).to(dtype))
    assert int(metric.matrix.sum()) == 0


def test_update_leaves_inputs_untouched():
    target = torch.tensor([0, 255, 1], dtype=torch.int32)
    pred = torch.tensor([5, 1, -2], dtype=torch.int32)
    metric = SegMetric(3)
    metric.update(pred, target)
    assert target.tolist() == [0, 255, 1] and pred.tolist() == [5, 1, -2]
    assert metric.matrix.tolist() == [[0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]]  # both void predictions
