"""Run a function in N torch.distributed gloo processes on CPU and collect what each returns.

Usage from a test module (the function must be defined at module level so it can be pickled)::

    def _worker(rank, world, x):
        ...  # torch.distributed is initialised here (gloo, CPU)
        return {"loss": loss.detach(), "grads": [p.grad for p in model.parameters()]}

    results = run_distributed(_worker, world_size=2, args=(x,))   # one result per rank

Results travel through ``torch.save`` files, so return tensors, numbers, strings and
lists/tuples/dicts of them. A worker exception fails the test with the worker's traceback; a
worker that hangs is killed after `timeout` seconds.

Workers are forked where the platform allows (about 0.1 s instead of several seconds per process
for a spawned interpreter to import torch); each sets one intra-op thread. DistributedDataParallel's
constructor imports torch._dynamo (seconds), so the parent imports it once before forking.
"""

from __future__ import annotations

import datetime
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def shard(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s contiguous slice of a global batch (rank order = all_gather order)."""
    n = x.shape[0] // world
    assert n * world == x.shape[0], "global batch must split evenly over ranks"
    return x[rank * n : (rank + 1) * n]


def _entry(fn: Callable, rank: int, world: int, init: str, out: str, args: Sequence) -> None:
    torch.set_num_threads(1)
    path = Path(out)
    try:
        dist.init_process_group(
            "gloo", init_method=init, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
        )
        result = fn(rank, world, *args)
        torch.save(result, path / f"rank{rank}.pt")
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
        (path / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _context():
    if "fork" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    import torch._dynamo  # noqa: F401 - see the module docstring

    return mp.get_context("fork")


def run_distributed(fn: Callable, world_size: int = 2, args: Sequence = (), timeout: float = 90.0) -> list:
    """fn(rank, world_size, *args) in `world_size` gloo processes; per-rank results in rank order."""
    ctx = _context()
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{os.path.join(tmp, 'rendezvous')}"
        procs = [ctx.Process(target=_entry, args=(fn, r, world_size, init, tmp, tuple(args)), daemon=True)
                 for r in range(world_size)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for r in hung:
            procs[r].kill()
            procs[r].join()
        errors = [(Path(tmp) / f"rank{r}.err") for r in range(world_size)]
        messages = [f"rank {r}:\n{e.read_text()}" for r, e in enumerate(errors) if e.exists()]
        if messages:
            raise RuntimeError("distributed worker failed\n" + "\n".join(messages))
        if hung:
            raise TimeoutError(f"distributed workers {hung} still running after {timeout:.0f} s")
        bad = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode != 0]
        if bad:
            raise RuntimeError(f"distributed workers exited abnormally (rank, code): {bad}")
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
