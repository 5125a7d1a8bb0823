"""A plain folder-per-class layout: `<root>/<class>/<file>` or `<root>/<split>/<class>/<file>`.

The split layout is recognised when every sub-folder of `root` is a split name (train, val, test,
validation, training, testing — or the names given in `split_dirs`); split names are kept as the
folder names. Classes are the sorted class folder names (union over splits). Inside a class folder,
a media file is a sample, and so is a sub-folder holding images (a video stored as frames).
Files of one class folder with the same stem are one sample (`clip.mp4` + `clip.wav` -> video +
audio): uid = `<class>/<stem>` (`<split>/<class>/<stem>` in the split layout). Images go to meta
`image`; frame folders fill `video`.
"""

from __future__ import annotations

from pathlib import Path

from xmodal.data.importers import Imported, labels_from_names, register_importer
from xmodal.data.importers._common import AUDIO_EXTS, IMAGE_EXTS, VIDEO_EXTS, existing_dir
from xmodal.data.manifest import ManifestRow
from xmodal.errors import DataError

SPLIT_NAMES = ("train", "val", "test", "validation", "training", "testing")


def _slot(ext: str, exts: set[str]) -> str | None:
    if ext not in exts:
        return None
    return "video" if ext in VIDEO_EXTS else "audio" if ext in AUDIO_EXTS else "image" if ext in IMAGE_EXTS else "video"


def _is_frame_folder(path: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTS for p in path.iterdir() if p.is_file())


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


@register_importer("folder", help="folder-per-class layout (<root>/[<split>/]<class>/<file>)")
def import_folder(
    *,
    root: str,
    extensions: list[str] | None = None,
    split: str = "train",
    split_dirs: list[str] | None = None,
) -> Imported:
    """One row per media file (or frame folder) under class folders; labels = sorted class names.

    Args:
        root: dataset folder.
        extensions: media extensions to use (default: common video, audio and image extensions).
        split: split name of every row when `root` has no split folders.
        split_dirs: names of split folders (default: train val test validation training testing).
    """
    base = existing_dir(root, "dataset").absolute()
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in (extensions or VIDEO_EXTS + AUDIO_EXTS + IMAGE_EXTS)}
    top = _visible_dirs(base)
    split_names = set(split_dirs or SPLIT_NAMES)
    if not top:
        raise DataError(f"{base}: no class (or split) folders")
    layout = [(d.name, d) for d in top] if all(d.name in split_names for d in top) else [(split, base)]
    samples: dict[tuple[str, str, str], dict[str, str]] = {}
    for split_name, sdir in layout:
        for cdir in _visible_dirs(sdir):
            for entry in sorted(cdir.iterdir()):
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    slot, stem = ("video" if _is_frame_folder(entry) else None), entry.name
                else:
                    slot, stem = _slot(entry.suffix.lower(), exts), entry.stem
                if slot is None:
                    continue
                files = samples.setdefault((split_name, cdir.name, stem), {})
                if slot in files:
                    raise DataError(f"{entry}: a second {slot} for sample '{stem}' (first: {files[slot]})")
                files[slot] = str(entry)
    if not samples:
        raise DataError(f"{base}: no media files with extensions {', '.join(sorted(exts))} in class folders")
    classes = sorted({c for _, c, _ in samples})
    index = {c: i for i, c in enumerate(classes)}
    split_layout = layout[0][1] != base
    rows = []
    for (split_name, cls, stem), files in sorted(samples.items()):
        uid = f"{split_name}/{cls}/{stem}" if split_layout else f"{cls}/{stem}"
        meta = {"image": files["image"]} if "image" in files else {}
        rows.append(ManifestRow(uid, split_name, [index[cls]], video=files.get("video"), audio=files.get("audio"), meta=meta))
    layout_note = f"split folders {', '.join(n for n, _ in layout)}" if split_layout else f"one split '{split}'"
    return Imported(rows, labels_from_names(classes), notes=[f"{len(classes)} classes, {layout_note}"])

