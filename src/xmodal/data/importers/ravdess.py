"""RAVDESS emotions (specs/mfh.md §5): the file-name convention, or MFH's split CSVs.

File names `MM-VV-EE-II-SS-RR-AA.ext`, e.g. `03-01-06-01-02-01-12.wav`: modality (01 audio-video,
02 video only, 03 audio only), vocal channel (01 speech, 02 song), emotion (01 neutral, 02 calm,
03 happy, 04 sad, 05 angry, 06 fearful, 07 disgust, 08 surprised), intensity (01 normal, 02 strong),
statement (01 "Kids are talking by the door", 02 "Dogs are sitting by the door"), repetition
(01, 02), actor (01-24; odd = male). The files of one recording (same fields but modality) form one
row: uid = the six fields after the modality; video = the 01 file (else 02), audio = the 03 file
(else the 01 file's own track). Labels are the 8 emotions (0 = neutral ... 7 = surprised).

Splits are by actor so no speaker is in two splits. Default [ours]: actors 1-20 train, 21-22 val,
23-24 test. MFH instead ships three CSVs (audio file, image file, label) of pre-extracted inputs;
`ravdess_csv` imports those as they are.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from xmodal.data.importers import Imported, labels_from_names, media_path, register_importer
from xmodal.data.importers._common import AUDIO_EXTS, VIDEO_EXTS, existing_dir, numbered_csv, parse_int
from xmodal.data.manifest import ManifestRow
from xmodal.errors import DataError

EMOTIONS = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
# field -> allowed codes (two digits); checked so a foreign file cannot pass for a recording
_RANGES = {"modality": (1, 3), "channel": (1, 2), "emotion": (1, 8), "intensity": (1, 2),
           "statement": (1, 2), "repetition": (1, 2), "actor": (1, 24)}


def parse_name(stem: str, where: str) -> dict[str, int] | None:
    """Fields of a RAVDESS file stem, None when it does not look like one, DataError when a field is
    out of range."""
    m = _NAME.match(stem)
    if m is None:
        return None
    fields = {k: int(v) for k, v in zip(_RANGES, m.groups())}
    for k, (lo, hi) in _RANGES.items():
        if not lo <= fields[k] <= hi:
            raise DataError(f"{where}: RAVDESS field '{k}' = {fields[k]:02d}, expected {lo:02d}-{hi:02d}")
    if fields["emotion"] == 1 and fields["intensity"] == 2:
        raise DataError(f"{where}: RAVDESS has no strong intensity (02) for neutral (01)")
    return fields


def _meta(f: dict[str, int]) -> dict:
    return {"vocal_channel": ("speech", "song")[f["channel"] - 1], "intensity": ("normal", "strong")[f["intensity"] - 1],
            "statement": f["statement"], "repetition": f["repetition"], "actor": f["actor"],
            "sex": "male" if f["actor"] % 2 else "female"}


def _actor_split(actor: int, val: set[int], test: set[int]) -> str:
    return "test" if actor in test else "val" if actor in val else "train"


@register_importer("ravdess", help="RAVDESS media files by their MM-VV-EE-II-SS-RR-AA name convention")
def import_ravdess(
    *,
    root: str,
    val_actors: list[int] | None = None,
    test_actors: list[int] | None = None,
    vocal_channel: str = "both",
) -> Imported:
    """One row per recording found under `root` (searched recursively), split by actor.

    Args:
        root: RAVDESS folder (Actor_01/ ... or any layout; file names carry all fields).
        val_actors: actors of the val split (default 21 22).
        test_actors: actors of the test split (default 23 24).
        vocal_channel: speech, song or both.
    """
    base = existing_dir(root, "RAVDESS")
    val = set(val_actors if val_actors is not None else [21, 22])
    test = set(test_actors if test_actors is not None else [23, 24])
    if val & test:
        raise DataError(f"actors {sorted(val & test)} are in both --val-actors and --test-actors")
    if vocal_channel not in ("speech", "song", "both"):
        raise DataError(f"--vocal-channel: expected speech, song or both, found {vocal_channel!r}")
    recordings: dict[str, dict] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for fn in sorted(filenames):
            stem, ext = os.path.splitext(fn)
            if ext.lower() not in VIDEO_EXTS + AUDIO_EXTS:
                continue
            path = os.path.join(dirpath, fn)
            f = parse_name(stem, path)
            if f is None:
                raise DataError(f"{path}: media file does not follow the RAVDESS name MM-VV-EE-II-SS-RR-AA")
            if vocal_channel != "both" and _meta(f)["vocal_channel"] != vocal_channel:
                continue
            uid = stem[3:]
            rec = recordings.setdefault(uid, {"fields": f, "files": {}})
            if f["modality"] in rec["files"]:
                raise DataError(f"{path}: recording {uid} modality {f['modality']:02d} already found at {rec['files'][f['modality']]}")
            rec["files"][f["modality"]] = os.path.abspath(path)
    if not recordings:
        raise DataError(f"{base}: no RAVDESS media files (.mp4/.wav named MM-VV-EE-II-SS-RR-AA)")
    rows = []
    for uid in sorted(recordings):
        f, files = recordings[uid]["fields"], recordings[uid]["files"]
        video = files.get(1, files.get(2))
        audio = files.get(3, files.get(1))
        rows.append(ManifestRow(uid, _actor_split(f["actor"], val, test), [f["emotion"] - 1], video=video, audio=audio,
                                group=f"actor{f['actor']:02d}", meta=_meta(f)))
    notes = [f"actor splits: val {sorted(val)}, test {sorted(test)}, train the rest"]
    return Imported(rows, labels_from_names(EMOTIONS), notes=notes)


def _label(text: str, at: str, base: int) -> int:
    if text.lower() in EMOTIONS:
        return EMOTIONS.index(text.lower())
    k = parse_int(text, at, "label") - base
    if not 0 <= k < len(EMOTIONS):
        raise DataError(f"{at}: label {text} outside {base}..{base + len(EMOTIONS) - 1}")
    return k


@register_importer("ravdess_csv", help="MFH's RAVDESS split CSVs (audio file, image file, label)")
def import_ravdess_csv(
    *,
    train_csv: str,
    val_csv: str | None = None,
    test_csv: str | None = None,
    root: str | None = None,
    label_base: int = 0,
) -> Imported:
    """Rows of MFH's three RAVDESS CSVs: columns (audio file, image file, label), optional header.

    Audio entries that are media files (.wav, .mp4, ...) fill `audio`; anything else (MFH's
    pre-extracted 1x40x256 audio maps) goes to meta `audio_feature`; the image goes to meta `image`.
    uid = the audio file's stem — for a RAVDESS name the six fields after the modality, as in
    `ravdess` — or its path without extension when stems repeat; group = actor for RAVDESS names.

    Args:
        train_csv: train CSV.
        val_csv: val CSV.
        test_csv: test CSV.
        root: joined to relative file entries.
        label_base: integer labels count from this (0: 0 = neutral; 1: 1 = neutral); names also accepted.
    """
    entries = []
    for split, csv_path in (("train", train_csv), ("val", val_csv), ("test", test_csv)):
        if csv_path is None:
            continue
        records = numbered_csv(csv_path, "RAVDESS split CSV")
        if records and not records[0][1][-1].lstrip("-").isdigit() and records[0][1][-1].lower() not in EMOTIONS:
            records = records[1:]  # a header row
        for line, cells in records:
            at = f"{csv_path}:{line}"
            if len(cells) != 3:
                raise DataError(f"{at}: expected 3 columns (audio file, image file, label), found {len(cells)}")
            entries.append((split, cells[0], cells[1], _label(cells[2], at, label_base), at))
    keys, fields = [], []
    for _, audio, image, _, at in entries:
        stem = PurePosixPath(audio.replace("\\", "/")).stem
        own = parse_name(stem, at)
        # a RAVDESS-named audio file gets the same uid as `import_ravdess` gives its recording
        keys.append(stem[3:] if own else stem)
        fields.append(own or parse_name(PurePosixPath(image.replace("\\", "/")).stem, at))
    unique = len(set(keys)) == len(keys)
    rows, seen = [], {}
    for (split, audio, image, label, at), key, f in zip(entries, keys, fields):
        uid = key if unique else str(PurePosixPath(audio.replace("\\", "/")).with_suffix(""))
        if uid in seen:
            raise DataError(f"{at}: audio file {audio!r} already listed at {seen[uid]}")
        seen[uid] = at
        audio_path = media_path(audio, root)
        media = {"audio": audio_path} if Path(audio).suffix.lower() in AUDIO_EXTS + VIDEO_EXTS else {}
        meta = {} if media else {"audio_feature": audio_path}
        meta["image"] = media_path(image, root)
        rows.append(ManifestRow(uid, split, [label], group=f"actor{f['actor']:02d}" if f else None, meta=meta, **media))
    if not rows:
        raise DataError(f"{train_csv}: no rows")
    return Imported(rows, labels_from_names(EMOTIONS), notes=[f"labels: {label_base} = {EMOTIONS[0]}"])
