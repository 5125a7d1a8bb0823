"""Spatial and photometric transforms of frames and clips, plus the configurable `ClipTransform`.

Layouts: decoded clips arrive as [T, H, W, C] (uint8 0..255 or float 0..1), images as [H, W, C].
Internally frames are [T, C, H, W] (frames act as the batch of `F.interpolate`), batches of clips
[B, T, C, H, W]. `ClipTransform` returns the batch contract: [C, T, H, W] per clip, [B, C, T, H, W]
from `batch`, [3, H, W] from `image`.

One parameter set per clip: crop box, flip, jitter factors and order, grayscale and blur sigma are
drawn once and applied to every frame, so frames stay aligned. Photometric ops act per frame on
the RGB channels (GDT defect 4 mixed frames instead), with torchvision's formulas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Generator, Tensor

from xmodal.errors import DataError

from ._rng import bernoulli, randint, uniform

Interpolation = Literal["bilinear", "bicubic", "nearest"]
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
RRC_ATTEMPTS = 10
CPU_CHUNK = 1 << 20  # elements per photometric chunk on the CPU (4 MB of float32)


class CropBox(NamedTuple):
    top: int
    left: int
    height: int
    width: int


class PhotoParams(NamedTuple):
    """Photometric parameters of B clips (tensors with leading dim B, on the CPU)."""

    factors: Tensor  # [B, 3] float: brightness, contrast, saturation multipliers (1 = unchanged)
    order: Tensor  # [B, 3] int64: order of the ops, a permutation of (0, 1, 2) as above
    gray: Tensor  # [B] bool: replace RGB by its luma (3 equal channels)
    sigma: Tensor  # [B] float: isotropic Gaussian blur sigma in pixels, 0 = no blur

    @staticmethod
    def cat(items: Sequence[PhotoParams]) -> PhotoParams:
        return PhotoParams(*(torch.cat(parts) for parts in zip(*items)))


# ---------------------------------------------------------------------------------------- layout
def to_frames(clip: Tensor | np.ndarray) -> Tensor:
    """[T, H, W, C] (or an image [H, W, C]) uint8/float -> [T, C, H, W], dtype kept.

    One channel is repeated to RGB; anything else but 3 channels is a DataError.
    """
    x = torch.as_tensor(clip)
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[-1] not in (1, 3):
        raise DataError(
            f"transform input: expected frames [T, H, W, 3] or an image [H, W, 3], got {tuple(x.shape)}"
        )
    x = x.permute(0, 3, 1, 2)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def to_float(x: Tensor) -> Tensor:
    """uint8 0..255 -> float32 0..1; float input is taken to be in 0..1 already."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x if x.is_floating_point() else x.float()


# ------------------------------------------------------------------------------------- geometry
def resized_size(h: int, w: int, short: int) -> tuple[int, int]:
    """(h, w) after scaling the short side to `short` (torchvision: long side truncated)."""
    if h <= w:
        return short, int(short * w / h)
    return int(short * h / w), short


def resize(
    x: Tensor, size: tuple[int, int], interpolation: Interpolation = "bilinear", antialias: bool = True
) -> Tensor:
    """Frames [..., C, H, W] -> [..., C, h, w].

    uint8 frames on the CPU stay uint8 (rounded, like PIL; ~5x faster than resizing floats), other
    input is resized as float in [0, 1], with bicubic overshoot clamped to [0, 1].
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.dtype == torch.uint8 and x.device.type != "cpu":
        x = to_float(x)
    lead = x.shape[:-3]
    y = x.reshape(-1, *x.shape[-3:])
    kw = {} if interpolation == "nearest" else {"align_corners": False, "antialias": antialias}
    y = F.interpolate(y, size=size, mode=interpolation, **kw)
    if interpolation == "bicubic" and y.is_floating_point():
        y = y.clamp_(0.0, 1.0)
    return y.reshape(*lead, *y.shape[-3:])


def resize_short(
    x: Tensor, short: int, interpolation: Interpolation = "bilinear", antialias: bool = True
) -> Tensor:
    return resize(x, resized_size(x.shape[-2], x.shape[-1], short), interpolation, antialias)


def crop(x: Tensor, box: CropBox) -> Tensor:
    return x[..., box.top : box.top + box.height, box.left : box.left + box.width]


def hflip(x: Tensor) -> Tensor:
    return x.flip(-1)


def _check_fits(h: int, w: int, size: int) -> None:
    if h < size or w < size:
        raise DataError(
            f"crop: frame {h}x{w} is smaller than the {size}px crop (resize the short side first)"
        )


def center_box(h: int, w: int, size: int) -> CropBox:
    """torchvision's centre crop position: offset int(round((H - size) / 2))."""
    _check_fits(h, w, size)
    return CropBox(int(round((h - size) / 2)), int(round((w - size) / 2)), size, size)


def random_box(h: int, w: int, size: int, gen: Generator) -> CropBox:
    """A size x size crop at a uniform position (every valid offset, both ends included)."""
    _check_fits(h, w, size)
    return CropBox(randint(gen, 0, h - size), randint(gen, 0, w - size), size, size)


def three_boxes(h: int, w: int, size: int) -> list[CropBox]:
    """GDT/AVT test crops: start, centre, end along the longer side, centred along the shorter."""
    c = center_box(h, w, size)
    if h > w:
        return [c._replace(top=0), c, c._replace(top=h - size)]
    return [c._replace(left=0), c, c._replace(left=w - size)]


def resized_crop_box(
    h: int,
    w: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    gen: Generator,
) -> CropBox:
    """RandomResizedCrop's box (torchvision semantics).

    Up to 10 attempts: area fraction ~ U(scale), log aspect (w/h) ~ U(log ratio), side lengths
    rounded; the first box that fits is placed uniformly. Otherwise the fallback is a centred crop
    of the whole frame, narrowed to the nearest allowed aspect ratio.
    """
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(RRC_ATTEMPTS):
        target = area * float(uniform(gen, *scale))
        aspect = math.exp(float(uniform(gen, *log_ratio)))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return CropBox(randint(gen, 0, h - ch), randint(gen, 0, w - cw), ch, cw)
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        cw, ch = int(round(h * max(ratio))), h
    else:
        cw, ch = w, h
    return CropBox((h - ch) // 2, (w - cw) // 2, ch, cw)


# ----------------------------------------------------------------------------------- photometric
def rgb_to_gray(x: Tensor) -> Tensor:
    """[..., 3, H, W] -> [..., 1, H, W] luma."""
    r, g, b = x.unbind(-3)
    out = r * GRAY_WEIGHTS[0]
    return out.add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(-3)


def sample_jitter(
    gen: Generator,
    brightness: float,
    contrast: float,
    saturation: float,
    p: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """One clip's colour jitter: factors [1, 3] ~ U[max(0, 1 - s), 1 + s] (all 1 when not applied,
    probability 1 - p) and a random order [1, 3]. Draws the same numbers whatever p is."""
    on = bernoulli(gen, p)
    strengths = (brightness, contrast, saturation)
    factors = torch.stack([uniform(gen, max(0.0, 1.0 - s), 1.0 + s) for s in strengths])
    factors = torch.where(on, factors, torch.ones_like(factors)).float()
    return factors[None], torch.randperm(3, generator=gen)[None]


def _selected(x: Tensor, sel: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """(clips to work on, their indices): x itself when all are selected (indices None), a copy of
    the selected ones otherwise, (None, None) when none is."""
    if not bool(sel.any()):
        return None, None
    if bool(sel.all()):
        return x, None
    idx = sel.nonzero()[:, 0].to(x.device)
    return x[idx], idx


def _write_back(x: Tensor, y: Tensor, idx: Tensor | None) -> Tensor:
    if idx is None:
        if y is not x:
            x.copy_(y)
    else:
        x[idx] = y
    return x


def color_jitter_(x: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """In-place `color_jitter`; clips whose factors are all 1 (jitter not applied) are not touched."""
    assert x.dim() == 5 and x.shape[2] == 3, x.shape
    sel = (factors != 1).any(1)
    y, idx = _selected(x, sel)
    if y is None:
        return x
    factors = factors[sel].to(x.device, x.dtype)
    order = order[sel].to(x.device)
    view = (-1, 1, 1, 1, 1)
    for step in range(3):
        op = order[:, step]
        f = factors.gather(1, op[:, None])[:, 0]
        # blend(y, ref, f) = f y + (1 - f) ref, with ref = 0 | mean luma of the frame | luma
        w_mean = torch.where(op == 1, 1.0 - f, 0.0).view(view)
        w_gray = torch.where(op == 2, 1.0 - f, 0.0).view(view)
        gray = rgb_to_gray(y) if bool((op != 0).any()) else None
        y.mul_(f.view(view))
        if gray is not None:
            y.add_(gray * w_gray + gray.mean((-2, -1), keepdim=True) * w_mean)
        y.clamp_(0.0, 1.0)
    return _write_back(x, y, idx)


def color_jitter(x: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """Brightness/contrast/saturation on float clips [B, T, 3, H, W] in [0, 1], per frame.

    Each op blends a frame with a reference and clamps to [0, 1]: brightness with black, contrast
    with the mean luma of that frame, saturation with the frame's luma; ops run in each clip's own
    `order`. factors [B, 3], order [B, 3] as in `PhotoParams`.
    """
    return color_jitter_(x.clone(), factors, order)


def random_grayscale_(x: Tensor, mask: Tensor) -> Tensor:
    y, idx = _selected(x, mask)
    if y is None:
        return x
    return _write_back(x, rgb_to_gray(y).expand_as(y), idx)


def random_grayscale(x: Tensor, mask: Tensor) -> Tensor:
    """Clips [B, T, 3, H, W] whose `mask` [B] is set become 3 equal luma channels."""
    return random_grayscale_(x.clone(), mask)


def gaussian_kernel(sigma: Tensor, size: int) -> Tensor:
    """Normalised 1-D Gaussian taps [N, size] for sigmas [N], centred (torchvision's kernel)."""
    half = (size - 1) / 2
    t = torch.linspace(-half, half, size, dtype=torch.float64)
    k = torch.exp(-0.5 * (t[None] / sigma.double()[:, None]) ** 2)
    return k / k.sum(1, keepdim=True)


def gaussian_blur_(x: Tensor, sigma: Tensor, kernel: int = 11) -> Tensor:
    assert kernel % 2 == 1, kernel
    y, idx = _selected(x, sigma > 0)
    if y is None:
        return x
    n, t, c, h, w = y.shape
    size = min(kernel, 2 * min(h, w) - 1)
    taps = gaussian_kernel(sigma[sigma > 0], size).to(x.device, x.dtype).repeat_interleave(t * c, 0)
    groups = n * t * c
    z = F.pad(y.reshape(1, groups, h, w), [size // 2] * 4, mode="reflect")
    z = F.conv2d(z, taps.view(groups, 1, 1, size), groups=groups)
    z = F.conv2d(z, taps.view(groups, 1, size, 1), groups=groups)
    return _write_back(x, z.view(n, t, c, h, w), idx)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel: int = 11) -> Tensor:
    """Isotropic Gaussian blur of clips [B, T, C, H, W], sigma [B] per clip (0 = leave unchanged).

    Separable `kernel`-tap filter, reflect padding (torchvision's). Frames smaller than the kernel
    use the largest odd kernel that reflect padding allows (2 min(H, W) - 1).
    """
    return gaussian_blur_(x.clone(), sigma, kernel)


def photometric(x: Tensor, params: PhotoParams, kernel: int = 11, *, inplace: bool = False) -> Tensor:
    """Jitter, then grayscale, then blur (STiCA's order) of float clips [B, T, 3, H, W].

    Work is done only on the clips each op applies to; `inplace` reuses x's memory. On the CPU,
    batches are processed in chunks of about `CPU_CHUNK` elements: for large clips, cache-sized
    pieces beat one pass over the whole batch (measured ~2x), for small clips the batch is one chunk.
    """
    x = x if inplace else x.clone()
    per_clip = max(1, x[0].numel())
    step = x.shape[0] if x.device.type != "cpu" else max(1, CPU_CHUNK // per_clip)
    for i in range(0, x.shape[0], step):
        part = x[i : i + step]
        color_jitter_(part, params.factors[i : i + step], params.order[i : i + step])
        random_grayscale_(part, params.gray[i : i + step])
        gaussian_blur_(part, params.sigma[i : i + step], kernel)
    return x


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(x - mean[c]) / std[c] over the channel axis of [..., C, H, W]."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / s
