"""`xmodal validate`: every problem of a manifest or a prepared store, one line each.

Manifest checks: unreadable lines or fields, duplicate uids, label indices outside labels.csv (or
labels without a labels.csv), start >= end or negative times, rows with no media at all, missing
media files (video, audio and the media paths in meta: `frames`, `image`, `audio_feature`),
an empty manifest and expected splits without rows. Unlike `read_manifest`, which stops at the
first bad row, validation reads on and reports them all.

Store checks (a folder with manifest.jsonl, labels.csv, index.json and shards/*.tar written by
`xmodal prep`) replace the media-file checks, since media live inside the shards. Expected
`index.json` layout (read tolerantly):

    {"shards": [{"path": "shards/000000.tar", "size": 123456789, "count": 2, "uids": ["a", "b"]}, ...],
     "members": {"a": {"shard": "shards/000000.tar", "files": ["a.000.jpg", "a.wav", "a.json"]}, ...}}

A shard may also be a bare path string; the path key may be `path`, `name` or `file`, the size key
`size` or `bytes`; `members` values may be a shard path or an object with `shard`. Checked: every
shard exists and has its recorded size, every manifest uid is in the index (via `members` or the
shards' `uids`) and every indexed uid is in the manifest, members point at listed shards, and with
`deep` every listed member file is in its tar. Without index.json the store checks are skipped with
a note.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmodal.data.manifest import ManifestRow, parse_line, read_labels, resolve_media
from xmodal.errors import DataError

MEDIA_META_KEYS = ("frames", "frame_dir", "image", "audio_feature")


@dataclass(frozen=True)
class Problem:
    where: str  # file, file:line or file: uid
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Validation:
    problems: list[Problem] = field(default_factory=list)
    rows: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    labels: int | None = None
    shards: int | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self, target: str | Path) -> str:
        parts = [f"{self.rows} rows", ", ".join(f"{k} {v}" for k, v in self.splits.items()) or "no splits"]
        if self.labels is not None:
            parts.append(f"{self.labels} labels")
        if self.shards is not None:
            parts.append(f"{self.shards} shards")
        return f"OK {target}: " + "; ".join(parts)


def _read_rows(path: Path, problems: list[tuple[int, Problem]]) -> list[tuple[int, ManifestRow]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{i}"
            try:
                rows.append((i, parse_line(line, where)))
            except DataError as e:
                problems.append((i, Problem(where, str(e).removeprefix(f"{where}: "))))
    return rows


def media_paths(row: ManifestRow) -> list[str]:
    """Every media path of a row: video, audio and the media entries of meta."""
    paths = [p for p in (row.video, row.audio) if p]
    for key in MEDIA_META_KEYS:
        value = row.meta.get(key)
        if isinstance(value, str):
            paths.append(value)
        elif isinstance(value, list):
            paths.extend(v for v in value if isinstance(v, str))
    return paths


def _check_rows(path: Path, rows: list[tuple[int, ManifestRow]], n_labels: int | None, labels_state: str,
                check_media: bool, problems: list[tuple[int, Problem]]) -> None:
    """Row problems as (line, Problem); `labels_state`: ok, missing or invalid (no range checks)."""
    first: dict[str, int] = {}
    for i, r in rows:
        where = f"{path}:{i}"

        def add(message: str, i: int = i, where: str = where) -> None:
            problems.append((i, Problem(where, message)))

        if r.uid in first:
            add(f"duplicate uid '{r.uid}' (first at line {first[r.uid]})")
        else:
            first[r.uid] = i
        if r.labels and labels_state == "missing":
            add(f"uid '{r.uid}' has labels {r.labels} but there is no labels.csv")
        elif n_labels is not None:
            bad = [x for x in r.labels if not 0 <= x < n_labels]
            if bad:
                add(f"uid '{r.uid}': label index {bad} outside 0..{n_labels - 1} of labels.csv")
        if len(set(r.labels)) != len(r.labels):
            add(f"uid '{r.uid}': repeated label index in {r.labels}")
        if r.start is not None and r.start < 0:
            add(f"uid '{r.uid}': start {r.start} < 0")
        if r.start is not None and r.end is not None and r.start >= r.end:
            add(f"uid '{r.uid}': start {r.start} >= end {r.end}")
        media = media_paths(r)
        if not media and not r.text:
            add(f"uid '{r.uid}': no media (video, audio, text or meta {'/'.join(MEDIA_META_KEYS)})")
        if check_media:
            missing = [p for p in media if not resolve_media(p, path).exists()]
            if missing:
                more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
                add(f"uid '{r.uid}': media file not found: {resolve_media(missing[0], path)}{more}")


def _check_manifest(manifest: Path, labels_path: Path | None, check_media: bool, expect_splits: list[str], out: Validation) -> list[ManifestRow]:
    if not manifest.is_file():
        out.problems.append(Problem(str(manifest), "manifest not found"))
        return []
    n_labels, labels_state = None, "missing"
    labels_path = labels_path if labels_path is not None else manifest.with_name("labels.csv")
    if labels_path.is_file():
        try:
            labels = read_labels(labels_path)
            n_labels = out.labels = len(labels)
            labels_state = "ok"
            for lab_id, count in Counter(lab.id for lab in labels).items():
                if count > 1:
                    out.problems.append(Problem(str(labels_path), f"label id '{lab_id}' appears {count} times"))
        except DataError as e:
            labels_state = "invalid"
            out.problems.append(Problem(str(labels_path), str(e).removeprefix(f"{labels_path}: ")))
    found: list[tuple[int, Problem]] = []
    rows = _read_rows(manifest, found)
    _check_rows(manifest, rows, n_labels, labels_state, check_media, found)
    out.problems.extend(p for _, p in sorted(found, key=lambda lp: lp[0]))
    out.rows = len(rows)
    out.splits = dict(sorted(Counter(r.split for _, r in rows).items()))
    if not rows:
        out.problems.append(Problem(str(manifest), "no rows"))
    for split in expect_splits:
        if split not in out.splits:
            out.problems.append(Problem(str(manifest), f"split '{split}' has no rows (found: {', '.join(out.splits) or 'none'})"))
    return [r for _, r in rows]


def _first(d: dict, keys: tuple[str, ...]) -> Any:
    return next((d[k] for k in keys if k in d), None)


def _check_store(store: Path, rows: list[ManifestRow], deep: bool, out: Validation) -> None:
    index_path = store / "index.json"
    if not index_path.is_file():
        out.notes.append(f"{index_path} not found: shard checks skipped")
        return
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        out.problems.append(Problem(f"{index_path}:{e.lineno}", f"invalid JSON ({e.msg})"))
        return
    shards = index.get("shards", []) if isinstance(index, dict) else None
    if not isinstance(shards, list):
        out.problems.append(Problem(str(index_path), "expected an object with a 'shards' list"))
        return
    out.shards = len(shards)
    listed: dict[str, Path] = {}
    indexed: dict[str, str] = {}  # uid -> shard
    for k, s in enumerate(shards):
        s = {"path": s} if isinstance(s, str) else s
        name = _first(s, ("path", "name", "file")) if isinstance(s, dict) else None
        if not isinstance(name, str):
            out.problems.append(Problem(str(index_path), f"shards[{k}]: no path"))
            continue
        file = store / name
        listed[name] = file
        size = _first(s, ("size", "bytes"))
        if not file.is_file():
            out.problems.append(Problem(str(index_path), f"shard {name} not found"))
        elif isinstance(size, int) and file.stat().st_size != size:
            out.problems.append(Problem(str(index_path), f"shard {name}: size {file.stat().st_size} bytes, index records {size}"))
        for uid in s.get("uids", s.get("keys", [])):
            indexed[uid] = name
    members = index.get("members", {})
    members = {m.get("uid"): m for m in members if isinstance(m, dict)} if isinstance(members, list) else members
    for uid, m in members.items():
        shard = m.get("shard") if isinstance(m, dict) else m
        if shard not in listed:
            out.problems.append(Problem(str(index_path), f"member '{uid}': shard {shard!r} is not in 'shards'"))
        indexed.setdefault(uid, shard)
    if not indexed:
        out.notes.append(f"{index_path} lists no uids: uid coverage not checked")
    elif (store / "manifest.jsonl").is_file():
        manifest_uids = {r.uid for r in rows}
        for uid in sorted(manifest_uids - set(indexed)):
            out.problems.append(Problem(str(store / "manifest.jsonl"), f"uid '{uid}' is not in index.json"))
        for uid in sorted(set(indexed) - manifest_uids):
            out.problems.append(Problem(str(index_path), f"uid '{uid}' is indexed but not in manifest.jsonl"))
    if deep:
        _check_members(index_path, listed, members, out)


def _check_members(index_path: Path, listed: dict[str, Path], members: dict, out: Validation) -> None:
    import tarfile

    names: dict[str, set[str]] = {}
    for name, file in listed.items():
        if not file.is_file():
            continue
        try:
            with tarfile.open(file) as tar:
                names[name] = set(tar.getnames())
        except (tarfile.TarError, OSError) as e:
            out.problems.append(Problem(str(file), f"unreadable tar ({e})"))
    for uid, m in members.items():
        if not isinstance(m, dict) or m.get("shard") not in names:
            continue
        lost = [f for f in m.get("files", []) if f not in names[m["shard"]]]
        if lost:
            out.problems.append(Problem(str(index_path), f"member '{uid}': {', '.join(lost)} not in {m['shard']}"))


def validate(
    target: str | Path,
    labels_path: str | Path | None = None,
    *,
    check_media: bool = True,
    expect_splits: list[str] | None = None,
    deep: bool = False,
) -> Validation:
    """Check a manifest file, or a folder (a store: manifest.jsonl [+ labels.csv, index.json, shards])."""
    target = Path(target)
    out = Validation()
    store = target.is_dir()
    manifest = target / "manifest.jsonl" if store else target
    is_store = store and (target / "index.json").is_file()
    rows = _check_manifest(manifest, Path(labels_path) if labels_path else None, check_media and not is_store,
                           list(expect_splits or []), out)
    if store:
        _check_store(target, rows, deep, out)
    if is_store and check_media:
        out.notes.append("media live in the shards: media-file checks replaced by the index checks")
    return out


def validate_manifest(manifest_path: str | Path, labels_path: str | Path | None = None, check_media: bool = True) -> list[Problem]:
    """Problems of a manifest (labels.csv next to it unless `labels_path` is given)."""
    return validate(Path(manifest_path), labels_path, check_media=check_media).problems


def validate_store(store: str | Path, deep: bool = False) -> list[Problem]:
    """Problems of a prepared store folder (manifest, labels, index.json and shards)."""
    return validate(Path(store), deep=deep).problems

