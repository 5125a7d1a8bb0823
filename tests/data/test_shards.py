"""Deterministic tar shards with member offsets, pread access and member codecs."""

from __future__ import annotations

import os
import tarfile

import numpy as np
import pytest

from xmodal.data.shards import (
    ShardReader,
    TarWriter,
    decode_audio_bytes,
    decode_jpg,
    decode_npy,
    encode_audio,
    encode_jpg,
    encode_npy,
    read_npy_frames,
    sample_key,
    scan_tar,
    stale_tmp_files,
    write_atomic,
)
from xmodal.errors import DataError

MEMBERS = [
    ("a.json", b'{"uid": "a"}'),
    ("a.frames.npy", bytes(range(256)) * 5),  # not a multiple of 512
    ("a.flac", b""),  # empty member
    ("b" * 120 + ".json", b"x" * 512),  # long name: PAX header blocks before the data
    ("b" * 120 + ".wav", os.urandom(1000)),
]


def _write(path):
    w = TarWriter(path)
    recorded = [w.add(n, d) for n, d in MEMBERS]
    assert not path.exists()  # nothing under the final name before commit
    size = w.commit()
    return recorded, size


def test_offsets_match_tarfile_and_bytes(tmp_path):
    path = tmp_path / "s.tar"
    recorded, size = _write(path)
    assert size == path.stat().st_size
    scanned = scan_tar(path)
    assert [(m.name, m.offset, m.size) for m in scanned] == [(m.name, m.offset, m.size) for m in recorded]
    raw = path.read_bytes()
    for m, (_, data) in zip(recorded, MEMBERS):
        assert raw[m.offset : m.offset + m.size] == data
    with tarfile.open(path) as tar:  # a plain tar any WebDataset reader can stream
        infos = tar.getmembers()
        assert [i.name for i in infos] == [n for n, _ in MEMBERS]
        assert all(i.mtime == 0 and i.uid == 0 and i.uname == "" and i.mode == 0o644 for i in infos)


def test_deterministic_bytes(tmp_path):
    _write(tmp_path / "a.tar")
    _write(tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_abort_leaves_nothing(tmp_path):
    w = TarWriter(tmp_path / "s.tar")
    w.add("x.json", b"{}")
    assert stale_tmp_files(tmp_path / "s.tar") == [w.tmp]
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_only_if_changed(tmp_path):
    p = tmp_path / "f.txt"
    assert write_atomic(p, "hello")
    before = p.stat().st_mtime_ns
    assert not write_atomic(p, "hello", only_if_changed=True)
    assert p.stat().st_mtime_ns == before
    assert write_atomic(p, "other", only_if_changed=True) and p.read_text() == "other"
    assert [f.name for f in tmp_path.iterdir()] == ["f.txt"]


def test_reader_pread_lru_fork_and_truncation(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.bin"
        p.write_bytes(bytes([i]) * 100)
        paths.append(p)
    r = ShardReader(max_open=2)
    for i, p in enumerate(paths):
        assert r.read(p, 10, 5) == bytes([i]) * 5
    assert len(r._fds) == 2 and str(paths[0]) not in r._fds  # least recently used closed
    r._pid = -1  # as after a fork: the inherited descriptors must not be used
    assert r.read(paths[0], 0, 3) == b"\x00" * 3 and list(r._fds) == [str(paths[0])]
    with pytest.raises(DataError, match="truncated"):
        r.read(paths[1], 90, 20)
    with pytest.raises(DataError, match="cannot open"):
        r.read(tmp_path / "nope.tar", 0, 1)
    import pickle

    r2 = pickle.loads(pickle.dumps(r))
    assert r2._fds == {} and r2.read(paths[2], 0, 1) == b"\x02"
    r.close()


@pytest.mark.parametrize("indices", [[0, 1, 2, 3], [5, 6, 7, 5, 6, 7], [0, 7], [7, 0, 3], [2, 4, 6, 6]])
def test_npy_frames_window(tmp_path, indices):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (8, 6, 5, 3), dtype=np.uint8)
    data, header = encode_npy(arr)
    np.testing.assert_array_equal(decode_npy(data), arr)
    w = TarWriter(tmp_path / "s.tar")
    w.add("pad.json", b"{}")
    m = w.add("k.frames.npy", data)
    w.commit()
    got = read_npy_frames(ShardReader(), tmp_path / "s.tar", m.offset + header, arr.shape, np.array(indices))
    np.testing.assert_array_equal(got, arr[indices])
    with pytest.raises(DataError, match="out of range"):
        read_npy_frames(ShardReader(), tmp_path / "s.tar", m.offset + header, arr.shape, np.array([8]))


def test_jpg_round_trip():
    yy, xx = np.mgrid[:32, :48]
    img = np.stack([xx * 5, yy * 7, (xx + yy) * 3], -1).astype(np.uint8)
    data = encode_jpg(img, 95)
    assert data == encode_jpg(img, 95)
    back = decode_jpg(data)
    assert back.shape == img.shape and np.abs(back.astype(int) - img).mean() < 3


@pytest.mark.parametrize("fmt", ["flac", "wav"])
def test_audio_round_trip(fmt):
    x = (0.5 * np.sin(np.arange(4000) / 7.0)).astype(np.float32)
    x[10] = 1.5  # clipped to 1
    data = encode_audio(x, 16000, fmt)
    assert data == encode_audio(x, 16000, fmt)  # no timestamps or random ids
    y, sr = decode_audio_bytes(data)
    assert sr == 16000 and y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, np.clip(x, -1, 1), atol=1.0 / 32767)


def test_sample_key():
    assert sample_key("v_ApplyEyeMakeup_g08_c01") == "v_ApplyEyeMakeup_g08_c01"
    for uid in ("a.b", "dir/clip", "ümlaut", "x" * 100):
        k = sample_key(uid)
        assert k.startswith("h") and len(k) == 25 and "." not in k and k == sample_key(uid)
    assert sample_key("a.b") != sample_key("a_b")
