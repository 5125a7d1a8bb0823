import math

import pytest
import torch

from xmodal.data.transforms import SpecAugment, gdt_specaugment, noise_roll, sample_generator, volume_gain
from xmodal.errors import ConfigError


def _clone(gen: torch.Generator) -> torch.Generator:
    g = torch.Generator()
    g.set_state(gen.get_state())
    return g


def _masked_rows_cols(out: torch.Tensor, time_dim: int):
    """For a 2-D spectrogram: sets of fully masked time positions and frequency positions."""
    x = out if time_dim == 0 else out.t()  # -> [time, freq]
    zero = x == 0
    return set(zero.all(1).nonzero()[:, 0].tolist()), set(zero.all(0).nonzero()[:, 0].tolist())


def test_torchaudio_style_draws_and_zero_fill():
    spec = torch.rand(100, 64) + 1.0  # [frames, mel], no zeros
    aug = SpecAugment(freq_width=20, time_width=30)
    gen = sample_generator(0)
    g2 = _clone(gen)
    out = aug(spec, gen)
    # torchaudio: v = U * max, start = floor(U * (size - v)), width = floor(v); freq first, then time
    u = torch.rand(4, generator=g2, dtype=torch.float64)
    vf, vt = u[0] * 20, u[2] * 30
    f0, fw = int(u[1] * (64 - vf)), int(vf)
    t0, tw = int(u[3] * (100 - vt)), int(vt)
    expected = spec.clone()
    expected[:, f0 : f0 + fw] = 0
    expected[t0 : t0 + tw, :] = 0
    assert torch.equal(out, expected)


def test_mask_widths_positions_and_counts_over_draws():
    aug = SpecAugment(freq_width=8, time_width=12)
    fw, tw = set(), set()
    for i in range(300):
        out = aug(torch.ones(40, 16), sample_generator(1, i))
        rows, cols = _masked_rows_cols(out, 0)
        # one contiguous run per axis, width < max
        for s, lim, seen in ((rows, 12, tw), (cols, 8, fw)):
            if s:
                assert max(s) - min(s) + 1 == len(s)
            assert len(s) < lim
            seen.add(len(s))
        # everything else untouched
        keep = torch.ones_like(out, dtype=torch.bool)
        keep[sorted(rows)] = False
        keep[:, sorted(cols)] = False
        assert (out[keep] == 1).all() and (out[~keep] == 0).all()
    assert fw == set(range(8)) and tw == set(range(12))


def test_gdt_presets_counts_and_uniform_starts():
    assert (gdt_specaugment("mild").freq_width, gdt_specaugment("mild").time_width) == (2, 5)
    heavy = gdt_specaugment("heavy")
    assert (heavy.freq_masks, heavy.time_masks, heavy.freq_width, heavy.time_width) == (2, 2, 3, 6)
    with pytest.raises(ConfigError, match="medium"):
        gdt_specaugment("meduim")
    aug = gdt_specaugment("medium")
    starts, widths = set(), set()
    for i in range(600):
        p = aug.sample(5, 20, sample_generator(2, i))
        s, w = p.freq[0, 0].tolist()
        assert 0 <= w <= 2 and 0 <= s <= 5 - w
        starts.add((s, w))
        widths.add(int(p.time[0, 0, 1]))
    # every placement that fits occurs, including the last one (start = size - width)
    assert starts == {(s, w) for w in range(3) for s in range(6 - w)}
    assert widths == set(range(6))
    p = heavy.sample(40, 99, sample_generator(3), n=4)
    assert p.freq.shape == (4, 2, 2) and p.time.shape == (4, 2, 2)


def test_gdt_layout_masks_full_rows_and_columns():
    spec = torch.rand(1, 40, 99) + 1.0  # [1, F, T]
    out = gdt_specaugment("heavy")(spec, sample_generator(4), freq_dim=-2, time_dim=-1)
    zero = out[0] == 0
    masked_f = zero.all(1)
    masked_t = zero.all(0)
    assert torch.equal(zero, masked_f[:, None] | masked_t[None, :])
    assert masked_f.sum() <= 4 and masked_t.sum() <= 10


def test_batch_masks_are_per_sample():
    aug = SpecAugment(freq_width=30, time_width=50)
    spec = torch.ones(6, 100, 64)
    out = aug.batch(spec, sample_generator(5))
    patterns = {tuple((out[b] == 0).nonzero().flatten().tolist()) for b in range(6)}
    assert len(patterns) > 3
    p = aug.sample(64, 100, sample_generator(5), n=6)
    assert torch.equal(aug.apply(spec, p), out)


def test_noise_roll_reproduces_formula():
    x = torch.randn(50, 8)
    gen = sample_generator(6)
    g2 = _clone(gen)
    out = noise_roll(x, gen)
    u = torch.rand((), generator=g2, dtype=torch.float64)
    noise = torch.rand(1, 50, 8, generator=g2)
    shift = int(torch.randint(-50, 50, (1,), generator=g2))
    expected = torch.roll(x + noise[0] * float(u) * 0.1, shift, 0)
    torch.testing.assert_close(out, expected)


def test_noise_roll_statistics():
    zeros = torch.zeros(400, 32, 16)
    out = noise_roll(zeros, sample_generator(7))
    assert out.shape == zeros.shape and (out >= 0).all() and (out < 0.1).all()
    per_clip_max = out.amax((1, 2))
    # the per-clip amplitude u/10 is uniform on [0, 0.1): its mean ~0.05
    assert abs(float(per_clip_max.mean()) - 0.05) < 0.006
    # rolling: a time ramp comes back as a rotated ramp, shifts cover [-T, T)
    ramp = torch.arange(32.0).view(1, 32, 1).expand(2000, 32, 4) * 100
    rolled = noise_roll(ramp, sample_generator(8))
    first = (rolled[:, 0, 0] / 100).floor().long()
    assert set(first.tolist()) == set(range(32))
    diffs = (rolled[:, 1:, 0] / 100).floor() - (rolled[:, :-1, 0] / 100).floor()
    assert ((diffs == 1) | (diffs == -31)).all()


def test_volume_gain():
    wave = torch.full((1000,), 1000, dtype=torch.int16)
    gains = [float(volume_gain(wave, sample_generator(9, i))[0]) / 1000 for i in range(300)]
    assert all(0.9 <= g < 1.1 for g in gains) and min(gains) < 0.92 and max(gains) > 1.08
    batch = volume_gain(torch.ones(4, 10), sample_generator(10))
    assert batch.shape == (4, 10) and len(set(batch[:, 0].tolist())) == 4
    assert torch.equal(batch[:, :1].expand(4, 10), batch)
    assert math.isclose(float(volume_gain(torch.ones(3), sample_generator(11)).std()), 0.0, abs_tol=1e-7)


def test_specaugment_config_errors():
    with pytest.raises(ConfigError, match="style"):
        SpecAugment(style="torchvision")
    with pytest.raises(ConfigError, match="time_width"):
        SpecAugment(time_width=-1)
