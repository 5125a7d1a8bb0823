"""HMDB51 official three-fold splits (`testTrainMulti_7030_splits/`).

One file per class and fold, `<class>_test_split<k>.txt`, lines "<video>.avi <tag>" with tag 1 =
train, 2 = test, 0 = not used in this fold. Classes are the file-name prefixes, sorted
alphabetically (label = position); videos live at `<root>/<class>/<video>.avi`.
"""

from __future__ import annotations

from xmodal.data.importers import Imported, labels_from_names, media_path, register_importer
from xmodal.data.importers._common import check_unique, existing_dir, numbered_lines, with_suffix
from xmodal.data.manifest import ManifestRow
from xmodal.errors import DataError

_TAGS = {"1": "train", "2": "test", "0": None}


@register_importer("hmdb51", help="HMDB51 split files (<class>_test_split{1,2,3}.txt)")
def import_hmdb51(*, splits_dir: str, fold: int = 1, root: str | None = None, video_ext: str | None = None) -> Imported:
    """HMDB51 fold `fold` as train/test rows (tag 0 = unused clips are left out).

    Args:
        splits_dir: folder with the 153 `<class>_test_split<k>.txt` files.
        fold: official fold 1, 2 or 3.
        root: video folder (`<root>/<class>/<video>.avi`).
        video_ext: replace the video extension (e.g. .mp4 for converted videos).
    """
    sdir = existing_dir(splits_dir, "HMDB51 splits")
    suffix = f"_test_split{fold}.txt"
    # sort by class name, not file name: "climb" < "climb_stairs" but "climb_s..." < "climb_t..."
    by_class = {p.name[: -len(suffix)]: p for p in sdir.iterdir() if p.name.endswith(suffix)}
    if not by_class:
        raise DataError(f"{sdir}: no '<class>{suffix}' files (fold must be 1, 2 or 3)")
    names = sorted(by_class)
    files = [by_class[n] for n in names]
    rows: list[ManifestRow] = []
    where: list[str] = []
    unused = 0
    for label, (name, path) in enumerate(zip(names, files)):
        for i, line in numbered_lines(path, "HMDB51 split file"):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in _TAGS:
                raise DataError(f"{path}:{i}: expected '<video>.avi <tag>' with tag 0, 1 or 2, found {line!r}")
            split = _TAGS[parts[1]]
            if split is None:
                unused += 1
                continue
            video = parts[0]
            uid = video.rsplit(".", 1)[0]
            rows.append(ManifestRow(uid, split, [label], video=media_path(with_suffix(f"{name}/{video}", video_ext), root)))
            where.append(f"{path}:{i}")
    check_unique(rows, where)
    return Imported(rows, labels_from_names(names), notes=[f"fold {fold}: {len(names)} classes, {unused} clips tagged 0 (unused) left out"])
