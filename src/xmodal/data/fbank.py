"""Audio front ends in pure torch, batched: Kaldi log-mel fbank (CAV-MAE) and psf `logfbank` (GDT/STiCA).

`kaldi_fbank` follows Kaldi's `compute-fbank-feats` as torchaudio's `compliance.kaldi.fbank` implements
it, in the same float32 operation order (mel band edges built as float32 tensors from float64 scalars,
`torch.hann_window(periodic=False)`), so that both agree to float32 rounding. A whole batch is framed
with one `unfold`, transformed with one `rfft` and projected with one matmul against a cached mel matrix.

`cavmae_fbank` is the complete CAV-MAE audio front end (spec cavmae §8): global mean removal (a loader
step, not part of Kaldi fbank; see `center_waveform`), Kaldi fbank with 128 bins, pad/cut to 1024
frames, `(x + 5.081) / 4.4849`.

`logfbank` re-states python_speech_features' `logfbank` (used by GDT/STiCA, spec gdt-stica §2.1):
whole-signal pre-emphasis, rectangular frames with the last one zero-padded, power spectrum / nfft,
triangles on integer FFT bins of the 2595·log10(1 + f/700) mel scale, zero energies -> float64 eps,
natural log. It returns frequency-first `[F, T]` features, the layout the GDT audio trunk consumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from xmodal.errors import ConfigError, DataError, closest

WINDOWS = ("hanning", "povey", "hamming", "rectangular", "blackman")
CAVMAE_MEAN = -5.081  # AudioSet and VGGSound dataset statistics of the CAV-MAE fbank
CAVMAE_STD = 4.4849
CAVMAE_FRAMES = 1024
GDT_MEAN = 1.93  # z-normalisation of the GDT 40-bin logfbank (STiCA uses none)
GDT_STD = 17.89
_F32_EPS = torch.finfo(torch.float32).eps  # Kaldi's log floor: log(eps) = -15.9424
_F64_EPS = 2.220446049250313e-16  # numpy.finfo(float).eps, psf's zero replacement
_CPU_TILE_SAMPLES = 2048 * 512  # FFT-buffer samples per step on CPU: 4 MB stays in cache, ~1.5x faster


# ------------------------------------------------------------------------------------------- Kaldi
@dataclass(frozen=True)
class FbankConfig:
    """Kaldi fbank options; the defaults are CAV-MAE's (Kaldi's own defaults differ: povey, 23 bins).

    `high_freq <= 0` means an offset from Nyquist, as in Kaldi. `energy_floor` only applies to the
    energy column (`use_energy`); mel energies are always floored at float32 eps before the log.
    VTLN warping is not supported.
    """

    sample_rate: int = 16000
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    num_mel_bins: int = 128
    low_freq: float = 20.0
    high_freq: float = 0.0
    preemph: float = 0.97
    remove_dc: bool = True
    window: str = "hanning"
    blackman_coeff: float = 0.42
    dither: float = 0.0
    snip_edges: bool = True
    round_to_power_of_two: bool = True
    use_power: bool = True
    use_log: bool = True
    use_energy: bool = False
    raw_energy: bool = True
    energy_floor: float = 0.0
    htk_compat: bool = False

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise ConfigError(
                f"FbankConfig.window: expected one of {WINDOWS}, found '{self.window}'"
                + closest(self.window, WINDOWS)
            )
        if self.sample_rate <= 0 or self.num_mel_bins < 1:
            raise ConfigError(
                f"FbankConfig: sample_rate and num_mel_bins must be positive, found "
                f"{self.sample_rate} and {self.num_mel_bins}"
            )
        if self.window_size < 2 or self.window_shift < 1:
            raise ConfigError(
                f"FbankConfig.frame_length_ms/frame_shift_ms: {self.frame_length_ms}/{self.frame_shift_ms} ms "
                f"give {self.window_size}/{self.window_shift} samples at {self.sample_rate} Hz; need >= 2/1"
            )
        if self.window_size > self.padded_size:
            raise ConfigError(
                f"FbankConfig.round_to_power_of_two: window of {self.window_size} samples does not fit "
                f"in {self.padded_size} FFT points"
            )
        high = self.high_hz
        if not (0.0 <= self.low_freq < self.nyquist and 0.0 < high <= self.nyquist and high > self.low_freq):
            raise ConfigError(
                f"FbankConfig.low_freq/high_freq: need 0 <= low < high <= Nyquist ({self.nyquist} Hz), "
                f"found low {self.low_freq} Hz, high {high} Hz (high_freq={self.high_freq})"
            )

    @property
    def window_size(self) -> int:
        return int(self.sample_rate * 0.001 * self.frame_length_ms)

    @property
    def window_shift(self) -> int:
        return int(self.sample_rate * 0.001 * self.frame_shift_ms)

    @property
    def padded_size(self) -> int:
        n = self.window_size
        return 1 << max(n - 1, 0).bit_length() if self.round_to_power_of_two else n

    @property
    def nyquist(self) -> float:
        return 0.5 * self.sample_rate

    @property
    def high_hz(self) -> float:
        return self.high_freq + self.nyquist if self.high_freq <= 0.0 else self.high_freq

    @property
    def num_features(self) -> int:
        return self.num_mel_bins + int(self.use_energy)

    def num_frames(self, num_samples: int) -> int:
        """Kaldi's frame count: full frames only with snip_edges, else round(num_samples / shift)."""
        if self.snip_edges:
            if num_samples < self.window_size:
                return 0
            return 1 + (num_samples - self.window_size) // self.window_shift
        return (num_samples + self.window_shift // 2) // self.window_shift


@lru_cache(maxsize=16)
def _kaldi_mel_matrix(cfg: FbankConfig, device: torch.device, dtype: torch.dtype) -> Tensor:
    """[padded/2 + 1, num_mel_bins] triangle weights; the Nyquist row is zero as in Kaldi.

    The band edges m_lo + b·Δ are float32 tensors built from float64 scalars and the FFT-bin mels are
    float32: with float64 edges the lowest bands differ from Kaldi/torchaudio by up to ~2e-3.
    """
    num_fft_bins = cfg.padded_size // 2
    m_lo = 1127.0 * math.log(1.0 + cfg.low_freq / 700.0)
    m_hi = 1127.0 * math.log(1.0 + cfg.high_hz / 700.0)
    delta = (m_hi - m_lo) / (cfg.num_mel_bins + 1)
    b = torch.arange(cfg.num_mel_bins, dtype=torch.float32).unsqueeze(1)
    left = m_lo + b * delta
    center = m_lo + (b + 1.0) * delta
    right = m_lo + (b + 2.0) * delta
    freq = (cfg.sample_rate / cfg.padded_size) * torch.arange(num_fft_bins, dtype=torch.float32)
    mel = (1127.0 * (1.0 + freq / 700.0).log()).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.clamp_min(torch.minimum(up, down), 0.0)  # [bins, fft_bins]
    banks = F.pad(banks, (0, 1))  # Nyquist bin gets weight 0
    return banks.t().contiguous().to(device=device, dtype=dtype)


@lru_cache(maxsize=16)
def _kaldi_window(cfg: FbankConfig, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Kaldi's window functions (symmetric: cos(2πi/(N-1))), built directly in `dtype` as torchaudio."""
    n, kw = cfg.window_size, {"dtype": dtype, "device": device}
    if cfg.window == "hanning":
        return torch.hann_window(n, periodic=False, **kw)
    if cfg.window == "povey":
        return torch.hann_window(n, periodic=False, **kw).pow(0.85)
    if cfg.window == "hamming":
        return torch.hamming_window(n, periodic=False, alpha=0.54, beta=0.46, **kw)
    if cfg.window == "rectangular":
        return torch.ones(n, **kw)
    a = 2 * math.pi / (n - 1)  # blackman
    i = torch.arange(n, **kw)
    return cfg.blackman_coeff - 0.5 * torch.cos(a * i) + (0.5 - cfg.blackman_coeff) * torch.cos(2 * a * i)


def _as_batch(wave, what: str, allow_int: bool) -> tuple[Tensor, bool]:
    """[S] or [B, S] -> ([B, S] float32 (float64 kept), was_1d), with one-line DataErrors."""
    x = torch.as_tensor(wave)
    if x.ndim not in (1, 2) or x.shape[-1] == 0 or x.shape[0] == 0:
        raise DataError(f"{what}: expected a non-empty waveform [S] or [B, S], found shape {list(x.shape)}")
    if not x.is_floating_point():
        if not allow_int:
            raise DataError(
                f"{what}: expected a float waveform, found {x.dtype}; scale int16 PCM by 1/32768 "
                f"(CAV-MAE) or convert with .float() to keep Kaldi's int16 range"
            )
        x = x.to(torch.float32)
    elif x.dtype != torch.float64:
        x = x.to(torch.float32)
    # max and min propagate NaN and hold any Inf: two reductions instead of a mask as large as the audio
    if not (bool(torch.isfinite(x.amax())) and bool(torch.isfinite(x.amin()))):
        raise DataError(f"{what}: waveform contains NaN or Inf samples")
    return (x.unsqueeze(0), True) if x.ndim == 1 else (x, False)


def _check_rate(what: str, sample_rate: int | None, expected: int, cfg_name: str) -> None:
    if sample_rate is not None and int(sample_rate) != expected:
        raise DataError(
            f"{what}: waveform sample rate {sample_rate} Hz does not match {cfg_name}.sample_rate "
            f"{expected} Hz; resample first"
        )


def _kaldi_frames(x: Tensor, cfg: FbankConfig) -> Tensor:
    """[B, S] -> [B, n, window] frames; without snip_edges, out-of-range samples are mirrored."""
    win, shift = cfg.window_size, cfg.window_shift
    if cfg.snip_edges:
        return x.unfold(-1, win, shift)
    n, length = cfg.num_frames(x.shape[-1]), x.shape[-1]
    start = torch.arange(n, device=x.device) * shift + (shift // 2 - win // 2)
    idx = start.unsqueeze(1) + torch.arange(win, device=x.device)
    # Kaldi reflects s < 0 to -s-1 and s >= N to 2N-1-s (repeatedly): closed form with period 2N
    idx = torch.remainder(idx, 2 * length)
    idx = torch.where(idx >= length, 2 * length - 1 - idx, idx)
    return x[:, idx]


def _map_tiles(frames: Tensor, fn, width: int, fft_size: int) -> Tensor:
    """fn([B, t, L] frames) -> [B, t, width], applied over time tiles of the batch on CPU."""
    batch, n = frames.shape[:2]
    step = max(1, _CPU_TILE_SAMPLES // (batch * fft_size)) if frames.device.type == "cpu" else n
    if step >= n:
        return fn(frames)
    out = frames.new_empty(batch, n, width)
    for start in range(0, n, step):  # a few dozen tiles per batch, each vectorised
        out[:, start : start + step] = fn(frames[:, start : start + step])
    return out


def _log_energy(frames: Tensor, energy_floor: float) -> Tensor:
    energy = frames.pow(2).sum(-1).clamp_min(_F32_EPS).log()
    return energy if energy_floor == 0.0 else energy.clamp_min(math.log(energy_floor))


def _fbank_tile(frames: Tensor, cfg: FbankConfig, generator: torch.Generator | None) -> Tensor:
    """[..., window] frames -> [..., num_features], in torchaudio's operation order."""
    # work in place inside the zero-padded FFT buffer: fewer passes over memory, same rounding
    buf = frames.new_zeros(*frames.shape[:-1], cfg.padded_size)
    y = buf[..., : cfg.window_size]
    y.copy_(frames)
    if cfg.dither != 0.0:
        noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        y.add_(noise.mul_(cfg.dither))
    if cfg.remove_dc:
        y.sub_(y.mean(-1, keepdim=True))
    if cfg.use_energy and cfg.raw_energy:
        energy = _log_energy(y, cfg.energy_floor)
    if cfg.preemph != 0.0:
        previous = torch.empty_like(y)  # x[t-1], with x[-1] := x[0]
        previous[..., 0] = y[..., 0]
        previous[..., 1:] = y[..., :-1]
        y.sub_(previous.mul_(cfg.preemph))
    y.mul_(_kaldi_window(cfg, y.device, y.dtype))
    if cfg.use_energy and not cfg.raw_energy:
        energy = _log_energy(y, cfg.energy_floor)
    # |X|² from real and imaginary parts: much cheaper on CPU than complex abs()
    power = torch.view_as_real(torch.fft.rfft(buf)).pow(2).sum(-1)
    if not cfg.use_power:
        power = power.sqrt_()
    banks = _kaldi_mel_matrix(cfg, y.device, y.dtype)
    out = (power.reshape(-1, power.shape[-1]) @ banks).reshape(*power.shape[:-1], banks.shape[-1])
    if cfg.use_log:
        out = out.clamp_min_(_F32_EPS).log_()
    if cfg.use_energy:
        parts = (out, energy.unsqueeze(-1)) if cfg.htk_compat else (energy.unsqueeze(-1), out)
        out = torch.cat(parts, dim=-1)
    return out


def kaldi_fbank(
    wave,
    cfg: FbankConfig = FbankConfig(),
    *,
    sample_rate: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Kaldi log-mel filterbank of a waveform [S] -> [n, mel] or a batch [B, S] -> [B, n, mel].

    Per frame: (dither) -> remove the frame mean -> y[t] = x[t] - preemph·x[t-1] with x[-1] := x[0]
    -> window -> zero-pad to `padded_size` -> |rfft|² -> mel triangles -> log(max(e, f32 eps)).
    `sample_rate`, when given, is checked against `cfg.sample_rate`. Output float32 (float64 input
    stays float64). The energy column (`use_energy`) comes first, or last with `htk_compat`.
    On CPU the frames are processed in cache-sized tiles, so the dither noise drawn from `generator`
    depends on the batch size, not only on its seed.
    """
    x, was_1d = _as_batch(wave, "kaldi_fbank", allow_int=False)
    _check_rate("kaldi_fbank", sample_rate, cfg.sample_rate, "FbankConfig")
    num_samples = x.shape[-1]
    n = cfg.num_frames(num_samples)
    if n < 1:
        need = cfg.window_size if cfg.snip_edges else cfg.window_shift - cfg.window_shift // 2
        raise DataError(
            f"kaldi_fbank: waveform of {num_samples} samples ({num_samples / cfg.sample_rate:.4f} s) is too "
            f"short for one frame; need >= {need} samples at {cfg.sample_rate} Hz (snip_edges={cfg.snip_edges})"
        )
    frames = _kaldi_frames(x, cfg)  # [B, n, window], a view when snip_edges
    out = _map_tiles(frames, lambda f: _fbank_tile(f, cfg, generator), cfg.num_features, cfg.padded_size)
    return out[0] if was_1d else out


def center_waveform(wave: Tensor) -> Tensor:
    """Subtract each waveform's global mean (CAV-MAE loader step 1, before Kaldi fbank).

    With `remove_dc` the per-frame mean removal already cancels any constant offset, so this only
    changes float32 rounding; it is kept to reproduce the reference loader bit for bit.
    """
    return wave - wave.mean(-1, keepdim=True)


def pad_or_cut(fb: Tensor, target_frames: int, dim: int = -2) -> Tensor:
    """Cut `fb` to `target_frames` along `dim` (time; -2 for [.., n, mel]) or pad zero rows at the end."""
    n = fb.shape[dim]
    if n >= target_frames:
        return fb.narrow(dim, 0, target_frames)
    shape = list(fb.shape)
    shape[dim] = target_frames - n
    return torch.cat([fb, fb.new_zeros(shape)], dim=dim)


def normalize(fb: Tensor, mean: float = CAVMAE_MEAN, std: float = CAVMAE_STD) -> Tensor:
    """(fb - mean) / std — one std, not 2·std (defaults: CAV-MAE's AudioSet/VGGSound statistics)."""
    return (fb - mean) / std


def cavmae_fbank(
    wave, *, sample_rate: int = 16000, target_frames: int = CAVMAE_FRAMES, cfg: FbankConfig = FbankConfig()
) -> Tensor:
    """CAV-MAE audio front end: 16 kHz [S] -> [target_frames, 128] or [B, S] -> [B, target_frames, 128].

    Global mean removal, Kaldi fbank (`cfg`, CAV-MAE defaults), zero rows appended / frames cut in the
    log domain, then `(x + 5.081) / 4.4849`. Training augmentation (SpecAugment, noise) is not applied.
    """
    x, was_1d = _as_batch(wave, "cavmae_fbank", allow_int=False)
    _check_rate("cavmae_fbank", sample_rate, cfg.sample_rate, "FbankConfig")
    out = normalize(pad_or_cut(kaldi_fbank(center_waveform(x), cfg), target_frames))
    return out[0] if was_1d else out


# ----------------------------------------------------------------------- python_speech_features
@dataclass(frozen=True)
class LogFbankConfig:
    """python_speech_features `logfbank` options; defaults are GDT's (STiCA: nfilt=257).

    `highfreq` None or 0 means Nyquist (psf's `highfreq or samplerate/2`). No analysis window.
    """

    sample_rate: int = 24000
    winlen: float = 0.02
    winstep: float = 0.01
    nfilt: int = 40
    nfft: int = 1024
    lowfreq: float = 0.0
    highfreq: float | None = None
    preemph: float = 0.97

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.nfilt < 1 or self.nfft < 2:
            raise ConfigError(
                f"LogFbankConfig: sample_rate, nfilt and nfft must be positive (nfft >= 2), found "
                f"{self.sample_rate}, {self.nfilt}, {self.nfft}"
            )
        if self.frame_len < 1 or self.frame_step < 1:
            raise ConfigError(
                f"LogFbankConfig.winlen/winstep: {self.winlen}/{self.winstep} s give "
                f"{self.frame_len}/{self.frame_step} samples at {self.sample_rate} Hz; need >= 1"
            )
        if not 0.0 <= self.lowfreq < self.high_hz <= self.sample_rate / 2:
            raise ConfigError(
                f"LogFbankConfig.lowfreq/highfreq: need 0 <= lowfreq < highfreq <= {self.sample_rate / 2} Hz, "
                f"found {self.lowfreq} and {self.high_hz}"
            )

    @property
    def frame_len(self) -> int:
        return _round_half_up(self.winlen * self.sample_rate)

    @property
    def frame_step(self) -> int:
        return _round_half_up(self.winstep * self.sample_rate)

    @property
    def high_hz(self) -> float:
        return self.highfreq or self.sample_rate / 2

    def num_frames(self, num_samples: int) -> int:
        """psf framing: at least one frame; the last frame is zero-padded (1 s at 24 kHz -> 99)."""
        if num_samples <= self.frame_len:
            return 1
        return 1 + -(-(num_samples - self.frame_len) // self.frame_step)


def _round_half_up(x: float) -> int:
    return int(Decimal(x).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@lru_cache(maxsize=16)
def _psf_mel_matrix(cfg: LogFbankConfig, device: torch.device, dtype: torch.dtype) -> Tensor:
    """[nfft/2 + 1, nfilt] triangles between integer FFT bins (psf's `get_filterbanks`), float64 math."""
    low_mel = 2595 * math.log10(1 + cfg.lowfreq / 700.0)
    high_mel = 2595 * math.log10(1 + cfg.high_hz / 700.0)
    n = cfg.nfilt + 2
    step = (high_mel - low_mel) / (n - 1)
    mels = [i * step + low_mel for i in range(n - 1)] + [high_mel]  # numpy.linspace
    edges = torch.tensor(
        [math.floor((cfg.nfft + 1) * (700 * (10 ** (m / 2595.0) - 1)) / cfg.sample_rate) for m in mels],
        dtype=torch.float64,
    )
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    i = torch.arange(cfg.nfft // 2 + 1, dtype=torch.float64)
    up = torch.where((i >= lo) & (i < mid), (i - lo) / (mid - lo), 0.0)
    down = torch.where((i >= mid) & (i < hi), (hi - i) / (hi - mid), 0.0)
    return (up + down).t().contiguous().to(device=device, dtype=dtype)


def logfbank(signal, cfg: LogFbankConfig = LogFbankConfig(), *, sample_rate: int | None = None) -> Tensor:
    """psf `logfbank` of a signal [S] -> [nfilt, T] or [B, S] -> [B, nfilt, T] (frequency first).

    Keep int16-range values for GDT (int tensors are accepted). Computed in float32 (float64 input
    stays float64); psf works in float64: measured log-domain differences <= 2e-5 (40 filters),
    <= 2e-4 (257 single-bin filters, float32 FFT rounding). 38 of the 257 STiCA filters cover no FFT
    bin and are always log(eps) = -36.04, as in psf.
    """
    x, was_1d = _as_batch(signal, "logfbank", allow_int=True)
    _check_rate("logfbank", sample_rate, cfg.sample_rate, "LogFbankConfig")
    if cfg.preemph != 0.0:
        x = torch.cat([x[:, :1], x[:, 1:] - cfg.preemph * x[:, :-1]], dim=-1)
    n = cfg.num_frames(x.shape[-1])
    x = F.pad(x, (0, (n - 1) * cfg.frame_step + cfg.frame_len - x.shape[-1]))
    frames = x.unfold(-1, cfg.frame_len, cfg.frame_step)
    banks = _psf_mel_matrix(cfg, x.device, x.dtype)

    def tile(f: Tensor) -> Tensor:
        power = torch.view_as_real(torch.fft.rfft(f, n=cfg.nfft)).pow(2).sum(-1).mul_(1.0 / cfg.nfft)
        feat = (power.reshape(-1, power.shape[-1]) @ banks).reshape(*power.shape[:-1], cfg.nfilt)
        return torch.where(feat == 0, _F64_EPS, feat).log_()

    feat = _map_tiles(frames, tile, cfg.nfilt, cfg.nfft)
    out = feat.transpose(-1, -2).contiguous()
    return out[0] if was_1d else out
