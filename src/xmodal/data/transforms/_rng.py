"""Explicit random draws: every function takes the generator it consumes, nothing reads global RNG."""

from __future__ import annotations

import numpy as np
import torch
from torch import Generator, Tensor


def sample_generator(*keys: int) -> Generator:
    """A CPU generator seeded from integer keys, e.g. ``sample_generator(seed, epoch, index)``.

    The keys are hashed with numpy's SeedSequence, so neighbouring keys give unrelated streams
    (seeding with ``seed + index`` would make sample i of epoch e+1 replay sample i+1 of epoch e).
    """
    if not keys or any(int(k) < 0 for k in keys):
        raise ValueError(f"sample_generator: need one or more non-negative integer keys, got {keys}")
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    gen = torch.Generator()
    gen.manual_seed(int(state[0]) << 32 | int(state[1]))
    return gen


def uniform(gen: Generator, low: float, high: float, n: int | None = None) -> Tensor:
    """U[low, high) float64 draws: shape [n], or a 0-d tensor when n is None."""
    u = torch.rand(() if n is None else (n,), generator=gen, dtype=torch.float64)
    return low + (high - low) * u


def randint(gen: Generator, low: int, high: int) -> int:
    """One integer uniform over low..high INCLUSIVE (unlike torch.randint's exclusive bound)."""
    assert high >= low, (low, high)
    return int(torch.randint(low, high + 1, (), generator=gen))


def bernoulli(gen: Generator, p: float, n: int | None = None) -> Tensor:
    """Bool draws that are True with probability p (a draw is consumed even when p is 0 or 1)."""
    return uniform(gen, 0.0, 1.0, n) < p


def numpy_rng(gen: Generator) -> np.random.Generator:
    """A numpy Generator seeded from `gen` (for distributions torch cannot draw with a generator)."""
    seed = int(torch.randint(0, 2**62, (), generator=gen))
    return np.random.default_rng(seed)
