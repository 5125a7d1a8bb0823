"""Spectrogram and waveform augmentation: SpecAugment masks, CAV-MAE noise + roll, volume gain.

Spectrogram layouts differ by method, so every function names its axes: CAV-MAE fbank is
[frames, mel] (time_dim=-2, freq_dim=-1, the defaults), GDT's log-mel is [1, F, T]
(freq_dim=-2, time_dim=-1). Batched calls put the batch first: [B, ...].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Generator, Tensor

from xmodal.errors import ConfigError, closest

from ._rng import uniform
from .sampling import roll_time

SpecStyle = Literal["torchaudio", "gdt"]
STYLES = ("torchaudio", "gdt")
# GDT presets: (#freq masks, #time masks, max freq width, max time width)
GDT_SPECAUGMENT = {"mild": (1, 1, 2, 5), "medium": (1, 1, 3, 6), "heavy": (2, 2, 3, 6)}


class MaskParams(NamedTuple):
    """Masks of B spectrograms: [B, masks, 2] int64 rows (start, width) along each axis."""

    freq: Tensor
    time: Tensor


@dataclass(frozen=True)
class SpecAugment:
    """Frequency and time masking without time warp; masked cells are set to `value`.

    Each mask's width is floor(U[0, max)), so in 0..max-1. Where it starts depends on `style`:
    - "torchaudio" (CAV-MAE; torchaudio's FrequencyMasking/TimeMasking, one mask each):
      v = U[0, 1) * max, start = floor(U[0, 1) * (size - v)), width = floor(v).
    - "gdt": start uniform over 0..size - width (every position where the mask fits).
    Masks are drawn per sample (iid over a batch); frequency masks first, then time masks.
    """

    freq_width: int = 48
    time_width: int = 192
    freq_masks: int = 1
    time_masks: int = 1
    style: SpecStyle = "torchaudio"
    value: float = 0.0

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ConfigError(
                f"SpecAugment.style: expected one of {STYLES}, found {self.style!r}{closest(str(self.style), STYLES)}"
            )
        for name in ("freq_width", "time_width", "freq_masks", "time_masks"):
            if getattr(self, name) < 0:
                raise ConfigError(f"SpecAugment.{name}: expected >= 0, found {getattr(self, name)}")

    def _spans(self, size: int, width: int, masks: int, n: int, gen: Generator) -> Tensor:
        u = uniform(gen, 0.0, 1.0, 2 * n * masks).view(2, n, masks)
        v = u[0] * width
        w = v.floor().clamp(max=size)
        if self.style == "torchaudio":
            start = (u[1] * (size - v)).floor().clamp(min=0)
        else:
            start = (u[1] * (size - w + 1)).floor()
        w = torch.minimum(w, size - start)
        return torch.stack([start, w], -1).long()

    def sample(self, n_freq: int, n_time: int, gen: Generator, n: int = 1) -> MaskParams:
        """Masks for n spectrograms with n_freq bins and n_time frames."""
        freq = self._spans(n_freq, self.freq_width, self.freq_masks, n, gen)
        time = self._spans(n_time, self.time_width, self.time_masks, n, gen)
        return MaskParams(freq, time)

    def apply(self, spec: Tensor, params: MaskParams, *, freq_dim: int = -1, time_dim: int = -2) -> Tensor:
        """Spectrograms [B, ...] (dims counted within one sample, negative = from the end)."""
        mask = _axis_mask(spec, params.freq, freq_dim) | _axis_mask(spec, params.time, time_dim)
        return spec.masked_fill(mask, self.value)

    def __call__(self, spec: Tensor, gen: Generator, *, freq_dim: int = -1, time_dim: int = -2) -> Tensor:
        """One spectrogram (no batch dim)."""
        x = spec[None]
        fd, td = _sample_dim(spec, freq_dim), _sample_dim(spec, time_dim)
        params = self.sample(spec.shape[fd], spec.shape[td], gen)
        return self.apply(x, params, freq_dim=fd, time_dim=td)[0]

    def batch(self, spec: Tensor, gen: Generator, *, freq_dim: int = -1, time_dim: int = -2) -> Tensor:
        """Spectrograms [B, ...] with independent masks drawn from one generator."""
        fd, td = _sample_dim(spec[0], freq_dim), _sample_dim(spec[0], time_dim)
        params = self.sample(spec.shape[1 + fd], spec.shape[1 + td], gen, spec.shape[0])
        return self.apply(spec, params, freq_dim=fd, time_dim=td)


def _sample_dim(sample: Tensor, dim: int) -> int:
    return dim % sample.dim()


def _axis_mask(spec: Tensor, spans: Tensor, dim: int) -> Tensor:
    """Bool mask broadcastable to spec [B, ...]: True where any span covers the position on `dim`."""
    d = 1 + dim % (spec.dim() - 1)
    n = spec.shape[d]
    spans = spans.to(spec.device)
    pos = torch.arange(n, device=spec.device)
    start, width = spans[..., :1], spans[..., 1:]
    hit = ((pos >= start) & (pos < start + width)).any(1)  # [B, n]
    view = [spec.shape[0]] + [1] * (spec.dim() - 1)
    view[d] = n
    return hit.view(view)


def gdt_specaugment(preset: str = "medium") -> SpecAugment:
    """GDT's masking presets (mild / medium = default / heavy), start uniform, value 0."""
    if preset not in GDT_SPECAUGMENT:
        raise ConfigError(
            f"gdt specaugment preset: expected one of {tuple(GDT_SPECAUGMENT)}, found {preset!r}{closest(preset, GDT_SPECAUGMENT)}"
        )
    nf, nt, fw, tw = GDT_SPECAUGMENT[preset]
    return SpecAugment(freq_width=fw, time_width=tw, freq_masks=nf, time_masks=nt, style="gdt")


def noise_roll(fbank: Tensor, gen: Generator, *, time_dim: int = -2, scale: float = 0.1) -> Tensor:
    """CAV-MAE "noise" augmentation of normalised fbank [T, F] or [B, T, F] (per sample):

    x + U[0, 1)^{T x F} * u * scale with one u ~ U[0, 1) per clip (scale 0.1: the reference's
    rand() / 10), then a circular shift along time by an integer uniform over [-T, T).
    """
    single = fbank.dim() == 2
    x = fbank[None] if single else fbank
    b = x.shape[0]
    n_time = x.shape[time_dim]
    u = uniform(gen, 0.0, 1.0, b).to(x.dtype)
    noise = torch.rand(x.shape, generator=gen, dtype=x.dtype)
    shifts = torch.randint(-n_time, n_time, (b,), generator=gen)
    view = (b,) + (1,) * (x.dim() - 1)
    x = x + (noise * (u * scale).view(view)).to(x.device)
    x = roll_time(x, shifts, time_dim)
    return x[0] if single else x


def volume_gain(wave: Tensor, gen: Generator, low: float = 0.9, high: float = 1.1) -> Tensor:
    """GDT volume jitter: wave [S] (or [B, S], one gain per row) times U(low, high), as float."""
    assert wave.dim() in (1, 2), wave.shape
    x = wave if wave.is_floating_point() else wave.float()
    g = uniform(gen, low, high, wave.shape[0] if wave.dim() == 2 else None).to(x.device, x.dtype)
    return x * (g[:, None] if wave.dim() == 2 else g)
