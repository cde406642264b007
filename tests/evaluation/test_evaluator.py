"""evaluate(): every sample exactly once, shards merged exactly, 2 gloo processes == 1 process."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

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
    result = evaluate(model, ds, CFG, "cpu", progress=False,
                      on_prediction=lambda i, img, lbl, pred: seen.append((i, img.shape, lbl, pred)))
    assert model.training  # restored
    ref = SegMetric(4)
    for (_, label), pred in zip(ds.items, ds.preds):
        ref.update(pred, label)
    assert result == {"num_images": 7, **ref.compute()}
    assert [s[0] for s in seen] == list(range(7))
    for i, shape, lbl, pred in seen:  # callback gets the dataset's tensors and the (H, W) prediction
        assert shape == ds.items[i][0].shape and torch.equal(lbl, ds.items[i][1])
        assert pred.dtype == torch.int64 and torch.equal(pred, ds.preds[i])


def test_unlabelled_split_gives_predictions_only():
    ds = PairDataset(has_labels=False, n=3)
    preds = {}
    result = evaluate(EchoModel(4), ds, CFG, "cpu", progress=False,
                      on_prediction=lambda i, img, lbl, pred: preds.__setitem__(i, pred))
    assert result == {"num_images": 3}
    assert all(torch.equal(preds[i], ds.preds[i]) for i in range(3))


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        seen = []
        result = evaluate(EchoModel(4), PairDataset(), CFG, "cpu", progress=False,
                          on_prediction=lambda i, *_: seen.append(i))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"result": result, "seen": seen}, f)
    finally:
        torch_dist.destroy_process_group()


def test_two_gloo_processes_equal_single_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    single = evaluate(EchoModel(4), PairDataset(), CFG, "cpu", progress=False)
    expected = json.loads(json.dumps(single))  # same float round trip as the workers' results
    assert not any(math.isnan(v) for v in expected["IoU"])  # NaN != NaN would break the comparison
    assert ranks[0]["result"] == expected and ranks[1]["result"] == expected
    assert ranks[0]["seen"] == [0, 2, 4, 6] and ranks[1]["seen"] == [1, 3, 5]
