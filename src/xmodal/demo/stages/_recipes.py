"""Raw recipe reading for stages whose methods may not be in this checkout (no typed config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def raw_recipe(path: str | Path) -> dict:
    """The recipe's YAML with its `_base_` chain merged (later keys win), without validation."""
    import yaml

    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    base = data.pop("_base_", None)
    if base is None:
        return data
    return _merge(raw_recipe(path.parent / base), data)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def get(d: dict, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def verb_available(verb: str) -> bool:
    """True when `xmodal <verb>` has a command module in this checkout."""
    import importlib.util

    return importlib.util.find_spec(f"xmodal.commands.{verb}") is not None
