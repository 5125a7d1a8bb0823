"""One training loader for the whole run: its worker processes start once, not once per epoch.

A DataLoader made per epoch restarts its workers at every epoch: on the embedded recipes (epochs
of 10-20 steps of a few milliseconds) that restart was most of the measured data wait. Here the
batch sampler runs through the epochs one after another and tags every index with its epoch;
the dataset wrapper calls the dataset's own `set_epoch` when the epoch of the batches it gets
changes, so per-epoch state (augmentation drawn per (seed, epoch, index), the labelled/pool
pairing) follows the epochs in the worker processes too. Batches never straddle two epochs, and
each epoch yields exactly the batches the training loop takes from it, so a run gives the same
batches as a loader per epoch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset

from xmodal.engine.dist import ResumableSampler


class EpochBatches:
    """Batches of (epoch, index) from `epoch` (skipping its first `start` indices) onwards, endlessly:
    `per_epoch` batches of `batch_size` per epoch (fewer when the epoch runs out first)."""

    def __init__(self, sampler: ResumableSampler, batch_size: int, per_epoch: int, *, epoch: int = 0, start: int = 0,
                 drop_last: bool = False):  # fmt: skip
        self.sampler = copy.copy(sampler)  # its own epoch state: the training loop sets the original's
        self.batch_size, self.per_epoch, self.drop_last = batch_size, per_epoch, drop_last
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, start, bs = self.epoch, self.start, self.batch_size
        while True:
            self.sampler.set_epoch(epoch, start)
            idx = list(self.sampler)
            for b in range(self.per_epoch - start // bs):
                chunk = idx[b * bs : (b + 1) * bs]
                if not chunk or (self.drop_last and len(chunk) < bs):
                    break
                yield [(epoch, i) for i in chunk]
            epoch, start = epoch + 1, 0


class EpochTagged(Dataset):
    """`dataset` read with (epoch, index) pairs; calls its `set_epoch` when the epoch changes."""

    def __init__(self, dataset: Dataset, epoch: int):
        self.dataset = dataset
        self.epoch = epoch  # the epoch the dataset was last set to (by the training loop, before the workers forked)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, pairs: list[tuple[int, int]]):
        epoch = pairs[0][0]
        if epoch != self.epoch:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            self.epoch = epoch
        idx = [i for _, i in pairs]
        get = getattr(self.dataset, "__getitems__", None)
        return get(idx) if get is not None else [self.dataset[i] for i in idx]


def training_loader(dataset: Dataset, sampler: ResumableSampler, *, batch_size: int, per_epoch: int, epoch: int,
                    start: int, drop_last: bool, **loader_kw) -> torch.utils.data.DataLoader:  # fmt: skip
    """The run's training DataLoader from `epoch` / `start` on (see the module docstring)."""
    return torch.utils.data.DataLoader(
        EpochTagged(dataset, epoch),
        batch_sampler=EpochBatches(sampler, batch_size, per_epoch, epoch=epoch, start=start, drop_last=drop_last),
        **loader_kw,
    )
