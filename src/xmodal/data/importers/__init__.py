"""Dataset importers: annotation files of real datasets -> manifest.jsonl + labels.csv.

Each importer is a plain function with keyword-only arguments that returns an `Imported`
(manifest rows, label list, extra JSON files, notes); `run_importer` writes it into a folder.
Importers register by name (``@register_importer("ucf101")``); `xmodal import <name>` builds its
command-line options from the function's signature and the ``Args:`` section of its docstring,
so adding a module here adds a format to the CLI.

Media paths: an absolute path in an annotation file is kept; a relative one is joined to the
importer's ``root`` (made absolute) when given, else kept relative — and a relative manifest path
resolves against the folder the manifest is written to (see `xmodal.data.manifest.resolve_media`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmodal.data.manifest import Label, ManifestRow, write_labels, write_manifest
from xmodal.registry import Registry

# Modules of this package are imported on the first lookup: keep their imports to the stdlib.
IMPORTERS = Registry("importer", ("xmodal.data.importers",))
register_importer = IMPORTERS.register


@dataclass
class Imported:
    """What an importer produced: rows, the label space (index order), extra files and notes."""

    rows: list[ManifestRow]
    labels: list[Label]
    extras: dict[str, Any] = field(default_factory=dict)  # name -> JSON-able, written as <name>.json
    notes: list[str] = field(default_factory=list)  # one-line remarks for the summary (drops, assumptions)

    def split_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.split for r in self.rows).items()))


@dataclass
class ImportResult:
    manifest: Path
    labels: Path
    imported: Imported


def labels_from_names(names: list[str]) -> list[Label]:
    return [Label(i, n, n) for i, n in enumerate(names)]


def media_path(path: str, root: str | Path | None) -> str:
    """An annotation's media path as stored in the manifest (see the module docstring)."""
    if root is None or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(os.path.abspath(root), path))


def run_importer(name: str, out: str | Path, **kwargs: Any) -> ImportResult:
    """Run importer `name` with `kwargs` and write manifest.jsonl, labels.csv and extras into `out`."""
    from xmodal.data.validate import media_paths

    imported = IMPORTERS.get(name)(**kwargs)
    out = Path(out)
    relative = sum(1 for r in imported.rows for p in media_paths(r) if not os.path.isabs(p))
    if relative:
        imported.notes.append(f"{relative} media path(s) are relative: they resolve against {out} (pass --root to anchor them)")
    manifest = write_manifest(imported.rows, out / "manifest.jsonl")
    labels = write_labels(imported.labels, out / "labels.csv")
    for extra, value in imported.extras.items():
        tmp = out / f".{extra}.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, out / f"{extra}.json")
    return ImportResult(manifest, labels, imported)
