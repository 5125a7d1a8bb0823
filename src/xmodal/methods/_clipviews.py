"""Batched clip views built inside a method from whole clips (in-memory embedded data).

The prepared-store pipeline builds GDT/STiCA views per sample in the dataset (data/transforms);
in-memory sources such as ``avdigits`` hand the method whole clips instead, and these helpers
derive the views on the batch, vectorised over samples: GDT's time windows (the same start rule,
drawn per sample), time reversal, and per-sample random (resized) crops with horizontal flips
done as one ``grid_sample`` with per-sample affine maps.

Layouts: video [B, C, T, H, W]; spectrogram [B, 1, F, T] (time last); both share the clip's
time axis through ``fps`` (video frames per second) and ``spec_rate`` (spectrogram frames per
second, 100 for a 10 ms hop).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from xmodal.errors import ConfigError, DataError


@dataclass
class ClipViewsConfig:
    """How a method derives views from whole clips in the batch (``enabled``), e.g. on avdigits.

    frames: window length in video frames (0 = the whole clip, no time shift possible).
    crop: output side of the square spatial crop (0 = keep the frame size).
    scale: area fraction range of RandomResizedCrop; (1, 1) = a fixed-size random crop of `crop`.
    flip: random horizontal flips; jitter: brightness/contrast factor range 1 ± jitter (0 = off);
    grayscale: probability per clip of replacing RGB by its luma (the same on every frame).
    mean/std: per-channel normalisation after the crop (GDT/STiCA: 0.45 / 0.225).
    spec_rate: spectrogram frames per second; the audio window of a clip window starting at
    frame s is [round(s / fps · spec_rate), + spec_frames) with spec_frames = round(frames /
    fps · spec_rate) − 2 (a 25 ms window at a 10 ms hop gives 98 frames per second).
    """

    enabled: bool = False
    frames: int = 8
    crop: int = 0
    scale: tuple[float, float] = (1.0, 1.0)
    flip: bool = True
    jitter: float = 0.0
    grayscale: float = 0.0
    mean: float = 0.45
    std: float = 0.225
    spec_rate: float = 100.0

    def validate(self) -> None:
        if self.frames < 0 or self.crop < 0:
            raise ValueError("frames and crop must be >= 0")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale: expected 0 < low <= high <= 1, got {self.scale}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter: expected a value in [0, 1), got {self.jitter}")
        if not 0 <= self.grayscale <= 1:
            raise ValueError(f"grayscale: expected a probability, got {self.grayscale}")


def gdt_window_starts(n_frames: int, length: int, batch: int, gen: torch.Generator | None = None) -> Tensor:
    """GDT's start rule per sample: idx ~ U{0..1000}, start = floor((n − L) · idx / 1000)."""
    if length > n_frames:
        raise DataError(f"clip views: window of {length} frames longer than the clip ({n_frames} frames)")
    idx = torch.randint(0, 1001, (batch,), generator=gen)
    return (n_frames - length) * idx // 1000


def take_window(x: Tensor, starts: Tensor, length: int, dim: int) -> Tensor:
    """Per-sample window x[b, ..., starts[b] : starts[b] + length, ...] along `dim` (one gather)."""
    dim = dim % x.dim()
    pos = starts.to(x.device).view(-1, *([1] * (x.dim() - 1))) + torch.arange(length, device=x.device).view(
        *([1] * dim), length, *([1] * (x.dim() - dim - 1))
    )
    shape = list(x.shape)
    shape[dim] = length
    return torch.gather(x, dim, pos.expand(shape))


def spec_window(fps: float, spec_rate: float, frames: int) -> int:
    return max(1, round(frames / fps * spec_rate) - 2)


def audio_window_starts(starts: Tensor, fps: float, spec_rate: float, length: int, total: int) -> Tensor:
    """Spectrogram start of each video window start, clipped so the window fits."""
    if length > total:
        raise DataError(f"clip views: audio window of {length} frames longer than the spectrogram ({total})")
    return (starts.double() / fps * spec_rate).round().long().clamp(0, total - length)


def cut_window(video: Tensor, spec: Tensor | None, starts: Tensor, length: int, fps: float,
               spec_rate: float) -> tuple[Tensor, Tensor | None]:
    """Per-sample window of `length` frames from `starts` and the aligned spectrogram window
    (spec_window frames from audio_window_starts); the spectrogram is kept whole when the window
    is the whole clip."""
    if spec is not None and not spec.is_floating_point():
        raise ConfigError("views.enabled cuts windows of a spectrogram; token ids need prepared views")
    n = video.shape[2]
    clip = video if length == n else take_window(video, starts, length, 2)
    if spec is None or length == n:
        return clip, spec
    a_len = spec_window(fps, spec_rate, length)
    return clip, take_window(spec, audio_window_starts(starts, fps, spec_rate, a_len, spec.shape[-1]), a_len, -1)


def _boxes(b: int, h: int, w: int, size: int, scale: tuple[float, float], gen) -> tuple[Tensor, ...]:
    """Per-sample crop boxes (x0, y0, bw, bh) in pixels: fixed size `size` when scale == (1, 1),
    else RandomResizedCrop with area fraction ~ U(scale) and log-ratio ~ U(log 3/4, log 4/3)."""
    if scale == (1.0, 1.0):
        if size > min(h, w):
            raise DataError(f"clip views: crop {size} larger than the frame {h}x{w}")
        bw = bh = torch.full((b,), float(size))
    else:
        area = h * w * (scale[0] + (scale[1] - scale[0]) * torch.rand(b, generator=gen))
        log_r = torch.empty(b).uniform_(-0.2876821, 0.2876821, generator=gen)  # log(3/4), log(4/3)
        ratio = log_r.exp()
        bw = (area * ratio).sqrt().clamp(1, w).round()
        bh = (area / ratio).sqrt().clamp(1, h).round()
    x0 = ((w - bw + 1) * torch.rand(b, generator=gen)).floor().clamp(max=w - bw)
    y0 = ((h - bh + 1) * torch.rand(b, generator=gen)).floor().clamp(max=h - bh)
    return x0, y0, bw, bh


def crop_flip(video: Tensor, size: int, *, scale=(1.0, 1.0), flip: bool = True, gen=None) -> Tensor:
    """Per-sample random (resized) crop to size x size and random horizontal flip, one grid_sample.

    A box (x0, y0, bw, bh) resized to S pixels maps output coordinate u ∈ [−1, 1] to input
    (bw/W)·u + (2·x0 + bw)/W − 1 (align_corners=False); a fixed-size crop therefore samples pixel
    centres exactly. Flipping negates the u coefficient.
    """
    b, c, t, h, w = video.shape
    x0, y0, bw, bh = _boxes(b, h, w, size, tuple(scale), gen)
    sign = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0) if flip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = sign * bw / w
    theta[:, 0, 2] = (2 * x0 + bw) / w - 1
    theta[:, 1, 1] = bh / h
    theta[:, 1, 2] = (2 * y0 + bh) / h - 1
    theta = theta.to(video)
    grid = F.affine_grid(theta, [b, c * t, size, size], align_corners=False)
    out = F.grid_sample(video.reshape(b, c * t, h, w), grid, mode="bilinear", align_corners=False)
    return out.view(b, c, t, size, size)


def jitter(video: Tensor, amount: float, gen=None) -> Tensor:
    """Per-sample brightness and contrast factors ~ U(1 − amount, 1 + amount), same on every frame."""
    if amount <= 0:
        return video
    b = video.shape[0]
    fb, fc = (1 + amount * (2 * torch.rand(2, b, generator=gen) - 1)).to(video).unbind(0)
    shape = (b, 1, 1, 1, 1)
    x = video * fb.view(shape)
    mean = x.mean(dim=(1, 3, 4), keepdim=True)  # per-frame grey level
    return (mean + (x - mean) * fc.view(shape)).clamp(0, 1)


def grayscale(video: Tensor, p: float, gen=None) -> Tensor:
    """With probability p per clip, every frame's RGB is replaced by its luma (ITU-R 601)."""
    if p <= 0:
        return video
    hit = (torch.rand(video.shape[0], generator=gen) < p).to(video.device).view(-1, 1, 1, 1, 1)
    w = torch.tensor([0.299, 0.587, 0.114], dtype=video.dtype, device=video.device).view(1, 3, 1, 1, 1)
    luma = (video * w).sum(1, keepdim=True).expand_as(video)
    return torch.where(hit, luma, video)


def spatial_view(video: Tensor, cfg: ClipViewsConfig, gen=None, *, train: bool = True) -> Tensor:
    """Augmented (train) or centre-cropped (eval) and normalised clip [B, C, T, S, S]."""
    if train:
        if cfg.crop or cfg.scale != (1.0, 1.0) or cfg.flip:
            size = cfg.crop or min(video.shape[-2:])
            video = crop_flip(video, size, scale=cfg.scale, flip=cfg.flip, gen=gen)
        video = grayscale(jitter(video, cfg.jitter, gen), cfg.grayscale, gen)
    elif cfg.crop:
        h, w = video.shape[-2:]
        if cfg.crop > min(h, w):
            raise ConfigError(f"views.crop: {cfg.crop} larger than the frame {h}x{w}")
        y, x = (h - cfg.crop) // 2, (w - cfg.crop) // 2
        video = video[..., y : y + cfg.crop, x : x + cfg.crop]
    if not train and cfg.grayscale >= 1:  # always grey in training: evaluate on grey clips too
        video = grayscale(video, 1.0)
    return (video - cfg.mean) / cfg.std


def as_spectrogram(x: Tensor) -> Tensor:
    """[B, frames, mel] fbank (the batch contract) -> [B, 1, mel, frames]; [B, 1, F, T] unchanged."""
    if x.dim() == 3 and x.is_floating_point():
        return x.transpose(1, 2).unsqueeze(1).contiguous()
    return x


def center_start(n_frames: int, length: int) -> int:
    return (n_frames - length) // 2
