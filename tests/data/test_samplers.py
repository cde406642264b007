"""InfiniteSampler: per-epoch permutations from (seed, epoch), interleaved rank shards, exact resume."""

from __future__ import annotations

import itertools

import pytest
import torch

from ccnet.data.samplers import InfiniteSampler, SeededDataset


def take(sampler: InfiniteSampler, n: int) -> list:
    return list(itertools.islice(iter(sampler), n))


def test_stream_is_concatenated_epoch_permutations():
    n = 7
    stream = take(InfiniteSampler(n, seed=3), 3 * n)
    for epoch in range(3):
        chunk = stream[epoch * n : (epoch + 1) * n]
        assert sorted(chunk) == list(range(n))  # every sample once per epoch
        g = torch.Generator().manual_seed(3 * 1_000_003 + epoch)
        assert chunk == torch.randperm(n, generator=g).tolist()
    assert stream[:n] != stream[n : 2 * n]  # reshuffled every epoch


def test_unshuffled_order():
    assert take(InfiniteSampler(4, shuffle=False), 6) == [0, 1, 2, 3, 0, 1]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_partition_global_batches(world):
    # Step t of W ranks with batch b uses exactly the samples of step t of one process with batch W*b,
    # also across epoch ends (dataset size not divisible by W*b).
    n, b, steps = 10, 2, 7
    single = take(InfiniteSampler(n, seed=1), steps * world * b)
    shards = [take(InfiniteSampler(n, rank=r, world_size=world, seed=1), steps * b) for r in range(world)]
    for t in range(steps):
        union = sorted(i for shard in shards for i in shard[t * b : (t + 1) * b])
        assert union == sorted(single[t * world * b : (t + 1) * world * b])


def test_resume_from_state_continues_the_stream():
    n, consumed = 9, 23
    full = take(InfiniteSampler(n, seed=5), 40)
    state = InfiniteSampler(n, seed=5).state_at(consumed)
    assert state == {"epoch": 2, "position": 5, "seed": 5, "dataset_size": 9}
    start = InfiniteSampler.start_from_state(state, n, seed=5)
    assert take(InfiniteSampler(n, seed=5, start=start), 40 - consumed) == full[consumed:]


def test_resume_rejects_other_dataset_or_seed():
    state = InfiniteSampler(9, seed=5).state_at(3)
    with pytest.raises(ValueError, match="dataset_size=9, seed=5"):
        InfiniteSampler.start_from_state(state, 10, seed=5)
    with pytest.raises(ValueError, match="train.seed"):
        InfiniteSampler.start_from_state(state, 9, seed=6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="non-empty"):
        InfiniteSampler(0)
    with pytest.raises(ValueError, match="rank 2"):
        InfiniteSampler(5, rank=2, world_size=2)


class _Recording(torch.utils.data.Dataset):
    """Returns the seed it was last reseeded with, to check what SeededDataset passes."""

    def __init__(self):
        self.seed = None

    def __len__(self):
        return 5

    def reseed(self, seed):
        self.seed = seed

    def __getitem__(self, index):
        return index, self.seed


def test_sample_seeds_depend_on_stream_position_only():
    pairs = take(InfiniteSampler(5, seed=2, yield_seeds=True), 12)
    seeds = [s for _, s in pairs]
    assert len(set(seeds)) == 12  # a fresh augmentation stream per sample, also for repeated indices
    rank1 = take(InfiniteSampler(5, rank=1, world_size=2, seed=2, yield_seeds=True), 6)
    assert rank1 == pairs[1::2]  # same (index, seed) at the same global position
    dataset = SeededDataset(_Recording())
    assert [dataset[p] for p in pairs[:3]] == pairs[:3]


def test_state_of_a_resumed_sampler_counts_from_its_start():
    n = 9
    resumed = InfiniteSampler(n, seed=5, start=8)
    assert resumed.state_at(16) == InfiniteSampler(n, seed=5).state_at(24)


def test_augmented_batches_do_not_depend_on_workers_or_interruption(configs_dir, tmp_path):
    """A real augmenting pipeline (folder dataset: rescale, crop, flip, photometric) read through
    InfiniteSampler + SeededDataset gives the same batches with 0 or 2 workers, and a loader started
    mid-stream (a resumed run) continues with the same augmented samples."""
    import numpy as np
    from hydra import compose, initialize_config_dir
    from PIL import Image

    from ccnet.data import build_dataset

    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(rng.integers(0, 2, (40, 48), dtype=np.uint8)).save(tmp_path / "masks" / f"{i}.png")
    with initialize_config_dir(config_dir=str(configs_dir), version_base="1.3"):
        cfg = compose("train", overrides=["dataset=folder", f"dataset.root={tmp_path}", "dataset.crop_size=[24,24]"])
    dataset = SeededDataset(build_dataset(cfg.dataset, "train"))

    def batches(num_workers, start=0, count=6):
        sampler = InfiniteSampler(len(dataset), seed=7, start=start, yield_seeds=True)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=2, sampler=sampler, num_workers=num_workers, generator=torch.Generator().manual_seed(0)
        )
        return [b for b, _ in zip(loader, range(count))]

    plain = batches(0)
    for a, b in zip(plain, batches(2)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for a, b in zip(plain[2:], batches(0, start=4, count=4)):  # resumed after 2 batches of 2
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Two epochs were read: every image appears twice, augmented differently each time.
    order = [i for i, _ in take(InfiniteSampler(len(dataset), seed=7, yield_seeds=True), 12)]
    images = torch.cat([b[0] for b in plain])
    first, second = order.index(order[0]), order.index(order[0], 1)
    assert not torch.equal(images[first], images[second])
