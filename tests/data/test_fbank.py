"""Audio front ends vs independent references: kaldi-native-fbank (C++), frozen arrays, numpy re-statements.

Regenerate the frozen arrays (only if the reference recipe itself changes) with
`python tests/data/test_fbank.py`; they come from kaldi-native-fbank 1.22.4, not from our code.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from xmodal.data.fbank import (
    CAVMAE_MEAN,
    CAVMAE_STD,
    FbankConfig,
    LogFbankConfig,
    _kaldi_mel_matrix,
    _kaldi_window,
    cavmae_fbank,
    center_waveform,
    kaldi_fbank,
    logfbank,
    normalize,
    pad_or_cut,
)
from xmodal.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures" / "fbank_knf.npz"
FIXTURE_CONFIGS = {
    "cavmae": FbankConfig(),
    "povey23_nosnip_energy": FbankConfig(window="povey", num_mel_bins=23, snip_edges=False, use_energy=True),
}
LOG_F32_EPS = math.log(torch.finfo(torch.float32).eps)


# ------------------------------------------------------------------------------------------ signals
def speech_like(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """Voiced syllables (harmonics of a gliding f0 through formant resonators), fricative noise
    bursts, pauses and a brown room-noise floor (about -45 dB); peak about 0.5."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = 130 + 35 * np.sin(2 * np.pi * 0.6 * t + rng.uniform(0, 6)) + 15 * np.sin(2 * np.pi * 3.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    source = sum(np.sin(k * phase) / k for k in range(1, 40))  # 40·180 Hz < 8 kHz
    voiced = np.zeros(n)
    seg = int(0.2 * sr)
    for start in range(0, n, seg):  # a new vowel (three formants) every 200 ms
        part = source[start : start + seg]
        for fc, bw in zip(rng.uniform([300, 900, 2200], [800, 2000, 3200]), (80, 120, 200)):
            r = math.exp(-math.pi * bw / sr)
            part = lfilter([1 - r], [1, -2 * r * math.cos(2 * math.pi * fc / sr), r * r], part)
        voiced[start : start + seg] = part
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6)), 0, None) ** 0.7
    pauses = (np.sin(2 * np.pi * 0.37 * t + rng.uniform(0, 6)) > -0.6).astype(float)
    bursts = lfilter([1, -0.95], [1], rng.standard_normal(n)) * (np.sin(2 * np.pi * 1.3 * t) > 0.85)
    room = lfilter([1.0], [1, -0.99], rng.standard_normal(n))  # brown-ish background, about -55 dB
    x = voiced / np.abs(voiced).max() * syllables * pauses + 0.15 * bursts + 1e-3 * room
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def tones(freqs: tuple[float, ...], seconds: float = 2.0, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (sum(0.3 * np.sin(2 * np.pi * f * t + i) for i, f in enumerate(freqs)) / len(freqs)).astype(
        np.float32
    )


def fixture_signal() -> np.ndarray:
    """0.25 s closed-form signal: chirp + tone + splitmix64-hashed white noise (no RNG stream)."""
    k = np.arange(4000, dtype=np.uint64)
    h = k * np.uint64(0x9E3779B97F4A7C15)  # uint64 arithmetic wraps, as intended
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    noise = (h >> np.uint64(11)).astype(np.float64) / 2.0**53 - 0.5
    t = np.arange(4000) / 16000
    x = (
        0.3 * np.sin(2 * np.pi * (200 * t + 6000 * t * t))
        + 0.1 * np.sin(2 * np.pi * 1234.5 * t)
        + 0.03 * noise
    )
    return x.astype(np.float32)


def knf_fbank(knf, x: np.ndarray, cfg: FbankConfig) -> np.ndarray:
    opts = knf.FbankOptions()
    fo, mo = opts.frame_opts, opts.mel_opts
    fo.samp_freq, fo.dither, fo.window_type = cfg.sample_rate, cfg.dither, cfg.window
    fo.frame_length_ms, fo.frame_shift_ms = cfg.frame_length_ms, cfg.frame_shift_ms
    fo.preemph_coeff, fo.remove_dc_offset, fo.snip_edges = cfg.preemph, cfg.remove_dc, cfg.snip_edges
    fo.round_to_power_of_two, fo.blackman_coeff = cfg.round_to_power_of_two, cfg.blackman_coeff
    mo.num_bins, mo.low_freq, mo.high_freq = cfg.num_mel_bins, cfg.low_freq, cfg.high_freq
    opts.use_energy, opts.energy_floor, opts.raw_energy = cfg.use_energy, cfg.energy_floor, cfg.raw_energy
    opts.htk_compat, opts.use_power, opts.use_log_fbank = cfg.htk_compat, cfg.use_power, cfg.use_log
    f = knf.OnlineFbank(opts)
    f.accept_waveform(cfg.sample_rate, x.tolist())
    f.input_finished()
    return np.stack([f.get_frame(i) for i in range(f.num_frames_ready)])


@pytest.fixture(scope="module")
def knf():
    return pytest.importorskip("kaldi_native_fbank")


def assert_kaldi_close(got: np.ndarray, ref: np.ndarray, tol: float = 1e-3) -> None:
    """`tol` on every bin within 70 dB of its frame's strongest bin, 5·tol anywhere.

    Below that, a bin holds ~1e-7 of its frame's energy: the float32 FFT's rounding (pocketfft here,
    knf's own FFT there; each is ~2e-3 off a float64 FFT) moves its log by up to a few 1e-3.
    """
    assert got.shape == ref.shape
    diff = np.abs(got - ref)
    strong = ref >= ref.max(-1, keepdims=True) - math.log(1e7)
    assert diff[strong].max() <= tol, f"max diff {diff[strong].max():.2e} within 70 dB of the frame peak"
    assert diff.max() <= 5 * tol, f"max diff {diff.max():.2e}"
    assert diff.mean() <= 2e-5, f"mean diff {diff.mean():.2e}"


def ours(x: np.ndarray, cfg: FbankConfig | None = None) -> np.ndarray:
    return kaldi_fbank(torch.from_numpy(x), cfg or FbankConfig()).numpy()


# ------------------------------------------------------------------- Kaldi vs kaldi-native-fbank
@pytest.mark.parametrize(("seconds", "seed"), [(2.0, 0), (5.3, 1), (10.0, 2)])
def test_speech_like_matches_kaldi_native_fbank(knf, seconds, seed):
    x = speech_like(seconds, seed=seed)
    ref, got = knf_fbank(knf, x, FbankConfig()), ours(x)
    assert got.shape == ref.shape == (1 + (len(x) - 400) // 160, 128)
    assert got.dtype == np.float32
    assert_kaldi_close(got, ref)


@pytest.mark.parametrize("freqs", [(1000.0,), (440.0,), (100.0, 2500.0, 7300.0), (250.0, 251.5, 3999.0)])
def test_tones_match_kaldi_native_fbank(knf, freqs):
    x = tones(freqs)
    assert np.abs(ours(x) - knf_fbank(knf, x, FbankConfig())).max() <= 5e-3


@pytest.mark.parametrize(
    "cfg",
    [
        FbankConfig(window="povey", num_mel_bins=23),
        FbankConfig(window="hamming", snip_edges=False),
        FbankConfig(window="rectangular", preemph=0.0, remove_dc=False),
        FbankConfig(window="blackman", low_freq=60.0, high_freq=-400.0, num_mel_bins=80),
        FbankConfig(use_energy=True),
        FbankConfig(use_energy=True, raw_energy=False, htk_compat=True, energy_floor=1.0),
        FbankConfig(use_power=False, frame_length_ms=20.0, round_to_power_of_two=False),
        FbankConfig(sample_rate=8000, num_mel_bins=40, high_freq=3800.0),
    ],
    ids=lambda c: f"{c.window}-{c.num_mel_bins}-snip{int(c.snip_edges)}-e{int(c.use_energy)}",
)
def test_options_match_kaldi_native_fbank(knf, cfg):
    x = speech_like(1.0, sr=cfg.sample_rate, seed=3)
    ref, got = knf_fbank(knf, x, cfg), ours(x, cfg)
    assert got.shape == ref.shape == (cfg.num_frames(len(x)), cfg.num_features)
    assert_kaldi_close(got, ref)


def test_linear_mel_energies_match_relative(knf):
    x = speech_like(1.0, seed=4)
    cfg = FbankConfig(use_log=False)
    ref, got = knf_fbank(knf, x, cfg), ours(x, cfg)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_frozen_reference_arrays():
    data = np.load(FIXTURES)
    x = fixture_signal()
    for name, cfg in FIXTURE_CONFIGS.items():
        got, frames = ours(x, cfg), data[f"{name}_frames"]
        assert got.shape[0] == data[f"{name}_num_frames"]
        assert_kaldi_close(got[frames], data[name])


# ------------------------------------------------------------------ spec recipe, by hand (float64)
def spec_fbank_numpy(x: np.ndarray) -> np.ndarray:
    """CAV-MAE spec §8 steps 2-5 in float64 numpy, one frame at a time."""
    n = 1 + (len(x) - 400) // 160
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 399)
    m_lo, m_hi = 1127 * np.log(1 + 20 / 700), 1127 * np.log(1 + 8000 / 700)
    delta = (m_hi - m_lo) / 129
    mel = 1127 * np.log(1 + 31.25 * np.arange(256) / 700)
    banks = np.zeros((128, 257))
    for b in range(128):
        left, center, right = m_lo + b * delta, m_lo + (b + 1) * delta, m_lo + (b + 2) * delta
        banks[b, :256] = np.maximum(
            0, np.minimum((mel - left) / (center - left), (right - mel) / (right - center))
        )
    out = np.empty((n, 128))
    for i in range(n):
        f = x[i * 160 : i * 160 + 400].astype(np.float64)
        f = f - f.mean()
        f = f - 0.97 * np.concatenate([f[:1], f[:-1]])
        power = np.abs(np.fft.rfft(f * window, 512)) ** 2
        out[i] = np.log(np.maximum(banks @ power, np.finfo(np.float32).eps))
    return out


def test_matches_spec_recipe_in_float64():
    x = speech_like(0.5, seed=5)
    # float32 rounding of the low band edges moves the lowest bins by up to ~1e-3 (spec §8 precision)
    assert np.abs(ours(x) - spec_fbank_numpy(x)).max() <= 2e-3


def torchaudio_order_fbank(wave: torch.Tensor) -> torch.Tensor:
    """torchaudio `compliance.kaldi.fbank` (CAV-MAE settings) re-stated plainly for one clip: strided
    frames, replicate-pad pre-emphasis, complex abs, float32 edges from float64 scalars, `torch.mm`."""
    frames = wave.as_strided((1 + (len(wave) - 400) // 160, 400), (160, 1))
    frames = frames - frames.mean(1, keepdim=True)
    frames = frames - 0.97 * torch.nn.functional.pad(frames.unsqueeze(0), (1, 0), mode="replicate")[0, :, :-1]
    frames = torch.nn.functional.pad(frames * torch.hann_window(400, periodic=False), (0, 112))
    power = torch.fft.rfft(frames).abs().pow(2.0)
    m_lo, m_hi = 1127.0 * math.log(1.0 + 20 / 700.0), 1127.0 * math.log(1.0 + 8000 / 700.0)
    b = torch.arange(128).unsqueeze(1)
    delta = (m_hi - m_lo) / 129
    left, center, right = m_lo + b * delta, m_lo + (b + 1.0) * delta, m_lo + (b + 2.0) * delta
    mel = (1127.0 * (1.0 + (31.25 * torch.arange(256)) / 700.0).log()).unsqueeze(0)
    banks = torch.max(
        torch.zeros(1), torch.min((mel - left) / (center - left), (right - mel) / (right - center))
    )
    banks = torch.nn.functional.pad(banks, (0, 1))
    return torch.max(torch.mm(power, banks.T), torch.tensor(torch.finfo(torch.float).eps)).log()


def test_matches_torchaudio_operation_order_in_tiles():
    """Tiled, in-place and batched, the result keeps the reference's float32 rounding (spec: 1e-5)."""
    x = torch.from_numpy(np.stack([speech_like(10.0, seed=s) for s in (20, 21, 22)]))
    got = kaldi_fbank(x)  # 3 x 998 frames: more than one CPU tile
    for i in range(3):
        torch.testing.assert_close(got[i], torchaudio_order_fbank(x[i]), atol=1e-5, rtol=0)


def test_window_and_mel_matrix_by_hand():
    cfg = FbankConfig()
    w = _kaldi_window(cfg, torch.device("cpu"), torch.float32).double().numpy()
    np.testing.assert_allclose(w, 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 399), atol=1e-6)
    banks = _kaldi_mel_matrix(cfg, torch.device("cpu"), torch.float32).numpy()
    assert banks.shape == (257, 128) and banks.flags.c_contiguous
    assert not banks[256].any()  # Nyquist bin
    # 128 bins at 16 kHz: triangle 3 lies between FFT bins 1 and 2 and covers none of them
    assert not banks[:, 3].any() and (banks.sum(0)[np.arange(128) != 3] > 0).all()
    x = speech_like(0.3, seed=6)
    assert (ours(x)[:, 3] == np.float32(LOG_F32_EPS)).all()


def test_frame_counts():
    assert FbankConfig().num_frames(160000) == 998
    assert ours(np.zeros(160000, np.float32)).shape == (998, 128)
    assert ours(np.zeros(400, np.float32)).shape == (1, 128)
    assert FbankConfig(snip_edges=False).num_frames(160000) == 1000
    assert ours(np.zeros(16000, np.float32), FbankConfig(snip_edges=False)).shape == (100, 128)


def test_batched_equals_per_item():
    x = torch.from_numpy(np.stack([speech_like(1.0, seed=s) for s in range(3)]))
    for cfg in (FbankConfig(), FbankConfig(snip_edges=False, use_energy=True, window="povey")):
        batched = kaldi_fbank(x, cfg)
        assert batched.shape == (3, cfg.num_frames(16000), cfg.num_features)
        for i in range(3):
            torch.testing.assert_close(batched[i], kaldi_fbank(x[i], cfg), atol=1e-5, rtol=0)


def test_dither_is_seeded_and_small():
    x = torch.from_numpy(speech_like(0.5, seed=7))
    cfg = FbankConfig(dither=1e-5)
    a = kaldi_fbank(x, cfg, generator=torch.Generator().manual_seed(0))
    b = kaldi_fbank(x, cfg, generator=torch.Generator().manual_seed(0))
    c = kaldi_fbank(x, cfg, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    ref = kaldi_fbank(x)
    assert (a - ref).abs().median() < 1e-2 and (a[:, 3] == LOG_F32_EPS).all()  # triangle 3 stays empty


# --------------------------------------------------------------- pad/cut, normalise, CAV-MAE front end
def test_pad_or_cut():
    fb = torch.randn(998, 128)
    padded = pad_or_cut(fb, 1024)
    assert padded.shape == (1024, 128) and torch.equal(padded[:998], fb) and not padded[998:].any()
    long = torch.randn(2, 1100, 128)
    assert torch.equal(pad_or_cut(long, 1024), long[:, :1024])
    assert torch.equal(pad_or_cut(fb, 998), fb)
    freq_first = torch.randn(40, 90)
    out = pad_or_cut(freq_first, 99, dim=-1)
    assert out.shape == (40, 99) and torch.equal(out[:, :90], freq_first) and not out[:, 90:].any()


def test_normalize_constants():
    assert (CAVMAE_MEAN, CAVMAE_STD) == (-5.081, 4.4849)
    x = torch.tensor([CAVMAE_MEAN, CAVMAE_MEAN + CAVMAE_STD, 0.0])
    torch.testing.assert_close(normalize(x), torch.tensor([0.0, 1.0, 5.081 / 4.4849]))  # 1·std, not 2·std
    torch.testing.assert_close(normalize(x, mean=1.93, std=17.89), (x - 1.93) / 17.89)


def test_cavmae_fbank_end_to_end():
    x = torch.from_numpy(np.stack([speech_like(10.0, seed=8), speech_like(10.0, seed=9)]))
    out = cavmae_fbank(x)
    assert out.shape == (2, 1024, 128) and out.dtype == torch.float32
    manual = normalize(pad_or_cut(kaldi_fbank(x - x.mean(-1, keepdim=True)), 1024))
    torch.testing.assert_close(out, manual, atol=0, rtol=0)
    torch.testing.assert_close(out[1], cavmae_fbank(x[1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, 998:], torch.full((2, 26, 128), 5.081 / 4.4849))
    assert cavmae_fbank(torch.zeros(200000)).shape == (1024, 128)  # 12.5 s is cut
    # frame-wise DC removal makes the global mean a rounding-level step
    assert_kaldi_close(kaldi_fbank(x[0] + 0.05).numpy(), kaldi_fbank(center_waveform(x[0])).numpy())


# ----------------------------------------------------------------------------------------- errors
def test_clear_errors():
    x = torch.zeros(16000)
    with pytest.raises(DataError, match="44100 Hz does not match FbankConfig.sample_rate 16000"):
        kaldi_fbank(x, sample_rate=44100)
    with pytest.raises(DataError, match="cavmae_fbank.*22050 Hz"):
        cavmae_fbank(x, sample_rate=22050)
    with pytest.raises(DataError, match="logfbank.*16000 Hz does not match LogFbankConfig.sample_rate 24000"):
        logfbank(x, sample_rate=16000)
    with pytest.raises(DataError, match="399 samples .* need >= 400 samples"):
        kaldi_fbank(torch.zeros(399))
    with pytest.raises(DataError, match="float waveform, found torch.int16"):
        kaldi_fbank(torch.zeros(16000, dtype=torch.int16))
    with pytest.raises(DataError, match=r"\[S\] or \[B, S\], found shape \[1, 2, 16000\]"):
        kaldi_fbank(torch.zeros(1, 2, 16000))
    with pytest.raises(DataError, match="NaN"):
        kaldi_fbank(torch.full((16000,), float("nan")))
    with pytest.raises(ConfigError, match="did you mean 'hanning'"):
        FbankConfig(window="hann")
    with pytest.raises(ConfigError, match="high 9000"):
        FbankConfig(high_freq=9000.0)
    with pytest.raises(ConfigError, match="highfreq"):
        LogFbankConfig(highfreq=13000.0)


# ------------------------------------------------------------------- psf logfbank (GDT / STiCA)
def psf_logfbank_numpy(signal: np.ndarray, cfg: LogFbankConfig) -> np.ndarray:
    """python_speech_features `logfbank` re-stated in float64 numpy with explicit loops: [nfilt, T]."""
    sr, nfft = cfg.sample_rate, cfg.nfft
    x = np.asarray(signal, dtype=np.float64)
    x = np.concatenate([x[:1], x[1:] - cfg.preemph * x[:-1]])
    flen, step = int(math.floor(cfg.winlen * sr + 0.5)), int(math.floor(cfg.winstep * sr + 0.5))
    n = 1 if len(x) <= flen else 1 + math.ceil((len(x) - flen) / step)
    x = np.concatenate([x, np.zeros((n - 1) * step + flen - len(x))])
    frames = np.stack([x[i * step : i * step + flen] for i in range(n)])
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    high = cfg.highfreq or sr / 2
    mels = np.linspace(2595 * np.log10(1 + cfg.lowfreq / 700), 2595 * np.log10(1 + high / 700), cfg.nfilt + 2)
    edge = np.floor((nfft + 1) * 700 * (10 ** (mels / 2595) - 1) / sr).astype(int)
    fb = np.zeros((cfg.nfilt, nfft // 2 + 1))
    for j in range(cfg.nfilt):
        for i in range(edge[j], edge[j + 1]):
            fb[j, i] = (i - edge[j]) / (edge[j + 1] - edge[j])
        for i in range(edge[j + 1], edge[j + 2]):
            fb[j, i] = (edge[j + 2] - i) / (edge[j + 2] - edge[j + 1])
    feat = power @ fb.T
    return np.log(np.where(feat == 0, np.finfo(float).eps, feat)).T


def int16_speech(seconds: float, seed: int) -> np.ndarray:
    return np.round(speech_like(seconds, sr=24000, seed=seed) * 32767).astype(np.int16)


@pytest.mark.parametrize(("nfilt", "seconds"), [(40, 1.0), (257, 1.0), (40, 2.0)])
def test_logfbank_matches_numpy_restatement(nfilt, seconds):
    cfg = LogFbankConfig(nfilt=nfilt)
    x = int16_speech(seconds, seed=10)
    ref = psf_logfbank_numpy(x, cfg)
    got = logfbank(torch.from_numpy(x), cfg)
    assert got.shape == ref.shape == (nfilt, 100 * int(seconds) - 1)
    assert got.dtype == torch.float32
    finite = ref > math.log(1e-10)  # psf's eps-floored empty triangles (nfilt=257) compare exactly
    assert np.abs(got.numpy() - ref)[finite].max() <= 1e-3
    assert (got.numpy()[~finite] == np.float32(np.log(np.finfo(float).eps))).all()
    got64 = logfbank(torch.from_numpy(x).double(), cfg)
    np.testing.assert_allclose(got64.numpy(), ref, atol=1e-9, rtol=0)


def test_logfbank_frames_batch_and_short_signal():
    cfg = LogFbankConfig()
    assert (cfg.frame_len, cfg.frame_step) == (480, 240)
    assert [cfg.num_frames(s) for s in (100, 480, 481, 24000, 48000)] == [1, 1, 2, 99, 199]
    x = torch.from_numpy(np.stack([int16_speech(1.0, seed=s) for s in (11, 12)]))
    batched = logfbank(x, cfg)
    assert batched.shape == (2, 40, 99)
    torch.testing.assert_close(batched[1], logfbank(x[1], cfg), atol=1e-4, rtol=0)
    short = np.arange(300, dtype=np.int16)  # one zero-padded frame, as psf
    np.testing.assert_allclose(
        logfbank(torch.from_numpy(short)).numpy(), psf_logfbank_numpy(short, cfg), atol=1e-3
    )


def write_fixtures() -> None:
    import kaldi_native_fbank

    x, arrays = fixture_signal(), {}
    for name, cfg in FIXTURE_CONFIGS.items():
        full = knf_fbank(kaldi_native_fbank, x, cfg)
        frames = np.arange(0, len(full), 3)
        arrays |= {name: full[frames], f"{name}_frames": frames, f"{name}_num_frames": np.array(len(full))}
    FIXTURES.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURES, **arrays)
    print(FIXTURES, FIXTURES.stat().st_size, "bytes")


if __name__ == "__main__":
    write_fixtures()
