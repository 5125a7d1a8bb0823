"""Tar shards in WebDataset layout, written deterministically, read back by byte offset.

A shard is a plain POSIX tar whose members are grouped by sample key, in order:
``<key>.json`` (the manifest row without media paths, plus ``"streams"``: the stream facts),
then ``<key>.frames.npy`` (uint8 [T,H,W,3]) or ``<key>.000.jpg`` ... ``<key>.NNN.jpg``, then
``<key>.flac`` or ``<key>.wav`` (16-bit PCM, mono). Any WebDataset/tar reader can stream it; xmodal reads single members (or
single frames inside a ``.frames.npy``) with one ``pread`` each, using the member offsets that
prep records in the shard's sidecar index (see `xmodal.data.prep`).

Determinism: every header has mtime 0, uid/gid 0, empty owner names and mode 0644, and members
are written in a fixed order, so the same content gives the same bytes on every run and machine.
"""

from __future__ import annotations

import io
import os
import re
import socket
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmodal.errors import DataError

BLOCK = tarfile.BLOCKSIZE  # 512
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # byte offset of the member's data (not its header) in the tar
    size: int


def sample_key(uid: str) -> str:
    """The WebDataset key of a uid: the uid itself when it is a safe name, else a stable hash.

    WebDataset splits ``key.ext`` at the first dot of the base name and treats ``/`` as folders,
    so uids with dots, slashes or other characters get ``h`` + 24 hex digits of their SHA-1 (the
    real uid is kept in ``<key>.json`` and in the index).
    """
    if _SAFE_KEY.match(uid) and len(uid) <= 80:
        return uid
    import hashlib

    return "h" + hashlib.sha1(uid.encode("utf-8")).hexdigest()[:24]


# ------------------------------------------------------------------------------------- writing
def tmp_name(path: Path) -> Path:
    """A temporary sibling unique to this host and process (parts may share a file system)."""
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def stale_tmp_files(path: Path) -> list[Path]:
    """Temporary siblings of `path` left by killed runs (any host, any process)."""
    return sorted(path.parent.glob(f".{glob_escape(path.name)}.tmp-*"))


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes | str, *, only_if_changed: bool = False) -> bool:
    """Write via a temporary file + fsync + rename, so `path` is either old or new, never half.

    With `only_if_changed`, identical existing content is left untouched (mtime kept). Returns
    True when the file was written.
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if only_if_changed and path.is_file() and path.stat().st_size == len(raw) and path.read_bytes() == raw:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True


class TarWriter:
    """Deterministic tar writer that records where each member's data lands.

    Writes to a temporary sibling; `commit()` fsyncs and renames it to `path`, so a shard file
    that exists is complete. Without `commit()` (an exception, a kill) the temporary file is left
    for the next run to delete, never mistaken for a shard.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp_name(self.path)
        self._file = open(self.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self.members: list[Member] = []

    def add(self, name: str, data: bytes) -> Member:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))
        # tarfile leaves its offset after the data padded to whole blocks; the data starts the
        # padded size before that, whatever the header took (long names add PAX blocks)
        padded = -(-len(data) // BLOCK) * BLOCK
        m = Member(name, self._tar.offset - padded, len(data))
        self.members.append(m)
        return m

    def commit(self) -> int:
        """Finish the archive, make it durable and give it its final name; returns its size."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)
        return self.path.stat().st_size

    def abort(self) -> None:
        try:
            self._tar.close()
        finally:
            self._file.close()
            self.tmp.unlink(missing_ok=True)


def scan_tar(path: str | Path) -> list[Member]:
    """Members of a tar by reading its headers (for checking an index against the file)."""
    try:
        with tarfile.open(path, "r:") as tar:
            return [Member(m.name, m.offset_data, m.size) for m in tar if m.isfile()]
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{path}: not a readable tar ({e})") from None


# ------------------------------------------------------------------------------------- reading
class ShardReader:
    """Reads byte ranges of shard files with ``os.pread``; handles are opened lazily and reused.

    Safe to share with DataLoader workers: handles opened before a fork are dropped in the
    child (tracked by pid), and `pread` keeps no file position, so threads may share it too.
    At most `max_open` files stay open (least recently used is closed first).
    """

    def __init__(self, max_open: int = 64):
        self.max_open = max_open
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()

    def _fd(self, path: str) -> int:
        if self._pid != os.getpid():
            self._fds, self._pid = {}, os.getpid()  # the parent's descriptors are not ours to use
        fd = self._fds.pop(path, None)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise DataError(f"{path}: cannot open shard ({e.strerror})") from None
            while len(self._fds) >= self.max_open:
                os.close(self._fds.pop(next(iter(self._fds))))
        self._fds[path] = fd  # re-insert: most recently used last
        return fd

    def read(self, path: str | Path, offset: int, size: int) -> bytes:
        path = str(path)
        data = os.pread(self._fd(path), size, offset)
        if len(data) != size:
            raise DataError(f"{path}: truncated shard (wanted {size} bytes at {offset}, got {len(data)})")
        return data

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def __getstate__(self):  # pickled into spawned workers: start with no handles
        return {"max_open": self.max_open}

    def __setstate__(self, state):
        self.__init__(state["max_open"])

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


# -------------------------------------------------------------------------------------- codecs
def encode_npy(arr: np.ndarray) -> tuple[bytes, int]:
    """(.npy bytes, header length): frame f of a C-order [T,...] array starts at header + f*frame_bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr), version=(1, 0), allow_pickle=False)
    data = buf.getvalue()
    return data, len(data) - arr.nbytes


def decode_npy(data: bytes) -> np.ndarray:
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def read_npy_frames(
    reader: ShardReader, path: str | Path, data_offset: int, shape: tuple[int, ...], indices: np.ndarray
) -> np.ndarray:
    """Frames `indices` of a uint8 [T,H,W,C] .npy member whose pixel data starts at `data_offset`.

    Reads one contiguous byte range covering the requested frames when that is at most 4x the
    frames needed (typical clip windows), else one range per distinct frame.
    """
    indices = np.asarray(indices, dtype=np.int64)
    t = shape[0]
    if indices.size and (indices.min() < 0 or indices.max() >= t):
        raise DataError(f"{path}: frame index out of range 0..{t - 1}: {indices.tolist()}")
    frame_bytes = int(np.prod(shape[1:]))
    uniq = np.unique(indices)
    lo, hi = int(uniq[0]), int(uniq[-1]) + 1
    if hi - lo <= 4 * len(uniq):
        raw = reader.read(path, data_offset + lo * frame_bytes, (hi - lo) * frame_bytes)
        block = np.frombuffer(raw, np.uint8).reshape(hi - lo, *shape[1:])
        return block[indices - lo]
    frames = {
        int(f): np.frombuffer(reader.read(path, data_offset + int(f) * frame_bytes, frame_bytes), np.uint8)
        for f in uniq
    }
    return np.stack([frames[int(f)] for f in indices]).reshape(len(indices), *shape[1:])


def encode_jpg(frame: np.ndarray, quality: int = 90) -> bytes:
    """One uint8 [H,W,3] RGB frame as baseline JPEG (Pillow, 4:2:0)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpg(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


AUDIO_FORMATS = {"flac": "FLAC", "wav": "WAV"}


def encode_audio(wave: np.ndarray, sample_rate: int, fmt: str = "flac") -> bytes:
    """Mono float [S] in [-1, 1] as 16-bit PCM FLAC or WAV bytes (values beyond ±1 are clipped)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), sample_rate, format=AUDIO_FORMATS[fmt], subtype="PCM_16")
    return buf.getvalue()


def decode_audio_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """(float32 mono [S] in [-1, 1), sample rate) from FLAC/WAV bytes."""
    import soundfile as sf

    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return np.ascontiguousarray(x[:, 0]), int(sr)
