"""What a data source hands the engine: datasets per split plus facts the method needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate


@dataclass
class DataInfo:
    num_classes: int = 0
    multilabel: bool = False
    class_names: list[str] = field(default_factory=list)
    # free facts: input dims per modality, verb/noun maps, store paths, ...
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataBundle:
    train: Dataset
    info: DataInfo
    val: Dataset | None = None
    test: Dataset | None = None
    collate: Callable | None = None
    # further datasets a method may use (e.g. "pool": unlabelled paired clips for KD)
    extra: dict[str, Dataset] = field(default_factory=dict)

    def split(self, name: str) -> Dataset | None:
        if name in ("train", "val", "test"):
            return getattr(self, name)
        return self.extra.get(name)


class DictDataset(Dataset):
    """Rows of equally long tensors/lists, returned as dicts (in-memory data, features)."""

    def __init__(self, **columns: Any):
        lengths = {k: len(v) for k, v in columns.items()}
        assert len(set(lengths.values())) == 1, f"column lengths differ: {lengths}"
        self.columns = columns
        self.n = next(iter(lengths.values())) if lengths else 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.columns.items()}

    def __getitems__(self, idx: list[int]) -> dict:
        # One indexing op per column instead of per sample: the loader gets a ready batch.
        index = torch.as_tensor(idx, dtype=torch.long)
        out = {}
        for k, v in self.columns.items():
            out[k] = v[index] if isinstance(v, torch.Tensor) else [v[i] for i in idx]
        return out


def balanced_weights(label_lists: list[list[int]], num_classes: int) -> torch.Tensor:
    """CAV-MAE's balanced-sampler weights: class weight 1000 / (count + 0.01) over these samples;
    a sample's weight is the sum over its labels (unlabelled samples get the smallest weight)."""
    counts = torch.zeros(num_classes, dtype=torch.double)
    for labels in label_lists:
        for c in labels:
            counts[c] += 1
    cw = 1000.0 / (counts + 0.01)
    w = torch.tensor([float(cw[list(labels)].sum()) if labels else 0.0 for labels in label_lists], dtype=torch.double)
    if bool((w == 0).any()):
        w[w == 0] = float(w[w > 0].min()) if bool((w > 0).any()) else 1.0
    return w


def collate(batch):
    """Default collate that passes already-batched dicts (from `__getitems__`) through."""
    if isinstance(batch, dict):
        return batch
    return default_collate(batch)
