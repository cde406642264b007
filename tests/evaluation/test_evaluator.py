"""evaluate(): every sample exactly once, metrics of the chosen predictions, unlabelled splits.
(2 processes == 1 process: tests/tools/test_eval_cli.py, through torchrun.)"""

from __future__ import annotations

import pytest
import torch

from ccnet.evaluation import SegMetric, evaluate, shard_indices
from tests.evaluation.helpers import EchoModel, PairDataset

CFG = {"mode": "whole", "num_workers": 0}


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_partition_the_dataset(world):
    shards = [list(shard_indices(7, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(7))


def test_metrics_equal_metric_over_chosen_predictions_and_mode_restored():
    ds = PairDataset()
    model = EchoModel(4).train()
    seen = []
    result = evaluate(
        model,
        ds,
        CFG,
        "cpu",
        progress=False,
        on_prediction=lambda i, img, lbl, pred: seen.append((i, img.shape, lbl, pred)),
    )
    assert model.training  # restored
    ref = SegMetric(4)
    for (_, label), pred in zip(ds.items, ds.preds):
        ref.update(pred, label)
    assert torch.equal(torch.from_numpy(result.pop("confusion")), ref.matrix[:, :4])  # (K, K): no void column
    assert result == {"num_images": 7, **ref.compute()}
    assert [s[0] for s in seen] == list(range(7))
    for i, shape, lbl, pred in seen:  # callback gets the dataset's tensors and the (H, W) prediction
        assert shape == ds.items[i][0].shape and torch.equal(lbl, ds.items[i][1])
        assert pred.dtype == torch.int64 and torch.equal(pred, ds.preds[i])


def test_unlabelled_split_gives_predictions_only():
    ds = PairDataset(has_labels=False, n=3)
    preds = {}
    result = evaluate(
        EchoModel(4), ds, CFG, "cpu", progress=False, on_prediction=lambda i, img, lbl, pred: preds.__setitem__(i, pred)
    )
    assert result == {"num_images": 3}
    assert all(torch.equal(preds[i], ds.preds[i]) for i in range(3))
