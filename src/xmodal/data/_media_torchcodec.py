"""torchcodec backend of `xmodal.data.media` (used when torchcodec is importable).

Same windows, nearest-frame rule, errors and return types as the PyAV path; torchcodec's
timestamps are stream timestamps (the PyAV path counts from the container start, which is the
same for almost every file).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from xmodal.data.media import Frames, MediaError, _cut, _drop_padding, _target_size, _win, probe
from xmodal.errors import DataError


def _tc_error(path, e: Exception, want: str) -> MediaError:
    """Classify a torchcodec failure: PyAV's probe names the reason when it is installed."""
    try:
        info = probe(path)
    except MediaError as me:
        return me
    except DataError:  # PyAV missing
        return MediaError(path, "corrupt", str(e))
    if want == "video" and not info.has_video:
        return MediaError(path, "no_video")
    if want == "audio" and not info.has_audio:
        return MediaError(path, "no_audio")
    return MediaError(path, "corrupt", str(e))


def _check_file(path) -> None:
    p = Path(path)
    if not p.is_file():
        raise MediaError(path, "unreadable", "file not found" if not p.exists() else "not a regular file")
    if p.stat().st_size == 0:
        raise MediaError(path, "corrupt", "empty file")


def decode_video_tc(path, *, fps, start, end, size, max_frames) -> Frames:
    """torchcodec version of `decode_video`: same window and nearest-frame rule.

    For a constant frame rate, the frame nearest to tau is the one played at tau + half a frame,
    which is what torchcodec can look up; resizing uses torch (antialiased bilinear).
    """
    import torch
    from torchcodec.decoders import VideoDecoder

    _check_file(path)
    try:
        dec = VideoDecoder(str(path), dimension_order="NCHW", seek_mode="approximate")
        md = dec.metadata
        stream_end = float(
            md.end_stream_seconds if md.end_stream_seconds is not None else md.duration_seconds
        )
        rate = float(md.average_fps) if md.average_fps else 25.0
        stop = stream_end if end is None else min(end, stream_end)
        if start >= stop:
            raise MediaError(path, "too_short", f"no video frame in {_win(start, end)}")
        if fps is None:
            batch = dec.get_frames_played_in_range(start_seconds=start, stop_seconds=stop)
            keep = batch.pts_seconds >= start - 1e-6  # PyAV rule: frames whose timestamp is in the window
            data, times = batch.data[keep], batch.pts_seconds[keep].double()
            if max_frames is not None:
                data, times = data[:max_frames], times[:max_frames]
        else:
            n = math.ceil((stop - start) * fps - 1e-6)
            n = n if max_frames is None else min(n, max_frames)
            taus = start + np.arange(n) / fps
            look = np.minimum(taus + 0.5 / rate - 1e-6, stream_end - 1e-6)
            batch = dec.get_frames_played_at(seconds=look.tolist())
            data, times = batch.data, batch.pts_seconds.double()
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001 - torchcodec raises plain RuntimeError/ValueError
        raise _tc_error(path, e, "video") from None
    if len(data) == 0:
        raise MediaError(path, "too_short", f"no video frame in {_win(start, end)}")
    h, w = _target_size(data.shape[2], data.shape[3], size)
    if (h, w) != tuple(data.shape[2:]):
        x = torch.nn.functional.interpolate(
            data.float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False
        )
        data = x.round_().clamp_(0, 255).to(torch.uint8)
    frames = data.permute(0, 2, 3, 1).contiguous().numpy()
    return Frames(frames, times.numpy(), len(frames))


def decode_audio_tc(path, *, sample_rate, start, end, channel) -> np.ndarray:
    from torchcodec.decoders import AudioDecoder

    _check_file(path)
    try:
        dec = AudioDecoder(str(path), sample_rate=sample_rate)
        samples = dec.get_samples_played_in_range(start_seconds=start, stop_seconds=end)
    except Exception as e:  # noqa: BLE001
        err = _tc_error(path, e, "audio")
        if err.reason == "corrupt" and start > 0:
            err = MediaError(path, "too_short", f"no audio at {start:g} s ({err.detail})")
        raise err from None
    x = samples.data.numpy()
    x = x[0] if channel == "first" else x.mean(0)
    md = dec.metadata
    if md.duration_seconds_from_header:
        stream_end = float(md.begin_stream_seconds_from_header or 0) + float(md.duration_seconds_from_header)
        end = _drop_padding(
            end, float(samples.pts_seconds) + len(x) / sample_rate, stream_end, md.sample_rate
        )
    return _cut(path, x, float(samples.pts_seconds), start, end, sample_rate)
