import pytest
import torch

from xmodal.config import from_dict
from xmodal.data.transforms import (
    CLIP_PRESETS,
    AudioSpec,
    CavmaeAugment,
    ClipTransform,
    GDTViews,
    STiCAViews,
    clip_preset,
    sample_generator,
)
from xmodal.data.transforms.views import KINETICS_MEAN
from xmodal.errors import ConfigError

PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def _video(n=40, h=24, w=32, seed=0):
    return torch.randint(
        0, 256, (n, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def _to_spec(wave: torch.Tensor) -> torch.Tensor:
    """Stand-in log-mel: 4 'bands' x one frame per 10 samples, frequency first; time keeps order."""
    frames = wave[: wave.shape[0] // 10 * 10].view(-1, 10).mean(1)
    return torch.stack([frames * (k + 1) for k in range(4)])


def test_gdt_reversal_flips_time_for_video_and_audio_consistently():
    views = GDTViews(
        frames=8,
        fps=10.0,
        video=ClipTransform(size=16, crop="center", **PLAIN),
        audio=AudioSpec(gain=None, specaugment=None),
    )
    video = _video()
    wave = torch.arange(4000, dtype=torch.float32)
    gen = sample_generator(0, 0, 3)
    w1, w2 = views.windows(video.shape[0], gen)
    a1, a2 = (views.audio_window(w, 1000, wave.shape[0]) for w in (w1, w2))
    assert a1.start == w1.start * 100 and a1.length == 800
    s = views(video[w1.indices()], video[w2.indices()], a1.take(wave), a2.take(wave), _to_spec, gen)
    assert s.v.shape == (3, 8, 16, 16) and s.a.shape == (1, 4, views.spec_frames)
    assert torch.equal(s.vr, s.v.flip(1)) and torch.equal(s.v2r, s.v2.flip(1))
    assert torch.equal(s.ar, s.a.flip(-1)) and torch.equal(s.a2r, s.a2.flip(-1))
    # audio and video of a view start at the same time: spectrogram frame j <-> sample start + 10 j
    expected = (_to_spec(a1.take(wave)) - 1.93) / 17.89  # 80 frames, cut to GDT's 79
    torch.testing.assert_close(s.a[0], expected[:, : views.spec_frames])
    # the first video frame of v is frame w1.start; of vr the last frame of the window
    first = views.video(video[w1.start : w1.start + 1])
    torch.testing.assert_close(s.v[:, :1], first)


def test_gdt_default_views_augment_independently_and_pad_spectrogram():
    views = GDTViews(video=clip_preset("gdt_pretrain", size=16, resize=(18, 22)))
    video = _video(n=45)
    wave = torch.randn(2 * 24000)
    gen = sample_generator(1)
    w1, w2 = views.windows(video.shape[0], gen)
    a1, a2 = (views.audio_window(w, 24000, wave.shape[0]) for w in (w1, w2))
    s = views(
        video[w1.indices()],
        video[w2.indices()],
        a1.take(wave),
        a2.take(wave),
        lambda w: torch.ones(40, 60),
        gen,
    )
    assert views.spec_frames == 99 and s.a.shape == (1, 40, 99)
    # AR is exactly A's augmented spectrogram, flipped
    assert torch.equal(s.ar, s.a.flip(-1))
    # to_spec gave ones for 60 frames; the rest is zero padding, both z-normalised (masks set 0)
    kept = s.a[0] != 0
    torch.testing.assert_close(
        s.a[0, :, :60][kept[:, :60]], torch.full_like(s.a[0, :, :60][kept[:, :60]], (1 - 1.93) / 17.89)
    )
    torch.testing.assert_close(
        s.a[0, :, 60:][kept[:, 60:]], torch.full_like(s.a[0, :, 60:][kept[:, 60:]], -1.93 / 17.89)
    )
    assert (~kept).any()  # medium SpecAugment masked something at this seed
    # each video view has its own spatial augmentation
    assert not torch.allclose(s.vr, s.v.flip(1))
    again = views(
        video[w1.indices()],
        video[w2.indices()],
        a1.take(wave),
        a2.take(wave),
        lambda w: torch.ones(40, 60),
        sample_generator(1),
    )
    assert not torch.equal(again.v, s.v)  # generator state differs after windows() ...
    gen = sample_generator(1)
    views.windows(video.shape[0], gen)
    same = views(
        video[w1.indices()],
        video[w2.indices()],
        a1.take(wave),
        a2.take(wave),
        lambda w: torch.ones(40, 60),
        gen,
    )
    assert all(torch.equal(x, y) for x, y in zip(same, s))  # ... and replays exactly from the same state


def test_stica_two_views_of_one_clip():
    views = STiCAViews(frames=8, fps=10.0, video=clip_preset("stica_pretrain", size=16))
    video = _video(n=30)
    wave = torch.randn(3000)
    gen = sample_generator(2)
    w = views.window(video.shape[0], gen)
    aw = views.audio_window(w, 1000, wave.shape[0])
    s = views(video[w.indices()], aw.take(wave), lambda x: torch.full((6, 70), 2.0), gen)
    assert s.video.shape == (2, 3, 8, 16, 16) and not torch.allclose(s.video[0], s.video[1])
    assert s.audio.shape == (1, 6, views.spec_frames) and views.spec_frames == 79
    assert (s.audio[0, :, :70] == 2.0).all() and (s.audio[0, :, 70:] == 0).all()  # no z-norm, no masks


def test_cavmae_fbank_pipeline():
    aug = CavmaeAugment()
    fb = torch.full((998, 128), -3.0)
    ev = aug.fbank(fb, None, train=False)
    assert ev.shape == (1024, 128)
    torch.testing.assert_close(ev[:998], torch.full((998, 128), (-3.0 + 5.081) / 4.4849))
    torch.testing.assert_close(ev[998:], torch.full((26, 128), 5.081 / 4.4849))
    assert aug.fbank(torch.zeros(1500, 128), None, train=False).shape == (1024, 128)
    tr = aug.fbank(fb, sample_generator(3), train=True)
    assert tr.shape == (1024, 128)
    # every cell is a data value (0.464) or a zero/padded value (1.133), plus noise in [0, 0.1)
    data, zero = (-3.0 + 5.081) / 4.4849, 5.081 / 4.4849
    near = lambda v: (tr - v >= 0) & (tr - v < 0.1)
    assert (near(data) | near(zero)).all()
    assert near(zero).all(1).sum() >= 26  # padded rows (rolled somewhere) + time-masked rows
    no_noise = CavmaeAugment(noise=False).fbank(fb, sample_generator(3), train=True)
    masked = torch.isclose(no_noise, torch.tensor(5.081 / 4.4849))
    assert masked[:998].any()  # SpecAugment zeros in the log domain read 1.133 after normalising
    assert torch.equal(aug.fbank(fb, sample_generator(3), train=True), tr)


def test_presets_follow_the_specs():
    assert set(CLIP_PRESETS) == {
        "ccl_train", "ccl_eval", "gdt_pretrain", "stica_pretrain", "gdt_finetune", "gdt_test",
        "avt_train", "avt_eval", "cavmae_image",
    }  # fmt: skip
    ccl = clip_preset("ccl_train")
    assert (ccl.size, ccl.crop, ccl.scale, ccl.flip, ccl.mean) == (
        112,
        "resized",
        (0.25, 1.0),
        0.5,
        KINETICS_MEAN,
    )
    gdt = clip_preset("gdt_pretrain")
    assert (gdt.resize, gdt.crop, gdt.jitter, gdt.mean, gdt.std) == (
        (128, 160),
        "random",
        1.0,
        (0.45,) * 3,
        (0.225,) * 3,
    )
    st = clip_preset("stica_pretrain")
    assert (st.scale, st.jitter, st.grayscale, st.blur, st.blur_kernel, st.blur_sigma) == (
        (0.14, 1.0),
        0.8,
        0.2,
        0.5,
        11,
        (0.1, 2.0),
    )
    assert clip_preset("gdt_test").n_views == 3 and not clip_preset("gdt_test").random
    assert clip_preset("avt_eval").n_views == 6 and clip_preset("avt_train").resize == (248, 280)
    cav = clip_preset("cavmae_image")
    assert (cav.interpolation, cav.resize, cav.size) == ("bicubic", 224, 224)
    big = _video(n=2, h=256, w=340)
    assert clip_preset("gdt_test").views(big).shape == (3, 3, 2, 128, 128)
    assert clip_preset("avt_eval").views(big).shape == (6, 3, 2, 224, 224)
    assert clip_preset("cavmae_image").image(big[0]).shape == (3, 224, 224)
    with pytest.raises(ConfigError, match="ccl_train"):
        clip_preset("ccl_trian")


def test_view_configs_load_from_dicts():
    v = from_dict(GDTViews, {"frames": 16, "video": {"size": 32, "crop": "random", "resize": [36, 40]},
                             "audio": {"gain": None, "specaugment": {"freq_width": 2, "style": "gdt"}}})  # fmt: skip
    assert v.video.resize_range == (36, 40) and v.audio.gain is None and v.audio.specaugment.style == "gdt"
    assert from_dict(CavmaeAugment, {"specaugment": None, "mixup": {"p": 0.0}}).specaugment is None


def test_with_the_real_front_ends():
    from functools import partial

    from xmodal.data.fbank import LogFbankConfig, cavmae_fbank, center_waveform, kaldi_fbank, logfbank
    from xmodal.data.transforms import mix_waveforms

    g = torch.Generator().manual_seed(0)
    # GDT: 2 s of int16-range audio at 24 kHz, 30 fps video
    views = GDTViews(video=clip_preset("gdt_pretrain", size=16, resize=(18, 20)))
    video = _video(n=60)
    wave = (torch.randn(48000, generator=g) * 3000).round()
    gen = sample_generator(9)
    w1, w2 = views.windows(60, gen)
    a1, a2 = (views.audio_window(w, 24000, wave.shape[0]) for w in (w1, w2))
    assert a1.length == 24000 and a1.start == w1.start * 800
    to_spec = partial(logfbank, cfg=LogFbankConfig(nfilt=40))
    s = views(video[w1.indices()], video[w2.indices()], a1.take(wave), a2.take(wave), to_spec, gen)
    assert s.a.shape == (1, 40, 99) and torch.isfinite(s.a).all()
    # CAV-MAE: eval path equals the fbank module's own pipeline; mixup keeps shapes
    w = torch.randn(160000, generator=g) * 0.1
    aug = CavmaeAugment()
    torch.testing.assert_close(aug.fbank(kaldi_fbank(center_waveform(w)), None, train=False), cavmae_fbank(w))
    mixed = mix_waveforms(w, torch.randn(120000, generator=g) * 0.1, 0.4)
    assert aug.fbank(kaldi_fbank(mixed), sample_generator(0), train=True).shape == (1024, 128)
