"""Batches of labelled clips plus unlabelled paired clips: the cross-modal KD setting.

A student that sees few labelled clips learns little from a teacher on those clips alone; the
gain comes from a pool of *unlabelled paired clips* on which the teacher (seeing its own modality,
e.g. the audio) gives soft targets to the student (seeing the video) — EMBEDDED-DATA.md,
"Distillation". `LabelledPoolDataset` makes every batch of B indices into 2B rows: the B pool
clips of those indices (label -1: their labels are hidden) followed by B labelled clips, drawn
without replacement from a per-epoch permutation of the labelled set (cycled when the pool is
larger). One epoch = one pass over the pool. Row key "labelled" (bool) tells them apart.

Works over any map-style datasets whose ``__getitems__`` returns a batched dict (avdigits, the
prepared-store datasets) or whose items are dicts (collated here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from xmodal.errors import DataError

# Keys that carry a label: hidden on pool rows (the teacher's own-modality label included).
LABEL_KEYS = ("label", "audio_label")


def fetch(ds: Dataset, idx: Sequence[int]) -> dict:
    """A batched dict of rows `idx` of `ds` (its ``__getitems__`` when it has one)."""
    get = getattr(ds, "__getitems__", None)
    if get is not None:
        return get(list(idx))
    from xmodal.data.bundle import collate

    return collate([ds[i] for i in idx])


def fetch_joined(parts: Sequence[tuple[Dataset, list[int]]]) -> dict:
    """The rows `idx` of each dataset as one batch, in order: through the datasets' shared
    ``join_rows`` when they have one (one gather per key, no second copy), else fetched and
    concatenated."""
    joins = {getattr(type(ds), "join_rows", None) for ds, _ in parts}
    if len(joins) == 1 and None not in joins:
        return joins.pop()(list(parts))
    return concat_batches([fetch(ds, idx) for ds, idx in parts])


def concat_batches(parts: Sequence[dict]) -> dict:
    """Row-wise concatenation of batched dicts with the same keys (tensors on dim 0, lists joined)."""
    keys = set(parts[0])
    for p in parts[1:]:
        if set(p) != keys:
            raise DataError(f"labelled and pool batches differ in keys: {sorted(keys ^ set(p))}")
    out: dict[str, Any] = {}
    for k in parts[0]:
        vals = [p[k] for p in parts]
        if isinstance(vals[0], torch.Tensor):
            out[k] = torch.cat(vals, 0)
        else:
            out[k] = [x for v in vals for x in v]
    return out


class LabelledPoolDataset(Dataset):
    """Index i -> pool clip i plus one labelled clip; a batch of B indices gives 2B rows."""

    def __init__(self, labelled: Dataset, pool: Dataset, *, seed: int = 0, hide_labels: Sequence[str] = LABEL_KEYS):
        if len(labelled) == 0:
            raise DataError("labelled + pool data: the labelled set is empty")
        if len(pool) == 0:
            raise DataError("labelled + pool data: the pool is empty (set n_pool > 0 or train on the labelled split)")
        self.labelled, self.pool = labelled, pool
        self.seed = seed
        self.hide = tuple(hide_labels)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch, 7])
        n, m = len(self.labelled), len(self.pool)
        reps = -(-m // n)
        # each labelled clip appears once per pass over it; a pass never repeats a clip
        self._order = np.concatenate([rng.permutation(n) for _ in range(reps)])[:m]

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, i: int) -> dict:
        b = self.__getitems__([i])
        return b  # a 2-row batch; use a DataLoader with this dataset's own batching

    def __getitems__(self, idx: list[int]) -> dict:
        n = len(idx)
        batch = fetch_joined([(self.pool, idx), (self.labelled, [int(self._order[i]) for i in idx])])
        for k in self.hide:
            if k in batch and isinstance(batch[k], torch.Tensor):
                batch[k][:n] = -1  # fresh tensors (gathered or concatenated): safe to write
        batch["labelled"] = torch.arange(2 * n) >= n
        return batch
