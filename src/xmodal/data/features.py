"""Per-uid feature stores: expensive teacher outputs computed once and read back as batch keys.

A store is one safetensors file: each named tensor has one row per sample ([N, ...]) and the
file's metadata holds the uid of every row (``"uids"``: a JSON list) plus free string metadata
(the teacher's name, the layer, ...). Rows are read one at a time from the memory-mapped file, so
a store larger than memory is fine. A data config names stores per batch key, e.g.
``features: {teacher_audio: runs/panns/features.safetensors}`` -> batch key "teacher_audio" (a
store with several tensors gives "teacher_audio.<tensor>").
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch

from xmodal.errors import DataError

Missing = Literal["error", "zeros"]
_FORMAT = "xmodal-features"


class FeatureStore:
    """uid -> {tensor name: row} from a safetensors file written by `FeatureStore.write`.

    missing="error" (default): asking for an unknown uid is a DataError naming it;
    "zeros": a zero row instead (CCL reads a zero audio feature as "this clip has no audio").
    """

    def __init__(self, path: str | Path, *, missing: Missing = "error"):
        if missing not in ("error", "zeros"):
            raise DataError(f"feature store {path}: missing must be 'error' or 'zeros', found {missing!r}")
        self.path = Path(path)
        self.missing = missing
        if not self.path.is_file():
            raise DataError(f"{self.path}: feature store not found")
        self._handle = None
        self._pid = None
        with self._open() as f:
            meta = f.metadata() or {}
            self.names: list[str] = sorted(f.keys())
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in self.names}
            dtypes = {k: f.get_slice(k).get_dtype() for k in self.names}
        if meta.get("format") != _FORMAT or "uids" not in meta:
            raise DataError(f"{self.path}: not an xmodal feature store (no uid list in its metadata)")
        self.uids: list[str] = json.loads(meta["uids"])
        self.meta = {k: v for k, v in meta.items() if k not in ("format", "uids")}
        self._row = {u: i for i, u in enumerate(self.uids)}
        self.row_shapes = {k: s[1:] for k, s in shapes.items()}
        self._dtypes = {k: _torch_dtype(d) for k, d in dtypes.items()}
        bad = {k: s[0] for k, s in shapes.items() if s[:1] != (len(self.uids),)}
        if bad:
            raise DataError(f"{self.path}: tensors {bad} do not have one row per uid ({len(self.uids)})")

    def _open(self):
        from safetensors import safe_open

        try:
            return safe_open(str(self.path), framework="pt")
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise DataError(f"{self.path}: unreadable feature store ({e})") from None

    def _file(self):
        if self._handle is None or self._pid != os.getpid():  # handles do not survive a fork
            self._handle, self._pid = self._open(), os.getpid()
        return self._handle

    def __len__(self) -> int:
        return len(self.uids)

    def __contains__(self, uid: str) -> bool:
        return uid in self._row

    def get(self, uid: str) -> dict[str, torch.Tensor]:
        """The rows of `uid` (one tensor per name)."""
        i = self._row.get(uid)
        if i is None:
            if self.missing == "error":
                raise DataError(f"{self.path}: no features for uid '{uid}' ({len(self.uids)} uids stored)")
            return {k: torch.zeros(self.row_shapes[k], dtype=self._dtypes[k]) for k in self.names}
        f = self._file()
        return {k: f.get_slice(k)[i : i + 1][0] for k in self.names}

    def get_many(self, uids: Sequence[str]) -> dict[str, torch.Tensor]:
        """Rows of several uids stacked: {name: [B, ...]}."""
        rows = [self.get(u) for u in uids]
        return {k: torch.stack([r[k] for r in rows]) for k in self.names}

    def __getstate__(self):  # DataLoader workers reopen the file themselves
        state = dict(self.__dict__)
        state["_handle"] = state["_pid"] = None
        return state

    @staticmethod
    def write(path: str | Path, uids: Sequence[str], tensors: Mapping[str, torch.Tensor],
              meta: Mapping[str, str] | None = None) -> Path:  # fmt: skip
        """Write a store atomically; every tensor needs one row per uid, uids must be unique."""
        from xmodal.engine.checkpoint import save_safetensors_atomic

        uids = [str(u) for u in uids]
        if len(set(uids)) != len(uids):
            dup = next(u for i, u in enumerate(uids) if u in uids[:i])
            raise DataError(f"{path}: uid '{dup}' appears twice")
        if not tensors:
            raise DataError(f"{path}: no tensors to write")
        bad = {k: tuple(v.shape) for k, v in tensors.items() if v.dim() == 0 or v.shape[0] != len(uids)}
        if bad:
            raise DataError(f"{path}: tensors {bad} need one row per uid ({len(uids)})")
        reserved = {"format", "uids"} & set(meta or {})
        if reserved:
            raise DataError(f"{path}: metadata keys {sorted(reserved)} are reserved")
        info = {**(meta or {}), "format": _FORMAT, "uids": json.dumps(uids, ensure_ascii=False)}
        return save_safetensors_atomic(dict(tensors), path, info)


def _torch_dtype(name: str) -> torch.dtype:
    table = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}  # fmt: skip
    return table.get(name, torch.float32)


def feature_keys(key: str, store: FeatureStore) -> dict[str, str]:
    """Batch key of each tensor: the configured key for a one-tensor store, else key.tensor."""
    if len(store.names) == 1:
        return {store.names[0]: key}
    return {n: f"{key}.{n}" for n in store.names}
