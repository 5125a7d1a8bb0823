"""Run a method's eval_step over a dataset (sharded over ranks) and compute its metrics."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from xmodal.engine import dist
from xmodal.engine.logging import progress


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch


def concat_outputs(parts: list[dict]) -> dict:
    """Concatenate per-batch output dicts: tensors along dim 0, lists extended."""
    if not parts:
        return {}
    out = {}
    for k in parts[0]:
        vals = [p[k] for p in parts]
        if isinstance(vals[0], torch.Tensor):
            out[k] = torch.cat([v.reshape(1) if v.dim() == 0 else v for v in vals], 0)
        else:
            merged: list = []
            for v in vals:
                merged.extend(v if isinstance(v, (list, tuple)) else [v])
            out[k] = merged
    return out


def autocast_ctx(device: torch.device, amp: str):
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def collect_outputs(
    method: Any,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    collate=None,
    device: torch.device | None = None,
    amp: str = "auto",
    desc: str = "eval",
    step_fn: str = "eval_step",
    progress_bar: bool = True,
) -> dict:
    """eval_step outputs for every sample of `dataset`, gathered from all ranks (order: by rank)."""
    device = device or next((p.device for p in method.parameters()), torch.device("cpu"))
    world, rank = dist.world_size(), dist.rank()
    idx = list(range(rank, len(dataset), world))
    subset = torch.utils.data.Subset(dataset, idx) if world > 1 else dataset
    if collate is None:
        from xmodal.data.bundle import collate
    getattr(dataset, "warm_cache", lambda: None)()  # decode a store cache once, before workers fork
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    was_training = method.training
    method.eval()
    parts = []
    fn = getattr(method, step_fn)
    try:
        for batch in progress(loader, desc=desc, enabled=rank == 0 and progress_bar):
            with autocast_ctx(device, amp):
                out = fn(to_device(batch, device))
            parts.append(to_device(out, torch.device("cpu")))
    finally:
        method.train(was_training)
    local = concat_outputs(parts)
    if world == 1:
        return local
    return concat_outputs([p for p in dist.all_gather_object(local) if p])


def evaluate(method: Any, dataset: Dataset, **kw: Any) -> dict[str, float]:
    outputs = collect_outputs(method, dataset, **kw)
    return method.eval_metrics(outputs)
