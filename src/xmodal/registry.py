"""Small decorator registries: the recipe names a component, the registry builds it.

Users register their own components from their own package (``@register_model("mine")``) without
editing xmodal. Built-in components are discovered by importing every module of the registry's
home package on the first lookup, so adding a file is enough to add a component.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xmodal.errors import ConfigError, closest

_DISCOVERY = threading.RLock()  # one for all registries: one registry's modules may look up another's


@dataclass
class Entry:
    name: str
    obj: Any
    config: type | None = None  # typed dataclass for the recipe section that builds `obj`
    takes_config: bool = False  # True: built as obj(cfg, ...); False: obj(**fields of cfg, ...)
    meta: dict[str, Any] = field(default_factory=dict)


def config_from_signature(name: str, fn: Callable) -> type:
    """A dataclass whose fields are `fn`'s keyword parameters (typed by annotation, defaulted).

    Lets plain builder functions take part in typed recipe validation without a hand-written
    config class. Parameters without a default become required fields.
    """
    try:
        hints = inspect.get_annotations(fn, eval_str=True)
    except Exception:  # noqa: BLE001 - unresolvable annotations fall back to Any
        hints = {}
    fields: list[tuple] = [("name", str, dataclasses.field(default=name))]
    required, optional = [], []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        tp = hints.get(p.name, Any)
        if p.default is inspect.Parameter.empty:
            required.append((p.name, tp))
        else:
            default = p.default
            if isinstance(default, (list, dict, set)):
                optional.append((p.name, tp, dataclasses.field(default_factory=lambda d=default: type(d)(d))))
            else:
                optional.append((p.name, tp, dataclasses.field(default=default)))
    # dataclasses need required fields first; `name` has a default, so put it last among defaults.
    fields = required + optional + fields
    cls_name = "".join(part.capitalize() for part in name.replace("-", "_").split("_")) + "Config"
    return dataclasses.make_dataclass(cls_name, fields)


class Registry:
    """name -> Entry, with lazy discovery of the built-in modules in `package`."""

    def __init__(self, kind: str, packages: tuple[str, ...] = ()):
        self.kind = kind
        self.packages = packages
        self._entries: dict[str, Entry] = {}
        self._discovered = not packages
        self._discovering = False

    def register(self, name: str | None = None, *, config: type | None = None, **meta: Any):
        """Decorator: register a class or builder function under `name` (default: its __name__).

        `config` is the dataclass of its recipe section; for a function without one it is derived
        from the signature, for a class from its ``config_cls`` attribute when present.
        """

        def deco(obj):
            key = name or obj.__name__
            if key in self._entries and self._entries[key].obj is not obj:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            cfg = config or getattr(obj, "config_cls", None)
            takes_config = cfg is not None
            if cfg is None and callable(obj):
                cfg = config_from_signature(key, obj)
            self._entries[key] = Entry(key, obj, cfg, takes_config, dict(meta))
            return obj

        return deco

    def _discover(self) -> None:
        if self._discovered:
            return
        # Another thread looking up while this one imports must wait, not see a half-filled registry;
        # a lookup from inside the imports (same thread) gets what is registered so far.
        with _DISCOVERY:
            if self._discovered or self._discovering:
                return
            self._discovering = True
            try:
                for package in self.packages:
                    pkg = importlib.import_module(package)
                    for mod in pkgutil.iter_modules(pkg.__path__):
                        if not mod.name.startswith("_"):
                            importlib.import_module(f"{package}.{mod.name}")
                self._discovered = True
            finally:
                self._discovering = False

    def entry(self, name: str) -> Entry:
        self._discover()
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} '{name}'{closest(name, self._entries)}; "
                f"known: {', '.join(sorted(self._entries)) or 'none'}"
            )
        return self._entries[name]

    def get(self, name: str) -> Any:
        return self.entry(name).obj

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._discover()
        return name in self._entries

    def build(self, cfg: Any, **extra: Any) -> Any:
        """Build from a config dataclass instance (its `name` picks the entry) plus extra kwargs."""
        entry = self.entry(cfg.name)
        if entry.takes_config:
            return entry.obj(cfg, **extra)
        kwargs = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "name"}
        return entry.obj(**kwargs, **extra)

    def build_named(self, name: str, **kwargs: Any) -> Any:
        """Build by name from keyword arguments (notebook use), validated like a recipe."""
        from xmodal.config import from_dict

        return self.build(from_dict(self.entry(name).config, {"name": name, **kwargs}))


# Modules in these packages must import optional dependencies (av, transformers, ...) lazily:
# discovery imports all of them.
MODELS = Registry("model", ("xmodal.models",))
LOSSES = Registry("loss", ("xmodal.losses",))
METHODS = Registry("method", ("xmodal.methods",))
DATASETS = Registry("dataset", ("xmodal.data", "xmodal.data.embedded"))

register_model = MODELS.register
register_loss = LOSSES.register
register_method = METHODS.register
register_dataset = DATASETS.register
