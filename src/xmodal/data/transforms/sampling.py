"""Clip samplers: which frames (and which audio samples) a clip is made of. Pure index logic.

A `ClipWindow` is `length` frames taken every `stride` frames from `start` in a video of
`n_frames` frames (0-based). Positions that would fall past the last frame are *loop-padded* the
way CCL's reference does it: the window's own in-range frames are repeated cyclically, so with
`valid` in-range positions, position k reads frame ``start + stride * (k % valid)``. A 10-frame
video in a 16-frame window therefore reads frames 0..9, 0..5; the last test window of a 40-frame
video (start 32) reads 32..39, 32..39.

Audio is aligned by time: frame f starts at f / fps seconds; `audio_window` turns a clip window
into a sample range (rate = sample rate) or a spectrogram frame range (rate = frames per second,
100 for a 10 ms hop).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Generator, Tensor

from xmodal.errors import DataError

from ._rng import randint

WindowMode = Literal["spread", "even", "cover"]
GDT_CLIP_DRAWS = 1000  # GDT draws clip_idx ~ U{0..1000} and starts at floor((n - L) * idx / 1000)


@dataclass(frozen=True)
class ClipWindow:
    start: int
    length: int
    stride: int
    n_frames: int

    def __post_init__(self) -> None:
        assert self.length >= 1 and self.stride >= 1, self
        assert 0 <= self.start < self.n_frames, self

    @property
    def span(self) -> int:
        """Frames from the first to the last position, both included, without padding."""
        return (self.length - 1) * self.stride + 1

    @property
    def valid(self) -> int:
        """Positions that fall on real frames before loop padding starts."""
        return min(self.length, -(-(self.n_frames - self.start) // self.stride))

    @property
    def padded(self) -> bool:
        return self.valid < self.length

    def indices(self) -> Tensor:
        """[length] int64 frame indices, loop-padded as described in the module docstring."""
        k = torch.arange(self.length) % self.valid
        return self.start + self.stride * k

    def seconds(self, fps: float) -> tuple[float, float]:
        """(start time, duration) in seconds; the duration covers `length * stride` frame periods."""
        return self.start / fps, self.length * self.stride / fps


def _check_video(n_frames: int, length: int, stride: int) -> None:
    if n_frames < 1:
        raise DataError(f"clip sampler: the video has {n_frames} frames, expected at least 1")
    assert length >= 1 and stride >= 1, (length, stride)


def _span(length: int, stride: int) -> int:
    return (length - 1) * stride + 1


def train_window(n_frames: int, length: int, stride: int = 1, *, gen: Generator) -> ClipWindow:
    """Training clip: start uniform over 0..n_frames - span (all full windows), 0 for short videos.

    CCL's reference draws the start from 0..n - L - 1 (its last full window is never used); we draw
    every full window with equal probability.
    """
    _check_video(n_frames, length, stride)
    start = randint(gen, 0, max(0, n_frames - _span(length, stride)))
    return ClipWindow(start, length, stride, n_frames)


def uniform_windows(
    n_frames: int,
    length: int,
    stride: int = 1,
    *,
    count: int | None = None,
    mode: WindowMode = "spread",
) -> list[ClipWindow]:
    """Deterministic evaluation windows.

    - ``"spread"`` (GDT/STiCA test): exactly `count` windows, ``start_k = floor(k * m / count)``,
      k = 0..count-1, m = max(0, n_frames - span). Windows may coincide on short videos.
    - ``"even"`` (CCL validation, 3 clips): on the stride-subsampled positions (n' = ceil(n / stride)),
      step = max(1, ceil((n' - 1 - length) / (count - 1))); starts 0, step, 2 step, ... below n',
      at most `count`, stopping after the first loop-padded window (so short videos give fewer).
    - ``"cover"`` (CCL test): non-overlapping windows at positions 0, length, 2 length, ... below n'
      covering the whole video, ceil(n' / length) of them; only the last one can be loop-padded.
      `count` must be None.
    """
    _check_video(n_frames, length, stride)
    positions = -(-n_frames // stride)
    if mode == "spread":
        assert count is not None and count >= 1, count
        m = max(0, n_frames - _span(length, stride))
        starts = [k * m // count for k in range(count)]
    elif mode == "even":
        assert count is not None and count >= 1, count
        step = 1 if count == 1 else max(1, math.ceil((positions - 1 - length) / (count - 1)))
        starts = []
        for p in range(0, positions, step):
            starts.append(p * stride)
            if len(starts) == count or p + length > positions:
                break
    elif mode == "cover":
        assert count is None, "mode='cover' derives the count from the video length"
        starts = [p * stride for p in range(0, positions, length)]
    else:
        raise ValueError(f"uniform_windows: mode must be 'spread', 'even' or 'cover', got {mode!r}")
    return [ClipWindow(s, length, stride, n_frames) for s in starts]


def gdt_starts(n_frames: int, length: int, *, gen: Generator, count: int = 2, stride: int = 1) -> list[int]:
    """GDT pre-training starts, independent per clip: idx ~ U{0..1000}, start = floor((n - span) idx / 1000).

    Two clips (V and the time-shifted V2) may overlap; short videos start at 0 (and loop-pad).
    """
    _check_video(n_frames, length, stride)
    m = max(0, n_frames - _span(length, stride))
    return [m * randint(gen, 0, GDT_CLIP_DRAWS) // GDT_CLIP_DRAWS for _ in range(count)]


def gdt_windows(
    n_frames: int, length: int, *, gen: Generator, count: int = 2, stride: int = 1
) -> list[ClipWindow]:
    """`gdt_starts` as windows."""
    starts = gdt_starts(n_frames, length, gen=gen, count=count, stride=stride)
    return [ClipWindow(s, length, stride, n_frames) for s in starts]


# ------------------------------------------------------------------------------------------ audio
@dataclass(frozen=True)
class AudioWindow:
    """Samples (or spectrogram frames) ``start .. start + length - 1`` of an audio stream."""

    start: int
    length: int

    def take(self, x: Tensor, dim: int = -1) -> Tensor:
        """The window along `dim`; positions past the end of `x` are zeros."""
        size = x.shape[dim]
        x = x.narrow(dim, min(self.start, size), max(0, min(self.length, size - self.start)))
        missing = self.length - x.shape[dim]
        if missing == 0:
            return x
        pad = [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [0, missing]
        return F.pad(x, pad)


def audio_window(
    window: ClipWindow,
    fps: float,
    rate: float,
    *,
    seconds: float | None = None,
    total: int | None = None,
) -> AudioWindow:
    """The audio aligned with a clip: starts at the clip's first frame time.

    start = round(window.start / fps * rate); length = round(seconds * rate), `seconds` defaulting to
    the clip duration (length * stride / fps). `rate` is the sample rate for waveforms or the frame
    rate of a spectrogram (100 for a 10 ms hop). With `total` (the stream length) a window running
    past the end is moved back to end at `total` (GDT's rule), never before 0; `take` zero-pads
    whatever is still missing.
    """
    assert fps > 0 and rate > 0, (fps, rate)
    duration = window.length * window.stride / fps if seconds is None else seconds
    start = round(window.start * rate / fps)
    length = round(duration * rate)
    if total is not None and start + length > total:
        start = max(0, total - length)
    return AudioWindow(start, length)


# -------------------------------------------------------------------------------------- time ops
def reverse_time(x: Tensor, dim: int) -> Tensor:
    """Time reversal (GDT's VR/AR views): flip the time axis."""
    return x.flip(dim)


def roll_time(x: Tensor, shifts: Tensor, dim: int) -> Tensor:
    """Circular shift along `dim` by a per-sample amount: x [B, ...], shifts [B] ints.

    Same as ``torch.roll(x[b], shifts[b], dim)`` for each b (positive moves content to later times),
    done with one gather.
    """
    dim = dim % x.dim()
    assert dim > 0 and shifts.shape == (x.shape[0],), (dim, shifts.shape, x.shape)
    n = x.shape[dim]
    idx = (torch.arange(n, device=x.device)[None] - shifts.to(x.device).long()[:, None]) % n
    view = [x.shape[0]] + [1] * (x.dim() - 1)
    view[dim] = n
    return x.gather(dim, idx.view(view).expand(x.shape))


# --------------------------------------------------------------------------------------- CAV-MAE
def cavmae_stored_frames(n_frames: int, fps: float, count: int = 10) -> list[int]:
    """Frames CAV-MAE stores per clip: int(i * total / count), total = min(n_frames, int(count * fps)).

    About 1 fps over the first 10 s. Indices repeat when the video has fewer than `count` frames.
    """
    _check_video(n_frames, 1, 1)
    total = min(n_frames, int(count * fps))
    return [int(i * (total / count)) for i in range(count)]


def cavmae_frame_index(present: Sequence[bool], *, train: bool, gen: Generator | None = None) -> int:
    """Which stored frame a CAV-MAE sample reads: train a uniform one, eval the middle (5 of 10).

    A missing frame falls back to the nearest lower index that exists (the reference's rule). When
    no lower frame exists we take the nearest higher one (the reference would fail to load).
    """
    n = len(present)
    if not any(present):
        raise DataError(f"CAV-MAE frames: none of the {n} stored frames exists")
    if train:
        assert gen is not None, "training frame selection needs a generator"
        idx = randint(gen, 0, n - 1)
    else:
        idx = n // 2
    lower = [i for i in range(idx, -1, -1) if present[i]]
    return lower[0] if lower else next(i for i in range(idx, n) if present[i])
