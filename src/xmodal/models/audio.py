"""Audio encoders: PANNs Cnn14 (the CCL audio teacher, ccl §10) and GDT's audio ResNet-9 (gdt §3.2).

Cnn14 keeps PANNs' state-dict names so the published checkpoints load with no missing or unexpected
key. Layout of such a file (torchlibrosa front end + Cnn14_emb512, 32 kHz):

  spectrogram_extractor.stft.conv_real.weight  (513, 1, 1024)  windowed DFT, real part (cos · hann)
  spectrogram_extractor.stft.conv_imag.weight  (513, 1, 1024)  imaginary part (−sin · hann); no biases
  logmel_extractor.melW                        (513, 64)       librosa slaney mel filters, transposed
  bn0.{weight,bias,running_mean,running_var,num_batches_tracked}          BatchNorm2d(64) over mel
  conv_block{1..6}.{conv1,conv2}.weight (3x3, no bias), .{bn1,bn2}.*      widths 64 .. 2048
  fc1.{weight,bias} (512, 2048)   fc_audioset.{weight,bias} (527, 512)

The front-end tensors are frozen ``nn.Parameter`` s in PANNs; here they are persistent buffers
(same names, not trained, not counted as parameters). The released files are
``{"model": state_dict, ...}`` pickles that also hold numpy arrays (training-sampler state), which a
plain ``torch.load(weights_only=True)`` refuses; ``load_panns`` allowlists only numpy's array/dtype
reconstruction for that load. Not verified against a downloaded file (no network here): whether a
given release holds other pickled objects; such a file is refused with the offending global named.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xmodal.engine.checkpoint import load_state_file, load_weights, strip_prefix
from xmodal.errors import CheckpointError, ConfigError, DataError
from xmodal.models.heads import EncoderOut
from xmodal.models.image import RESNET_WIDTHS, ResNet
from xmodal.registry import register_model

log = logging.getLogger(__name__)

CNN14_WIDTHS = (64, 128, 256, 512, 1024, 2048)
_FRONT_END = ("spectrogram_extractor.", "logmel_extractor.")


# ------------------------------------------------------------------------------ mel filters
_F_SP = 200.0 / 3  # slaney: linear 66.7 Hz per mel below 1 kHz ...
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # = 15
_LOGSTEP = np.log(6.4) / 27.0  # ... logarithmic above (6.4x per 27 mel)


def hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _F_SP
    log_part = _MIN_LOG_MEL + np.log(np.maximum(hz, 1e-300) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log_part, mel)


def mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL)), _F_SP * mel)


def slaney_mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """[n_mels, n_fft//2 + 1] triangular filters, slaney mel scale and slaney (area) norm.

    Same definition as librosa.filters.mel(htk=False, norm="slaney"): n_mels + 2 points evenly
    spaced in mel between fmin and fmax; filter i rises from point i to i+1 and falls to i+2
    (evaluated at the rfft bin frequencies) and is scaled by 2 / (f_{i+2} − f_i), i.e. unit area in Hz.
    """
    fmax = sr / 2 if fmax is None else fmax
    if not 0 <= fmin < fmax <= sr / 2:
        raise ConfigError(f"mel filterbank: need 0 <= fmin < fmax <= sr/2, got fmin={fmin} fmax={fmax} sr={sr}")
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    pts = mel_to_hz_slaney(np.linspace(hz_to_mel_slaney(fmin), hz_to_mel_slaney(fmax), n_mels + 2))
    width = np.diff(pts)
    ramps = pts[:, None] - freqs[None, :]
    rising = -ramps[:-2] / width[:-1, None]
    falling = ramps[2:] / width[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return weights * (2.0 / (pts[2:] - pts[:-2]))[:, None]


# -------------------------------------------------------------------------------- front end
class FixedConv1d(nn.Module):
    """A bias-free Conv1d whose weight is a fixed buffer (keeps the ``.weight`` key of PANNs)."""

    def __init__(self, weight: Tensor, stride: int):
        super().__init__()
        self.stride = stride
        self.register_buffer("weight", weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight, stride=self.stride)


class STFT(nn.Module):
    """Centred STFT as two fixed convolutions: conv_real[k, 0, n] = w[n]·cos(2πkn/N),
    conv_imag[k, 0, n] = −w[n]·sin(2πkn/N), w = periodic Hann; reflect padding by N/2 each side."""

    def __init__(self, n_fft: int = 1024, hop_length: int = 320):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        n = np.arange(n_fft)
        k = np.arange(n_fft // 2 + 1)
        window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
        angle = 2 * np.pi * ((k[:, None] * n[None, :]) % n_fft) / n_fft  # exact phase for large k·n
        real = torch.tensor((np.cos(angle) * window)[:, None, :], dtype=torch.float32)
        imag = torch.tensor((-np.sin(angle) * window)[:, None, :], dtype=torch.float32)
        self.conv_real = FixedConv1d(real, hop_length)
        self.conv_imag = FixedConv1d(imag, hop_length)

    def forward(self, wave: Tensor) -> tuple[Tensor, Tensor]:
        """wave [B, S] -> (real, imag), each [B, frames, n_fft//2 + 1]."""
        if wave.shape[-1] <= self.n_fft // 2:
            raise DataError(f"STFT: waveform of {wave.shape[-1]} samples is too short for n_fft {self.n_fft} "
                            f"(reflect padding needs more than {self.n_fft // 2})")
        x = F.pad(wave[:, None, :], (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        # One convolution over both filter sets reads the padded signal once.
        out = F.conv1d(x, torch.cat([self.conv_real.weight, self.conv_imag.weight]), stride=self.hop_length)
        real, imag = out.transpose(1, 2).chunk(2, dim=2)
        return real, imag


class Spectrogram(nn.Module):
    """Power spectrogram |STFT|² as [B, 1, frames, n_fft//2 + 1] (torchlibrosa layout)."""

    def __init__(self, n_fft: int = 1024, hop_length: int = 320):
        super().__init__()
        self.stft = STFT(n_fft, hop_length)

    def forward(self, wave: Tensor) -> Tensor:
        real, imag = self.stft(wave)
        return (real.square() + imag.square())[:, None]


class LogmelFilterBank(nn.Module):
    """power [..., F] -> 10·log10(max(power @ melW, amin)) (ref 1, no top_db)."""

    def __init__(self, sr: int = 32000, n_fft: int = 1024, n_mels: int = 64, fmin: float = 50.0,
                 fmax: float = 14000.0, amin: float = 1e-10):
        super().__init__()
        self.amin = amin
        mel = slaney_mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
        self.register_buffer("melW", torch.tensor(mel.T, dtype=torch.float32))

    def forward(self, power: Tensor) -> Tensor:
        return 10.0 * torch.log10(torch.clamp(power @ self.melW, min=self.amin))


def drop_stripes(x: Tensor, time_width: int = 64, time_stripes: int = 2, freq_width: int = 8,
                 freq_stripes: int = 2, generator: torch.Generator | None = None) -> Tensor:
    """Zero random stripes of x [B, C, T, F], drawn independently per sample (torchlibrosa's
    DropStripes): each stripe has width ~ U{0..max−1} and start ~ U{0..size−width−1}."""
    b, _, t, f = x.shape
    keep = torch.ones(b, 1, t, f, dtype=torch.bool, device=x.device)
    for dim, size, max_w, n in ((2, t, time_width, time_stripes), (3, f, freq_width, freq_stripes)):
        pos = torch.arange(size, device=x.device)
        for _ in range(n):
            width = torch.randint(0, max(max_w, 1), (b,), generator=generator).clamp(max=size - 1).to(x.device)
            start = (torch.rand(b, generator=generator).to(x.device) * (size - width)).floor().long()
            hit = (pos[None] >= start[:, None]) & (pos[None] < (start + width)[:, None])  # [B, size]
            shape = (b, 1, size, 1) if dim == 2 else (b, 1, 1, size)
            keep &= ~hit.view(shape)
    return x * keep


# --------------------------------------------------------------------------------------- Cnn14
class ConvBlock(nn.Module):
    """conv1 3x3 - bn1 - ReLU - conv2 3x3 - bn2 - ReLU - average pool."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor, pool: int = 2) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        return F.avg_pool2d(x, pool) if pool > 1 else x


class Cnn14(nn.Module):
    """PANNs Cnn14 with an ``emb_dim`` embedding layer (512 for Cnn14_emb512, 2048 for Cnn14).

    ``front_end="waveform"``: input mono waveform [B, S] at ``sample_rate`` → STFT → log-mel.
    ``front_end="fbank"``: input log-mel [B, frames, mel_bins] (e.g. our Kaldi fbank); the
    extractor modules do not exist. Then bn0 over mel, SpecAugment (training only), six ConvBlocks
    (2x2 average pool except the last) with dropout 0.2, mean over mel, max + mean over time,
    dropout 0.5, ``fc1`` + ReLU = ``feature`` (dropout 0.5 applied to it in training, as PANNs
    does), ``fc_audioset`` on the un-dropped embedding = ``logits`` (clip-wise tags are
    ``logits.sigmoid()``). ``fmap`` is the block-6 map [B, widths[-1], T/32, mel/32].
    """

    def __init__(self, num_classes: int = 527, emb_dim: int = 512, sample_rate: int = 32000, n_fft: int = 1024,
                 hop_length: int = 320, mel_bins: int = 64, fmin: float = 50.0, fmax: float = 14000.0,
                 widths: Sequence[int] = CNN14_WIDTHS, front_end: Literal["waveform", "fbank"] = "waveform",
                 spec_augment: bool = True):
        super().__init__()
        if len(widths) != 6 or min(widths) < 1:
            raise ConfigError(f"cnn14: widths needs 6 positive entries, got {tuple(widths)}")
        if front_end not in ("waveform", "fbank"):
            raise ConfigError(f"cnn14: front_end must be 'waveform' or 'fbank', got {front_end!r}")
        self.front_end, self.mel_bins, self.use_spec_augment = front_end, mel_bins, spec_augment
        self.feature_dim = emb_dim
        if front_end == "waveform":
            self.spectrogram_extractor = Spectrogram(n_fft, hop_length)
            self.logmel_extractor = LogmelFilterBank(sample_rate, n_fft, mel_bins, fmin, fmax)
        self.bn0 = nn.BatchNorm2d(mel_bins)
        cin = 1
        for i, w in enumerate(widths):
            self.add_module(f"conv_block{i + 1}", ConvBlock(cin, w))
            cin = w
        self.fc1 = nn.Linear(cin, emb_dim)
        self.fc_audioset = nn.Linear(emb_dim, num_classes) if num_classes > 0 else None
        for m in self.modules():  # PANNs init: xavier-uniform weights, zero biases, BN 1/0
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def logmel(self, x: Tensor) -> Tensor:
        """Model input -> log-mel [B, 1, frames, mel]."""
        if self.front_end == "waveform":
            if x.dim() != 2:
                raise DataError(f"cnn14: expected a waveform [B, samples], got shape {tuple(x.shape)}")
            return self.logmel_extractor(self.spectrogram_extractor(x))
        if x.dim() != 3 or x.shape[-1] != self.mel_bins:
            raise DataError(f"cnn14: expected fbank [B, frames, {self.mel_bins}], got shape {tuple(x.shape)}")
        return x[:, None]

    def forward(self, x: Tensor, return_map: bool = False) -> EncoderOut:
        x = self.logmel(x)
        if x.shape[2] < 32 or x.shape[3] < 32:
            raise DataError(f"cnn14: five 2x2 poolings need >= 32 frames and mel bins, got {x.shape[2]} "
                            f"frames x {x.shape[3]} mel")
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # normalise each mel bin
        if self.training and self.use_spec_augment:
            x = drop_stripes(x)
        blocks = [self.conv_block1, self.conv_block2, self.conv_block3, self.conv_block4, self.conv_block5,
                  self.conv_block6]
        for i, block in enumerate(blocks):
            x = F.dropout(block(x, pool=2 if i < 5 else 1), 0.2, self.training)
        fmap = x
        x = x.mean(dim=3)
        x = F.dropout(x.amax(dim=2) + x.mean(dim=2), 0.5, self.training)
        emb = F.relu(self.fc1(x))
        logits = self.fc_audioset(emb) if self.fc_audioset is not None else None
        return EncoderOut(logits, F.dropout(emb, 0.5, self.training), fmap if return_map else None)


@register_model("cnn14_emb512")
def cnn14_emb512(num_classes: int = 527, emb_dim: int = 512, sample_rate: int = 32000, n_fft: int = 1024,
                 hop_length: int = 320, mel_bins: int = 64, fmin: float = 50.0, fmax: float = 14000.0,
                 widths: tuple[int, int, int, int, int, int] = CNN14_WIDTHS,
                 front_end: Literal["waveform", "fbank"] = "waveform", spec_augment: bool = True) -> Cnn14:
    """PANNs Cnn14_emb512 (CCL's audio teacher) at the published 32 kHz settings (``emb_dim=2048``
    gives the original Cnn14, 80.75 M params). Embedded recipes:
    ``front_end: fbank`` with our Kaldi fbank and a tiny ``widths`` (e.g. [8, 16, 32, 32, 64, 64])."""
    return Cnn14(num_classes, emb_dim, sample_rate, n_fft, hop_length, mel_bins, fmin, fmax, widths, front_end,
                 spec_augment)


def _numpy_safe_globals() -> list:
    """What torch's weights-only unpickler needs for plain numpy arrays/scalars, under numpy 1.x
    (``numpy.core``) and 2.x (``numpy._core``) module names. Rebuilding arrays runs no user code."""
    core = getattr(np, "_core", None) or np.core
    out: list = [np.ndarray, np.dtype]
    for fn in (core.multiarray._reconstruct, core.multiarray.scalar):
        out += [(fn, f"numpy.core.multiarray.{fn.__name__}"), (fn, f"numpy._core.multiarray.{fn.__name__}")]
    out += [type(np.dtype(t)) for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                                         "uint64", "float16", "float32", "float64")]
    return out


def load_panns(path: str | Path, model: Cnn14 | None = None, *, sample_rate: int = 32000, hop_length: int = 320,
               fmin: float = 50.0, fmax: float = 14000.0) -> Cnn14:
    """Load a published PANNs checkpoint (``{"model": state_dict, ...}`` or a bare state dict).

    Without ``model``, a waveform Cnn14 is built from the file's shapes (widths, mel bins, n_fft,
    embedding size, classes) and the given front-end settings, which the file cannot tell (the
    defaults are the 32 kHz release; e.g. Cnn14_16k needs sample_rate=16000, hop_length=160,
    fmax=8000). An fbank-input ``model`` skips the file's front-end tensors. The file's mel filters
    must match the model's, else CheckpointError (catches a wrong sample_rate/fmin/fmax).
    """
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        obj = load_state_file(path)
    state = obj.get("model", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a PANNs checkpoint ({{'model': state_dict}}), found {type(obj).__name__}")
    state = strip_prefix(state)
    if model is None:
        model = Cnn14(sample_rate=sample_rate, hop_length=hop_length, fmin=fmin, fmax=fmax, **_cnn14_shape(state, path))
    if model.front_end == "fbank":
        state = {k: v for k, v in state.items() if not k.startswith(_FRONT_END)}
    else:
        own, theirs = model.logmel_extractor.melW, state.get("logmel_extractor.melW")
        if theirs is not None and theirs.shape == own.shape and not torch.allclose(theirs.float(), own, rtol=1e-4, atol=1e-6):
            raise CheckpointError(f"{path}: logmel_extractor.melW differs from the model's mel filters "
                                  f"(max |diff| {(theirs.float() - own).abs().max():.3g}): other sample_rate/fmin/fmax?")
    load_weights(model, state, strict=True, what=str(path))
    return model


def _cnn14_shape(state: Mapping[str, Tensor], path: str | Path) -> dict:
    """Cnn14 constructor arguments that the state dict's shapes determine."""
    need = ["spectrogram_extractor.stft.conv_real.weight", "bn0.weight", "fc1.weight"]
    need += [f"conv_block{i}.conv1.weight" for i in range(1, 7)]
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a PANNs Cnn14 state dict (missing {', '.join(missing[:3])})")
    fc_out = state.get("fc_audioset.weight")
    return dict(
        n_fft=state[need[0]].shape[-1],
        mel_bins=state["bn0.weight"].shape[0],
        emb_dim=state["fc1.weight"].shape[0],
        num_classes=0 if fc_out is None else fc_out.shape[0],
        widths=tuple(state[f"conv_block{i}.conv1.weight"].shape[0] for i in range(1, 7)),
    )


# ------------------------------------------------------------------------ GDT audio ResNet-9
@register_model("resnet9")
def resnet9(num_classes: int = 0, in_channels: int = 1, widths: tuple[int, int, int, int] = RESNET_WIDTHS) -> ResNet:
    """GDT/STiCA audio trunk: 2-D ResNet, one BasicBlock per stage, conv1 1→64 (7, s2, p3, no bias),
    BN, ReLU, max-pool 3/2, GAP → 512; input spectrogram [B, 1, F, T]. 4.90 M params; the
    reference module also carries torchvision's unused ``fc`` 512→1000 (5.41 M in total), which
    ``num_classes=1000`` reproduces for loading its state dict unchanged."""
    return ResNet((1, 1, 1, 1), widths, in_channels, num_classes)
