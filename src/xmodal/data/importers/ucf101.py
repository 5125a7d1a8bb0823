"""UCF101 official split lists (`ucfTrainTestlist/`).

Files: `classInd.txt` ("1 ApplyEyeMakeup", 1-based), `trainlist0k.txt`
("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1") and `testlist0k.txt` (no label: the class is the
folder), k = 1, 2, 3. The official files have CRLF line ends, and file names need not match their
class in case (`HandstandPushups/v_HandStandPushups_g01_c01.avi`): the class is always the folder,
matched to classInd exactly, else case-insensitively (re-encoded copies with renamed folders).

A sample's group is its UCF "gXX" group (clips of one group come from the same long video; the
official folds split by group, and `val_groups` lets a held-out slice of train be made the same way,
so model selection need not use the test list — CCL §8 defect 6).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from xmodal.data.importers import Imported, labels_from_names, media_path, register_importer
from xmodal.data.importers._common import (
    check_unique,
    existing_dir,
    numbered_lines,
    parse_int,
    with_suffix,
)
from xmodal.data.manifest import ManifestRow
from xmodal.errors import DataError

_GROUP = re.compile(r"_g(\d+)_c\d+", re.IGNORECASE)


def read_class_index(path: str | Path) -> list[str]:
    """`classInd.txt` -> class names in index order (indices must be 1..N)."""
    names = []
    for i, line in numbered_lines(path, "UCF101 class index"):
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{path}:{i}: expected '<index> <class>', found {line!r}")
        idx = parse_int(parts[0], f"{path}:{i}", "class index")
        if idx != len(names) + 1:
            raise DataError(f"{path}:{i}: class indices must be 1..N in order; expected {len(names) + 1}, found {idx}")
        names.append(parts[1])
    if not names:
        raise DataError(f"{path}: no classes")
    return names


def read_class_list(spec: str | Path) -> list[str]:
    """A class subset: a text file (one name per line, order kept) or a folder (its sub-folder
    names, sorted — e.g. CCL's UCF51 = the class folders of the audio-feature archive)."""
    p = Path(spec)
    if p.is_dir():
        names = sorted(d.name for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not names:
            raise DataError(f"{p}: --classes folder has no class sub-folders")
        return names
    names = [line for _, line in numbered_lines(p, "class list")]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{p}: class(es) listed twice: {', '.join(dup)}")
    return names


def _group(name: str) -> str | None:
    m = _GROUP.search(name)
    return f"g{int(m.group(1)):02d}" if m else None


@register_importer("ucf101", help="UCF101 split lists (classInd.txt, trainlist0k/testlist0k.txt)")
def import_ucf101(
    *,
    splits_dir: str,
    fold: int = 1,
    root: str | None = None,
    classes: str | None = None,
    val_groups: list[str] | None = None,
    video_ext: str | None = None,
) -> Imported:
    """UCF101 fold `fold` as train/test rows with the official labels.

    Args:
        splits_dir: the `ucfTrainTestlist` folder (classInd.txt, trainlist0k.txt, testlist0k.txt).
        fold: official fold 1, 2 or 3.
        root: video folder (`<root>/<Class>/v_..._gXX_cYY.avi`); relative list paths are joined to it.
        classes: keep only these classes (text file, one per line, or a folder whose sub-folder names
            are the classes, sorted); labels are re-indexed in that order (e.g. CCL's UCF51).
        val_groups: train groups moved to a `val` split (e.g. g08 g09) for model selection.
        video_ext: replace the video extension (e.g. .mp4 or .hdf5 for converted videos).
    """
    sdir = existing_dir(splits_dir, "UCF101 splits")
    all_names = read_class_index(sdir / "classInd.txt")
    exact = {n: i for i, n in enumerate(all_names)}
    folded = {n.lower(): i for i, n in enumerate(all_names)}
    names = all_names
    if classes is not None:
        names = read_class_list(classes)
        unknown = [n for n in names if n not in exact]
        if unknown:
            raise DataError(f"{classes}: class(es) not in classInd.txt: {', '.join(unknown)}")
    new_index = {exact[n]: j for j, n in enumerate(names)}  # classInd index -> our label
    held_out = {f"g{int(g.lower().lstrip('g')):02d}" for g in val_groups or []}

    rows: list[ManifestRow] = []
    where: list[str] = []
    dropped = 0
    for split, fname, labelled in (("train", f"trainlist0{fold}.txt", True), ("test", f"testlist0{fold}.txt", False)):
        path = sdir / fname
        if not path.is_file():
            raise DataError(f"{path}: not found (fold {fold}: expected trainlist0k/testlist0k for k = 1, 2, 3)")
        for i, line in numbered_lines(path, "UCF101 split list"):
            at = f"{path}:{i}"
            parts = line.split()
            if len(parts) != (2 if labelled else 1):
                expected = "<Class>/<video> <label>" if labelled else "<Class>/<video>"
                raise DataError(f"{at}: expected '{expected}', found {line!r}")
            rel = parts[0]
            folder = PurePosixPath(rel).parent.name
            cls = exact.get(folder, folded.get(folder.lower()))
            if cls is None:
                raise DataError(f"{at}: class folder '{folder}' is not in classInd.txt")
            if labelled:
                given = parse_int(parts[1], at, "label") - 1
                if given != cls:
                    raise DataError(f"{at}: label {given + 1} is '{all_names[given] if 0 <= given < len(all_names) else '?'}' but the folder is '{folder}'")
            if cls not in new_index:
                dropped += 1
                continue
            uid = PurePosixPath(rel).stem
            group = _group(uid)
            row_split = "val" if split == "train" and group in held_out else split
            rows.append(ManifestRow(uid, row_split, [new_index[cls]], video=media_path(with_suffix(rel, video_ext), root), group=group))
            where.append(at)
    check_unique(rows, where)
    notes = [f"fold {fold}: {len(names)} of {len(all_names)} classes"]
    if dropped:
        notes.append(f"{dropped} list entries of classes outside --classes skipped")
    if held_out and not any(r.split == "val" for r in rows):
        raise DataError(f"--val-groups {' '.join(sorted(held_out))}: no train clip of fold {fold} is in these groups")
    return Imported(rows, labels_from_names(names), notes=notes)
