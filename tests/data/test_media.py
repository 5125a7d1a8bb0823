"""Media decode/encode on real files written with PyAV's bundled FFmpeg (H.264, AAC, PCM)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

pytest.importorskip("av")

from xmodal.data.media import MediaError, decode_audio, decode_video, probe, write_av  # noqa: E402

_decode_video, _decode_audio = decode_video, decode_audio
from xmodal.errors import DataError  # noqa: E402

SR = 16000
FPS = 25
T = 50  # 2 s


def _frames(t=T, h=48, w=64, seed=0) -> np.ndarray:
    """Smooth background + a bright square moving 1 px/frame: codec-friendly and time-coded."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    base = np.stack([0.2 + 0.3 * xx, 0.2 + 0.3 * yy, 0.4 + 0.1 * np.sin(6 * xx)], -1)
    v = np.repeat(base[None], t, 0)
    for i in range(t):
        v[i, 8:24, i % (w - 16) : i % (w - 16) + 16] = (0.9, 0.8, 0.2)
    v += 0.02 * rng.standard_normal((t, h, w, 1))  # luminance grain
    return (np.clip(v, 0, 1) * 255 + 0.5).astype(np.uint8)


def _audio(seconds=2.0, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = np.arange(int(seconds * SR))
    x = 0.3 * np.sin(2 * np.pi * 440 * n / SR) * np.sin(
        2 * np.pi * 1.5 * n / SR
    ) + 0.05 * rng.standard_normal(len(n))
    return x.astype(np.float32)


@pytest.fixture(params=["pyav", "torchcodec"])
def backend(request):
    """Every decode test runs on PyAV, and on torchcodec where it is installed."""
    if request.param == "torchcodec":
        pytest.importorskip("torchcodec.decoders")
    return request.param


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    frames, audio = _frames(), _audio()
    path = write_av(d / "clip.mp4", frames, FPS, audio, SR, gop=10)
    return path, frames, audio


def test_probe(clip):
    path, frames, _ = clip
    info = probe(path)
    assert info.has_video and info.has_audio
    assert (info.width, info.height) == (64, 48)
    assert info.fps == pytest.approx(FPS) and info.num_frames == T
    assert info.duration == pytest.approx(2.0, abs=0.03)
    assert (info.sample_rate, info.channels) == (SR, 1)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")


def test_round_trip_within_codec_tolerance(clip, backend):
    path, frames, audio = clip
    v = decode_video(path, backend=backend)
    assert v.frames.shape == frames.shape and v.frames.dtype == np.uint8
    np.testing.assert_allclose(v.times, np.arange(T) / FPS, atol=1e-6)
    err = np.abs(v.frames.astype(int) - frames).mean(axis=(1, 2, 3))
    assert err.max() < 6.0, err  # crf 18 and 4:2:0 chroma; most of it is the grain the codec smooths
    shifted = np.abs(v.frames[1:].astype(int) - frames[:-1]).mean(axis=(1, 2, 3))
    assert (shifted > err[1:] + 1).all()  # frame i decodes to frame i, not a neighbour
    a = decode_audio(path, backend=backend)
    # AAC priming is dropped by FFmpeg (edit list) and end padding by us: same length, no lag
    assert a.dtype == np.float32 and len(a) == len(audio)
    xc = [np.dot(a[100 + k : -100 + k], audio[100:-100]) for k in range(-3, 4)]
    assert int(np.argmax(xc)) == 3
    snr = 10 * np.log10((audio**2).sum() / ((a - audio) ** 2).sum())
    assert snr > 15, snr


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_aac_click_keeps_its_time(tmp_path, ext, backend):
    x = np.zeros(SR, np.float32)
    x[5000] = 0.9
    a = decode_audio(write_av(tmp_path / f"c.{ext}", None, FPS, x, SR), backend=backend)
    assert int(np.argmax(np.abs(a))) == 5000


def test_resample_and_channels(tmp_path, backend):
    """44.1 kHz stereo PCM -> 16 kHz: a click stays at its time; 'first' is the left channel."""
    x = np.zeros((2, 44100), np.float32)
    x[0, 22050], x[1, 22050] = 0.8, -0.4
    x[0] += 0.25
    x[1] += -0.05
    path = write_av(tmp_path / "s.mkv", None, FPS, x, 44100, audio_codec="pcm_s16le")
    first = decode_audio(path, backend=backend)
    mean = decode_audio(path, channel="mean", backend=backend)
    assert len(first) == SR
    assert int(np.argmax(np.abs(first - 0.25))) == 8000  # 0.5 s
    assert np.median(first) == pytest.approx(0.25, abs=1e-3)
    assert np.median(mean) == pytest.approx(0.10, abs=1e-3)
    with pytest.raises(DataError, match="channel"):
        decode_audio(path, channel="left", backend=backend)


def test_seek_window_decodes_only_part(clip, backend):
    path, _, audio = clip
    full = decode_video(path, backend=backend)
    w = decode_video(path, start=1.2, end=1.5, backend=backend)
    np.testing.assert_allclose(w.times, [1.2, 1.24, 1.28, 1.32, 1.36, 1.40, 1.44, 1.48], atol=1e-6)
    keep = (full.times >= 1.2 - 1e-6) & (full.times < 1.5)
    np.testing.assert_array_equal(w.frames, full.frames[keep])
    if backend == "pyav":  # torchcodec does not report its decoding cost
        assert w.decoded <= 10 + 8 < full.decoded  # from the keyframe at 1.2 s (gop 10), not from 0
    fa = decode_audio(path, backend=backend)
    wa = decode_audio(path, start=1.03, end=1.5, backend=backend)
    assert len(wa) == round(0.47 * SR)
    np.testing.assert_allclose(wa, fa[round(1.03 * SR) : round(1.5 * SR)], atol=1e-6)
    tail = decode_audio(path, start=1.9, backend=backend)
    assert len(tail) == round(0.1 * SR)


def test_fps_resampling_nearest_frame(clip, backend):
    path, frames, _ = clip
    down = decode_video(path, fps=10, backend=backend)
    # targets k/10; nearest 25-fps frame, ties (0.1 between 0.08 and 0.12) go to the earlier one
    expected = [int(np.floor(k * 2.5)) for k in range(20)]
    assert len(down.frames) == 20
    np.testing.assert_allclose(down.times, np.array(expected) / FPS, atol=1e-6)
    up = decode_video(path, fps=50, start=0.52, end=0.72, backend=backend)
    assert len(up.frames) == 10
    assert len(np.unique(up.times)) == 5  # each frame of [0.52, 0.72) shown twice
    assert len(decode_video(path, fps=10, max_frames=3, backend=backend).frames) == 3
    assert len(decode_video(path, max_frames=7, backend=backend).frames) == 7


def test_resize(clip, tmp_path, backend):
    path, _, _ = clip
    assert decode_video(path, size=24, max_frames=2, backend=backend).frames.shape == (2, 24, 32, 3)
    assert decode_video(path, size=(20, 30), max_frames=2, backend=backend).frames.shape == (2, 20, 30, 3)
    tall = write_av(tmp_path / "tall.mp4", _frames(t=3, h=64, w=32), FPS)
    assert decode_video(tall, size=16, backend=backend).frames.shape == (3, 32, 16, 3)


def test_4k_decodes_with_resize(tmp_path, backend):
    h, w = 2160, 3840
    yy, xx = np.mgrid[:h, :w]
    frame = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 128)], -1).astype(np.uint8)
    path = write_av(tmp_path / "4k.mp4", np.stack([frame, frame]), FPS, preset="ultrafast")
    info = probe(path)
    assert (info.width, info.height) == (w, h)
    v = decode_video(path, size=256, backend=backend)
    assert v.frames.shape == (2, 256, 455, 3)
    # the gradients sampled at the output pixel centres
    r = 255 * (np.arange(455) + 0.5) / 455
    g = 255 * (np.arange(256) + 0.5) / 256
    assert np.abs(v.frames[..., 0] - r[None, None, :]).mean() < 3
    assert np.abs(v.frames[..., 1] - g[None, :, None]).mean() < 3


def test_write_refuses_odd_sizes_and_bad_input(tmp_path):
    with pytest.raises(DataError, match="even"):
        write_av(tmp_path / "odd.mp4", np.zeros((2, 33, 32, 3), np.uint8), FPS)
    with pytest.raises(DataError, match="uint8"):
        write_av(tmp_path / "f.mp4", np.zeros((2, 32, 32, 3), np.float32), FPS)
    with pytest.raises(DataError, match="nothing"):
        write_av(tmp_path / "n.mp4", None, FPS)
    assert not list(tmp_path.iterdir())  # no partial files left behind


def _reason(fn, *args, **kw) -> MediaError:
    with pytest.raises(MediaError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(args[0]))
    return e.value


def test_bad_files_have_reasons(tmp_path, clip, backend):
    path, frames, audio = clip
    decode_video = functools.partial(_decode_video, backend=backend)
    decode_audio = functools.partial(_decode_audio, backend=backend)
    rnd = tmp_path / "random.mp4"
    rnd.write_bytes(np.random.default_rng(1).bytes(4096))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for fn in (probe, decode_video, decode_audio):
        assert _reason(fn, rnd).reason == "corrupt"
        assert _reason(fn, empty).reason == "corrupt"
        assert _reason(fn, tmp_path / "missing.mp4").reason == "unreadable"
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    assert _reason(decode_video, truncated).reason == "corrupt"
    silent = write_av(tmp_path / "silent.mp4", frames[:5], FPS)
    assert _reason(decode_audio, silent).reason == "no_audio"
    assert "no audio stream" in str(_reason(decode_audio, silent))
    wav = write_av(tmp_path / "a.wav", None, FPS, audio, SR)
    assert probe(wav).has_video is False
    assert _reason(decode_video, wav).reason == "no_video"
    assert _reason(decode_video, path, start=5.0).reason == "too_short"
    assert _reason(decode_audio, path, start=5.0).reason == "too_short"
    assert isinstance(_reason(probe, rnd), DataError)


def test_torchcodec_backend_matches_pyav(clip):
    pytest.importorskip("torchcodec.decoders")
    path, _, _ = clip
    for kw in ({}, {"start": 1.2, "end": 1.5}, {"fps": 10}, {"size": 24}):
        a, b = decode_video(path, backend="pyav", **kw), decode_video(path, backend="torchcodec", **kw)
        np.testing.assert_allclose(a.times, b.times, atol=1e-6)
        assert a.frames.shape == b.frames.shape
        assert np.abs(a.frames.astype(int) - b.frames).mean() < (3 if "size" in kw else 1)
    np.testing.assert_allclose(
        decode_audio(path, backend="pyav"), decode_audio(path, backend="torchcodec"), atol=1e-3
    )
