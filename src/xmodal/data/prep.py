"""`xmodal prep`: raw media (a manifest or a list of files) -> a prepared store of tar shards.

Store layout (``<out>/``)::

    prep.json                  settings the store was made with (a rerun with others is refused)
    shards/shard-000000.tar    WebDataset-layout tar (see `xmodal.data.shards`)
    shards/shard-000000.json   its sidecar index: members + byte offsets, stream facts, rejects
    ...
    manifest.jsonl             prepared samples (rejects left out), sorted by (split, uid); a row's
                               `video`/`audio` name the shard holding them (relative to the store)
    rejects.jsonl              {uid, path, reason, detail} per unusable file
    labels.csv                 index,id,name
    index.json                 written last: the store is complete when it exists

``index.json``::

    {"format": "xmodal-store", "version": 1,
     "config": {<PrepConfig fields except workers>},
     "num_samples": int, "num_rejects": int, "rejects_by_reason": {reason: int},
     "splits": {split: int}, "num_classes": int, "multilabel": bool,
     "shards": [{"name": "shards/shard-000000.tar", "index": "shards/shard-000000.json",
                 "samples": int, "rejects": int, "bytes": int, "fingerprint": hex,
                 "uids": [uid, ...]}]}

Shard sidecar ``shards/shard-NNNNNN.json``::

    {"format": "xmodal-shard", "version": 1, "shard": "shard-000000.tar", "bytes": int,
     "fingerprint": hex, "rejects": [{uid, path, reason, detail}],
     "samples": [{"uid", "key", "split", "labels": [int], "group"?, "text"?,
                  "members": {"json": [offset, size], "frames.npy" | "000.jpg" ...: [offset, size],
                              "flac" | "wav": [offset, size]},
                  "video": {"frames": T, "height": H, "width": W, "fps": float,
                            "data_offset": int (npy: absolute offset of frame 0's pixels),
                            "times": [s, ...] (frame selection only)} | null,
                  "audio": {"samples": S, "sample_rate": int} | null}]}

Offsets are of member *data* (after the tar header), in bytes from the start of the shard.
Stored frame k of a "dense" store shows time k / fps from the clip start; a "select" store lists
each frame's time. Stored audio sample s plays at s / sample_rate. Times are relative to the
row's ``start`` (0 when absent), so frames and audio of a sample share one clock.

Sharding: rows are sorted by (split, uid); shard k holds rows [k·S, (k+1)·S) (S = shard_size)
of that order, minus its rejects. A shard is written to a temporary file and renamed, then its
sidecar is written the same way; a shard counts as complete when its sidecar exists, names the
fingerprint of (settings, its rows) and matches the tar's size. Runs skip complete shards, so a
run killed at any moment (kill -9 included) and run again yields byte-identical files, and
``--part i/N`` (shards k with k mod N == i) lets N machines fill one store; whichever run finds
every shard complete writes the final files. `XMODAL_PREP_THROTTLE_S` (seconds slept after each
sample) slows a run down on purpose, for tests and demonstrations of resuming.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from xmodal.data.manifest import Label, ManifestRow, read_labels, read_manifest
from xmodal.data.shards import (
    AUDIO_FORMATS,
    TarWriter,
    sample_key,
    stale_tmp_files,
    write_atomic,
)
from xmodal.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SHARD_DIR = "shards"
MEDIA_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp",
              ".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus")  # fmt: skip


@dataclass
class PrepConfig:
    """How raw media become stored samples. Every field but `workers` shapes the stored bytes."""

    # "select": `num_frames` frames at int(i·total/num_frames), total = min(frames, num_frames·fps)
    # (CAV-MAE: 10 frames over the first 10 s); "dense": every frame at `fps` (R(2+1)D recipes);
    # "none": audio only
    video: Literal["select", "dense", "none"] = "select"
    num_frames: int = 10
    fps: float = 0.0  # dense: target frame rate; 0 = the file's own
    short_side: int = 256  # frames resized so the short side has this many pixels; 0 = native
    max_duration: float = 10.0  # seconds kept from each clip's start; 0 = everything
    min_duration: float = 0.0  # a clip with a stream shorter than this is rejected (too_short)
    audio: bool = True
    sample_rate: int = 16000
    audio_channel: Literal["first", "mean"] = "first"  # CAV-MAE keeps the first channel
    require: list[str] = field(default_factory=lambda: ["video", "audio"])  # missing -> rejected
    frame_format: Literal["npy", "jpg"] = "npy"  # npy: fast, big; jpg: ~10x smaller (real data)
    jpeg_quality: int = 90
    audio_format: Literal["flac", "wav"] = "flac"
    shard_size: int = 256  # samples per shard (aim for 100-500 MB shards on real data)
    backend: Literal["auto", "pyav", "torchcodec"] = "auto"
    workers: int = 0  # decoding processes; 0 = one per CPU core

    def validate(self) -> None:
        if self.video not in ("select", "dense", "none"):
            raise ValueError(f"video: expected select, dense or none, found {self.video!r}")
        if self.num_frames < 1 or self.shard_size < 1 or self.sample_rate < 1:
            raise ValueError("num_frames, shard_size and sample_rate must be >= 1")
        if min(self.fps, self.short_side, self.max_duration, self.min_duration, self.workers) < 0:
            raise ValueError("fps, short_side, max_duration, min_duration and workers must be >= 0")
        if self.max_duration and self.min_duration > self.max_duration:
            raise ValueError(f"min_duration {self.min_duration} exceeds max_duration {self.max_duration}")
        bad = [r for r in self.require if r not in ("video", "audio")]
        if bad:
            raise ValueError(f"require: expected a subset of [video, audio], found {bad}")
        if "video" in self.require and self.video == "none":
            raise ValueError("require lists video but video is 'none'")
        if "audio" in self.require and not self.audio:
            raise ValueError("require lists audio but audio is off")
        if not (self.video != "none" or self.audio):
            raise ValueError("nothing to store: video is 'none' and audio is off")
        if self.audio_format not in AUDIO_FORMATS:
            raise ValueError(f"audio_format: expected flac or wav, found {self.audio_format!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, found {self.jpeg_quality}")

    def identity(self) -> dict:
        """The settings that decide the stored bytes (what prep.json and fingerprints record)."""
        d = asdict(self)
        d.pop("workers")
        d["require"] = sorted(set(self.require))
        return d


def check_config(cfg: PrepConfig) -> PrepConfig:
    try:
        cfg.validate()
    except ValueError as e:
        raise ConfigError(f"prep: {e}") from None
    return cfg


# ----------------------------------------------------------------------------------- sources
@dataclass
class Source:
    rows: list[ManifestRow]  # sorted by (split, uid)
    base_dir: Path  # relative media paths in rows resolve against this folder
    labels: list[Label]
    where: str  # for messages


def load_source(inputs: str | Path | Iterable[str | Path], *, split: str = "train",
                label_from_folder: bool = False) -> Source:  # fmt: skip
    """A manifest (.jsonl, with labels.csv beside it) or media files / folders / list files (.txt).

    Media files become rows with uid = path relative to their common folder without extension,
    `split`, and (with `label_from_folder`) the parent folder name as the label.
    """
    items = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    if not items:
        raise DataError("prep: no input given (a manifest.jsonl, media files or folders)")
    if len(items) == 1 and items[0].suffix == ".jsonl":
        path = items[0]
        rows = read_manifest(path)
        lab_path = path.with_name("labels.csv")
        labels = read_labels(lab_path) if lab_path.is_file() else _generic_labels(rows)
        for i, r in enumerate(rows):
            bad = [x for x in r.labels if not 0 <= x < len(labels)]
            if bad:
                raise DataError(f"{path}:{i + 1}: labels {bad} outside 0..{len(labels) - 1} of {lab_path}")
        return Source(_sorted_unique(rows, str(path)), path.parent.resolve(), labels, str(path))
    files = _expand(items)
    if not files:
        raise DataError(f"prep: no media files found in {', '.join(map(str, items))}")
    files = [f.resolve() for f in files]
    root = Path(os.path.commonpath([f.parent for f in files]))
    names = sorted({f.parent.name for f in files}) if label_from_folder else []
    rows = [
        ManifestRow(
            uid=f.relative_to(root).with_suffix("").as_posix(),
            split=split,
            labels=[names.index(f.parent.name)] if label_from_folder else [],
            video=str(f),
            audio=str(f),
        )
        for f in files
    ]
    labels = [Label(i, n, n) for i, n in enumerate(names)]
    return Source(_sorted_unique(rows, "input files"), root, labels, f"{len(files)} files under {root}")


def _expand(items: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in items:
        if p.is_dir():
            out.extend(f for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in MEDIA_EXTS)
        elif p.suffix in (".txt", ".lst"):
            if not p.is_file():
                raise DataError(f"{p}: file list not found")
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
            out.extend((p.parent / ln) for ln in lines if ln and not ln.startswith("#"))
        else:
            out.append(p)  # a missing file is rejected as unreadable, not fatal
    return out


def _generic_labels(rows: list[ManifestRow]) -> list[Label]:
    k = max((max(r.labels) + 1 for r in rows if r.labels), default=0)
    return [Label(i, str(i), str(i)) for i in range(k)]


def _sorted_unique(rows: list[ManifestRow], where: str) -> list[ManifestRow]:
    rows = sorted(rows, key=lambda r: (r.split, r.uid))
    keys: dict[str, str] = {}
    for a, b in zip(rows, rows[1:]):
        if a.uid == b.uid:
            raise DataError(f"{where}: uid '{a.uid}' appears twice; uids must be unique")
    for r in rows:
        k = sample_key(r.uid)
        if keys.setdefault(k, r.uid) != r.uid:
            raise DataError(f"{where}: uids '{keys[k]}' and '{r.uid}' map to the same shard key '{k}'")
    return rows


# -------------------------------------------------------------------------------- shard plan
@dataclass
class ShardPlan:
    index: int
    rows: list[ManifestRow]
    fingerprint: str

    @property
    def name(self) -> str:
        return f"shard-{self.index:06d}.tar"

    @property
    def sidecar_name(self) -> str:
        return f"shard-{self.index:06d}.json"


def plan_shards(rows: list[ManifestRow], cfg: PrepConfig) -> list[ShardPlan]:
    """Consecutive slices of the sorted rows; each fingerprinted by (settings, its rows)."""
    ident = json.dumps(cfg.identity(), sort_keys=True)
    plans = []
    for k in range(0, len(rows), cfg.shard_size):
        chunk = rows[k : k + cfg.shard_size]
        h = hashlib.sha256(ident.encode())
        for r in chunk:
            h.update(b"\n" + r.to_json().encode("utf-8"))
        plans.append(ShardPlan(k // cfg.shard_size, chunk, h.hexdigest()[:32]))
    return plans


def read_sidecar(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def shard_complete(out: Path, plan: ShardPlan) -> dict | None:
    """The plan's sidecar when its shard is complete and current, else None."""
    d = out / SHARD_DIR
    side = read_sidecar(d / plan.sidecar_name)
    if not side or side.get("fingerprint") != plan.fingerprint:
        return None
    tar = d / plan.name
    if not tar.is_file() or tar.stat().st_size != side.get("bytes"):
        return None
    return side


# ------------------------------------------------------------------------------------ result
@dataclass
class PrepResult:
    out: Path
    complete: bool  # every shard done and index.json written
    prepared: int  # samples in the store (complete) or in the shards built now (partial)
    rejected: Counter
    shards_total: int
    shards_built: int
    shards_skipped: int
    seconds: float
    processed: int  # clips decoded by this run

    @property
    def clips_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        rej = sum(self.rejected.values())
        by = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items()))
        text = (
            f"prep: {self.prepared} prepared, {rej} rejected{f' ({by})' if by else ''}, "
            f"{self.shards_total} shards ({self.shards_built} built, {self.shards_skipped} skipped), "
            f"{self.seconds:.1f} s, {self.clips_per_s:.1f} clips/s"
        )
        if not self.complete:
            text += f"; store incomplete: run the other parts, then any part again to finish {self.out}"
        return text


# --------------------------------------------------------------------------------------- run
def prepare(
    source: Source | str | Path | Iterable[str | Path],
    out: str | Path,
    cfg: PrepConfig | None = None,
    *,
    part: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    progress: bool = True,
) -> PrepResult:
    """Build (or finish) the store at `out`; see the module docstring for the guarantees."""
    from xmodal.data._prep_worker import iter_results

    cfg = check_config(cfg or PrepConfig())
    i, n = part
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--part: expected i/N with 0 <= i < N, found {i}/{n}")
    src = source if isinstance(source, Source) else load_source(source)
    out = Path(out)
    _claim(out, cfg, overwrite)
    plans = plan_shards(src.rows, cfg)
    mine = [p for p in plans if p.index % n == i]
    todo = [p for p in mine if shard_complete(out, p) is None]
    t0 = time.perf_counter()
    built_samples, rejected = 0, Counter()
    if todo:
        (out / "index.json").unlink(missing_ok=True)  # the store is being changed: not complete
        throttle = float(os.environ.get("XMODAL_PREP_THROTTLE_S", "0") or 0)
        workers = cfg.workers or os.cpu_count() or 1
        rows = [r for p in todo for r in p.rows]
        from xmodal.engine.logging import progress as bar_fn

        bar = bar_fn(total=len(rows), desc="prep", enabled=progress, unit="clip")
        results = iter_results(rows, str(src.base_dir), cfg, workers)
        try:
            for plan in todo:
                side = _build_shard(out, plan, cfg, results, bar, throttle)
                built_samples += len(side["samples"])
                rejected.update(r["reason"] for r in side["rejects"])
        finally:
            results.close()
            bar.close()
    seconds = time.perf_counter() - t0
    processed = sum(len(p.rows) for p in todo)
    complete = finalize(out, plans, src, cfg)
    if complete:
        index = json.loads((out / "index.json").read_text())
        prepared, rejected = index["num_samples"], Counter(index["rejects_by_reason"])
    else:
        prepared = built_samples
    return PrepResult(out, complete, prepared, rejected, len(plans), len(todo), len(mine) - len(todo),
                      seconds, processed)  # fmt: skip


def _claim(out: Path, cfg: PrepConfig, overwrite: bool) -> None:
    """Record the settings in prep.json; refuse a folder made with other settings."""
    stamp = out / "prep.json"
    want = {"format": "xmodal-prep", "version": FORMAT_VERSION, "config": cfg.identity()}
    if stamp.is_file():
        try:
            have = json.loads(stamp.read_text())
        except ValueError:
            have = {}
        if have != want:
            if not overwrite:
                old = have.get("config", {}) if isinstance(have, dict) else {}
                diff = sorted(k for k, v in want["config"].items() if old.get(k) != v)
                raise DataError(
                    f"{stamp}: store was prepared with other settings (differs in {diff or 'format'}); "
                    f"use a new folder or --overwrite"
                )
            _wipe(out)
    elif out.exists() and any(out.iterdir()) and not (out / SHARD_DIR).exists() and not overwrite:
        raise DataError(f"{out}: folder is not empty and is not an xmodal store; use a new folder")
    write_atomic(stamp, json.dumps(want, indent=1, sort_keys=True) + "\n", only_if_changed=True)


def _wipe(out: Path) -> None:
    for name in ("index.json", "manifest.jsonl", "rejects.jsonl", "labels.csv", "prep.json"):
        (out / name).unlink(missing_ok=True)
    d = out / SHARD_DIR
    if d.is_dir():
        for f in d.iterdir():
            if f.name.startswith(("shard-", ".shard-")):
                f.unlink()


def _build_shard(out: Path, plan: ShardPlan, cfg: PrepConfig, results: Iterator, bar, throttle: float) -> dict:
    from xmodal.data._prep_worker import Rejected

    d = out / SHARD_DIR
    for stale in stale_tmp_files(d / plan.name) + stale_tmp_files(d / plan.sidecar_name):
        stale.unlink(missing_ok=True)  # left by a killed run; this part owns this shard
    writer = TarWriter(d / plan.name)
    samples, rejects = [], []
    try:
        for row in plan.rows:
            got_row, res = next(results)
            assert got_row.uid == row.uid, (got_row.uid, row.uid)
            if isinstance(res, Rejected):
                rejects.append(asdict(res))
            else:
                samples.append(_write_sample(writer, row, res))
            bar.update(1)
            if throttle:
                time.sleep(throttle)
        size = writer.commit()
    except BaseException:
        writer.abort()
        raise
    side = {
        "format": "xmodal-shard",
        "version": FORMAT_VERSION,
        "shard": plan.name,
        "bytes": size,
        "fingerprint": plan.fingerprint,
        "samples": samples,
        "rejects": rejects,
    }
    write_atomic(d / plan.sidecar_name, json.dumps(side, separators=(",", ":")) + "\n")
    return side


def _write_sample(writer: TarWriter, row: ManifestRow, res) -> dict:
    key = sample_key(row.uid)
    members = {}
    for suffix, data in res.members:
        m = writer.add(f"{key}.{suffix}", data)
        members[suffix] = [m.offset, m.size]
    entry: dict = {"uid": row.uid, "key": key, "split": row.split, "labels": list(row.labels)}
    if row.group is not None:
        entry["group"] = row.group
    if row.text is not None:
        entry["text"] = row.text
    if isinstance(row.meta.get("weight"), (int, float)):
        entry["weight"] = float(row.meta["weight"])  # balanced-sampler weight from the importer
    entry["members"] = members
    video = dict(res.video) if res.video else None
    if video is not None and "frames.npy" in members:
        video["data_offset"] = members["frames.npy"][0] + res.npy_header
    entry["video"] = video
    entry["audio"] = res.audio
    return entry


# ---------------------------------------------------------------------------------- finalize
def prepared_row(row: ManifestRow, entry: dict, shard: str) -> ManifestRow:
    """The manifest row of a stored sample: `video`/`audio` name the shard that holds them."""
    return replace(row, video=shard if entry["video"] else None, audio=shard if entry["audio"] else None)


def _labels_csv(labels: list[Label]) -> str:
    """labels.csv text, as `xmodal.data.manifest.write_labels` writes it."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "id", "name"])
    for lab in labels:
        w.writerow([lab.index, lab.id, lab.name])
    return buf.getvalue()


def finalize(out: Path, plans: list[ShardPlan], src: Source, cfg: PrepConfig) -> bool:
    """Write manifest/rejects/labels/index from the sidecars once every shard is complete."""
    sides = [shard_complete(out, p) for p in plans]
    if any(s is None for s in sides):
        return False
    d = out / SHARD_DIR
    planned = {p.name for p in plans} | {p.sidecar_name for p in plans}
    for f in sorted(d.glob("shard-*")) if d.is_dir() else []:
        if f.name not in planned:
            f.unlink()  # from an earlier, longer manifest
    kept = {s["uid"]: (s, f"{SHARD_DIR}/{side['shard']}") for side in sides for s in side["samples"]}
    rows = [prepared_row(r, *kept[r.uid]) for r in src.rows if r.uid in kept]
    rejects = [r for side in sides for r in side["rejects"]]
    manifest_text = "".join(r.to_json() + "\n" for r in rows)
    write_atomic(out / "manifest.jsonl", manifest_text, only_if_changed=True)
    write_atomic(out / "rejects.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects),
                 only_if_changed=True)  # fmt: skip
    write_atomic(out / "labels.csv", _labels_csv(src.labels), only_if_changed=True)
    index = {
        "format": "xmodal-store",
        "version": FORMAT_VERSION,
        "config": cfg.identity(),
        "num_samples": len(rows),
        "num_rejects": len(rejects),
        "rejects_by_reason": dict(sorted(Counter(r["reason"] for r in rejects).items())),
        "splits": dict(sorted(Counter(r.split for r in rows).items())),
        "num_classes": len(src.labels),
        "multilabel": any(len(r.labels) > 1 for r in rows),
        "shards": [
            {
                "name": f"{SHARD_DIR}/{p.name}",
                "index": f"{SHARD_DIR}/{p.sidecar_name}",
                "samples": len(s["samples"]),
                "rejects": len(s["rejects"]),
                "bytes": s["bytes"],
                "fingerprint": p.fingerprint,
                "uids": [x["uid"] for x in s["samples"]],
            }
            for p, s in zip(plans, sides)
        ],
    }
    write_atomic(out / "index.json", json.dumps(index, indent=1) + "\n", only_if_changed=True)
    return True
