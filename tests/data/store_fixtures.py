"""Tiny real media corpora for the prep/store tests (written with PyAV, no downloads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xmodal.data.manifest import ManifestRow, write_labels, write_manifest

SR = 16000
FPS = 8
SIZE = 32


def clip_frames(t: int, seed: int, h: int = SIZE, w: int = SIZE) -> np.ndarray:
    """Smooth colour field + a moving bright square: codec-friendly and different per frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    base = np.stack([0.2 + 0.5 * xx, 0.2 + 0.5 * yy, 0.5 + 0.2 * np.sin(5 * xx + seed)], -1)
    v = np.repeat(base[None], t, 0)
    for i in range(t):
        x0 = (3 * i + seed) % (w - 8)
        v[i, 4:12, x0 : x0 + 8] = rng.uniform(0.6, 1.0, 3)
    return (np.clip(v, 0, 1) * 255 + 0.5).astype(np.uint8)


def clip_audio(seconds: float, seed: int) -> np.ndarray:
    n = np.arange(int(seconds * SR))
    f = 300 + 40 * seed
    return (0.3 * np.sin(2 * np.pi * f * n / SR) * np.minimum(1.0, n / 800)).astype(np.float32)


@dataclass
class Corpus:
    manifest: Path
    good: list[str]  # uids that must be prepared
    bad: dict[str, str] = field(default_factory=dict)  # uid -> expected reject reason


def make_corpus(root: Path, n_good: int = 8, *, bad: bool = True, frames: int = 8, k4: bool = False) -> Corpus:
    """`n_good` clips (32x32, `frames` frames at 8 fps, as much audio) in train/test, 3 classes.

    With `bad`: corrupt bytes, a 0-byte file, video without audio, audio without video, a missing
    file and a 0.25 s clip (too short when min_duration is 0.5 s). With `k4`: a 3840x2160 clip of
    2 frames (good: it must be resized, not rejected).
    """
    from xmodal.data.media import write_av

    root.mkdir(parents=True, exist_ok=True)
    rows, good, rejects = [], [], {}
    for i in range(n_good):
        uid = f"clip{i:02d}"
        path = root / f"{uid}.mp4"
        if not path.exists():
            write_av(path, clip_frames(frames, i), FPS, clip_audio(frames / FPS, i), SR, gop=frames)
        rows.append(ManifestRow(uid, "train" if i % 4 else "test", [i % 3], video=path.name, audio=path.name,
                                group=f"g{i % 2}", meta={"i": i}))  # fmt: skip
        good.append(uid)
    if k4:
        path = root / "k4.mp4"
        if not path.exists():
            big = np.zeros((2, 2160, 3840, 3), np.uint8)
            big[:, ::9] = 180
            write_av(path, big, 2, clip_audio(1.0, 99), SR, gop=2, preset="ultrafast")  # 1 s
        rows.append(ManifestRow("k4", "train", [0], video=path.name, audio=path.name))
        good.append("k4")
    if bad:
        (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
        (root / "empty.mp4").write_bytes(b"")
        if not (root / "silent.mp4").exists():
            write_av(root / "silent.mp4", clip_frames(frames, 50), FPS, None)
        if not (root / "voice.wav").exists():
            write_av(root / "voice.wav", None, FPS, clip_audio(1.0, 51), SR)
        if not (root / "short.mp4").exists():
            write_av(root / "short.mp4", clip_frames(2, 52), FPS, clip_audio(0.25, 52), SR, gop=2)
        for uid, name, reason in [
            ("bad_corrupt", "corrupt.mp4", "corrupt"),
            ("bad_empty", "empty.mp4", "corrupt"),
            ("bad_silent", "silent.mp4", "no_audio"),
            ("bad_voice", "voice.wav", "no_video"),
            ("bad_missing", "missing.mp4", "unreadable"),
            ("bad_short", "short.mp4", "too_short"),
        ]:
            rows.append(ManifestRow(uid, "train", [1], video=name, audio=name))
            rejects[uid] = reason
    manifest = write_manifest(rows, root / "manifest.jsonl")
    write_labels(["red", "green", "blue"], root / "labels.csv")
    return Corpus(manifest, good, rejects)


def store_files(root: Path) -> dict[str, bytes]:
    """Every file of a store (relative path -> bytes), for byte-identity checks."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def timecode_clip(path: Path, frames: int, seed: int = 0) -> Path:
    """A clip whose content tells the time: frame k is flat grey 10·k (+ a seed-dependent tint
    that keeps clips apart), and audio during frame k's period is the constant 0.02·(k + 1).
    Lossless audio (PCM in Matroska), so a window's first sample names the frame it starts at.
    """
    from xmodal.data.media import write_av

    k = np.arange(frames)
    v = np.broadcast_to((10 * k)[:, None, None, None], (frames, SIZE, SIZE, 3)).astype(np.uint8).copy()
    v[..., 2] = np.minimum(255, v[..., 2] + seed)
    per = SR // FPS
    audio = np.repeat(0.02 * (k + 1), per).astype(np.float32)
    return write_av(path, v, FPS, audio, SR, gop=4, audio_codec="pcm_s16le", crf=0)
