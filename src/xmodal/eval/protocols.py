"""Evaluation protocols for `xmodal eval <protocol> RUN`, beyond a method's own metrics.

A protocol is ``fn(args, loaded_run) -> dict[str, float]`` where ``loaded_run`` is an
`xmodal.engine.runs.LoadedRun` (config, data, method with trained weights) and ``args`` the parsed
CLI namespace (``split``, ``batch_size``, ``overrides`` ...). Register with
``@register_protocol("name")``; modules that define protocols are listed in `_MODULES` so the CLI
can find them without importing everything at start-up.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

PROTOCOLS: dict[str, Callable] = {}
_MODULES: list[str] = ["xmodal.eval.ssl", "xmodal.eval.cavmae"]  # imported on first lookup
_loaded = False


def register_protocol(name: str):
    def deco(fn: Callable) -> Callable:
        if name in PROTOCOLS and PROTOCOLS[name] is not fn:
            raise ValueError(f"eval protocol '{name}' is registered twice")
        PROTOCOLS[name] = fn
        return fn

    return deco


def protocols() -> dict[str, Callable]:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in _MODULES:
            importlib.import_module(mod)
    return PROTOCOLS
