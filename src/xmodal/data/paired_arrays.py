"""`paired_arrays`: paired modalities given as one array file per batch key (your own features).

For the MFH diagnostic on your own data when each modality is already a tensor per sample, e.g.
pre-extracted audio maps and face images, or embeddings of two encoders:

    data:
      name: paired_arrays
      files: {audio: feats/audio.npy, image: feats/image.npy}   # batch key -> [N, ...] array
      labels: {label: feats/label.npy}                          # label key -> [N] int array
      split: feats/split.npy                                    # [N] strings (train/pool/test/...)

Row i of every file is the same sample. `.npy`, `.npz` (first array) and `.safetensors` (first
tensor) are read. Without `split`, rows are split at random by `fractions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from xmodal.data.bundle import DataBundle, DataInfo, DictDataset
from xmodal.errors import ConfigError, DataError
from xmodal.registry import register_dataset


@dataclass
class PairedArraysConfig:
    name: str = "paired_arrays"
    files: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    split: str = ""
    fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.1, "pool": 0.6, "test": 0.3})
    num_classes: int = 0  # 0 = 1 + the largest label
    seed: int = 0


def read_array(path: str | Path, what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} {p}: file not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.numpy import load_file

            arrays = load_file(str(p))
            return next(iter(arrays.values()))
        arr = np.load(p, allow_pickle=False)
        if isinstance(arr, np.lib.npyio.NpzFile):
            return arr[arr.files[0]]
        return arr
    except (ValueError, OSError, StopIteration) as e:
        raise DataError(f"{what} {p}: cannot read an array ({e})") from None


def _check_counts(columns: dict[str, tuple[str, np.ndarray]]) -> int:
    counts = {k: len(a) for k, (_, a) in columns.items()}
    if len(set(counts.values())) > 1:
        ref = max(counts, key=lambda k: list(counts.values()).count(counts[k]))
        bad = next(k for k in counts if counts[k] != counts[ref])
        raise DataError(f"data.files/labels.{bad} {columns[bad][0]}: {counts[bad]} samples, but "
                        f"{ref} ({columns[ref][0]}) has {counts[ref]}; modalities must be paired row by row")
    return next(iter(counts.values()))


@register_dataset("paired_arrays", config=PairedArraysConfig)
def paired_arrays(cfg: PairedArraysConfig) -> DataBundle:
    if not cfg.files:
        raise ConfigError("data.files: name at least one batch key and its array file")
    columns = {k: (v, read_array(v, f"data.files.{k}")) for k, v in cfg.files.items()}
    columns |= {k: (v, read_array(v, f"data.labels.{k}")) for k, v in cfg.labels.items()}
    n = _check_counts(columns)
    if cfg.split:
        split = read_array(cfg.split, "data.split").astype(str)
        if len(split) != n:
            raise DataError(f"data.split {cfg.split}: {len(split)} entries for {n} samples")
    else:
        rng = np.random.default_rng(cfg.seed)
        names = list(cfg.fractions)
        cum = np.cumsum([cfg.fractions[k] for k in names]) / sum(cfg.fractions.values())
        split = np.array(names)[np.searchsorted(cum, rng.random(n), side="right").clip(0, len(names) - 1)]
    tensors = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, (_, a) in columns.items()}
    for k in cfg.labels:
        tensors[k] = tensors[k].long()
    for k in cfg.files:
        if tensors[k].is_floating_point():
            tensors[k] = tensors[k].float()
    num_classes = cfg.num_classes or (1 + max(int(tensors[k].max()) for k in cfg.labels) if cfg.labels else 0)

    def part(name: str) -> DictDataset | None:
        idx = torch.from_numpy(np.flatnonzero(split == name))
        return DictDataset(**{k: v[idx] for k, v in tensors.items()}) if len(idx) else None

    names = sorted(set(split.tolist()))
    info = DataInfo(num_classes=num_classes, class_names=[str(c) for c in range(num_classes)],
                    extra={"dims": {k: int(np.prod(v.shape[1:])) for k, v in tensors.items() if k in cfg.files}})
    return DataBundle(train=part("train"), info=info, val=part("val"), test=part("test"),
                      extra={s: part(s) for s in names if s not in ("train", "val", "test")})
