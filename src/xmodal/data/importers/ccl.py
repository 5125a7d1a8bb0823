"""CCL / 3D-ResNets-style annotation json (specs/ccl.md §2).

    {"labels": [class names],
     "database": {video_id: {"subset": "training" | "validation" | "testing",
                             "annotations": {"label": name, "segment": [1, n_frames + 1]},
                             "video_path": optional explicit path}}}

Videos default to `<root>/<label>/<video_id><video_ext>` (the reference stores one HDF5 of JPEG
frames per video); an entry's own `video_path` wins. The label is always read from the entry's
annotations, also when it carries a `video_path` (the reference reuses the previous entry's label
there — CCL §8 defect 5). Segments are 1-based frame indices, kept in meta (`segment`, `n_frames`).

Subsets: the reference's "validation" subset is the UCF101 *test* list, so it maps to our `test`
split by default (selecting models on it is CCL §8 defect 6); override with `subset_map`.
With `audio_root`, each row records its teacher feature `<audio_root>/<label>/<video_id>.npy` in
meta `audio_feature` (a missing file means "no audio", spec §2), and only classes that exist as
folders under `audio_root` are kept — the UCF51 rule.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from xmodal.data.importers import Imported, labels_from_names, media_path, register_importer
from xmodal.data.importers._common import existing_file
from xmodal.data.manifest import ManifestRow
from xmodal.errors import DataError


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise KeyError(k)
        out[k] = v
    return out


def _subset_map(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise DataError(f"--subset-map: expected SUBSET=SPLIT, found {item!r}")
        out[key] = value
    return out


@register_importer("ccl", help="CCL / 3D-ResNets annotation json (labels + database)")
def import_ccl(
    *,
    annotation: str,
    root: str | None = None,
    video_ext: str = ".hdf5",
    audio_root: str | None = None,
    subset_map: list[str] | None = None,
) -> Imported:
    """Rows for every database entry of a CCL annotation json.

    Args:
        annotation: the annotation json (e.g. ucf101_01.json).
        root: video folder; default video path is `<root>/<label>/<video_id><video_ext>`.
        video_ext: extension of the default video path ('.hdf5' as in the reference, '.mp4', or ''
            for a folder of frames).
        audio_root: folder of teacher audio features `<label>/<video_id>.npy`; restricts classes to its
            sub-folders.
        subset_map: SUBSET=SPLIT pairs replacing the default training=train validation=test testing=test.
    """
    path = existing_file(annotation, "annotation json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except KeyError as e:
        raise DataError(f"{path}: key {e.args[0]!r} appears twice in one object (json keeps only the last)") from None
    if not isinstance(data, dict) or not isinstance(data.get("labels"), list) or not isinstance(data.get("database"), dict):
        raise DataError(f"{path}: expected an object with 'labels' (list) and 'database' (object)")
    all_names = [str(n) for n in data["labels"]]
    subsets = {"training": "train", "validation": "test", "testing": "test"}
    subsets.update(_subset_map(subset_map or []))
    names = all_names
    if audio_root is not None:
        aroot = Path(audio_root)
        if not aroot.is_dir():
            raise DataError(f"{aroot}: audio feature folder not found")
        names = [n for n in all_names if (aroot / n).is_dir()]
        if not names:
            raise DataError(f"{aroot}: none of the {len(all_names)} annotation classes has a feature folder here")
    index = {n: i for i, n in enumerate(names)}
    known = set(all_names)

    rows, dropped = [], 0
    for vid, entry in data["database"].items():
        at = f"{path}: entry '{vid}'"
        if not isinstance(entry, dict) or not isinstance(entry.get("subset"), str):
            raise DataError(f"{at}: expected an object with a 'subset' string")
        if entry["subset"] not in subsets:
            raise DataError(f"{at}: subset '{entry['subset']}' not in --subset-map ({', '.join(sorted(subsets))})")
        ann = entry.get("annotations") or {}
        if not isinstance(ann, dict):
            raise DataError(f"{at}: 'annotations' must be an object")
        label = ann.get("label")
        if label is not None and label not in known:
            raise DataError(f"{at}: label '{label}' is not in 'labels'")
        if label is not None and label not in index:
            dropped += 1
            continue
        explicit = entry.get("video_path")
        if explicit is None and label is None:
            raise DataError(f"{at}: no label and no 'video_path': cannot locate the video")
        video = str(explicit) if explicit is not None else f"{label}/{vid}{video_ext}"
        meta = {}
        segment = ann.get("segment")
        if segment is not None:
            if not (isinstance(segment, list) and len(segment) == 2 and all(isinstance(x, int) for x in segment) and segment[1] > segment[0]):
                raise DataError(f"{at}: segment: expected [first_frame, last_frame + 1], found {segment!r}")
            meta.update(segment=segment, n_frames=segment[1] - segment[0])
        if audio_root is not None and label is not None:
            meta["audio_feature"] = os.path.join(os.path.abspath(audio_root), label, f"{vid}.npy")
        rows.append(ManifestRow(str(vid), subsets[entry["subset"]], [index[label]] if label is not None else [],
                                video=media_path(video, root), meta=meta))
    notes = [f"{len(names)} of {len(all_names)} classes"]
    if dropped:
        notes.append(f"{dropped} entries of classes without a folder under {audio_root} skipped")
    return Imported(rows, labels_from_names(names), notes=notes)
