import pytest
import torch

from xmodal.data.transforms import (
    Mixup,
    mix,
    mix_waveforms,
    mixup_labels,
    mixup_lambda,
    multi_hot,
    sample_generator,
    smooth_labels,
)
from xmodal.errors import ConfigError, DataError


def test_mixup_lambda_is_beta_10_10_and_deterministic():
    lam = mixup_lambda(sample_generator(0), 10.0, n=20000)
    assert 0 < float(lam.min()) and float(lam.max()) < 1
    assert abs(float(lam.mean()) - 0.5) < 0.005
    assert abs(float(lam.var()) - 1 / 84) < 0.0008  # Beta(a, a): 1 / (4 (2a + 1))
    assert torch.equal(lam, mixup_lambda(sample_generator(0), 10.0, n=20000))
    assert mixup_lambda(sample_generator(1)).dim() == 0


def test_mix_waveforms_centres_pads_and_cuts():
    w1 = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    short = torch.tensor([2.0, 4.0, 6.0])
    out = mix_waveforms(w1, short, 0.25)
    c1 = w1 - 3.5
    c2 = torch.tensor([-2.0, 0.0, 2.0, 0.0, 0.0, 0.0])  # centred, then zero-padded
    raw = 0.25 * c1 + 0.75 * c2
    torch.testing.assert_close(out, raw - raw.mean())
    assert abs(float(out.mean())) < 1e-6
    long = torch.arange(10.0)
    out = mix_waveforms(w1, long, 0.6)
    c2 = (long - 4.5)[:6]
    raw = 0.6 * c1 + 0.4 * c2
    torch.testing.assert_close(out, raw - raw.mean())
    assert out.shape == w1.shape


def test_mix_images_and_rowwise_lambda():
    a, b = torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    torch.testing.assert_close(mix(a, b, 0.3), torch.full_like(a, 0.3))
    out = mix(a, b, torch.tensor([0.2, 0.9], dtype=torch.float64))
    assert torch.allclose(out[0], torch.tensor(0.2)) and torch.allclose(out[1], torch.tensor(0.9))


def test_label_smoothing_and_mixup_labels():
    y1 = multi_hot([0], 4)
    y2 = multi_hot([1, 3], 4)
    torch.testing.assert_close(smooth_labels(y1, 0.1), torch.tensor([0.9, 0.025, 0.025, 0.025]))
    torch.testing.assert_close(smooth_labels(y2, 0.1), torch.tensor([0.025, 0.9, 0.025, 0.9]))
    out = mixup_labels(y1, multi_hot([1], 4), 0.7, 0.1)
    torch.testing.assert_close(out, torch.tensor([0.025 + 0.63, 0.025 + 0.27, 0.025, 0.025]))
    assert abs(float(out.sum()) - 1.0) < 1e-6
    out = mixup_labels(y1, y2, 0.5, 0.1)
    torch.testing.assert_close(out, torch.tensor([0.475, 0.475, 0.025, 0.475]))
    torch.testing.assert_close(mixup_labels(y1, y1, 0.3, 0.0), y1)
    with pytest.raises(DataError):
        multi_hot([4], 4)


def test_mixup_draws():
    m = Mixup()
    draws = [m.draw(50, sample_generator(0, i)) for i in range(1000)]
    mixed = [d for d in draws if d.partner is not None]
    assert 430 < len(mixed) < 570
    assert all(0 <= d.partner < 50 for d in mixed) and all(0 < d.lam < 1 for d in mixed)
    assert all(d.lam == 1.0 for d in draws if d.partner is None)
    assert draws[:20] == [m.draw(50, sample_generator(0, i)) for i in range(20)]
    assert all(Mixup(p=0.0).draw(50, sample_generator(1, i)).partner is None for i in range(50))
    y = multi_hot([2], 5)
    torch.testing.assert_close(m.labels(y), smooth_labels(y, 0.1))
    torch.testing.assert_close(
        m.labels(y, multi_hot([0], 5), 0.4), mixup_labels(y, multi_hot([0], 5), 0.4, 0.1)
    )
    with pytest.raises(ConfigError, match="Mixup.p"):
        Mixup(p=2.0)
