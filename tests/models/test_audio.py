import math

import numpy as np
import pytest
import torch

from xmodal.engine.checkpoint import load_state_file
from xmodal.errors import CheckpointError, DataError
from xmodal.models.audio import (
    Cnn14,
    Spectrogram,
    drop_stripes,
    hz_to_mel_slaney,
    load_panns,
    mel_to_hz_slaney,
    resnet9,
    slaney_mel_filterbank,
)
from xmodal.models.heads import count_params
from xmodal.registry import MODELS

TINY = dict(num_classes=5, emb_dim=16, n_fft=64, hop_length=32, mel_bins=32, widths=(4, 8, 8, 8, 8, 8))


# ---------------------------------------------------------------------------------- mel filters
def _librosa_mel_restated(sr, n_fft, n_mels, fmin, fmax):
    """librosa.filters.mel(htk=False, norm='slaney') re-stated with scalar loops."""

    def hz_to_mel(f):
        return 15.0 + math.log(f / 1000.0) / (math.log(6.4) / 27.0) if f >= 1000.0 else f / (200.0 / 3)

    def mel_to_hz(m):
        return 1000.0 * math.exp((math.log(6.4) / 27.0) * (m - 15.0)) if m >= 15.0 else m * (200.0 / 3)

    lo, hi = hz_to_mel(fmin), hz_to_mel(fmax)
    pts = [mel_to_hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    out = np.zeros((n_mels, n_fft // 2 + 1))
    for i in range(n_mels):
        for j in range(n_fft // 2 + 1):
            f = j * sr / n_fft
            lower = (f - pts[i]) / (pts[i + 1] - pts[i])
            upper = (pts[i + 2] - f) / (pts[i + 2] - pts[i + 1])
            out[i, j] = max(0.0, min(lower, upper)) * 2.0 / (pts[i + 2] - pts[i])
    return out


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [(32000, 1024, 64, 50, 14000), (16000, 512, 40, 0, 8000)])
def test_slaney_mel_matches_restated_librosa_formula(sr, n_fft, n_mels, fmin, fmax):
    ours = slaney_mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
    ref = _librosa_mel_restated(sr, n_fft, n_mels, fmin, fmax)
    assert ours.shape == (n_mels, n_fft // 2 + 1)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-15)


def test_slaney_scale_and_unit_area():
    assert hz_to_mel_slaney(1000.0) == pytest.approx(15.0)
    assert hz_to_mel_slaney(200.0) == pytest.approx(3.0)
    assert hz_to_mel_slaney(6400.0) == pytest.approx(42.0)  # 6.4x above 1 kHz = 27 mel
    f = np.array([0.0, 50.0, 999.0, 1000.0, 5000.0, 14000.0])
    np.testing.assert_allclose(mel_to_hz_slaney(hz_to_mel_slaney(f)), f, atol=1e-9)
    # slaney norm: each triangle has unit area in Hz; wide (high) filters are sampled finely enough
    w = slaney_mel_filterbank(32000, 4096, 64, 50, 14000)
    area = w.sum(axis=1) * (32000 / 4096)
    np.testing.assert_allclose(area[32:], 1.0, rtol=0.02)


# ------------------------------------------------------------------------------------ front end
def test_stft_conv_front_end_matches_torch_stft_power():
    torch.manual_seed(0)
    wave = torch.randn(2, 8000)
    ours = Spectrogram(1024, 320)(wave)[:, 0]  # [B, frames, 513]
    ref = torch.stft(wave, 1024, 320, window=torch.hann_window(1024), center=True, pad_mode="reflect",
                     return_complex=True)
    ref = torch.view_as_real(ref).pow(2).sum(-1).transpose(1, 2)
    assert ours.shape == ref.shape == (2, 26, 513)
    torch.testing.assert_close(ours, ref, atol=2e-4 * ref.max().item(), rtol=1e-3)


def test_logmel_of_silence_is_amin_floor_and_tone_lands_in_its_band():
    m = Cnn14(**TINY, sample_rate=16000, fmin=0, fmax=8000).eval()
    silent = m.logmel(torch.zeros(1, 2048))
    torch.testing.assert_close(silent, torch.full_like(silent, -100.0))  # 10·log10(1e-10)
    t = torch.arange(2048) / 16000
    tone = m.logmel(torch.sin(2 * math.pi * 3000 * t)[None])[0, 0, 10]
    centres = torch.tensor(mel_to_hz_slaney(np.linspace(hz_to_mel_slaney(0), hz_to_mel_slaney(8000), 34)[1:-1]))
    assert abs(centres[tone.argmax()] - 3000) < 400


def test_drop_stripes_zeroes_whole_stripes_within_limits():
    g = torch.Generator().manual_seed(0)
    x = torch.ones(64, 1, 100, 64)
    out = drop_stripes(x, 64, 2, 8, 2, generator=g)
    zero = out[:, 0] == 0
    rows = zero.all(dim=2)  # [B, T] fully dropped time steps
    cols = zero.all(dim=1)  # [B, F] fully dropped mel bins
    assert torch.equal(zero, rows[:, :, None] | cols[:, None, :])  # only whole stripes
    assert rows.sum(1).max() <= 2 * 63 and cols.sum(1).max() <= 2 * 7
    assert rows.any(1).float().mean() > 0.8 and cols.any(1).float().mean() > 0.5
    assert not torch.equal(rows[0], rows[1])  # drawn per sample


# ---------------------------------------------------------------------------------------- Cnn14
def _bn(prefix, c):
    return [(f"{prefix}.{n}", (c,)) for n in ("weight", "bias", "running_mean", "running_var")] + [
        (f"{prefix}.num_batches_tracked", ())
    ]


def _panns_cnn14_emb512_table():
    rows = [("spectrogram_extractor.stft.conv_real.weight", (513, 1, 1024)),
            ("spectrogram_extractor.stft.conv_imag.weight", (513, 1, 1024)),
            ("logmel_extractor.melW", (513, 64))] + _bn("bn0", 64)
    cin = 1
    for i, w in enumerate((64, 128, 256, 512, 1024, 2048), start=1):
        rows += [(f"conv_block{i}.conv1.weight", (w, cin, 3, 3)), (f"conv_block{i}.conv2.weight", (w, w, 3, 3))]
        rows += _bn(f"conv_block{i}.bn1", w) + _bn(f"conv_block{i}.bn2", w)
        cin = w
    return rows + [("fc1.weight", (512, 2048)), ("fc1.bias", (512,)),
                   ("fc_audioset.weight", (527, 512)), ("fc_audioset.bias", (527,))]


def _cnn14_count(emb):
    convs = sum(9 * a * b + 9 * b * b + 4 * b for a, b in zip((1, 64, 128, 256, 512, 1024), (64, 128, 256, 512, 1024, 2048)))
    return 128 + convs + 2048 * emb + emb + emb * 527 + 527


def test_cnn14_emb512_panns_key_table_and_size():
    with torch.device("meta"):
        model = MODELS.build_named("cnn14_emb512")
        cnn14 = Cnn14(emb_dim=2048)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == _panns_cnn14_emb512_table()
    assert count_params(model) == _cnn14_count(512)  # front-end tensors are buffers, not parameters
    assert count_params(cnn14) == _cnn14_count(2048) == 80_753_615  # PANNs Cnn14: 80.8 M


def test_cnn14_published_input_shapes():
    with torch.device("meta"):
        out = MODELS.build_named("cnn14_emb512").eval()(torch.empty(2, 320000), return_map=True)
    # 10 s at 32 kHz, hop 320 -> 1001 frames -> /32 -> 31; 64 mel -> 2
    assert out.fmap.shape == (2, 2048, 31, 2) and out.feature.shape == (2, 512) and out.logits.shape == (2, 527)


def test_cnn14_tiny_forward_waveform_and_fbank():
    torch.manual_seed(0)
    model = Cnn14(**TINY, sample_rate=16000, fmin=0, fmax=8000)
    out = model.train()(torch.randn(3, 1100))  # SpecAugment + dropout path
    assert out.logits.shape == (3, 5) and out.feature.shape == (3, 16)
    model.eval()
    x = torch.randn(2, 1100)
    logits, emb, _ = model(x)
    assert torch.all(emb >= 0)
    h = model.bn0(model.logmel(x).transpose(1, 3)).transpose(1, 3)
    for i in range(1, 7):
        h = getattr(model, f"conv_block{i}")(h, pool=2 if i < 6 else 1)
    h = h.mean(3)  # over mel
    h = torch.relu(model.fc1(h.amax(2) + h.mean(2)))  # max + mean over time
    torch.testing.assert_close(emb, h)
    torch.testing.assert_close(logits, model.fc_audioset(h))
    fb = MODELS.build_named("cnn14_emb512", front_end="fbank", mel_bins=40, num_classes=3, emb_dim=8,
                            widths=[4, 8, 8, 8, 8, 8])
    assert not hasattr(fb, "spectrogram_extractor")
    assert fb.eval()(torch.randn(2, 98, 40)).logits.shape == (2, 3)
    with pytest.raises(DataError, match="fbank"):
        fb(torch.randn(2, 98, 64))
    with pytest.raises(DataError, match="32 frames"):
        fb(torch.randn(2, 20, 40))


class Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def _tiny_checkpoint(tmp_path, **extra):
    torch.manual_seed(1)
    src = Cnn14(**TINY)
    for m in src.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
    path = tmp_path / "Cnn14_emb512_tiny.pth"
    # the PANNs training script also stores the sampler state (numpy arrays) next to the weights
    state = {"model": {f"module.{k}": v for k, v in src.state_dict().items()}, "iteration": 1000,
             "sampler": {"indexes_per_class": np.arange(10, dtype=np.int64), "pointer": np.int64(3)}, **extra}
    torch.save(state, path)
    return src, path


def test_load_panns_published_layout(tmp_path):
    src, path = _tiny_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="refusing"):
        load_state_file(path)  # the plain safe loader refuses the numpy arrays ...
    # ... load_panns allowlists only numpy array rebuilding; the hop is not in the file
    model = load_panns(path, hop_length=32)
    assert model.feature_dim == 16 and model.fc_audioset.out_features == 5 and model.mel_bins == 32
    x = torch.randn(2, 1200)
    torch.testing.assert_close(model.eval()(x).logits, src.eval()(x).logits)
    fb = load_panns(path, Cnn14(**TINY, front_end="fbank"))  # extractor tensors skipped
    torch.testing.assert_close(fb.eval()(src.logmel(x)[:, 0]).feature, src(x).feature)


def test_load_panns_refuses_code_and_wrong_models(tmp_path):
    _, bad = _tiny_checkpoint(tmp_path, evil=Evil())
    with pytest.raises(CheckpointError, match="refusing"):
        load_panns(bad)
    _, path = _tiny_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="melW differs"):
        load_panns(path, Cnn14(**TINY, fmax=8000))
    with pytest.raises(CheckpointError) as e:
        load_panns(path, Cnn14(**{**TINY, "widths": (4, 8, 8, 8, 8, 16)}))
    assert "\n" not in str(e.value) and "shape mismatch" in str(e.value) and "conv_block6" in str(e.value)
    torch.save({"model": {"fc1.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a PANNs Cnn14"):
        load_panns(tmp_path / "other.pth")


# ------------------------------------------------------------------------------- GDT ResNet-9
def test_resnet9_key_table_size_and_forward():
    with torch.device("meta"):
        trunk = MODELS.build_named("resnet9")
        ref_module = resnet9(num_classes=1000)
    names = [k for k in trunk.state_dict()]
    assert names[0] == "conv1.weight" and tuple(trunk.state_dict()["conv1.weight"].shape) == (64, 1, 7, 7)
    assert "layer1.0.downsample.0.weight" not in names and "layer4.0.downsample.1.running_var" in names
    assert not any(k.startswith(("layer1.1", "fc")) for k in names)
    assert count_params(trunk) == 4_899_520
    assert round(count_params(ref_module) / 1e6, 2) == 5.41  # gdt §3.2 counts the unused fc 512->1000
    torch.manual_seed(0)
    out = resnet9(widths=(8, 16, 32, 64)).eval()(torch.randn(2, 1, 40, 99), return_map=True)
    assert out.feature.shape == (2, 64) and out.fmap.shape == (2, 64, 2, 4) and out.logits is None
