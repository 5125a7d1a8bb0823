"""Videos stored as images, for `xmodal prep`: frame lists, frame folders and HDF5 JPEG archives.

Sources (what the importers write):
- ``meta.frames``: a list of image files (CAV-MAE's ``frame_{i}/<id>.jpg``), in time order;
- ``video`` naming a folder of images (sorted by name, numbers compared as numbers);
- ``video`` naming an ``.hdf5``/``.h5`` file with a dataset "video" of JPEG-encoded frames (CCL's
  reference layout; needs h5py);
- ``meta.image``: one image (a one-frame video).
Frame k shows time k / fps, with fps from ``meta.fps``; without it, the prep `fps` setting, and in
"select" mode 1 fps (CAV-MAE's extracted frames are about one per second). A missing frame file is
replaced by the nearest earlier one that exists (CAV-MAE's rule), else the nearest later one.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmodal.data.manifest import ManifestRow
from xmodal.data.media import MediaError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
HDF5_EXTS = (".hdf5", ".h5")


@dataclass
class ImageSequence:
    where: Path  # for messages
    n: int
    fps: float | None
    present: list[bool]
    load: Callable[[int], bytes | Path]  # frame k -> encoded bytes or an image file


def _natural(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def image_sequence(row: ManifestRow, base: Path) -> ImageSequence | None:
    """The row's frames when its video is stored as images, else None (a media file, or nothing)."""

    def resolve(p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else base / q

    fps = row.meta.get("fps")
    fps = float(fps) if isinstance(fps, (int, float)) and fps > 0 else None
    listed = row.meta.get("frames")
    if isinstance(listed, str):
        listed = [listed]
    if not listed and row.video is None and isinstance(row.meta.get("image"), str):
        listed = [row.meta["image"]]
    if listed:
        files = [resolve(p) for p in listed]
        return ImageSequence(files[0].parent, len(files), fps, [f.is_file() for f in files], files.__getitem__)
    if row.video is None:
        return None
    path = resolve(row.video)
    if path.is_dir():
        files = sorted((f for f in path.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file()), key=_natural)
        if not files:
            raise MediaError(path, "no_video", "no image files in the frame folder")
        return ImageSequence(path, len(files), fps, [True] * len(files), files.__getitem__)
    if path.suffix.lower() in HDF5_EXTS:
        return _hdf5(path, fps)
    return None


def _hdf5(path: Path, fps: float | None) -> ImageSequence:
    if not path.is_file():
        raise MediaError(path, "unreadable", "file not found")
    try:
        import h5py
    except ImportError:
        raise MediaError(path, "unreadable", "reading .hdf5 frame archives needs h5py (pip install h5py)") from None
    try:
        with h5py.File(path, "r") as f:
            frames = [bytes(np.asarray(x, dtype=np.uint8)) for x in f["video"]]
    except (OSError, KeyError) as e:
        raise MediaError(path, "corrupt", f"no readable 'video' dataset ({e})") from None
    return ImageSequence(path, len(frames), fps, [len(b) > 0 for b in frames], frames.__getitem__)


def _decode(item: bytes | Path, where: Path, short_side: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(item) if isinstance(item, bytes) else item) as im:
            im = im.convert("RGB")
            if short_side:
                w, h = im.size
                s = short_side / min(w, h)
                im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise MediaError(where, "corrupt", f"unreadable image ({e})") from None


def _fill_missing(present: list[bool], idx: list[int], where: Path) -> list[int]:
    if not any(present):
        raise MediaError(where, "no_video", f"none of the {len(present)} frame images exists")
    out = []
    for i in idx:
        lower = next((j for j in range(i, -1, -1) if present[j]), None)
        out.append(lower if lower is not None else next(j for j in range(i, len(present)) if present[j]))
    return out


def video_from_images(seq: ImageSequence, start: float, end: float | None, cfg) -> tuple[np.ndarray, dict]:
    """(uint8 [T, H, W, 3], stream facts) from an image sequence, by the prep settings."""
    fps = seq.fps or cfg.fps or (1.0 if cfg.video == "select" else None)
    if fps is None:
        raise MediaError(seq.where, "unreadable", "frames stored as images need a frame rate: meta.fps or --fps")
    times = np.arange(seq.n) / fps
    inside = np.flatnonzero((times >= start - 1e-9) & ((times < end - 1e-9) if end is not None else True))
    if not len(inside):
        raise MediaError(seq.where, "too_short", f"no frame in [{start:g}, {end:g}) s")
    extra: dict = {}
    if cfg.video == "select":
        from xmodal.data.transforms.sampling import cavmae_stored_frames

        pick = [int(inside[i]) for i in cavmae_stored_frames(len(inside), fps, cfg.num_frames)]
        extra["times"] = [round(float(times[k]) - start, 6) for k in pick]
        out_fps = fps
    elif cfg.fps and abs(cfg.fps - fps) > 1e-9:  # resample to --fps: the nearest earlier frame
        first, last = int(inside[0]), int(inside[-1])
        n_out = int(np.floor((last + 1 - first) / fps * cfg.fps + 1e-9))
        pick = [first + int(np.floor(j * fps / cfg.fps + 1e-9)) for j in range(max(1, n_out))]
        out_fps = cfg.fps
    else:
        pick, out_fps = inside.tolist(), fps
    seconds = len(inside) / fps
    if cfg.min_duration and seconds < cfg.min_duration - 1e-6:
        raise MediaError(seq.where, "too_short", f"video {seconds:.3g} s < min_duration {cfg.min_duration:g} s")
    pick = _fill_missing(seq.present, pick, seq.where)
    cache: dict[int, np.ndarray] = {}
    for k in dict.fromkeys(pick):
        cache[k] = _decode(seq.load(k), seq.where, cfg.short_side)
    shapes = {a.shape for a in cache.values()}
    if len(shapes) > 1:
        raise MediaError(seq.where, "corrupt", f"frame images differ in size: {sorted(shapes)}")
    frames = np.stack([cache[k] for k in pick])
    t, h, w = frames.shape[:3]
    return frames, {"frames": int(t), "height": int(h), "width": int(w), "fps": round(float(out_fps), 6), **extra}
