import math

import pytest
import torch
import torch.nn.functional as F

from xmodal.data.transforms import (
    CropBox,
    PhotoParams,
    center_box,
    color_jitter,
    gaussian_blur,
    normalize,
    photometric,
    random_grayscale,
    resize,
    resize_short,
    resized_crop_box,
    rgb_to_gray,
    sample_generator,
    three_boxes,
    to_frames,
)
from xmodal.data.transforms.video import gaussian_kernel, resized_size
from xmodal.errors import DataError


def test_layout_and_sizes():
    clip = torch.zeros(5, 6, 7, 3, dtype=torch.uint8)
    assert to_frames(clip).shape == (5, 3, 6, 7) and to_frames(clip).dtype == torch.uint8
    assert to_frames(torch.zeros(6, 7, 3)).shape == (1, 3, 6, 7)
    assert to_frames(torch.zeros(2, 6, 7, 1)).shape == (2, 3, 6, 7)
    with pytest.raises(DataError):
        to_frames(torch.zeros(2, 3, 6, 7))
    assert resized_size(240, 320, 112) == (112, 149)
    assert resized_size(320, 240, 112) == (149, 112)
    assert resize_short(torch.rand(2, 3, 240, 320), 128).shape == (2, 3, 128, 170)
    up = resize(torch.rand(1, 3, 4, 4), (9, 9), "bicubic")
    assert up.min() >= 0 and up.max() <= 1


def test_center_and_three_boxes():
    assert center_box(128, 170, 128) == CropBox(0, 21, 128, 128)
    assert center_box(10, 10, 5) == CropBox(2, 2, 5, 5)  # int(round(2.5)) = 2 (torchvision)
    assert three_boxes(128, 170, 128) == [
        CropBox(0, 0, 128, 128),
        CropBox(0, 21, 128, 128),
        CropBox(0, 42, 128, 128),
    ]
    assert three_boxes(170, 128, 128) == [
        CropBox(0, 0, 128, 128),
        CropBox(21, 0, 128, 128),
        CropBox(42, 0, 128, 128),
    ]
    with pytest.raises(DataError):
        center_box(100, 200, 112)


def test_resized_crop_box_bounds_over_many_draws():
    h, w = 120, 160
    scale, ratio = (0.25, 1.0), (3 / 4, 4 / 3)
    gen = sample_generator(0)
    areas, aspects = [], []
    for _ in range(2000):
        b = resized_crop_box(h, w, scale, ratio, gen)
        assert 0 <= b.top and b.top + b.height <= h and 0 <= b.left and b.left + b.width <= w
        # side lengths are rounded: allow half a pixel on each side
        lo = (b.width - 0.5) * (b.height - 0.5) / (h * w)
        hi = (b.width + 0.5) * (b.height + 0.5) / (h * w)
        assert lo <= scale[1] + 1e-9 and hi >= scale[0] - 1e-9
        lo_ratio, hi_ratio = (b.width - 0.5) / (b.height + 0.5), (b.width + 0.5) / (b.height - 0.5)
        assert lo_ratio <= ratio[1] and hi_ratio >= ratio[0]
        areas.append(b.width * b.height / (h * w))
        aspects.append(b.width / b.height)
    assert min(areas) < 0.3 and max(areas) > 0.9
    assert min(aspects) < 0.8 and max(aspects) > 1.25


def test_resized_crop_box_fallback():
    # A 10 x 1000 strip cannot hold a square of >= half its area: every attempt fails
    b = resized_crop_box(10, 1000, (0.5, 1.0), (1.0, 1.0), sample_generator(0))
    assert b == CropBox(0, 495, 10, 10)
    b = resized_crop_box(1000, 10, (0.5, 1.0), (1.0, 1.0), sample_generator(0))
    assert b == CropBox(495, 0, 10, 10)
    # too square for ratio >= 3: the whole width, height narrowed to round(10 / 3), centred
    assert resized_crop_box(10, 10, (0.9, 1.0), (3.0, 4.0), sample_generator(0)) == CropBox(3, 0, 3, 10)


def _jitter_reference(frame: torch.Tensor, factors, order) -> torch.Tensor:
    """torchvision's adjust_brightness/contrast/saturation on one [3, H, W] frame."""
    x = frame.clone()
    for op in order:
        f = float(factors[op])
        gray = 0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]
        if op == 0:
            ref = torch.zeros_like(x)
        elif op == 1:
            ref = gray.mean().expand_as(x)
        else:
            ref = gray.expand_as(x)
        x = (f * x + (1 - f) * ref).clamp(0, 1)
    return x


def test_color_jitter_matches_per_frame_reference_and_never_mixes_frames():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 4, 3, 5, 6, generator=gen)
    factors = torch.tensor([[1.3, 0.6, 0.2], [0.7, 1.4, 1.8]])
    order = torch.tensor([[2, 0, 1], [1, 2, 0]])
    out = color_jitter(x, factors, order)
    for b in range(2):
        for t in range(4):
            ref = _jitter_reference(x[b, t], factors[b].tolist(), order[b].tolist())
            torch.testing.assert_close(out[b, t], ref, atol=1e-6, rtol=0)
    # frames that differ (pure red, green, blue, grey) keep their own content: permuting frames commutes
    clip = torch.zeros(1, 4, 3, 2, 2)
    clip[0, 0, 0], clip[0, 1, 1], clip[0, 2, 2], clip[0, 3] = 1.0, 1.0, 1.0, 0.5
    f, o = torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[0, 1, 2]])
    out = color_jitter(clip, f, o)
    for t, w in enumerate((0.2989, 0.587, 0.114)):
        torch.testing.assert_close(out[0, t], torch.full((3, 2, 2), w))  # saturation 0 -> own luma
    torch.testing.assert_close(out[0, 3], torch.full((3, 2, 2), 0.5 * (0.2989 + 0.587 + 0.114)))
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(color_jitter(clip[:, perm], f, o), out[:, perm])
    # factors of 1 are the identity
    assert torch.equal(color_jitter(x, torch.ones(2, 3), order), x)


def test_random_grayscale():
    x = torch.rand(3, 2, 3, 4, 4)
    out = random_grayscale(x, torch.tensor([True, False, True]))
    assert torch.equal(out[1], x[1])
    for b in (0, 2):
        assert torch.equal(out[b, :, 0], out[b, :, 1]) and torch.equal(out[b, :, 1], out[b, :, 2])
        torch.testing.assert_close(out[b, :, :1], rgb_to_gray(x[b]))


def _blur_reference(img: torch.Tensor, sigma: float, k: int) -> torch.Tensor:
    """Direct 2-D convolution with the outer-product kernel, reflect padding."""
    t = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    k2 = (g[:, None] * g[None, :]).float()
    c = img.shape[0]
    y = F.pad(img[None], [k // 2] * 4, mode="reflect")
    return F.conv2d(y, k2.expand(c, 1, k, k), groups=c)[0]


def test_gaussian_blur_matches_2d_reference_and_skips_sigma_zero():
    x = torch.rand(3, 2, 3, 16, 14, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.5, 0.0, 1.7], dtype=torch.float64)
    out = gaussian_blur(x, sigma, 11)
    assert torch.equal(out[1], x[1])
    for b in (0, 2):
        for t in range(2):
            torch.testing.assert_close(
                out[b, t], _blur_reference(x[b, t], float(sigma[b]), 11), atol=1e-5, rtol=0
            )


def test_gaussian_blur_isotropic():
    x = torch.zeros(1, 1, 3, 31, 31)
    x[..., 15, 15] = 1.0
    sigma = 1.3
    out = gaussian_blur(x, torch.tensor([sigma]), 11)[0, 0, 0]
    assert torch.allclose(out, out.t(), atol=1e-7) and torch.allclose(out, out.flip(0), atol=1e-7)
    taps = gaussian_kernel(torch.tensor([sigma]), 11)[0]
    t = torch.arange(11, dtype=torch.float64) - 5
    var = float((taps * t**2).sum())
    pos = torch.arange(31, dtype=torch.float32) - 15
    row_var = float((out.sum(0) * pos**2).sum())
    col_var = float((out.sum(1) * pos**2).sum())
    assert math.isclose(row_var, col_var, rel_tol=1e-5) and math.isclose(row_var, var, rel_tol=1e-4)
    assert var < sigma**2  # truncated at +-5 taps, slightly below sigma^2


def test_blur_small_frames_use_a_smaller_kernel():
    x = torch.rand(1, 1, 3, 4, 5)
    out = gaussian_blur(x, torch.tensor([2.0]), 11)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out.mean(), x.mean(), atol=0.15, rtol=0)


def test_normalize():
    x = torch.ones(2, 3, 4, 4) * 0.5
    out = normalize(x, (0.5, 0.25, 0.0), (1.0, 0.5, 0.25))
    assert (
        out[:, 0].abs().max() == 0
        and torch.allclose(out[:, 1], torch.tensor(0.5))
        and torch.allclose(out[:, 2], torch.tensor(2.0))
    )


def test_photometric_chunks_match_per_clip_and_leave_input_alone(monkeypatch):
    import xmodal.data.transforms.video as video

    x = torch.rand(5, 2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    params = PhotoParams(
        factors=torch.tensor(
            [[1.2, 0.7, 0.5], [1.0, 1.0, 1.0], [0.9, 1.3, 1.1], [1.0, 1.0, 1.0], [0.6, 1.0, 1.4]]
        ),
        order=torch.tensor([[0, 1, 2], [2, 1, 0], [1, 2, 0], [0, 2, 1], [2, 0, 1]]),
        gray=torch.tensor([False, True, False, False, True]),
        sigma=torch.tensor([0.0, 0.8, 1.5, 0.0, 0.3], dtype=torch.float64),
    )
    before = x.clone()
    whole = photometric(x, params)
    assert torch.equal(x, before)
    monkeypatch.setattr(video, "CPU_CHUNK", 2 * x[0].numel())  # chunks of 2 clips
    chunked = photometric(x, params)
    per_clip = torch.cat(
        [photometric(x[i : i + 1], PhotoParams(*(p[i : i + 1] for p in params))) for i in range(5)]
    )
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(per_clip, whole, atol=1e-6, rtol=0)
    assert torch.equal(whole[3], x[3])  # nothing applies to clip 3
