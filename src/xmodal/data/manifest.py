"""The manifest: one JSON object per sample, plus labels.csv (`index,id,name`).

Every importer produces `ManifestRow`s; `xmodal prep` turns a manifest of raw media into shards and
writes the prepared manifest next to them. Relative media paths are relative to the manifest file.
Reading checks every row and fails with one line naming file:line and the field.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xmodal.errors import DataError

_FIELDS = ("uid", "split", "labels", "video", "audio", "text", "start", "end", "group", "meta")


@dataclass
class ManifestRow:
    uid: str
    split: str
    labels: list[int] = field(default_factory=list)
    video: str | None = None
    audio: str | None = None
    text: str | None = None
    start: float | None = None
    end: float | None = None
    group: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        d = {k: v for k, v in asdict(self).items() if v is not None and not (k == "meta" and not v)}
        return json.dumps(d, ensure_ascii=False)


@dataclass
class Label:
    index: int
    id: str
    name: str


def _check_row(d: Any, where: str) -> ManifestRow:
    if not isinstance(d, dict):
        raise DataError(f"{where}: expected a JSON object, found {type(d).__name__}")
    unknown = set(d) - set(_FIELDS)
    if unknown:
        raise DataError(f"{where}: unknown field(s) {sorted(unknown)}; put free data under `meta`")
    for key in ("uid", "split"):
        if not isinstance(d.get(key), str) or not d[key]:
            raise DataError(f"{where}: field `{key}`: expected a non-empty string, found {d.get(key)!r}")
    labels = d.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in labels):
        raise DataError(f"{where}: field `labels`: expected a list of label indices, found {labels!r}")
    for key in ("video", "audio", "text", "group"):
        if d.get(key) is not None and not isinstance(d[key], str):
            raise DataError(f"{where}: field `{key}`: expected a string, found {d[key]!r}")
    for key in ("start", "end"):
        if d.get(key) is not None and (isinstance(d[key], bool) or not isinstance(d[key], (int, float))):
            raise DataError(f"{where}: field `{key}`: expected seconds (a number), found {d[key]!r}")
    if not isinstance(d.get("meta", {}), dict):
        raise DataError(f"{where}: field `meta`: expected an object")
    return ManifestRow(**{k: d[k] for k in _FIELDS if k in d})


def read_manifest(path: str | Path) -> list[ManifestRow]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                rows.append(parse_line(line, f"{path}:{i}"))
    return rows


def parse_line(line: str, where: str) -> ManifestRow:
    """One manifest line -> ManifestRow; DataError '<where>: ...' when it is not a valid row."""
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e.msg})") from None
    return _check_row(d, where)


def write_manifest(rows: list[ManifestRow], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(r.to_json() + "\n")
    os.replace(tmp, path)
    return path


def read_labels(path: str | Path) -> list[Label]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: labels file not found")
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["index", "id", "name"]:
            raise DataError(f"{path}:1: expected header `index,id,name`, found {header!r}")
        for i, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) < 3 or not row[0].strip().isdigit():
                raise DataError(f"{path}:{i}: expected `index,id,name`, found {row!r}")
            out.append(Label(int(row[0]), row[1], row[2]))
    for expected, lab in enumerate(out):
        if lab.index != expected:
            raise DataError(f"{path}: label indices must be 0..K-1 in order; row for `{lab.id}` has index {lab.index}, expected {expected}")
    return out


def write_labels(labels: list[Label] | list[str], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if labels and isinstance(labels[0], str):
        labels = [Label(i, n, n) for i, n in enumerate(labels)]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["index", "id", "name"])
        for lab in labels:
            w.writerow([lab.index, lab.id, lab.name])
    os.replace(tmp, path)
    return path


def resolve_media(row_path: str | None, manifest_path: str | Path) -> Path | None:
    """Absolute path of a manifest media entry (relative entries are relative to the manifest)."""
    if row_path is None:
        return None
    p = Path(row_path)
    return p if p.is_absolute() else (Path(manifest_path).parent / p)
