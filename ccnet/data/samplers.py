"""An infinite, distributed, resumable training sampler for iteration-based training.

It walks one global stream of indices, the concatenation of per-epoch permutations drawn from
``(seed, epoch)``; rank ``r`` of ``W`` takes positions ``r, r + W, r + 2W, ...``. Its state is
``(epoch, position)``, shared by all ranks; with ``yield_seeds`` each index comes with an augmentation seed
of ``(seed, position)`` for :class:`SeededDataset`. Why: docs/design.md, "Decisions".
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ccnet.data.base import SegmentationData
from ccnet.data.build import reseed_dataset


class InfiniteSampler(Sampler[int]):
    """Yield dataset indices forever, in the order of the global stream.

    Args:
        dataset_size: number of samples in the dataset (> 0).
        rank: this process's rank.
        world_size: number of processes sharing the stream.
        seed: seed of the per-epoch permutations; must be equal on every rank.
        shuffle: permute each epoch (False: 0, 1, 2, ... every epoch).
        start: global stream position to start from (samples already consumed by all ranks).
        yield_seeds: yield ``(index, sample_seed)`` pairs for :class:`SeededDataset`.

    Raises:
        ValueError: an empty dataset or a rank outside ``[0, world_size)``.
    """

    def __init__(
        self,
        dataset_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        start: int = 0,
        yield_seeds: bool = False,
    ) -> None:
        if dataset_size <= 0:
            raise ValueError(f"InfiniteSampler needs a non-empty dataset, got {dataset_size} samples")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        self.dataset_size = dataset_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.start = start
        self.yield_seeds = yield_seeds

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of epoch ``epoch``: a function of ``(seed, epoch)`` only."""
        if not self.shuffle:
            return torch.arange(self.dataset_size)
        g = torch.Generator()
        # Large odd multiplier keeps (seed, epoch) pairs from colliding for small seeds and epochs.
        g.manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.dataset_size, generator=g)

    def sample_seed(self, position: int) -> int:
        """Augmentation seed of the sample at global stream ``position`` (well mixed, 32 bits)."""
        return int(np.random.SeedSequence([self.seed, position]).generate_state(1)[0])

    def __iter__(self) -> Iterator[Any]:  # index, or (index, seed) with yield_seeds
        pos = self.start + self.rank
        epoch, perm = -1, torch.empty(0, dtype=torch.int64)
        while True:
            e, i = divmod(pos, self.dataset_size)
            if e != epoch:
                epoch, perm = e, self.permutation(e)
            yield (int(perm[i]), self.sample_seed(pos)) if self.yield_seeds else int(perm[i])
            pos += self.world_size

    def __len__(self) -> int:
        # The stream is infinite; a DataLoader only asks for a length when it needs one for
        # progress, and one epoch of this rank's share is the meaningful answer.
        return -(-self.dataset_size // self.world_size)

    def state_at(self, consumed: int) -> Dict[str, int]:
        """The resumable state after this sampler's ranks together consumed ``consumed`` samples from its ``start``.

        Returns:
            ``{"epoch", "position", "seed", "dataset_size"}``; ``position`` is within the epoch.
        """
        epoch, position = divmod(self.start + consumed, self.dataset_size)
        return {"epoch": epoch, "position": position, "seed": self.seed, "dataset_size": self.dataset_size}

    @staticmethod
    def start_from_state(state: Dict[str, int], dataset_size: int, seed: int) -> int:
        """The global start position stored in ``state`` (see :meth:`state_at`).

        Raises:
            ValueError: the checkpoint was written for another dataset size or seed.
        """
        if int(state["dataset_size"]) != dataset_size or int(state["seed"]) != seed:
            raise ValueError(
                f"cannot resume the sample order: the checkpoint's sampler used dataset_size="
                f"{state['dataset_size']}, seed={state['seed']}, this run has dataset_size={dataset_size}, "
                f"seed={seed}. Resume with the same dataset and train.seed, or start a new run with "
                "load_from=PATH (weights only)."
            )
        return int(state["epoch"]) * dataset_size + int(state["position"])


class SeededDataset(Dataset):
    """Items requested as ``(index, seed)`` (``InfiniteSampler(yield_seeds=True)``): the wrapped dataset's
    augmentation streams restart from ``seed`` (:func:`ccnet.data.reseed_dataset`) before ``dataset[index]``
    is read; datasets without ``reseed`` are read unchanged.
    """

    def __init__(self, dataset: SegmentationData) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: Tuple[int, int]) -> Any:
        index, seed = item
        reseed_dataset(self.dataset, seed)
        return self.dataset[index]
