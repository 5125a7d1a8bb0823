"""Decode frames and audio from any container FFmpeg reads; write real clips for tests and demos.

Backends: PyAV (default, bundles FFmpeg) and torchcodec (used by ``backend="auto"`` when it is
importable; about 2x faster RGB decode). Both are imported lazily: this module is imported at
registry discovery.

Timeline: every time here is in seconds from the start of the container (its ``start_time``), so
video and audio windows of one file stay in sync even when a stream starts late.

AAC priming: encoders put 1024 (FFmpeg) or 2112 (Apple) silent priming samples before the first
real sample. mp4/mov/m4a (edit list) and mkv (CodecDelay) record this and FFmpeg drops those
samples while decoding, so decoded audio starts with the first sample that was encoded; samples
with negative timestamps, if a demuxer reports them, fall before ``start`` and are cut. Raw ADTS
``.aac`` streams record nothing and keep the priming (it cannot be told apart from audio).

Errors are `MediaError` (a `DataError`) with one line ``<path>: <reason> (<detail>)`` and a
machine-usable ``.reason`` in `REASONS`, which `xmodal prep` writes to its reject log.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xmodal.errors import DataError

REASONS = ("unreadable", "corrupt", "no_video", "no_audio", "too_short")
_REASON_TEXT = {
    "unreadable": "unreadable",
    "corrupt": "corrupt",
    "no_video": "no video stream",
    "no_audio": "no audio stream",
    "too_short": "too short",
}
Backend = Literal["auto", "pyav", "torchcodec"]
Size = int | tuple[int, int] | None


class MediaError(DataError):
    """A media file that cannot be used; ``reason`` is one of `REASONS`."""

    def __init__(self, path: str | Path, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        self.path = str(path)
        self.reason = reason
        self.detail = " ".join(str(detail).split())  # one line, whatever FFmpeg said
        text = _REASON_TEXT[reason] + (f" ({self.detail})" if self.detail else "")
        super().__init__(f"{path}: {text}")


@dataclass
class MediaInfo:
    duration: float | None  # seconds; None when the container does not say
    has_video: bool
    has_audio: bool
    fps: float | None = None  # average frame rate of the video stream
    num_frames: int = 0  # from the header, else duration x fps (an estimate)
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    channels: int = 0
    video_codec: str = ""
    audio_codec: str = ""


@dataclass
class Frames:
    frames: np.ndarray  # uint8 [T, H, W, 3] RGB
    times: np.ndarray  # float64 [T] presentation time of each returned frame, seconds
    decoded: int = 0  # frames the decoder produced to get these (cost; seeking keeps it small)


def _av():
    try:
        import av
    except ImportError:  # pragma: no cover - av is in the `media` extra
        raise DataError("decoding media needs PyAV: pip install 'xmodal[media]'") from None
    return av


def _open(path: str | Path):
    """Open for reading, mapping every failure to a MediaError."""
    av = _av()
    p = Path(path)
    if not p.exists():
        raise MediaError(path, "unreadable", "file not found")
    if p.is_dir():
        raise MediaError(path, "unreadable", "a directory, not a file")
    if not os.access(p, os.R_OK):
        raise MediaError(path, "unreadable", "permission denied")
    if p.stat().st_size == 0:
        raise MediaError(path, "corrupt", "empty file")
    try:
        return av.open(str(p), "r", metadata_errors="ignore")
    except PermissionError as e:
        raise MediaError(path, "unreadable", str(e)) from None
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MediaError(path, "corrupt", getattr(e, "strerror", None) or str(e)) from None


def _video_stream(c):
    """First real video stream (cover art of audio files does not count)."""
    av = _av()
    for s in c.streams.video:
        if not s.disposition & av.stream.Disposition.attached_pic:
            return s
    return None


def _t0(c) -> float:
    return c.start_time / 1e6 if c.start_time is not None else 0.0


def _check_start(path, c, start: float) -> None:
    """A window that starts after the end (as the header says) fails before any decoding."""
    if c.duration and start >= c.duration / 1e6:
        raise MediaError(path, "too_short", f"duration {c.duration / 1e6:g} s, window starts at {start:g} s")


def _time(frame, t0: float) -> float | None:
    return None if frame.pts is None else float(frame.pts * frame.time_base) - t0


def probe(path: str | Path) -> MediaInfo:
    """Stream facts from the header only (nothing is decoded)."""
    with _open(path) as c:
        v, a = _video_stream(c), (c.streams.audio[0] if c.streams.audio else None)
        if v is None and a is None:
            raise MediaError(path, "corrupt", "no audio or video stream")
        durations = [float(s.duration * s.time_base) for s in (v, a) if s is not None and s.duration]
        duration = c.duration / 1e6 if c.duration else (max(durations) if durations else None)
        info = MediaInfo(duration=duration, has_video=v is not None, has_audio=a is not None)
        if v is not None:
            rate = v.average_rate or v.guessed_rate
            info.fps = float(rate) if rate else None
            info.num_frames = v.frames or (round(duration * info.fps) if duration and info.fps else 0)
            info.width, info.height = v.codec_context.width, v.codec_context.height
            info.video_codec = v.codec_context.name
        if a is not None:
            info.sample_rate = a.codec_context.sample_rate
            info.channels = a.codec_context.channels
            info.audio_codec = a.codec_context.name
        return info


def _target_size(h: int, w: int, size: Size) -> tuple[int, int]:
    """(height, width) after resizing; an int is the short side (aspect kept)."""
    if size is None:
        return h, w
    if isinstance(size, int):
        if h <= w:
            return size, max(1, round(w * size / h))
        return max(1, round(h * size / w)), size
    return int(size[0]), int(size[1])


def _pick(
    stream: Iterator[tuple[Any, float]],
    start: float,
    end: float | None,
    fps: float | None,
    max_frames: int | None,
    frame_dur: float,
) -> Iterator[tuple[Any, float]]:
    """Choose frames from a presentation-ordered (frame, time) stream.

    fps None: every frame with start <= t < end. Otherwise targets tau_k = start + k/fps (< end,
    and < the end of the last frame) each take the frame whose timestamp is nearest (ties: the
    earlier one), so a frame may repeat when upsampling; nothing is decoded twice.
    """
    limit = math.inf if max_frames is None else max_frames
    n, k, prev = 0, 0, None
    stop = math.inf if end is None else end
    eps = 1e-6
    for fr, t in stream:
        if fps is None:
            if t >= stop - eps:
                return
            if t >= start - eps:
                yield fr, t
                n += 1
                if n >= limit:
                    return
            continue
        while True:
            tau = start + k / fps
            if tau >= stop - eps or t < tau - eps:
                break
            yield (prev if prev is not None and tau - prev[1] <= t - tau + 1e-9 else (fr, t))
            k, n = k + 1, n + 1
            if n >= limit:
                return
        if start + k / fps >= stop - eps:
            return
        prev = (fr, t)
    if fps is not None and prev is not None:  # targets after the last frame's timestamp
        last_end = min(stop, prev[1] + frame_dur)
        while n < limit and start + k / fps < last_end - eps:
            yield prev
            k, n = k + 1, n + 1


def _resolve_backend(backend: str) -> str:
    if backend not in ("auto", "pyav", "torchcodec"):
        raise DataError(f"media backend: expected auto, pyav or torchcodec, found {backend!r}")
    if backend == "auto":
        try:
            import torchcodec.decoders  # noqa: F401
        except Exception:  # noqa: BLE001 - any import failure (missing FFmpeg libs too) means "not usable"
            return "pyav"
        return "torchcodec"
    return backend


def _win(start: float, end: float | None) -> str:
    return f"[{start:g}, {'end' if end is None else f'{end:g}'}) s"


def _check_window(path, start: float, end: float | None) -> None:
    if start < 0 or (end is not None and end <= start):
        raise DataError(f"{path}: bad time window start={start} end={end}: need 0 <= start < end")


def decode_video(
    path: str | Path,
    *,
    fps: float | None = None,
    start: float = 0.0,
    end: float | None = None,
    size: Size = None,
    max_frames: int | None = None,
    backend: Backend = "auto",
) -> Frames:
    """RGB frames of [start, end) seconds, optionally resampled to `fps` and resized.

    `size`: int = short side (aspect kept), (h, w) = fixed size, None = native. Resizing happens
    in FFmpeg's swscale while decoding (area filter when shrinking, bilinear when enlarging).
    Decoding starts at the keyframe before `start` (a seek), so a window costs the frames from
    that keyframe to `end`, not the whole file.
    """
    _check_window(path, start, end)
    if fps is not None and fps <= 0:
        raise DataError(f"{path}: fps must be > 0, found {fps}")
    if _resolve_backend(backend) == "torchcodec":
        from xmodal.data._media_torchcodec import decode_video_tc

        return decode_video_tc(path, fps=fps, start=start, end=end, size=size, max_frames=max_frames)
    av = _av()
    with _open(path) as c:
        s = _video_stream(c)
        if s is None:
            raise MediaError(path, "no_video")
        t0 = _t0(c)
        _check_start(path, c, start)
        rate = s.average_rate or s.guessed_rate
        frame_dur = 1.0 / float(rate) if rate else 0.04
        decoded = 0

        def from_time(seek_to: float | None) -> Iterator[tuple[Any, float]]:
            nonlocal decoded
            if seek_to is not None:  # lands on the keyframe at or before seek_to
                c.seek(int((seek_to + t0) / s.time_base), stream=s, backward=True, any_frame=False)
            for i, fr in enumerate(c.decode(s)):
                decoded += 1
                t = _time(fr, t0)
                yield fr, (i * frame_dur if t is None else t)

        out_hw = None
        frames, times = [], []
        try:
            it = from_time(start if start > 0 else None)
            first = next(it, None)
            if start > 0 and (first is None or first[1] > start + 1e-6):
                # the demuxer landed after `start` (no index, odd keyframes): decode from the top
                it = from_time(0.0)
                first = next(it, None)
            for fr, t in _pick(_chain(first, it), start, end, fps, max_frames, frame_dur):
                if out_hw is None:
                    out_hw = _target_size(fr.height, fr.width, size)
                shrink = out_hw[0] * out_hw[1] < fr.height * fr.width
                arr = fr.to_ndarray(
                    format="rgb24", width=out_hw[1], height=out_hw[0],
                    interpolation="AREA" if shrink else "BILINEAR",
                )  # fmt: skip
                frames.append(arr)
                times.append(t)
        except av.error.FFmpegError as e:
            raise MediaError(path, "corrupt", str(e)) from None
        if not frames:
            if decoded == 0 and start == 0:
                raise MediaError(path, "corrupt", "no video frame could be decoded")
            raise MediaError(path, "too_short", f"no video frame in {_win(start, end)}")
        return Frames(np.stack(frames), np.asarray(times, dtype=np.float64), decoded)


def _chain(first, rest: Iterator) -> Iterator:
    if first is not None:
        yield first
        yield from rest


def decode_audio(
    path: str | Path,
    *,
    sample_rate: int = 16000,
    start: float = 0.0,
    end: float | None = None,
    channel: Literal["first", "mean"] = "first",
    backend: Backend = "auto",
) -> np.ndarray:
    """Mono float32 [S] waveform of [start, end) seconds at `sample_rate` (FFmpeg swresample).

    channel="first" keeps the first channel, as CAV-MAE's preprocessing does (it is not a
    down-mix); "mean" averages all channels. The result is shorter than end - start when the
    stream ends first; silence before a late-starting audio stream is filled with zeros.
    """
    _check_window(path, start, end)
    if channel not in ("first", "mean"):
        raise DataError(f"{path}: channel must be 'first' or 'mean', found {channel!r}")
    if _resolve_backend(backend) == "torchcodec":
        from xmodal.data._media_torchcodec import decode_audio_tc

        return decode_audio_tc(path, sample_rate=sample_rate, start=start, end=end, channel=channel)
    av = _av()
    with _open(path) as c:
        if not c.streams.audio:
            raise MediaError(path, "no_audio")
        s = c.streams.audio[0]
        t0 = _t0(c)
        _check_start(path, c, start)

        def run(seek_to: float | None) -> tuple[list, float | None, int]:
            # planar float at the target rate, native channel layout: the channel choice is ours
            resampler = av.AudioResampler(format="fltp", rate=sample_rate)
            chunks, first_t, decoded = [], None, 0
            if seek_to is not None:
                c.seek(int((seek_to + t0) / s.time_base), stream=s, backward=True)
            for fr in c.decode(s):
                t = _time(fr, t0)
                if first_t is None:
                    first_t = 0.0 if t is None else t
                    if seek_to and first_t > start + 0.5 / sample_rate:
                        return [], first_t, 0  # landed after `start`: the caller retries from the top
                if end is not None and t is not None and t > end + 0.05:
                    break  # 50 ms past the end keeps the resampler's filter fed
                decoded += fr.samples
                chunks.extend(o.to_ndarray() for o in resampler.resample(fr))
            chunks.extend(o.to_ndarray() for o in resampler.resample(None))
            return chunks, first_t, decoded

        try:
            # AAC/MP3 frames overlap: decoding from 0.1 s earlier gives the first frame its context
            chunks, first_t, decoded = run(max(0.0, start - 0.1) if start > 0 else None)
            if start > 0 and (first_t is None or first_t > start + 0.5 / sample_rate):
                chunks, first_t, decoded = run(0.0)
        except av.error.FFmpegError as e:
            raise MediaError(path, "corrupt", str(e)) from None
        if not decoded:
            if start == 0:
                raise MediaError(path, "corrupt", "no audio frame could be decoded")
            raise MediaError(path, "too_short", f"no audio at {start:g} s")
        x = np.concatenate(chunks, axis=1)
        x = x[0] if channel == "first" else x.mean(0)
        if s.duration:
            stream_end = float((s.start_time or 0) * s.time_base) - t0 + float(s.duration * s.time_base)
            end = _drop_padding(end, first_t + len(x) / sample_rate, stream_end, s.codec_context.sample_rate)
        return _cut(path, x, first_t, start, end, sample_rate)


def _drop_padding(end: float | None, decoded_end: float, stream_end: float, native_rate: int) -> float | None:
    """End of the window with the encoder's end padding excluded.

    The last encoded frame is padded to the codec's frame size (1024 for AAC); when the header
    knows the true length and the excess is at most that padding, the window stops at the header's end.
    """
    excess = decoded_end - stream_end
    if 0 < excess <= 2048 / (native_rate or 8000) + 1e-6:
        return stream_end if end is None else min(end, stream_end)
    return end


def _cut(
    path, x: np.ndarray, first_t: float, start: float, end: float | None, sample_rate: int
) -> np.ndarray:
    """x[0] plays at `first_t`: the samples of [start, end), zeros where the stream had not begun."""
    shift = round((first_t - start) * sample_rate)
    x = np.concatenate([np.zeros(shift, np.float32), x]) if shift > 0 else x[-shift:]
    if end is not None:
        x = x[: round((end - start) * sample_rate)]
    if len(x) == 0:
        raise MediaError(path, "too_short", f"no audio in {_win(start, end)}")
    return np.ascontiguousarray(x, dtype=np.float32)


# ----------------------------------------------------------------------------------- writing
_SUBSAMPLED = ("yuv420p", "yuvj420p", "yuv422p", "nv12")


def write_av(
    path: str | Path,
    frames: np.ndarray | None,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    *,
    video_codec: str = "libx264",
    audio_codec: str | None = None,
    gop: int = 25,
    crf: int = 18,
    preset: str = "veryfast",
    pix_fmt: str = "yuv420p",
    audio_bitrate: int = 128_000,
) -> Path:
    """Write a real media file: frames uint8 [T,H,W,3] RGB at `fps`, audio float [S] or [C,S].

    The container follows the extension (.mp4/.mov/.m4a: H.264 + AAC; .mkv/.mov also take
    pcm_s16le or flac audio; .wav audio only). `audio_codec` None = aac, pcm_s16le for .wav. H.264 with 4:2:0 chroma needs even width and
    height: odd sizes are refused (pad or crop the frames first). `gop` is the keyframe interval
    (short = cheap seeks). The file is written to a temporary name and renamed, so a file that
    exists is complete.
    """
    av = _av()
    path = Path(path)
    if frames is None and audio is None:
        raise DataError(f"{path}: nothing to write (no frames and no audio)")
    if frames is not None:
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise DataError(
                f"{path}: frames must be uint8 [T,H,W,3], found {frames.dtype} {list(frames.shape)}"
            )
        h, w = frames.shape[1:3]
        if pix_fmt in _SUBSAMPLED and (h % 2 or w % 2):
            raise DataError(
                f"{path}: {video_codec} with {pix_fmt} needs even frame sizes, found {w}x{h}; pad or crop the frames"
            )
    if audio is not None:
        audio = np.asarray(audio, dtype=np.float32)
        audio = audio[None] if audio.ndim == 1 else audio
        if audio.ndim != 2 or audio.shape[0] not in (1, 2):
            raise DataError(
                f"{path}: audio must be float [S] or [C,S] with C in (1, 2), found {list(audio.shape)}"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        with av.open(str(tmp), "w") as c:
            v = a = None
            if frames is not None:
                v = c.add_stream(video_codec, rate=Fraction(fps).limit_denominator(100_000))
                v.width, v.height, v.pix_fmt = w, h, pix_fmt
                v.codec_context.gop_size = gop
                if video_codec in ("libx264", "libx265"):
                    v.options = {"crf": str(crf), "preset": preset}
            if audio is not None:
                audio_codec = audio_codec or ("pcm_s16le" if path.suffix.lower() == ".wav" else "aac")
                a = c.add_stream(audio_codec, rate=sample_rate)
                a.layout = "mono" if audio.shape[0] == 1 else "stereo"
                if audio_codec == "aac":
                    a.bit_rate = audio_bitrate
                    a.options = {"aac_coder": "fast"}  # ~4x faster than the default twoloop, same SNR here
            if v is not None:
                for i, f in enumerate(frames):
                    vf = av.VideoFrame.from_ndarray(f, format="rgb24")
                    vf.pts = i
                    vf.time_base = Fraction(1) / v.codec_context.framerate
                    c.mux(v.encode(vf))
                c.mux(v.encode(None))
            if a is not None:
                af = av.AudioFrame.from_ndarray(np.clip(audio, -1, 1), format="fltp", layout=a.layout.name)
                af.sample_rate, af.pts = sample_rate, 0
                c.mux(a.encode(af))  # the encoder re-frames to its frame size (1024 for AAC)
                c.mux(a.encode(None))
        os.replace(tmp, path)
    except (av.error.FFmpegError, ValueError) as e:
        raise DataError(f"{path}: cannot write ({' '.join(str(e).split())})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path
