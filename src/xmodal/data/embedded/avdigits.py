"""avdigits: audio-visual clips of handwritten digits with their spoken names (DESIGN §4).

Video: a real 8x8 handwritten digit (scikit-learn's digits, vendored) upscaled to size/2 and
moving in a straight line (bouncing off the borders) over a smooth colour texture, random colour
and brightness, per-pixel luminance noise; optionally a smaller, dimmer distractor digit behind it.
Audio: a real spoken digit name (espeak-ng renders shipped as FLAC: 40 speakers x 10 words)
placed at a random offset in the clip's window at a random level, mixed with white noise at a
random SNR.

Splits: `train` (labelled, few per class), `pool` (unlabelled paired clips: where an audio teacher
can teach a video student) and `test`. Test clips use handwriting images and speakers that train
and pool never see.

Semantic gap: a clip is a gap clip with probability `gap`; its audio then says another class:
(c + 1) mod K ("fixed": a consistent wrong teacher, which makes KD hurt) or a uniformly random
other class ("random": the true class stays the teacher's plurality label up to gap ~ 0.9).
Every split has its own random streams and the gap decisions, videos and audio draws come from
separate streams, so for one seed the videos are identical whatever `gap`, and a non-gap clip's
audio is identical too; changing `n_pool` does not change train or test clips.

`generate(cfg)` builds everything in memory (seconds for thousands of clips); `write_files(cfg,
root)` writes them as real mp4 files (H.264 + AAC) with a manifest, for the `xmodal prep` path.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from xmodal.data.bundle import DataBundle, DataInfo
from xmodal.errors import ConfigError, DataError
from xmodal.registry import register_dataset

log = logging.getLogger(__name__)

ASSETS = Path(__file__).with_name("assets")
SAMPLE_RATE = 16000
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = ("train", "pool", "test")
_CHUNK = 256  # clips rendered at once (bounds the float temporaries to ~25 MB at 32 px)


@dataclass
class AVDigitsConfig:
    num_classes: int = 10  # digits 0..K-1
    n_train_per_class: int = 5  # labelled training clips
    n_pool: int = 1000  # unlabelled paired clips (classes balanced)
    n_test_per_class: int = 50
    frames: int = 8
    size: int = 32  # square frames; the digit is size/2 px
    fps: float = 8.0
    audio_seconds: float = 1.0
    video_noise: float = 0.2  # std of per-pixel luminance noise (pixel range 0..1)
    distractor: bool = False  # a smaller, dimmer digit of another class moving behind
    brightness: tuple[float, float] = (0.6, 1.0)
    speed: tuple[float, float] = (1.0, 3.0)  # px per frame
    # "none": the digit stays still at the centre of every frame (the same random draws are made, so
    # everything else about a clip is unchanged): for models without translation invariance, such as
    # a tiny ViT whose patch grid then sees the whole digit in its central patches (CAV-MAE recipes)
    motion: Literal["bounce", "none"] = "bounce"
    snr_db: tuple[float, float] = (-5.0, 10.0)
    gap: float = 0.0  # fraction of clips whose audio says another class
    gap_mode: Literal["fixed", "random"] = "fixed"
    test_image_fraction: float = 0.4  # handwriting images held out for test (per class)
    test_speaker_fraction: float = 0.25  # speakers held out for test
    seed: int = 0

    def validate(self) -> None:
        if not 2 <= self.num_classes <= 10:
            raise ValueError(f"num_classes must be in 2..10, got {self.num_classes}")
        if min(self.n_train_per_class, self.n_pool, self.n_test_per_class) < 0:
            raise ValueError("clip counts must be >= 0")
        if self.size < 16 or self.size % 4:
            raise ValueError(
                f"size must be a multiple of 4 and >= 16 (H.264 needs even sizes), got {self.size}"
            )
        if self.frames < 1 or self.fps <= 0 or self.audio_seconds <= 0:
            raise ValueError("frames, fps and audio_seconds must be > 0")
        if not 0.0 <= self.gap <= 1.0:
            raise ValueError(f"gap must be in [0, 1], got {self.gap}")
        if self.gap_mode not in ("fixed", "random"):
            raise ValueError(f"gap_mode must be 'fixed' or 'random', got {self.gap_mode!r}")
        for key in ("brightness", "speed", "snr_db"):
            lo, hi = getattr(self, key)
            if lo > hi:
                raise ValueError(f"{key}: expected (low, high), got {(lo, hi)}")
        if not (0 < self.test_image_fraction < 1 and 0 < self.test_speaker_fraction < 1):
            raise ValueError("test_image_fraction and test_speaker_fraction must be in (0, 1)")
        if self.video_noise < 0:
            raise ValueError("video_noise must be >= 0")
        if self.motion not in ("bounce", "none"):
            raise ValueError(f"motion must be 'bounce' or 'none', got {self.motion!r}")


@dataclass
class AVDigits:
    """N clips; per-clip arrays are aligned on their first axis."""

    video: np.ndarray  # uint8 [N, T, H, W, 3] RGB
    audio: np.ndarray  # float32 [N, S] at `sample_rate`
    label: np.ndarray  # int64 [N] visual class (the clip's label)
    audio_label: np.ndarray  # int64 [N] class actually spoken
    gap: np.ndarray  # bool [N] audio_label != label
    split: np.ndarray  # str [N] train / pool / test
    uid: list[str]
    image: np.ndarray  # int64 [N] row of digits.csv shown
    speaker: np.ndarray  # int64 [N] speaker (0..39) heard
    labels: list[str] = field(default_factory=list)  # class names
    fps: float = 8.0
    sample_rate: int = SAMPLE_RATE

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, split: str) -> AVDigits:
        idx = np.flatnonzero(self.split == split)
        if len(idx) and idx[-1] - idx[0] + 1 == len(idx):
            # `generate` lays each split out as one block: views, not copies (the pool's audio is ~200 MB)
            idx = slice(int(idx[0]), int(idx[-1]) + 1)
        return AVDigits(
            self.video[idx], self.audio[idx], self.label[idx], self.audio_label[idx], self.gap[idx],
            self.split[idx], list(np.asarray(self.uid, dtype=object)[idx]), self.image[idx], self.speaker[idx],
            self.labels, self.fps, self.sample_rate,
        )  # fmt: skip


# ------------------------------------------------------------------------------------- assets
@functools.lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 handwritten digits: images float32 [n, 8, 8] in [0, 1], classes [n]."""
    with gzip.open(ASSETS / "digits.csv.gz", "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return (data[:, :64] / 16.0).reshape(-1, 8, 8), data[:, 64].astype(np.int64)


@dataclass
class VoiceBank:
    audio: np.ndarray  # float32 [R, Lmax] zero-padded renders at 16 kHz
    length: np.ndarray  # int64 [R]
    digit: np.ndarray  # int64 [R]
    speaker: np.ndarray  # int64 [R]
    rms: np.ndarray  # float32 [R] over the word's own samples


@functools.lru_cache(maxsize=1)
def load_voices() -> VoiceBank:
    """The shipped espeak-ng renders (see assets/voices/README.md)."""
    root = ASSETS / "voices"
    meta = json.loads((root / "index.json").read_text())
    assert meta["sample_rate"] == SAMPLE_RATE
    renders = meta["renders"]
    waves = [_read_flac(root / r["file"]) for r in renders]
    length = np.array([len(w) for w in waves])
    audio = np.zeros((len(waves), length.max()), np.float32)
    for i, w in enumerate(waves):
        audio[i, : len(w)] = w
    rms = np.array([np.sqrt(np.mean(w.astype(np.float64) ** 2)) for w in waves], np.float32)
    return VoiceBank(
        audio, length, np.array([r["digit"] for r in renders]), np.array([r["speaker"] for r in renders]), rms
    )


def _read_flac(path: Path) -> np.ndarray:
    try:
        import soundfile as sf
    except ImportError:  # FLAC is lossless: PyAV gives the same samples
        from xmodal.data.media import decode_audio

        return decode_audio(path, sample_rate=SAMPLE_RATE, backend="pyav")
    x, sr = sf.read(path, dtype="float32")
    assert sr == SAMPLE_RATE and x.ndim == 1, (path, sr, x.shape)
    return x


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """[n_out, n_in] linear interpolation at pixel centres (edge-clamped), rows sum to 1."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    m = np.zeros((n_out, n_in), np.float32)
    np.add.at(m, (np.arange(n_out), lo), 1 - (pos - lo))
    np.add.at(m, (np.arange(n_out), hi), pos - lo)
    return m


def upscale(img: np.ndarray, n: int) -> np.ndarray:
    """[..., h, w] -> [..., n, n] bilinear."""
    m = _interp_matrix(n, img.shape[-1])
    return np.einsum("yi,...ij,xj->...yx", m, img, m, optimize=True)


# ------------------------------------------------------------------------------------- layout
@dataclass
class _Layout:
    """Which handwriting images and speakers each split may use."""

    images: dict[str, list[np.ndarray]]  # split -> per class, digits.csv rows
    renders: dict[str, np.ndarray]  # split -> [10, n_speakers] render rows (same speakers per digit)


def _layout(cfg: AVDigitsConfig) -> _Layout:
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, len(SPLITS)]))
    _, cls = load_digits()
    bank = load_voices()
    k = cfg.num_classes
    train_img, test_img = [], []
    for c in range(k):
        rows = rng.permutation(np.flatnonzero(cls == c))
        n_test = round(len(rows) * cfg.test_image_fraction)
        test_img.append(np.sort(rows[:n_test]))
        train_img.append(np.sort(rows[n_test:]))
    speakers = rng.permutation(np.unique(bank.speaker))
    n_test_spk = max(1, round(len(speakers) * cfg.test_speaker_fraction))
    spk = {"test": np.sort(speakers[:n_test_spk]), "train": np.sort(speakers[n_test_spk:])}
    # bank row of (digit, speaker): every speaker says every digit
    row = np.full((10, bank.speaker.max() + 1), -1)
    row[bank.digit, bank.speaker] = np.arange(len(bank.digit))
    assert (row >= 0).all()
    renders = {part: row[:, chosen] for part, chosen in spk.items()}
    return _Layout(
        images={"train": train_img, "pool": train_img, "test": test_img},
        renders={"train": renders["train"], "pool": renders["train"], "test": renders["test"]},
    )


# ------------------------------------------------------------------------------------- render
def _streams(cfg: AVDigitsConfig, split: str) -> tuple[np.random.Generator, ...]:
    """Independent (class order, gap, video, audio) generators for one split."""
    ss = np.random.SeedSequence([cfg.seed, SPLITS.index(split)])
    return tuple(np.random.default_rng(s) for s in ss.spawn(4))


def _draw_gap(cfg: AVDigitsConfig, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """audio class per clip: drawn before (and independently of) the video."""
    k = cfg.num_classes
    u_gap, u_other = rng.random(len(classes)), rng.integers(1, k, len(classes))
    is_gap = u_gap < cfg.gap
    wrong = (classes + 1) % k if cfg.gap_mode == "fixed" else (classes + u_other) % k
    return np.where(is_gap, wrong, classes)


def _bounce(p0: np.ndarray, v: np.ndarray, t: np.ndarray, span: float) -> np.ndarray:
    """Positions p0 + v t reflected into [0, span] (a straight path bouncing off the borders)."""
    q = np.mod(p0[:, None] + v[:, None] * t[None, :, None], 2 * span)
    return span - np.abs(q - span)


def _paste(canvas: np.ndarray, sprite: np.ndarray, color: np.ndarray, pos: np.ndarray) -> None:
    """Alpha-composite sprite [n, s, s] (alpha) in `color` [n, 3] at integer pos [n, T, 2] (y, x).

    The sprite sits in a zero plane [n, 2H, 2W] at (H, W); the frame-sized window starting at
    (H - y, W - x) is then the sprite placed at (y, x), and one gather copies every window.
    """
    n, _, h, w, _ = canvas.shape
    s = sprite.shape[-1]
    plane = np.zeros((n, 2 * h, 2 * w), np.float32)
    plane[:, h : h + s, w : w + s] = sprite
    windows = np.lib.stride_tricks.sliding_window_view(plane, (h, w), axis=(1, 2))  # [n, h+1, w+1, h, w]
    a = windows[np.arange(n)[:, None], h - pos[..., 0], w - pos[..., 1]][..., None]  # [n, T, H, W, 1]
    canvas *= 1 - a
    canvas += a * color[:, None, None, None, :]


def _render_video(
    cfg: AVDigitsConfig, lay: _Layout, split: str, classes: np.ndarray, rng
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, T, H, W, 3] and the digits.csv row shown in each clip."""
    imgs, _ = load_digits()
    n, t, h = len(classes), cfg.frames, cfg.size
    k = cfg.num_classes
    pools = lay.images[split]
    count = np.array([len(p) for p in pools])
    table = np.zeros((k, count.max()), np.int64)
    for c, p in enumerate(pools):
        table[c, : len(p)] = p
    pick = lambda c, u: table[c, (u * count[c]).astype(np.int64)]
    image = pick(classes, rng.random(n))
    # every per-clip parameter is drawn up front, so the chunking below cannot change the data
    grid = rng.random((n, 4, 4, 3), dtype=np.float32)
    tint = rng.uniform(0.4, 1.0, (n, 3)).astype(np.float32)
    bright = rng.uniform(*cfg.brightness, n).astype(np.float32)
    speed = rng.uniform(*cfg.speed, n)
    angle = rng.uniform(0, 2 * np.pi, n)
    s_big = h // 2
    p0 = rng.uniform(0, h - s_big, (n, 2))
    noise_seed = rng.integers(2**63)
    if cfg.distractor:
        d_cls = (classes + rng.integers(1, k, n)) % k
        d_image = pick(d_cls, rng.random(n))
        d_tint = rng.uniform(0.4, 1.0, (n, 3)).astype(np.float32)
        d_speed, d_angle = rng.uniform(*cfg.speed, n), rng.uniform(0, 2 * np.pi, n)
        d_p0 = rng.uniform(0, h - h // 4, (n, 2))
    color = tint / tint.max(1, keepdims=True) * bright[:, None]
    tt = np.arange(t, dtype=np.float64)
    vel = speed[:, None] * np.stack([np.sin(angle), np.cos(angle)], 1)
    pos = np.rint(_bounce(p0, vel, tt, h - s_big)).astype(np.int64)
    if cfg.motion == "none":
        pos[:] = (h - s_big) // 2
    if cfg.distractor:
        d_vel = d_speed[:, None] * np.stack([np.sin(d_angle), np.cos(d_angle)], 1)
        d_pos = np.rint(_bounce(d_p0, d_vel, tt, h - h // 4)).astype(np.int64)
        d_color = d_tint / d_tint.max(1, keepdims=True) * 0.5 * bright[:, None]
    m_bg = _interp_matrix(h, 4)
    out = np.empty((n, t, h, h, 3), np.uint8)
    noise_rng = np.random.default_rng(noise_seed)
    for a in range(0, n, _CHUNK):
        sl = slice(a, min(n, a + _CHUNK))
        bg = 0.05 + 0.4 * np.einsum("yi,nijc,xj->nyxc", m_bg, grid[sl], m_bg, optimize=True)
        canvas = np.repeat(bg[:, None], t, 1)
        if cfg.distractor:
            _paste(canvas, upscale(imgs[d_image[sl]], h // 4), d_color[sl], d_pos[sl])
        _paste(canvas, upscale(imgs[image[sl]], s_big), color[sl], pos[sl])
        if cfg.video_noise > 0:  # luminance grain: survives 4:2:0 chroma, so mp4 files look alike
            canvas += cfg.video_noise * noise_rng.standard_normal(canvas.shape[:-1] + (1,), dtype=np.float32)
        canvas *= 255
        canvas += 0.5
        out[sl] = np.clip(canvas, 0, 255, out=canvas)  # the assignment truncates to uint8
    return out, image


def _render_audio(
    cfg: AVDigitsConfig, lay: _Layout, split: str, audio_cls: np.ndarray, rng
) -> tuple[np.ndarray, np.ndarray]:
    """float32 [n, S]: word at a random offset and level plus white noise at a random SNR."""
    bank = load_voices()
    n, s = len(audio_cls), round(cfg.audio_seconds * SAMPLE_RATE)
    table = lay.renders[split]  # [10, n_speakers]
    # uniforms drawn independently of the class, so a clip's draws do not depend on `gap`
    u_spk, u_off = rng.random(n), rng.random(n)
    level = rng.uniform(0.05, 0.15, n).astype(np.float32)  # word RMS, about -26..-16 dBFS
    snr = rng.uniform(*cfg.snr_db, n)
    noise_seed = rng.integers(2**63)
    render = table[audio_cls, (u_spk * table.shape[1]).astype(int)]
    length = bank.length[render]
    # a word longer than the window is cropped (negative offset)
    off = np.where(
        length <= s, (u_off * (s - length + 1)).astype(int), -(u_off * (length - s + 1)).astype(int)
    )
    gain = (level / bank.rms[render]).astype(np.float32)
    noise_rms = (level * 10 ** (-snr / 20)).astype(np.float32)
    out = np.empty((n, s), np.float32)
    noise_rng = np.random.default_rng(noise_seed)
    lmax = bank.audio.shape[1]
    width = s + lmax + s
    chunk = max(1, min(_CHUNK, 8_000_000 // width))  # bounds the row buffer for long windows
    for a in range(0, n, chunk):
        sl = slice(a, min(n, a + chunk))
        m = len(render[sl])
        # the word (zero-padded to lmax) sits at s in a zero row of s + lmax + s samples; the
        # window of s samples starting at s - off is the word shifted by `off` (cropped if < 0)
        row = np.zeros((m, width), np.float32)
        row[:, s : s + lmax] = bank.audio[render[sl]] * gain[sl, None]
        windows = np.lib.stride_tricks.sliding_window_view(row, s, axis=1)
        x = windows[np.arange(m), s - off[sl]]
        x += noise_rms[sl, None] * noise_rng.standard_normal((m, s), dtype=np.float32)
        out[sl] = np.clip(x, -1, 1, out=x)
    return out, bank.speaker[render]


def _check(cfg: AVDigitsConfig) -> None:
    try:
        cfg.validate()
    except ValueError as e:
        raise DataError(f"avdigits: {e}") from None


def _split_sizes(cfg: AVDigitsConfig) -> dict[str, int]:
    k = cfg.num_classes
    return {"train": cfg.n_train_per_class * k, "pool": cfg.n_pool, "test": cfg.n_test_per_class * k}


def generate(cfg: AVDigitsConfig | None = None) -> AVDigits:
    """All clips of all splits, in memory (train, then pool, then test)."""
    cfg = cfg or AVDigitsConfig()
    _check(cfg)
    lay = _layout(cfg)
    cols: dict[str, list] = {
        k: [] for k in ("video", "audio", "label", "audio_label", "split", "image", "speaker")
    }
    uid: list[str] = []
    for split, n in _split_sizes(cfg).items():
        if n == 0:
            continue
        g_order, g_gap, g_video, g_audio = _streams(cfg, split)
        classes = g_order.permutation(np.arange(n) % cfg.num_classes)  # balanced
        audio_cls = _draw_gap(cfg, classes, g_gap)  # before the video (DESIGN §4)
        video, image = _render_video(cfg, lay, split, classes, g_video)
        audio, speaker = _render_audio(cfg, lay, split, audio_cls, g_audio)
        for key, value in zip(cols, (video, audio, classes, audio_cls, np.full(n, split), image, speaker)):
            cols[key].append(value)
        uid += [f"{split}-{i:05d}" for i in range(n)]
    if not uid:
        raise DataError("avdigits: every split is empty (n_train_per_class, n_pool, n_test_per_class are 0)")
    arr = {k: np.concatenate(v) for k, v in cols.items()}
    return AVDigits(
        **arr,
        gap=arr["label"] != arr["audio_label"],
        uid=uid,
        labels=list(NAMES[: cfg.num_classes]),
        fps=cfg.fps,
    )


# -------------------------------------------------------------------------------- files mode
def write_files(cfg: AVDigitsConfig, root: str | Path, *, crf: int = 15) -> Path:
    """Real mp4 clips under root/clips/, root/manifest.jsonl and root/labels.csv; returns the manifest.

    Idempotent: a clip file that exists is complete (written under a temporary name, then
    renamed) and is skipped, so an interrupted run resumes. `root/avdigits.json` records the
    config; a folder written with another config is refused rather than mixed.
    """
    from xmodal.data.manifest import ManifestRow, read_manifest, write_labels, write_manifest
    from xmodal.data.media import write_av

    _check(cfg)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = root / "avdigits.json"
    want = json.dumps({**asdict(cfg), "crf": crf}, sort_keys=True)
    if stamp.exists() and stamp.read_text().strip() != want:
        have = json.loads(stamp.read_text())
        diff = sorted(k for k, v in json.loads(want).items() if have.get(k) != v)
        raise DataError(
            f"{stamp}: folder was written with another avdigits config (differs in {diff}); use a new folder"
        )
    manifest = root / "manifest.jsonl"
    if stamp.exists() and manifest.exists() and (root / "labels.csv").exists():
        rows = read_manifest(manifest)
        if len(rows) == sum(_split_sizes(cfg).values()) and all((root / r.video).exists() for r in rows):
            log.info("avdigits: all %d clips already written -> %s", len(rows), root)
            return manifest  # finished earlier with this config: nothing to redo
    tmp = stamp.with_name(f".{stamp.name}.tmp{os.getpid()}")
    tmp.write_text(want + "\n")
    os.replace(tmp, stamp)
    data = generate(cfg)
    clips = root / "clips"
    written = 0
    rows = []
    for i, uid in enumerate(data.uid):
        rel = f"clips/{uid}.mp4"
        if not (clips / f"{uid}.mp4").exists():
            write_av(root / rel, data.video[i], cfg.fps, data.audio[i], SAMPLE_RATE, gop=cfg.frames, crf=crf)
            written += 1
        meta = {
            "audio_label": int(data.audio_label[i]),
            "gap": bool(data.gap[i]),
            "image": int(data.image[i]),
            "speaker": int(data.speaker[i]),
        }
        rows.append(
            ManifestRow(
                uid=uid,
                split=str(data.split[i]),
                labels=[int(data.label[i])],
                video=rel,
                audio=rel,
                group=f"speaker{data.speaker[i]:02d}",
                meta=meta,
            )
        )
    write_labels(data.labels, root / "labels.csv")
    path = write_manifest(rows, manifest)
    log.info("avdigits: %d clips written, %d already there -> %s", written, len(rows) - written, root)
    return path


# ---------------------------------------------------------------------------- engine source
class AVDigitsDataset(Dataset):
    """Clips as batch dicts: video float [C,T,H,W] in [0,1], audio float [S], fbank [frames, mel]
    (when computed), label, audio_label, uid."""

    def __init__(self, data: AVDigits, fbank: torch.Tensor | None = None, *, image_frame: str = "none",
                 columns: dict[str, torch.Tensor] | None = None, image_size: int = 0, keys: tuple[str, ...] = ()):
        self.video = torch.from_numpy(data.video)  # uint8 until a sample is read (4x less memory)
        self.audio = torch.from_numpy(data.audio)
        self.label = torch.from_numpy(data.label)
        self.audio_label = torch.from_numpy(data.audio_label)
        self.fbank = fbank
        self.uid = data.uid
        self.image_frame = image_frame  # "middle": also an "image" key (an image teacher's input)
        self.image_size = image_size  # 0 = the frame's own size
        self.columns = columns or {}  # further per-clip tensors (feature-store rows) -> batch keys
        # media keys to build (() = all): a batch key nobody reads still costs its gather and conversion
        self.keys = frozenset(keys or MEDIA_KEYS)

    def __len__(self) -> int:
        return len(self.uid)

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i], single=True)

    def __getitems__(self, idx: list[int], single: bool = False) -> dict:
        # Batched fetch: one gather per key instead of a dict per sample (the loader's collate
        # passes an already-batched dict through).
        out = self.join_rows([(self, idx)])
        return {k: v[0] for k, v in out.items()} if single else out

    @staticmethod
    def join_rows(parts: list[tuple[AVDigitsDataset, list[int]]]) -> dict:
        """One batch of the rows `idx` of each dataset, in order (e.g. pool clips, then labelled ones:
        data/kd_pool.py): one gather per key and part, the uint8 -> float conversion done once."""
        first = parts[0][0]
        shape = lambda d: (d.keys, d.fbank is None, d.image_frame, d.image_size, sorted(d.columns))  # noqa: E731
        if any(shape(d) != shape(first) for d, _ in parts):
            raise DataError("avdigits: joined datasets differ in their batch keys (keys, fbank, image, feature columns)")
        index = [torch.as_tensor(i, dtype=torch.long) for _, i in parts]

        def rows(get) -> torch.Tensor:
            # index_select, not get(d)[i]: advanced indexing of the uint8 video was 9x slower on CPU
            got = [get(d).index_select(0, i) for (d, _), i in zip(parts, index)]
            return got[0] if len(got) == 1 else torch.cat(got)

        keys = first.keys
        out = {"label": rows(lambda d: d.label), "audio_label": rows(lambda d: d.audio_label),
               "uid": [d.uid[i] for d, idx in parts for i in idx]}  # fmt: skip
        image = "image" in keys and first.image_frame == "middle"
        if "video" in keys or image:
            video = rows(lambda d: d.video).permute(0, 4, 1, 2, 3).float().div_(255)
            if "video" in keys:
                out["video"] = video
        if "audio" in keys:
            out["audio"] = rows(lambda d: d.audio)
        if first.fbank is not None and "fbank" in keys:
            out["fbank"] = rows(lambda d: d.fbank)
        if image:
            img = video[:, :, video.shape[2] // 2].contiguous()
            if first.image_size and first.image_size != img.shape[-1]:  # bilinear, H and W only
                img = torch.nn.functional.interpolate(img, size=(first.image_size,) * 2, mode="bilinear", align_corners=False)
            out["image"] = img
        for key in first.columns:
            out[key] = rows(lambda d, k=key: d.columns[k])
        return out


MEDIA_KEYS = ("video", "audio", "fbank", "image")


@dataclass
class AVDigitsDataConfig(AVDigitsConfig):
    name: str = "avdigits"
    # pool: e.g. teachers trained on their own modality; train+pool: each batch pairs labelled
    # clips with unlabelled pool clips (label -1), the cross-modal KD setting (data/kd_pool.py)
    train_split: Literal["train", "pool", "train+pool"] = "train"
    fbank_bins: int = 64  # Kaldi log-mel bins of the "fbank" key; 0 = no fbank key
    image_frame: Literal["none", "middle"] = "none"  # middle: an "image" key [3, H, W] (middle frame)
    image_size: int = 0  # "image" side (bilinear upscale; 0 = the frame size): ImageNet-style stems need > 32 px
    features: dict[str, str] = field(default_factory=dict)  # batch key -> FeatureStore (teacher cache)
    missing_features: Literal["error", "zeros"] = "error"
    # media batch keys to build, of video / audio (the 16 kHz waveform) / fbank / image; [] = all of them.
    # Leaving out what the recipe's models never read makes every batch cheaper.
    keys: list[str] = field(default_factory=list)


def avdigits_fbank(audio: np.ndarray, bins: int, stats_rows: np.ndarray) -> torch.Tensor:
    """Kaldi log-mel [N, frames, bins] of all clips, normalised with the mean/std of `stats_rows`
    (train + pool clips: test statistics never leak into the normalisation)."""
    from xmodal.data.fbank import FbankConfig, kaldi_fbank

    wave = torch.from_numpy(audio)
    fb = torch.cat([kaldi_fbank(w, FbankConfig(num_mel_bins=bins)) for w in wave.split(512)])
    ref = fb[torch.from_numpy(stats_rows)]
    return ((fb - ref.mean()) / ref.std()).contiguous()


@register_dataset("avdigits", config=AVDigitsDataConfig)
def avdigits_data(cfg: AVDigitsDataConfig) -> DataBundle:
    """In-memory avdigits: train = labelled clips (or the pool), extra["pool"] = unlabelled paired
    clips, test."""
    unknown = sorted(set(cfg.keys) - set(MEDIA_KEYS))
    if unknown:
        raise ConfigError(f"data.keys: unknown avdigits key(s) {', '.join(unknown)}; choose from {', '.join(MEDIA_KEYS)} ([] = all)")
    data = generate(cfg)
    fbank = None
    if cfg.fbank_bins > 0:
        fbank = avdigits_fbank(data.audio, cfg.fbank_bins, np.flatnonzero(data.split != "test"))
    info = DataInfo(
        num_classes=cfg.num_classes,
        class_names=list(data.labels),
        extra={
            "fps": cfg.fps, "frames": cfg.frames, "size": cfg.size, "sample_rate": SAMPLE_RATE,
            "audio_samples": data.audio.shape[1], "gap": cfg.gap, "gap_mode": cfg.gap_mode,
            "fbank_shape": tuple(fbank.shape[1:]) if fbank is not None else None,
        },
    )  # fmt: skip

    def part(split: str) -> AVDigitsDataset:
        from xmodal.data.sequences import feature_columns

        idx = np.flatnonzero(data.split == split)
        sub = data.subset(split)
        return AVDigitsDataset(sub, fbank[torch.from_numpy(idx)] if fbank is not None else None,
                               image_frame=cfg.image_frame, image_size=cfg.image_size, keys=tuple(cfg.keys),
                               columns=feature_columns(sub.uid, cfg.features, cfg.missing_features))

    pool = part("pool")
    if cfg.train_split == "train+pool":
        from xmodal.data.kd_pool import LabelledPoolDataset

        train = LabelledPoolDataset(part("train"), pool, seed=cfg.seed)
    else:
        train = part(cfg.train_split)
    return DataBundle(
        train=train,
        test=part("test"),
        info=info,
        extra={"pool": pool, "labelled": part("train")} if len(pool) else {"labelled": part("train")},
    )
