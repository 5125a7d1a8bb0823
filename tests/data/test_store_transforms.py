"""Batched store transforms give the per-sample transforms' results bit for bit, with the same draws."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from xmodal.data._store_transforms import (
    apply_clips,
    cavmae_fbank_batch,
    logfbank_batch,
    mask_params,
    sample_params,
    transform_clips,
)
from xmodal.data.fbank import LogFbankConfig, logfbank
from xmodal.data.transforms import (
    AudioSpec,
    CavmaeAugment,
    ClipTransform,
    SpecAugment,
    clip_preset,
    gdt_specaugment,
    sample_generator,
)

PRESETS = ["ccl_train", "ccl_eval", "gdt_pretrain", "stica_pretrain", "gdt_finetune", "avt_train", "cavmae_image"]


def _preset(name: str, size: int = 24) -> ClipTransform:
    t = clip_preset(name)
    # keep each preset's kind of resize, scaled to small frames (the pre-resize must reach the crop)
    resize = None if t.resize is None else (size if isinstance(t.resize, int) else (size, size + 8))
    return replace(t, size=size, resize=resize)


def _params_equal(a, b) -> bool:
    same = a.resize == b.resize and a.box == b.box and a.flip == b.flip and type(a.flip) is type(b.flip)
    return same and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a.photo, b.photo))


@pytest.mark.parametrize("name", PRESETS)
def test_sample_params_makes_the_same_draws_as_clip_transform_sample(name):
    t = clip_preset(name)
    # (4, 64): RandomResizedCrop often finds no box in 10 attempts and takes its fallback
    sizes = [(240, 320), (300, 226), (4, 64)] if t.crop == "resized" else [(240, 320), (300, 226)]
    for h, w in sizes:
        for seed in range(60):
            g1, g2 = sample_generator(seed, 7), sample_generator(seed, 7)
            if min(h, w) < t.size and t.crop != "resized":
                continue
            ref = t.sample(h, w, g1)
            fast = sample_params(t, h, w, g2)
            assert _params_equal(ref, fast), (name, h, w, seed, ref, fast)
            assert torch.equal(g1.get_state(), g2.get_state())  # the generator is left in the same state


def test_rrc_fallback_is_taken_and_matches():
    t = ClipTransform(size=4, crop="resized", scale=(0.9, 1.0), ratio=(1.0, 1.0))
    boxes = []
    for seed in range(30):
        g1, g2 = sample_generator(seed), sample_generator(seed)
        ref, fast = t.sample(2, 64, g1), sample_params(t, 2, 64, g2)  # a square box never fits 2 x 64
        assert _params_equal(ref, fast) and torch.equal(g1.get_state(), g2.get_state())
        boxes.append(fast.box)
    assert set(boxes) == {(0, 31, 2, 2)}  # centred, narrowed to the ratio


def _clips(n: int, t: int = 4, h: int = 32, w: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, t, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", PRESETS)
def test_apply_clips_equals_clip_transform_apply(name):
    t = _preset(name)
    clips = _clips(6)
    for epoch in range(3):
        gens = [sample_generator(epoch, i) for i in range(6)]
        params = [sample_params(t, 32, 40, g) for g in gens]
        ref = t.apply(list(clips), params)
        assert torch.equal(apply_clips(t, clips, params), ref), name  # stacked input
        assert torch.equal(apply_clips(t, [c.numpy() for c in clips], params), ref), name  # list of arrays


def test_direct_crops_flips_and_photometric_match_the_reference():
    # random crops of the output size need no resampling: the batched gather path, with flips,
    # jitter, grayscale and blur all present in one batch
    t = ClipTransform(size=24, crop="random", flip=0.5, jitter=0.8, grayscale=0.3, blur=0.5)
    clips = _clips(12, t=3)
    gens = [sample_generator(1, i) for i in range(12)]
    params = [sample_params(t, 32, 40, g) for g in gens]
    assert {p.flip for p in params} == {True, False} and bool(torch.cat([p.photo.gray for p in params]).any())
    assert torch.equal(apply_clips(t, clips, params), t.apply(list(clips), params))
    plain = ClipTransform(size=24, crop="random", flip=0.5, mean=(0.0,) * 3, std=(1.0,) * 3)
    out = transform_clips(plain, clips, [sample_generator(2, i) for i in range(12)])
    for i in range(12):  # hand check: a flipped or unflipped window of the clip, pixels / 255
        x = clips[i].permute(3, 0, 1, 2).float() / 255
        hits = [(a, b, f) for a in range(9) for b in range(17) for f in (False, True)
                if torch.equal((x[..., a : a + 24, b : b + 24].flip(-1) if f else x[..., a : a + 24, b : b + 24]), out[i])]  # fmt: skip
        assert len(hits) == 1


def test_transform_clips_equals_batch_for_images_and_deterministic_transforms():
    t = _preset("cavmae_image", 16)
    imgs = [c[:1] for c in _clips(5, t=1, h=20, w=30)]  # one-frame clips
    assert torch.equal(transform_clips(t, imgs, [None] * 5), t.batch([i[0] for i in imgs], [None] * 5))
    with pytest.raises(ValueError, match="random"):
        transform_clips(_preset("ccl_train"), imgs, [None] * 5)


@pytest.mark.parametrize("sa", [SpecAugment(freq_width=8, time_width=20), gdt_specaugment("heavy"),
                                SpecAugment(freq_width=0, time_width=5, freq_masks=0, time_masks=3)])  # fmt: skip
def test_mask_params_equal_spec_augment_sample(sa):
    gens = [sample_generator(3, i) for i in range(20)]
    ref_gens = [sample_generator(3, i) for i in range(20)]
    got = mask_params(sa, 64, 100, gens)
    ref = [sa.sample(64, 100, g) for g in ref_gens]
    assert torch.equal(got.freq, torch.cat([r.freq for r in ref])) and torch.equal(got.time, torch.cat([r.time for r in ref]))
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(gens, ref_gens))


@pytest.mark.parametrize("train", [True, False])
def test_cavmae_fbank_batch_equals_per_sample_augment(train):
    aug = CavmaeAugment(target_frames=50, specaugment=SpecAugment(freq_width=6, time_width=12), noise=True)
    g = torch.Generator().manual_seed(0)
    raw = [torch.randn(n, 16, generator=g) - 5 for n in (50, 37, 80, 1)]  # exact, short, long, one frame
    gens = [sample_generator(0, 4, i) for i in range(4)] if train else [None] * 4
    ref_gens = [sample_generator(0, 4, i) for i in range(4)] if train else [None] * 4
    got = cavmae_fbank_batch(aug, raw, gens, train=train)
    ref = torch.stack([aug.fbank(r, rg, train=train) for r, rg in zip(raw, ref_gens)])
    assert got.shape == (4, 50, 16) and torch.equal(got, ref)


def test_logfbank_batch_equals_audio_spec():
    cfg = LogFbankConfig(sample_rate=16000, nfilt=20)
    spec = AudioSpec(gain=None, spec_mean=1.93, spec_std=17.89, specaugment=gdt_specaugment("medium"))
    g = torch.Generator().manual_seed(1)
    waves = [torch.randn(n, generator=g) * 3000 for n in (8000, 8000, 6000)]
    for frames in (49, None):
        ws = waves if frames else waves[:2]
        gens = [sample_generator(5, i) for i in range(len(ws))]
        ref_gens = [sample_generator(5, i) for i in range(len(ws))]
        got = logfbank_batch(spec, ws, gens, cfg, frames)
        ref = torch.stack([spec(w, lambda x: logfbank(x, cfg), rg, frames) for w, rg in zip(ws, ref_gens)])
        assert torch.equal(got, ref)
    np.testing.assert_array_equal(got.shape, (2, 1, 20, 49))
