import pytest
import torch

from xmodal.config import from_dict
from xmodal.data.transforms import (
    ClipTransform,
    CropBox,
    clip_preset,
    crop,
    resize,
    sample_generator,
    to_frames,
)
from xmodal.errors import ConfigError

PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def _clip(t=6, h=40, w=56, seed=0):
    return torch.randint(
        0, 256, (t, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_same_geometry_for_every_frame():
    # frame t = base + t / 50: any per-frame difference in crop/flip would break the constant offset
    base = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(0)) * 0.8
    clip = base + torch.arange(6).view(6, 1, 1, 1) / 50
    t = ClipTransform(size=24, crop="resized", scale=(0.1, 1.0), flip=0.5, **PLAIN)
    for i in range(10):
        out = t(clip, sample_generator(i))
        assert out.shape == (3, 6, 24, 24)
        torch.testing.assert_close(
            out - out[:, :1], (torch.arange(6) / 50).view(1, 6, 1, 1).expand_as(out), atol=1e-5, rtol=0
        )


def test_geometry_crops_and_flips_exactly():
    frames = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).view(2, 3, 10, 12) / 1000
    t = ClipTransform(size=4, crop="random", **PLAIN)
    box = CropBox(3, 5, 4, 4)
    out = t.geometry(frames, None, box, False)
    assert torch.equal(out, frames[..., 3:7, 5:9])
    assert torch.equal(t.geometry(frames, None, box, True), frames[..., 3:7, 5:9].flip(-1))
    assert torch.equal(crop(frames, box), frames[..., 3:7, 5:9])


def test_flip_is_the_mirror_of_the_unflipped_output():
    clip = _clip()
    plain = ClipTransform(size=32, crop="resized", flip=0.0, **PLAIN)
    flipped = ClipTransform(size=32, crop="resized", flip=1.0, **PLAIN)
    for i in range(3):
        a = plain(clip, sample_generator(i))
        b = flipped(clip, sample_generator(i))
        assert torch.equal(b, a.flip(-1))


def test_determinism_and_batch_equivalence():
    t = clip_preset("stica_pretrain", size=24)
    clips = [_clip(seed=s) for s in range(3)]
    single = torch.stack([t(c, sample_generator(5, i)) for i, c in enumerate(clips)])
    batch = t.batch(clips, [sample_generator(5, i) for i in range(3)])
    torch.testing.assert_close(batch, single, atol=1e-6, rtol=0)
    again = t.batch(clips, [sample_generator(5, i) for i in range(3)])
    assert torch.equal(batch, again)
    other = t.batch(clips, [sample_generator(6, i) for i in range(3)])
    assert not torch.allclose(batch, other)


def test_uint8_and_float_inputs_agree():
    clip = _clip()
    t = clip_preset("gdt_pretrain", size=32, resize=(40, 48))
    a = t(clip, sample_generator(1))
    b = t(clip.float() / 255, sample_generator(1))
    # uint8 frames are resized as uint8 (rounded): at most 1/255 before jitter and normalisation
    assert (a - b).abs().max() < 1.4**3 / 255 / 0.225 and (a - b).abs().mean() < 0.5 / 255 / 0.225


def test_center_crop_of_exact_size_is_identity_and_normalises():
    clip = _clip(h=16, w=16)
    t = ClipTransform(size=16, crop="center", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    out = t(clip)  # deterministic: no generator needed
    expected = (to_frames(clip).float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(out, expected.permute(1, 0, 2, 3))


def test_views_three_crops_and_test_flips():
    clip = _clip(t=2, h=30, w=50)
    t = ClipTransform(size=20, crop="three", resize=20, test_flips=True, **PLAIN)
    v = t.views(clip)
    assert v.shape == (6, 3, 2, 20, 20) and t.n_views == 6
    resized = resize(to_frames(clip), (20, 33)).float() / 255
    assert (
        resized - resize(to_frames(clip).float() / 255, (20, 33))
    ).abs().max() <= 1 / 255  # fixed-point weights + rounding
    for k, left in enumerate((0, 6, 13)):
        torch.testing.assert_close(v[k], resized[..., left : left + 20].permute(1, 0, 2, 3))
        torch.testing.assert_close(v[3 + k], v[k].flip(-1))
    # portrait frames: crops run along the height
    tall = ClipTransform(size=20, crop="three", **PLAIN).views(_clip(t=1, h=50, w=20))
    frames = to_frames(_clip(t=1, h=50, w=20)).float() / 255
    torch.testing.assert_close(tall[2, :, 0], frames[0, :, 30:50])


def test_image_and_bicubic_range():
    img = _clip(t=1, h=60, w=80)[0]
    t = clip_preset("cavmae_image", size=32)
    out = t.image(img)
    assert out.shape == (3, 32, 32)
    lo = (0 - torch.tensor(t.mean)) / torch.tensor(t.std)
    hi = (1 - torch.tensor(t.mean)) / torch.tensor(t.std)
    assert (out >= lo.view(3, 1, 1) - 1e-6).all() and (out <= hi.view(3, 1, 1) + 1e-6).all()


def test_blur_sigma_drawn_in_range_and_jitter_one_set_per_clip():
    t = ClipTransform(size=8, crop="center", jitter=0.8, blur=0.5, grayscale=0.2, **PLAIN)
    sig, on, gray, orders = [], 0, 0, set()
    for i in range(400):
        p = t.sample(8, 8, sample_generator(i))
        s = float(p.photo.sigma[0])
        if s > 0:
            assert 0.1 <= s <= 2.0
            sig.append(s)
        on += bool((p.photo.factors != 1).any())
        gray += bool(p.photo.gray[0])
        assert sorted(p.photo.order[0].tolist()) == [0, 1, 2]
        orders.add(tuple(p.photo.order[0].tolist()))
        f = p.photo.factors[0]
        assert ((f >= 0.6) & (f <= 1.4)).all()
    assert 150 < len(sig) < 250 and min(sig) < 0.3 and max(sig) > 1.8
    assert 280 < on < 360 and 50 < gray < 120 and len(orders) == 6


def test_config_errors_and_from_dict():
    with pytest.raises(ConfigError, match="did you mean 'resized'"):
        ClipTransform(crop="resize")
    with pytest.raises(ConfigError, match="resize"):
        ClipTransform(size=112, crop="random", resize=100)
    with pytest.raises(ConfigError, match="flip"):
        ClipTransform(flip=1.5)
    with pytest.raises(ConfigError, match="blur_kernel"):
        ClipTransform(blur_kernel=10)
    with pytest.raises(ValueError, match="Generator"):
        clip_preset("ccl_train")(_clip())
    with pytest.raises(ValueError, match="views"):
        clip_preset("gdt_test")(_clip(), sample_generator(0))
    t = from_dict(ClipTransform, {"size": 32, "crop": "resized", "scale": [0.2, 1.0], "resize": [36, 40]})
    assert t.scale == (0.2, 1.0) and t.resize_range == (36, 40) and t.random
    with pytest.raises(ConfigError):
        from_dict(ClipTransform, {"szie": 32})
