import math

import pytest
import torch

from xmodal.data.transforms import (
    AudioWindow,
    ClipWindow,
    audio_window,
    cavmae_frame_index,
    cavmae_stored_frames,
    gdt_starts,
    gdt_windows,
    reverse_time,
    roll_time,
    sample_generator,
    train_window,
    uniform_windows,
)
from xmodal.errors import DataError


# ------------------------------------------------------ reference emulation (3D-ResNets list logic)
def _loop(sample: list[int], size: int) -> list[int]:
    out = list(sample)
    for index in out:
        if len(out) >= size:
            break
        out.append(index)
    return out


def _ref_even(n: int, size: int, n_samples: int) -> list[list[int]]:
    frames = list(range(n))
    step = max(1, math.ceil((n - 1 - size) / (n_samples - 1)))
    out = []
    for begin in frames[::step]:
        if len(out) >= n_samples:
            break
        sample = list(range(begin, min(frames[-1] + 1, begin + size)))
        if len(sample) < size:
            out.append(_loop(sample, size))
            break
        out.append(sample)
    return out


def _ref_cover(n: int, size: int) -> list[list[int]]:
    out = []
    for begin in range(0, n, size):
        sample = list(range(begin, min(n, begin + size)))
        if len(sample) < size:
            out.append(_loop(sample, size))
            break
        out.append(sample)
    return out


# ------------------------------------------------------------------------------------ windows
def test_window_indices_and_loop_padding():
    w = ClipWindow(0, 16, 1, 10)
    assert w.valid == 10 and w.padded
    assert w.indices().tolist() == list(range(10)) + list(range(6))
    w = ClipWindow(32, 16, 1, 40)
    assert w.indices().tolist() == list(range(32, 40)) * 2
    w = ClipWindow(3, 4, 2, 20)
    assert w.indices().tolist() == [3, 5, 7, 9] and not w.padded and w.span == 7
    w = ClipWindow(15, 4, 2, 20)  # positions 15, 17, 19 then loop
    assert w.indices().tolist() == [15, 17, 19, 15]
    assert w.seconds(30.0) == (0.5, 8 / 30)


def test_train_window_covers_every_full_start_and_is_deterministic():
    starts = set()
    for i in range(400):
        w = train_window(20, 16, gen=sample_generator(0, 0, i))
        assert 0 <= w.start <= 4 and not w.padded
        assert w.indices().tolist() == list(range(w.start, w.start + 16))
        starts.add(w.start)
    assert starts == {0, 1, 2, 3, 4}
    a = [train_window(100, 16, gen=sample_generator(7, 1, i)).start for i in range(20)]
    b = [train_window(100, 16, gen=sample_generator(7, 1, i)).start for i in range(20)]
    assert a == b and len(set(a)) > 5


def test_train_window_short_video_loop_pads_and_stride():
    w = train_window(10, 16, gen=sample_generator(1))
    assert w.start == 0 and w.indices().tolist() == list(range(10)) + list(range(6))
    for i in range(50):
        w = train_window(40, 8, stride=3, gen=sample_generator(2, i))
        assert 0 <= w.start <= 40 - 22 and w.indices().tolist() == [w.start + 3 * k for k in range(8)]
    with pytest.raises(DataError):
        train_window(0, 16, gen=sample_generator(0))


def test_uniform_windows_spread_formula():
    ws = uniform_windows(100, 30, count=10, mode="spread")
    assert (
        [w.start for w in ws] == [k * 70 // 10 for k in range(10)] == [0, 7, 14, 21, 28, 35, 42, 49, 56, 63]
    )
    for n in range(1, 200, 7):
        ws = uniform_windows(n, 32, count=10)
        assert len(ws) == 10
        assert [w.start for w in ws] == [math.floor(k * max(0, n - 32) / 10) for k in range(10)]
        assert all(not w.padded for w in ws) or n < 32


def test_uniform_windows_even_matches_reference():
    assert [w.start for w in uniform_windows(100, 16, count=3, mode="even")] == [0, 42, 84]
    for n in range(1, 90):
        got = [w.indices().tolist() for w in uniform_windows(n, 16, count=3, mode="even")]
        assert got == _ref_even(n, 16, 3), n
    assert len(uniform_windows(10, 16, count=3, mode="even")) == 1


def test_uniform_windows_cover_counts_and_coverage():
    for n in range(1, 100):
        ws = uniform_windows(n, 16, mode="cover")
        assert len(ws) == math.ceil(n / 16)
        assert [w.indices().tolist() for w in ws] == _ref_cover(n, 16)
        seen = torch.cat([w.indices() for w in ws])
        assert set(seen.tolist()) == set(range(n))
        assert sum(w.padded for w in ws) == (n % 16 != 0)
    ws = uniform_windows(40, 16, mode="cover")
    assert ws[-1].indices().tolist() == list(range(32, 40)) * 2
    # stride: windows of positions on the subsampled frame list
    ws = uniform_windows(20, 4, stride=2, mode="cover")
    assert [w.indices().tolist() for w in ws] == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18, 16, 18]]


def test_gdt_starts_formula_and_range():
    g = sample_generator(3)
    state = g.get_state()
    starts = gdt_starts(130, 30, gen=g, count=2)
    g2 = torch.Generator()
    g2.set_state(state)
    idx = [int(torch.randint(0, 1001, (), generator=g2)) for _ in range(2)]
    assert starts == [100 * i // 1000 for i in idx]
    seen = set()
    for i in range(300):
        s1, s2 = gdt_starts(61, 30, gen=sample_generator(4, i))
        assert 0 <= s1 <= 31 and 0 <= s2 <= 31
        seen |= {s1, s2}
    assert len(seen) > 25
    assert gdt_starts(20, 30, gen=sample_generator(0)) == [0, 0]
    ws = gdt_windows(20, 30, gen=sample_generator(0))
    assert ws[0].indices().tolist() == list(range(20)) + list(range(10))


# -------------------------------------------------------------------------------------- audio
def test_audio_window_alignment():
    w = ClipWindow(45, 30, 1, 300)
    aw = audio_window(w, 30.0, 24000)
    assert (aw.start, aw.length) == (36000, 24000)
    fb = audio_window(w, 30.0, 100)
    assert (fb.start, fb.length) == (150, 100)
    # clip at 25 fps, 16 kHz: frame 10 starts at 0.4 s
    aw = audio_window(ClipWindow(10, 16, 1, 100), 25.0, 16000)
    assert (aw.start, aw.length) == (6400, 10240)
    # GDT rule: a window past the end moves back so that it ends at the stream's end
    aw = audio_window(ClipWindow(280, 30, 1, 300), 30.0, 24000, total=230000)
    assert (aw.start, aw.length) == (230000 - 24000, 24000)
    aw = audio_window(ClipWindow(0, 30, 1, 30), 30.0, 24000, seconds=2.0, total=10000)
    assert (aw.start, aw.length) == (0, 48000)


def test_audio_window_take_pads_with_zeros():
    x = torch.arange(1, 11, dtype=torch.float32)
    assert AudioWindow(2, 3).take(x).tolist() == [3, 4, 5]
    assert AudioWindow(8, 4).take(x).tolist() == [9, 10, 0, 0]
    assert AudioWindow(12, 2).take(x).tolist() == [0, 0]
    fb = torch.ones(5, 3)
    out = AudioWindow(0, 7).take(fb, -2)
    assert out.shape == (7, 3) and out[5:].abs().sum() == 0 and out[:5].sum() == 15
    assert AudioWindow(0, 4).take(torch.ones(1, 40, 9), -1).shape == (1, 40, 4)


def test_time_ops():
    x = torch.arange(24.0).view(2, 4, 3)
    shifts = torch.tensor([1, -6])
    out = roll_time(x, shifts, dim=1)
    for b in range(2):
        assert torch.equal(out[b], torch.roll(x[b], int(shifts[b]), 0))
    assert torch.equal(reverse_time(x, 1)[:, 0], x[:, 3])


# ------------------------------------------------------------------------------------ CAV-MAE
def test_cavmae_frames():
    assert cavmae_stored_frames(300, 30.0) == list(range(0, 300, 30))
    assert cavmae_stored_frames(50, 30.0) == list(range(0, 50, 5))
    assert cavmae_stored_frames(4, 30.0) == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    present = [True] * 10
    assert cavmae_frame_index(present, train=False) == 5
    present[5] = False
    assert cavmae_frame_index(present, train=False) == 4
    assert cavmae_frame_index([False] * 6 + [True] * 4, train=False) == 6
    picks = [cavmae_frame_index([True] * 10, train=True, gen=sample_generator(0, i)) for i in range(300)]
    assert set(picks) == set(range(10))
    holes = [True, False, False, True] + [True] * 6
    picks = {cavmae_frame_index(holes, train=True, gen=sample_generator(1, i)) for i in range(200)}
    assert 1 not in picks and 2 not in picks and 0 in picks
    with pytest.raises(DataError):
        cavmae_frame_index([False] * 10, train=False)


def test_sample_generator_keys():
    a = torch.rand(4, generator=sample_generator(1, 2, 3))
    assert torch.equal(a, torch.rand(4, generator=sample_generator(1, 2, 3)))
    assert not torch.equal(a, torch.rand(4, generator=sample_generator(1, 3, 2)))
    assert not torch.equal(a, torch.rand(4, generator=sample_generator(1, 2, 4)))
