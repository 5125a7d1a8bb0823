"""The per-file half of `xmodal prep`: decode one manifest row into shard members, in worker processes.

`prepare_row` never raises: a `MediaError` becomes a `Rejected` with its reason, anything else
becomes reason "unreadable" with the exception text. `iter_results` runs rows on a process pool
with a bounded window and yields results in input order; if a decoder kills its process (a
segfault in FFmpeg on a hostile file), the rows that were in flight are re-run one per fresh
process, the one that dies again is rejected as "corrupt", and the pool is rebuilt.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from xmodal.data.manifest import ManifestRow
from xmodal.data.media import MediaError

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    uid: str
    members: list[tuple[str, bytes]]  # (suffix after "<key>.", data) in write order
    video: dict | None  # {"frames", "height", "width", "fps", "times"?}
    audio: dict | None  # {"samples", "sample_rate"}
    npy_header: int = 0  # bytes before the pixel data in the frames.npy member


@dataclass
class Rejected:
    uid: str
    path: str  # the media path as the manifest row gives it
    reason: str  # one of xmodal.data.media.REASONS
    detail: str


def prepare_row(row: ManifestRow, base_dir: str, cfg) -> Prepared | Rejected:
    """Decode, check and encode one row; every failure is a `Rejected`, never an exception.

    Video comes from a media file or from images (see `xmodal.data._prep_images`); audio from
    `row.audio`, else from the video file.
    """
    base = Path(base_dir)
    try:
        return _prepare(row, base, cfg)
    except MediaError as e:
        path = next((p for p in (row.video, row.audio) if p and str(_resolve(p, base)) == e.path), e.path)
        return Rejected(row.uid, path, e.reason, e.detail)
    except Exception as e:  # noqa: BLE001 - prep must survive whatever one file does
        path = row.video or row.audio or ""
        return Rejected(row.uid, path, "unreadable", f"{type(e).__name__}: {' '.join(str(e).split())}")


def _resolve(p: str, base: Path) -> Path:
    q = Path(p)
    return q if q.is_absolute() else base / q


def _prepare(row: ManifestRow, base: Path, cfg) -> Prepared | Rejected:
    from xmodal.data.media import probe

    start = float(row.start or 0.0)
    end = row.end
    if cfg.max_duration:
        end = min(end, start + cfg.max_duration) if end is not None else start + cfg.max_duration
    probes: dict[str, object] = {}

    def info(path: Path):
        if str(path) not in probes:
            probes[str(path)] = probe(path)
        return probes[str(path)]

    from xmodal.data._prep_images import image_sequence, video_from_images

    video = frames = None
    media_video = row.video is not None  # a media file (not frames stored as images)
    if cfg.video != "none":
        required = "video" in cfg.require
        try:
            seq = image_sequence(row, base)
            media_video = row.video is not None and seq is None
            if seq is not None:
                frames, video = video_from_images(seq, start, end, cfg)
            elif row.video is not None:
                frames, video = _video(_resolve(row.video, base), info, start, end, cfg)
            elif required:
                return Rejected(row.uid, "", "no_video", "the manifest row names no video file or frames")
        except MediaError:
            if required:
                raise
            log.debug("%s: optional video unusable, stored without it", row.uid, exc_info=True)
    wave = audio = None
    if cfg.audio:
        required = "audio" in cfg.require
        apath = row.audio or (row.video if media_video else None)
        if apath is None:
            if required:
                return Rejected(row.uid, "", "no_audio", "the manifest row names no audio file")
        else:
            try:
                wave, audio = _audio(_resolve(apath, base), info, start, end, cfg)
            except MediaError:
                if required:
                    raise
                log.debug("%s: optional audio unusable, stored without it", row.uid, exc_info=True)
    if video is None and audio is None:
        return Rejected(row.uid, row.video or row.audio or "", "corrupt", "no usable audio or video stream")
    return _encode(row, frames, video, wave, audio, cfg)


def _fps_of(meta_fps: float | None, times: np.ndarray, path: Path) -> float:
    if meta_fps:
        return float(meta_fps)
    if len(times) > 1 and times[-1] > times[0]:
        return float((len(times) - 1) / (times[-1] - times[0]))
    raise MediaError(path, "corrupt", "cannot tell the frame rate")


def _check_duration(path: Path, what: str, seconds: float, cfg) -> None:
    if cfg.min_duration and seconds < cfg.min_duration - 1e-6:
        raise MediaError(path, "too_short", f"{what} {seconds:.3g} s < min_duration {cfg.min_duration:g} s")


def _video(path: Path, info, start: float, end: float | None, cfg) -> tuple[np.ndarray, dict]:
    from xmodal.data.media import decode_video

    meta = info(path)
    if not meta.has_video:
        raise MediaError(path, "no_video")
    size = cfg.short_side or None
    if cfg.video == "dense":
        fr = decode_video(path, fps=cfg.fps or None, start=start, end=end, size=size, backend=cfg.backend)
        fps = cfg.fps or _fps_of(meta.fps, fr.times, path)
        frames, extra = fr.frames, {}
        seconds = len(frames) / fps
    else:
        from xmodal.data.transforms.sampling import cavmae_stored_frames

        # the selection rule only reads the first num_frames seconds (about 1 fps)
        horizon = start + max(float(cfg.num_frames), cfg.min_duration)
        sel_end = horizon if end is None else min(end, horizon)
        fr = decode_video(path, start=start, end=sel_end, size=size, backend=cfg.backend)
        fps = _fps_of(meta.fps, fr.times, path)
        idx = cavmae_stored_frames(len(fr.frames), fps, cfg.num_frames)
        frames = fr.frames[idx]
        extra = {"times": [round(float(t) - start, 6) for t in fr.times[idx]]}
        seconds = len(fr.frames) / fps
    _check_duration(path, "video", seconds, cfg)
    t, h, w = frames.shape[:3]
    return frames, {"frames": int(t), "height": int(h), "width": int(w), "fps": round(float(fps), 6), **extra}


def _audio(path: Path, info, start: float, end: float | None, cfg) -> tuple[np.ndarray, dict]:
    from xmodal.data.media import decode_audio

    if not info(path).has_audio:
        raise MediaError(path, "no_audio")
    wave = decode_audio(path, sample_rate=cfg.sample_rate, start=start, end=end, channel=cfg.audio_channel,
                        backend=cfg.backend)  # fmt: skip
    _check_duration(path, "audio", len(wave) / cfg.sample_rate, cfg)
    return wave, {"samples": int(len(wave)), "sample_rate": int(cfg.sample_rate)}


def _encode(row: ManifestRow, frames, video, wave, audio, cfg) -> Prepared:
    from xmodal.data.shards import encode_audio, encode_jpg, encode_npy

    # the row without its source paths (the media are the members beside this one) + stream facts
    head = json.loads(replace(row, video=None, audio=None).to_json())
    head["streams"] = {"video": video, "audio": audio}
    members = [("json", json.dumps(head, ensure_ascii=False, sort_keys=True).encode("utf-8"))]
    npy_header = 0
    if frames is not None:
        if cfg.frame_format == "npy":
            data, npy_header = encode_npy(frames)
            members.append(("frames.npy", data))
        else:
            width = max(3, len(str(len(frames) - 1)))
            members.extend((f"{i:0{width}d}.jpg", encode_jpg(f, cfg.jpeg_quality)) for i, f in enumerate(frames))
    if wave is not None:
        members.append((cfg.audio_format, encode_audio(wave, cfg.sample_rate, cfg.audio_format)))
    return Prepared(row.uid, members, video, audio, npy_header)


# ------------------------------------------------------------------------------------- pool
def iter_results(rows: list[ManifestRow], base_dir: str, cfg, workers: int) -> Iterator[tuple[ManifestRow, object]]:
    """(row, Prepared | Rejected) for every row, in order; `workers` > 1 decodes in processes."""
    if workers <= 1:
        for row in rows:
            yield row, prepare_row(row, base_dir, cfg)
        return
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    _preload(cfg)

    def new_pool():
        return ProcessPoolExecutor(workers, mp_context=mp.get_context())

    pool = new_pool()
    pending: deque = deque()
    it = iter(rows)
    window = 4 * workers  # bounds memory: results are whole encoded clips
    try:
        while True:
            while len(pending) < window and (row := next(it, None)) is not None:
                pending.append((row, pool.submit(prepare_row, row, base_dir, cfg)))
            if not pending:
                return
            row, fut = pending.popleft()
            try:
                res = fut.result()
            except BrokenProcessPool:
                redo = [row] + [r for r, _ in pending]
                pending.clear()
                pool.shutdown(wait=True, cancel_futures=True)
                for r in redo:
                    yield r, _isolated(r, base_dir, cfg)
                pool = new_pool()
                continue
            yield row, res
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _preload(cfg) -> None:
    """Import what workers need once, before they fork (a torch import costs seconds per process)."""
    import xmodal.data.media  # noqa: F401
    import xmodal.data.shards  # noqa: F401

    if cfg.video == "select":
        import xmodal.data.transforms.sampling  # noqa: F401
    import PIL.Image  # noqa: F401 - frames stored as images


def _child(conn, row, base_dir, cfg) -> None:
    conn.send(prepare_row(row, base_dir, cfg))
    conn.close()


def _isolated(row: ManifestRow, base_dir: str, cfg) -> Prepared | Rejected:
    """Run one row in its own process; a process that dies rejects the row instead of prep."""
    ctx = mp.get_context()
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(send, row, base_dir, cfg), daemon=True)
    p.start()
    send.close()
    try:
        res = recv.recv()  # EOFError when the child died before sending
    except EOFError:
        res = None
    finally:
        recv.close()
        p.join()
    if res is None:
        return Rejected(row.uid, row.video or row.audio or "", "corrupt",
                        f"the decoding process died (exit code {p.exitcode})")  # fmt: skip
    return res
