"""CAV-MAE datafiles (specs/cavmae.md §12): json sample lists + label csv (+ sample weights).

    {"data": [{"video_id": "--4gqARaEJE", "wav": "/data/audioset/--4gqARaEJE.flac",
               "video_path": "/data/audioset/frames", "labels": "/m/068hy,/m/07q6cd_"}]}

Label csv: `index,mid,display_name` (AudioSet 527, VGGSound 309; display names are quoted when they
hold commas). The reference keeps 10 JPEG frames per clip instead of the video, at
`<video_path>/frame_{0..9}/<video_id>.jpg`: rows get them in meta `frames` (and the folder in
`frame_dir`, the count in `n_frames`); `video` stays empty. Optional sample-weight files (one float per line, same order as
the json) feed the balanced sampler through meta `weight`.
"""

from __future__ import annotations

import json
from pathlib import Path

from xmodal.data.importers import Imported, media_path, register_importer
from xmodal.data.importers._common import existing_file, numbered_csv, numbered_lines, parse_int
from xmodal.data.manifest import Label, ManifestRow
from xmodal.errors import DataError


def read_label_csv(path: str | Path) -> list[Label]:
    """`index,mid,display_name` -> Labels (index 0..K-1 in order, unique mids)."""
    records = numbered_csv(path, "label csv")
    if not records or [c.lower() for c in records[0][1][:3]] != ["index", "mid", "display_name"]:
        found = ",".join(records[0][1]) if records else ""
        raise DataError(f"{path}:1: expected header 'index,mid,display_name', found {found!r}")
    labels: list[Label] = []
    seen: dict[str, int] = {}
    for line, cells in records[1:]:
        at = f"{path}:{line}"
        if len(cells) != 3:
            raise DataError(f"{at}: expected 3 fields 'index,mid,display_name', found {len(cells)}")
        idx = parse_int(cells[0], at, "index")
        if idx != len(labels):
            raise DataError(f"{at}: indices must be 0..K-1 in order; expected {len(labels)}, found {idx}")
        if cells[1] in seen:
            raise DataError(f"{at}: mid '{cells[1]}' already used by index {seen[cells[1]]}")
        seen[cells[1]] = idx
        labels.append(Label(idx, cells[1], cells[2]))
    if not labels:
        raise DataError(f"{path}: no labels")
    return labels


def read_weights(path: str | Path) -> list[float]:
    out = []
    for line, text in numbered_lines(path, "sample-weight file"):
        try:
            out.append(float(text.split(",")[0]))
        except ValueError:
            raise DataError(f"{path}:{line}: expected a number, found {text!r}") from None
    return out


def frame_paths(frame_dir: str, video_id: str, n_frames: int = 10) -> list[str]:
    """The reference's frame files of one clip: `<frame_dir>/frame_{i}/<video_id>.jpg`."""
    return [f"{frame_dir.rstrip('/')}/frame_{i}/{video_id}.jpg" for i in range(n_frames)]


def _entries(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path}: expected an object {{\"data\": [...]}}")
    return data["data"]


@register_importer("cavmae", help="CAV-MAE json datafiles + index,mid,display_name label csv")
def import_cavmae(
    *,
    datafiles: list[str],
    label_csv: str,
    splits: list[str] | None = None,
    weights: list[str] | None = None,
    root: str | None = None,
    n_frames: int = 10,
    frame_list: bool = True,
    duplicates: str = "error",
) -> Imported:
    """Rows for the samples of one or more CAV-MAE datafiles.

    Args:
        datafiles: json datafiles, e.g. audioset_20k_cleaned.json audioset_eval_cleaned.json.
        label_csv: class_labels_indices csv (index,mid,display_name).
        splits: split of each datafile (one name for all, or one per file; default train).
        weights: sample-weight file per datafile ('-' for none), e.g. the AS-2M balanced-sampler weights.
        root: joined to relative wav/video_path entries.
        n_frames: stored frames per clip (frame_0 .. frame_{n-1}).
        frame_list: write the frame paths into meta `frames`; --no-frame-list keeps only `frame_dir` and
            `n_frames` (AS-2M: saves about 1 GB of manifest; paths are frame_dir/frame_i/<uid>.jpg).
        duplicates: a video_id met twice: 'error', or 'first' to keep the first and count the rest.
    """
    if not datafiles:
        raise DataError("--datafiles: give at least one json datafile")
    splits = splits or ["train"]
    if len(splits) not in (1, len(datafiles)):
        raise DataError(f"--splits: expected 1 or {len(datafiles)} names (one per datafile), found {len(splits)}")
    splits = splits * len(datafiles) if len(splits) == 1 else splits
    weights = weights or ["-"] * len(datafiles)
    if len(weights) != len(datafiles):
        raise DataError(f"--weights: expected one file (or '-') per datafile ({len(datafiles)}), found {len(weights)}")
    if duplicates not in ("error", "first"):
        raise DataError(f"--duplicates: expected 'error' or 'first', found {duplicates!r}")
    labels = read_label_csv(label_csv)
    index = {lab.id: lab.index for lab in labels}

    rows: list[ManifestRow] = []
    seen: dict[str, str] = {}
    skipped = 0
    for file, split, wfile in zip(datafiles, splits, weights):
        path = existing_file(file, "datafile")
        entries = _entries(path)
        wts = read_weights(wfile) if wfile != "-" else None
        if wts is not None and len(wts) != len(entries):
            raise DataError(f"{wfile}: {len(wts)} weights for {len(entries)} samples of {path} (same order and count expected)")
        for k, e in enumerate(entries):
            at = f"{path}: entry {k}"
            if not isinstance(e, dict) or not all(isinstance(e.get(f), str) for f in ("video_id", "wav", "labels")):
                raise DataError(f"{at}: expected string fields video_id, wav, labels (and video_path), found {e!r}"[:300])
            vid = e["video_id"]
            if vid in seen:
                if duplicates == "first":
                    skipped += 1
                    continue
                raise DataError(f"{at}: video_id '{vid}' already listed at {seen[vid]} (use --duplicates first to keep the first)")
            seen[vid] = at
            ids = []
            for mid in (m.strip() for m in e["labels"].split(",")):
                if not mid:
                    continue
                if mid not in index:
                    raise DataError(f"{at} (video_id {vid}): unknown label mid '{mid}' (not in {label_csv})")
                ids.append(index[mid])
            meta: dict = {}
            if isinstance(e.get("video_path"), str) and e["video_path"]:
                frame_dir = media_path(e["video_path"], root)
                meta.update(frame_dir=frame_dir, n_frames=n_frames)
                if frame_list:
                    meta["frames"] = frame_paths(frame_dir, vid, n_frames)
            if wts is not None:
                meta["weight"] = wts[k]
            rows.append(ManifestRow(vid, split, sorted(set(ids)), audio=media_path(e["wav"], root), meta=meta))
    notes = [f"{len(labels)} labels from {label_csv}"]
    if skipped:
        notes.append(f"{skipped} repeated video_id entries skipped (--duplicates first)")
    return Imported(rows, labels, notes=notes)
