"""`ClipTransform`: one typed config for every video/frame/image pipeline of the five methods.

Pipeline (each step optional): resize the short side (fixed, or U{lo..hi} per clip) -> crop
(centre / random / RandomResizedCrop / three-crop) to `size` x `size` -> horizontal flip ->
colour jitter -> grayscale -> Gaussian blur -> normalise. The presets in `views.py` fill it in
from the specs.

    t = ClipTransform(size=112, crop="resized", scale=(0.25, 1.0), flip=0.5, mean=..., std=...)
    x = t(frames_thwc, gen)              # [C, T, 112, 112]
    xb = t.batch(list_of_clips, gens)    # [B, C, T, 112, 112], photometric ops batched
    v = t.views(frames_thwc)             # eval: [V, C, T, S, S] (V = 3 for three-crop, x2 with test_flips)
    im = t.image(img_hwc, gen)           # [3, S, S]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Generator, Tensor

from xmodal.errors import ConfigError, closest

from ._rng import bernoulli, randint, uniform
from .video import (
    CropBox,
    Interpolation,
    PhotoParams,
    center_box,
    crop,
    hflip,
    normalize,
    photometric,
    random_box,
    resize,
    resized_crop_box,
    resized_size,
    sample_jitter,
    three_boxes,
    to_float,
    to_frames,
)

CropKind = Literal["center", "random", "resized", "three"]
CROPS = ("center", "random", "resized", "three")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ClipParams(NamedTuple):
    """Every random choice for one clip; applying the same params gives the same output."""

    resize: tuple[int, int] | None  # frame size (h, w) after the pre-crop resize, None = no resize
    box: CropBox  # in the (resized) frame's coordinates
    flip: bool
    photo: PhotoParams  # batch of one


@dataclass(frozen=True)
class ClipTransform:
    """Decoded clip [T, H, W, 3] (uint8 or float in [0, 1]) -> normalised float [3, T, size, size].

    size:          output side (square).
    crop:          "center" | "random" (uniform offset) | "resized" (RandomResizedCrop with
                   `scale`, `ratio`, then resize to size) | "three" (left/centre/right, eval only).
    resize:        short side before cropping: int, or (lo, hi) for U{lo..hi} per clip; None = off.
    interpolation: "bilinear" | "bicubic" | "nearest"; `antialias` for down-scaling.
    flip, jitter, grayscale, blur: probabilities; jitter strengths `brightness`, `contrast`,
                   `saturation` (random order, one set per clip); blur sigma ~ U(blur_sigma) with
                   a `blur_kernel`-tap kernel.
    mean, std:     per-channel normalisation after the [0, 1] scaling.
    test_flips:    `views` also returns the mirrored copy of every spatial view.
    """

    size: int = 112
    crop: CropKind = "center"
    resize: int | tuple[int, int] | None = None
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: Interpolation = "bilinear"
    antialias: bool = True
    flip: float = 0.0
    jitter: float = 0.0
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    grayscale: float = 0.0
    blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 11
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    test_flips: bool = False

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(f"ClipTransform.{name}: expected {expected}, found {getattr(self, name)!r}")

        if self.crop not in CROPS:
            raise ConfigError(
                f"ClipTransform.crop: expected one of {CROPS}, found {self.crop!r}{closest(str(self.crop), CROPS)}"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"ClipTransform.interpolation: expected one of {INTERPOLATIONS}, found {self.interpolation!r}"
                + closest(str(self.interpolation), INTERPOLATIONS)
            )
        if self.size < 1:
            raise bad("size", "a positive side length")
        lo, hi = self.resize_range or (self.size, self.size)
        if lo > hi or lo < 1 or (lo < self.size and self.crop != "resized"):
            raise bad(
                "resize", f"a short side >= size {self.size}, or a range (lo, hi) with size <= lo <= hi"
            )
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise bad("scale", "0 < low <= high <= 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise bad("ratio", "0 < low <= high")
        for name in ("flip", "jitter", "grayscale", "blur"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, "a probability in [0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise bad(name, "a non-negative strength")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise bad("blur_kernel", "an odd positive size")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise bad("blur_sigma", "0 < low <= high")
        if min(self.std) <= 0:
            raise bad("std", "positive values")

    # ---------------------------------------------------------------------------------- facts
    @property
    def resize_range(self) -> tuple[int, int] | None:
        if self.resize is None:
            return None
        if isinstance(self.resize, int):
            return self.resize, self.resize
        return tuple(self.resize)

    @property
    def random(self) -> bool:
        """Whether outputs depend on the generator (then calls must pass one)."""
        r = self.resize_range
        return (
            self.crop in ("random", "resized")
            or (r is not None and r[0] < r[1])
            or any(p > 0 for p in (self.flip, self.jitter, self.grayscale, self.blur))
        )

    @property
    def n_views(self) -> int:
        """How many spatial views `views` returns."""
        return (3 if self.crop == "three" else 1) * (2 if self.test_flips else 1)

    # -------------------------------------------------------------------------------- sampling
    def _gen(self, gen: Generator | None) -> Generator:
        if gen is not None:
            return gen
        if self.random:
            raise ValueError("ClipTransform: this transform is random; pass a torch.Generator")
        # Deterministic transform: draws still happen (same code path) but cannot change the output.
        return torch.Generator().manual_seed(0)

    def sample(self, h: int, w: int, gen: Generator) -> ClipParams:
        """Draw one clip's parameters for frames of h x w pixels (fixed order of draws)."""
        size = None
        if self.resize_range is not None:
            size = resized_size(h, w, randint(gen, *self.resize_range))
            h, w = size
        if self.crop == "center":
            box = center_box(h, w, self.size)
        elif self.crop == "random":
            box = random_box(h, w, self.size, gen)
        elif self.crop == "resized":
            box = resized_crop_box(h, w, self.scale, self.ratio, gen)
        else:
            raise ValueError("ClipTransform: crop='three' gives several views; call views() instead")
        flip = bool(bernoulli(gen, self.flip))
        factors, order = sample_jitter(gen, self.brightness, self.contrast, self.saturation, self.jitter)
        gray = bernoulli(gen, self.grayscale, 1)
        blur_on = bernoulli(gen, self.blur, 1)
        sigma = torch.where(blur_on, uniform(gen, *self.blur_sigma, 1), torch.zeros(1, dtype=torch.float64))
        return ClipParams(size, box, flip, PhotoParams(factors, order, gray, sigma))

    # -------------------------------------------------------------------------------- applying
    def geometry(self, frames: Tensor, size: tuple[int, int] | None, box: CropBox, flip: bool) -> Tensor:
        """Frames [T, 3, H, W] (any dtype) -> float [T, 3, size, size]: resize, crop, flip.

        uint8 frames are resized as uint8 and converted last (see `video.resize`)."""
        x = frames if size is None else resize(frames, size, self.interpolation, self.antialias)
        x = to_float(resize(crop(x, box), (self.size, self.size), self.interpolation, self.antialias))
        return hflip(x) if flip else x

    def apply(self, clips: Sequence[Tensor | np.ndarray], params: Sequence[ClipParams]) -> Tensor:
        """Clips [T, H, W, 3] with their params -> [B, 3, T, size, size] (equal T required)."""
        frames = [self.geometry(to_frames(c), p.resize, p.box, p.flip) for c, p in zip(clips, params)]
        if len({f.shape[0] for f in frames}) > 1:
            raise ValueError(
                f"ClipTransform.apply: clips of different lengths {[f.shape[0] for f in frames]}"
            )
        photo = PhotoParams.cat([p.photo for p in params])
        x = photometric(torch.stack(frames), photo, self.blur_kernel, inplace=True)
        return self._finish(x)

    def _finish(self, x: Tensor) -> Tensor:
        # contiguous first: normalising the channels-last view costs ~10x more
        return normalize(x.contiguous(), self.mean, self.std).permute(0, 2, 1, 3, 4).contiguous()

    def batch(self, clips: Sequence[Tensor | np.ndarray], gens: Sequence[Generator | None]) -> Tensor:
        """B clips, one generator each (the same generator may repeat: draws are sequential, clip
        by clip) -> [B, 3, T, size, size]. Clip i equals ``self(clips[i], gens[i])`` given the
        same generator state."""
        assert len(clips) == len(gens), (len(clips), len(gens))
        params = []
        for c, g in zip(clips, gens):
            h, w = to_frames(c).shape[-2:]
            params.append(self.sample(h, w, self._gen(g)))
        return self.apply(clips, params)

    def __call__(self, clip: Tensor | np.ndarray, gen: Generator | None = None) -> Tensor:
        """One clip [T, H, W, 3] -> [3, T, size, size]; `gen` may be None for deterministic transforms."""
        return self.batch([clip], [gen])[0]

    def image(self, img: Tensor | np.ndarray, gen: Generator | None = None) -> Tensor:
        """One image [H, W, 3] -> [3, size, size] (a one-frame clip)."""
        return self(img, gen)[:, 0]

    def views(self, clip: Tensor | np.ndarray) -> Tensor:
        """Deterministic evaluation views [V, 3, T, size, size]: the centre crop, or the three
        crops (start/centre/end of the long side) for crop="three"; with `test_flips` the mirrored
        views follow the unmirrored ones in the same order."""
        if self.random:
            raise ValueError("ClipTransform.views: evaluation views need a deterministic transform")
        frames = to_frames(clip)
        if self.resize_range is not None:
            size = resized_size(*frames.shape[-2:], self.resize_range[0])
            frames = resize(frames, size, self.interpolation, self.antialias)
        h, w = frames.shape[-2:]
        boxes = three_boxes(h, w, self.size) if self.crop == "three" else [center_box(h, w, self.size)]
        x = to_float(torch.stack([crop(frames, b) for b in boxes]))
        if self.test_flips:
            x = torch.cat([x, hflip(x)])
        return self._finish(x)
