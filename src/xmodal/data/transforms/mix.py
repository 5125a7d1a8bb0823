"""Mixup and label smoothing (CAV-MAE fine-tuning), plus multi-hot label vectors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Generator, Tensor

from xmodal.errors import ConfigError, DataError

from ._rng import bernoulli, numpy_rng, randint


def multi_hot(labels: Sequence[int], num_classes: int) -> Tensor:
    """[K] float32 vector with 1 at every listed class."""
    y = torch.zeros(num_classes)
    if labels:
        idx = torch.as_tensor(list(labels), dtype=torch.long)
        if idx.min() < 0 or idx.max() >= num_classes:
            raise DataError(f"labels {list(labels)} out of range for {num_classes} classes")
        y[idx] = 1.0
    return y


def mixup_lambda(gen: Generator, alpha: float = 10.0, n: int | None = None) -> Tensor:
    """λ ~ Beta(alpha, alpha) (float64; shape [n], or 0-d when n is None), drawn from `gen`."""
    draws = numpy_rng(gen).beta(alpha, alpha, size=None if n is None else (n,))
    return torch.as_tensor(draws, dtype=torch.float64)


def mix(a: Tensor, b: Tensor, lam: float | Tensor) -> Tensor:
    """λ a + (1 - λ) b; a tensor λ [B] mixes row-wise over the trailing dims of a [B, ...].

    For batch-level mixup pair each row with a permutation: ``mix(x, x[perm], lam)``.
    """
    if isinstance(lam, Tensor) and lam.dim() == 1:
        lam = lam.to(a.device, a.dtype).view(-1, *([1] * (a.dim() - 1)))
    return lam * a + (1 - lam) * b


def mix_waveforms(w1: Tensor, w2: Tensor, lam: float | Tensor) -> Tensor:
    """CAV-MAE waveform mixup along the last (time) axis.

    Both waves lose their mean; the partner is zero-padded or cut to the first one's length; the
    mixture λ w1 + (1 - λ) w2 is re-centred.
    """
    w1 = w1 - w1.mean(-1, keepdim=True)
    w2 = w2 - w2.mean(-1, keepdim=True)
    n1, n2 = w1.shape[-1], w2.shape[-1]
    w2 = torch.nn.functional.pad(w2, (0, n1 - n2)) if n2 < n1 else w2[..., :n1]
    out = mix(w1, w2, lam)
    return out - out.mean(-1, keepdim=True)


def smooth_labels(target: Tensor, smoothing: float) -> Tensor:
    """Multi-hot [..., K] -> positives 1 - ε, negatives ε / K (CAV-MAE's non-mixed labels)."""
    k = target.shape[-1]
    return torch.where(target > 0, 1.0 - smoothing, smoothing / k).to(torch.get_default_dtype())


def mixup_labels(y1: Tensor, y2: Tensor, lam: float | Tensor, smoothing: float) -> Tensor:
    """Mixed labels as CAV-MAE builds them: ε / K + λ (1 - ε) y1 + (1 - λ)(1 - ε) y2.

    Note the reference's asymmetry, kept on purpose: mixed positives keep the ε / K floor, while
    `smooth_labels` sets unmixed positives to exactly 1 - ε.
    """
    k = y1.shape[-1]
    return smoothing / k + mix(y1, y2, lam) * (1.0 - smoothing)


class MixDraw(NamedTuple):
    partner: int | None  # dataset index of the sample to mix in; None = no mixup for this sample
    lam: float  # weight of the sample itself (1.0 without mixup)


@dataclass(frozen=True)
class Mixup:
    """Per-sample mixup decision (CAV-MAE: p 0.5, λ ~ Beta(10, 10), label smoothing 0.1).

    With probability p a partner index is drawn uniformly from the whole dataset (it may be the
    sample itself, as in the reference) and λ ~ Beta(alpha, alpha).
    """

    p: float = 0.5
    alpha: float = 10.0
    smoothing: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"Mixup.p: expected a probability in [0, 1], found {self.p}")
        if self.alpha <= 0:
            raise ConfigError(f"Mixup.alpha: expected > 0, found {self.alpha}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ConfigError(f"Mixup.smoothing: expected 0 <= smoothing < 1, found {self.smoothing}")

    def draw(self, dataset_size: int, gen: Generator) -> MixDraw:
        if not bernoulli(gen, self.p):
            return MixDraw(None, 1.0)
        partner = randint(gen, 0, dataset_size - 1)
        return MixDraw(partner, float(mixup_lambda(gen, self.alpha)))

    def labels(self, y1: Tensor, y2: Tensor | None = None, lam: float = 1.0) -> Tensor:
        """Target vector for a multi-hot y1 (and its mixup partner y2, if any)."""
        if y2 is None:
            return smooth_labels(y1, self.smoothing)
        return mixup_labels(y1, y2, lam, self.smoothing)
