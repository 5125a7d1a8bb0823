"""Small readers shared by the importers: numbered lines, files that must exist, unique uids."""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath

from xmodal.data.manifest import ManifestRow
from xmodal.errors import DataError

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".hdf5", ".h5")
AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def existing_file(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: {what} not found")
    return p


def existing_dir(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"{p}: {what} folder not found")
    return p


def numbered_lines(path: str | Path, what: str) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines; BOM and CRLF tolerated."""
    p = existing_file(path, what)
    with open(p, encoding="utf-8-sig") as f:
        return [(i, s) for i, line in enumerate(f, 1) if (s := line.strip())]


def numbered_csv(path: str | Path, what: str) -> list[tuple[int, list[str]]]:
    """(1-based line number, stripped cells) of the non-blank CSV records."""
    p = existing_file(path, what)
    with open(p, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        out = []
        for row in reader:
            cells = [c.strip() for c in row]
            if any(cells):
                out.append((reader.line_num, cells))
        return out


def parse_int(text: str, where: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{where}: {what}: expected an integer, found {text!r}") from None


def check_unique(rows: list[ManifestRow], where: list[str]) -> None:
    """DataError naming both sources when two rows share a uid (`where[i]`: 'file:line' of rows[i])."""
    seen: dict[str, str] = {}
    for r, src in zip(rows, where, strict=True):
        if r.uid in seen:
            raise DataError(f"{src}: uid '{r.uid}' already defined at {seen[r.uid]}")
        seen[r.uid] = src


def with_suffix(path: str, ext: str | None) -> str:
    """Replace the extension of `path` when `ext` is given ('.mp4', 'mp4'; '' drops it)."""
    if ext is None:
        return path
    ext = ext if not ext or ext.startswith(".") else f".{ext}"
    return str(PurePosixPath(path).with_suffix(ext))
