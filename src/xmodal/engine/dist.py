"""torchrun-aware process setup, rank-aware sampling and gathers that keep gradients.

Every training command works unchanged under ``torchrun --nproc_per_node N``: the environment
variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK) select the process group; NCCL on CUDA,
gloo on CPU. With no such variables everything runs in one process and the collectives below
degrade to identities.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(requested)


def init_distributed(device: str = "auto") -> DistContext:
    """Initialise from torchrun's environment (idempotent); single process when absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients over ranks (reduce-scatter).

    Every rank computes the same full-batch loss on the gathered tensor, so summing the
    gradients of the W identical loss copies and then letting DDP average parameter gradients
    over W ranks yields exactly the single-process full-batch gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ws = dist.get_world_size()
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(ws)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
        ctx.sizes = [int(s) for s in sizes]
        assert len(set(ctx.sizes)) == 1, "all_gather_with_grad needs equal local batch sizes (use drop_last)"
        out = [torch.empty_like(x) for _ in range(ws)]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.n
        return grad[start : start + ctx.n]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from all ranks in rank order; gradients flow back to each local part."""
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def all_gather_nograd(x: torch.Tensor) -> list[torch.Tensor]:
    """Detached tensors from every rank, in rank order (own rank included)."""
    if world_size() == 1:
        return [x.detach()]
    src = x.detach().contiguous()
    if src.dtype == torch.bool:  # gloo cannot gather bool tensors
        return [t.bool() for t in all_gather_nograd(src.to(torch.uint8))]
    out = [torch.empty_like(src) for _ in range(world_size())]
    dist.all_gather(out, src)
    return out


def gather_other(x: torch.Tensor) -> torch.Tensor:
    """Detached `x` of all other ranks, concatenated in rank order (empty when alone)."""
    parts = all_gather_nograd(x)
    me = rank()
    others = [p for i, p in enumerate(parts) if i != me]
    if not others:
        return x.detach()[:0]
    return torch.cat(others, 0)


def all_gather_object(obj):
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_flag(flag: bool) -> bool:
    """True on every rank when any rank raised the flag (e.g. a signal received by one)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ResumableSampler(torch.utils.data.Sampler):
    """DistributedSampler-style sharding that can restart in the middle of an epoch.

    The permutation depends only on (seed, epoch); rank r takes every W-th index of it (padded by
    wrapping, or cut with drop_last) so ranks never coordinate. ``set_epoch(e, start)`` skips the
    first `start` of this rank's indices: the position saved in a checkpoint.
    """

    def __init__(self, n: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False, weights: torch.Tensor | None = None):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        # weights: draw n indices with replacement in proportion to them (balanced sampling)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        assert self.weights is None or (len(self.weights) == n and bool((self.weights >= 0).all()) and float(self.weights.sum()) > 0)
        self.rank, self.world = rank, world_size
        self.drop_last = drop_last
        self.epoch, self.start = 0, 0
        if drop_last:
            self.per_rank = n // world_size
        else:
            self.per_rank = -(-n // world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world
        if total > len(order):
            order = (order * (total // max(1, len(order)) + 1))[:total]
        order = order[:total]
        return order[self.rank : total : self.world]

    def __iter__(self):
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start
