"""The run-long training loader: the same batches as a loader per epoch, its workers started once,
and the dataset's per-epoch state followed inside the workers."""

import os

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from xmodal.engine.dist import ResumableSampler
from xmodal.engine.loader import EpochBatches, training_loader


class Probe(Dataset):
    """Rows: (index, epoch the dataset copy was set to, process id)."""

    def __init__(self, n: int):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([i, self.epoch, os.getpid()])


def _per_epoch_loaders(n, bs, per_epoch, epoch, start, drop_last, epochs):
    """What the engine did before: a new DataLoader per epoch, `per_epoch` batches taken from each."""
    sampler, out = ResumableSampler(n, seed=3), []
    for e in range(epoch, epoch + epochs):
        sampler.set_epoch(e, start if e == epoch else 0)
        batches = iter(DataLoader(range(n), batch_size=bs, sampler=sampler, drop_last=drop_last))
        out += [(e, b.tolist()) for _, b in zip(range(per_epoch - (start // bs if e == epoch else 0)), batches)]
    return out


@pytest.mark.parametrize(("n", "bs", "per_epoch", "epoch", "start", "drop_last"),
                         [(10, 3, 4, 0, 0, False),  # last batch of an epoch is short
                          (10, 3, 3, 0, 0, True),  # drop_last
                          (12, 3, 2, 0, 0, False),  # grad-accum: batches beyond per_epoch are not taken
                          (10, 3, 4, 2, 6, False)])  # resumed in epoch 2 after 2 batches
def test_batches_match_a_loader_per_epoch(n, bs, per_epoch, epoch, start, drop_last):
    want = _per_epoch_loaders(n, bs, per_epoch, epoch, start, drop_last, epochs=3)
    sampler = ResumableSampler(n, seed=3)
    got = []
    for batch in EpochBatches(sampler, bs, per_epoch, epoch=epoch, start=start, drop_last=drop_last):
        es = {e for e, _ in batch}
        assert len(es) == 1  # never two epochs in one batch
        got.append((es.pop(), [i for _, i in batch]))
        if len(got) == len(want):
            break
    assert got == want
    assert sampler.epoch == 0  # the engine's own sampler is left alone


def test_workers_start_once_and_follow_the_epochs():
    ds = Probe(8)
    ds.set_epoch(1)  # the training loop sets the first epoch before the loader starts
    loader = training_loader(ds, ResumableSampler(8, seed=0), batch_size=4, per_epoch=2, epoch=1, start=0,
                             drop_last=False, num_workers=1)  # fmt: skip
    it = iter(loader)
    rows = torch.cat([next(it) for _ in range(6)])  # epochs 1, 2, 3
    del it
    assert len(set(rows[:, 2].tolist())) == 1 and int(rows[0, 2]) != os.getpid()  # one worker process throughout
    assert rows[:, 1].tolist() == [1] * 8 + [2] * 8 + [3] * 8  # its dataset copy followed the epochs
    for e in range(3):
        assert sorted(rows[8 * e : 8 * (e + 1), 0].tolist()) == list(range(8))  # each epoch: every index once
