"""Losses are pure functions: tensors in, `LossOut` out; no module state."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LossOut:
    """A scalar to optimise and named terms to log (detached on logging, not here)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor | float] = field(default_factory=dict)

    def __add__(self, other: LossOut) -> LossOut:
        return LossOut(self.total + other.total, {**self.terms, **other.terms})
