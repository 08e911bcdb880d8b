"""Training samplers: each rank's share of an epoch in a seeded order, checkpointed with the loop (epoch and
position) so a resumed run sees the rest of the epoch in the same order."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

# Samples sorted together, in batches: wide enough to find similar lengths, narrow enough that the
# epoch's order stays random at larger scale.
MEGA_BATCHES = 64


class EpochSampler(StatefulDistributedSampler):
    """Also checkpoints its epoch: Lightning creates a resumed loader's iterator before it sets the
    epoch, and the epoch seeds the shuffle."""

    def state_dict(self) -> dict:
        return {**super().state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        """Resumes mid-epoch at the saved position. A state saved on an epoch's last batch has yielded the
        whole epoch: what comes next is the next epoch from its start. torchdata would skip that whole epoch
        too (it leaves the count in this sampler, which every iterator shares), and a loader with workers
        starts drawing indices before Lightning sets the epoch."""
        if state[self._YIELDED] < self.num_samples:
            super().load_state_dict(state)
            self.set_epoch(state["epoch"])
        else:
            self.set_epoch(state["epoch"] + 1)


def grouped_order(lengths: np.ndarray, batch_size: int, world: int, rank: int, seed: int,
                  mega_batches: int = MEGA_BATCHES) -> np.ndarray:
    """One rank's indices for an epoch, batch after batch, with samples of similar length in a batch.

    The epoch is shuffled (generator seeded with `seed`), padded by repeating its start to a multiple of
    the ranks as DistributedSampler pads, and cut into mega-batches of `mega_batches` x `batch_size`
    samples; each is sorted by length and split into batches, and the batches are shuffled. Each rank
    takes every `world`-th batch, so all ranks get the same number of batches of the same size; what is
    left (fewer than a batch a rank) becomes each rank's last, smaller batch, also sorted."""
    g = torch.Generator().manual_seed(seed)
    per_rank = math.ceil(len(lengths) / world)
    order = np.resize(torch.randperm(len(lengths), generator=g).numpy(), per_rank * world)
    full = per_rank // batch_size * batch_size * world
    head, tail = order[:full], order[full:]
    size = mega_batches * batch_size
    mega = [chunk[np.argsort(lengths[chunk], kind="stable")] for chunk in np.split(head, range(size, full, size))]
    batches = np.concatenate(mega).reshape(-1, batch_size)
    batches = batches[torch.randperm(len(batches), generator=g).numpy()]
    rest = len(tail) // world
    tail = tail[np.argsort(lengths[tail], kind="stable")]
    return np.concatenate([batches[rank::world].ravel(), tail[rank * rest:(rank + 1) * rest]])


class _GroupedOrder(DistributedSampler):
    """The order `StatefulDistributedSampler.__iter__` resumes in: it sits between that class and
    DistributedSampler in `LengthGroupedSampler`'s MRO, so the resume logic is torchdata's own."""

    def __iter__(self):
        order = grouped_order(self.lengths, self.batch_size, self.num_replicas, self.rank, self.seed + self.epoch)
        return iter(order.tolist())


class LengthGroupedSampler(EpochSampler, _GroupedOrder):
    """EpochSampler whose order forms batches of similar length (`grouped_order`), so a batch pads to
    little more than its own samples. The DataLoader must use the same `batch_size` (it cuts the stream)."""

    def __init__(self, dataset: Dataset, lengths: np.ndarray, batch_size: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0) -> None:
        super().__init__(dataset, num_replicas, rank, shuffle=True, seed=seed)
        self.lengths, self.batch_size = np.asarray(lengths), batch_size
