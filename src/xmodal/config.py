"""YAML recipes -> typed dataclasses.

* `_base_: other.yaml` (or a list) inherits, paths relative to the recipe; mappings merge deeply,
  `_delete_: true` inside a mapping replaces the inherited one instead of merging.
* `--set a.b=c` overrides (values parsed as YAML scalars/lists).
* Every key is typed: an unknown key or a wrong type is one ConfigError line naming the file
  (and line), the key path and the closest valid key.
* YAML is read with the safe loader only: a recipe can never import or execute code.
* Sections whose dataclass depends on a registry entry (``method``, ``data``, model specs inside
  methods) are resolved by their ``name`` key: field metadata ``{"registry": REGISTRY}``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from xmodal.errors import ConfigError, closest


# ----------------------------------------------------------------------------------------- YAML
class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 insists on a dot)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_scalar(text: str) -> Any:
    """Parse a --set value the way a recipe would (numbers, bools, lists, null)."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError:
        return text


def _line_map(node: yaml.Node, prefix: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = prefix + (k.value,)
            out[key] = k.start_mark.line + 1
            _line_map(v, key, out)
    return out


@dataclass
class Source:
    """Where each key of the merged recipe came from, for error messages."""

    where: dict[tuple, str] = field(default_factory=dict)
    default: str = "<recipe>"

    def of(self, path: tuple) -> str:
        for n in range(len(path), 0, -1):
            if path[:n] in self.where:
                return self.where[path[:n]]
        return self.default


def _read_yaml(path: Path) -> tuple[dict, dict[tuple, int]]:
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found")
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping, found {type(data).__name__}")
    return data, _line_map(node) if node is not None else {}


def _merge(base: dict, over: dict, src: Source, over_src: dict[tuple, str], prefix: tuple = ()) -> dict:
    out = dict(base)
    for k, v in over.items():
        key = prefix + (k,)
        if isinstance(v, dict) and v.get("_delete_"):
            v = {kk: vv for kk, vv in v.items() if kk != "_delete_"}
            out[k] = v
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, src, over_src, key)
            continue
        else:
            out[k] = v
        for p, w in over_src.items():
            if p[: len(key)] == key:
                src.where[p] = w
    return out


def load_recipe_dict(path: str | Path, _seen: tuple = ()) -> tuple[dict, Source]:
    """Read a recipe with its `_base_` chain merged; returns (data, key sources)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: `_base_` cycle through {' -> '.join(str(p) for p in _seen)}")
    data, lines = _read_yaml(path)
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list):
        raise ConfigError(f"{path}:{lines.get(('_base_',), 1)}: _base_: expected a path or a list of paths")
    merged: dict = {}
    src = Source(default=str(path))
    for b in bases:
        bpath = (path.parent / b).resolve()
        if not bpath.is_file():
            raise ConfigError(f"{path}:{lines.get(('_base_',), 1)}: _base_: file not found: {b}")
        bdata, bsrc = load_recipe_dict(bpath, _seen + (path,))
        merged = _merge(merged, bdata, src, bsrc.where)
    own = {p: f"{path}:{ln}" for p, ln in lines.items()}
    merged = _merge(merged, data, src, own)
    return merged, src


def apply_overrides(data: dict, overrides: list[str], src: Source) -> dict:
    """Apply `a.b=c` overrides in order."""
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"--set {ov}: expected key.path=value")
        key, _, value = ov.partition("=")
        parts = tuple(p for p in key.strip().split(".") if p)
        if not parts:
            raise ConfigError(f"--set {ov}: empty key")
        node = data
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = parse_scalar(value)
        src.where[parts] = f"--set {key.strip()}"
    return data


# ------------------------------------------------------------------------------ typed conversion
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp) if a is not Ellipsis)
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def _convert(tp: Any, value: Any, path: tuple, src: Source, meta: dict | None = None) -> Any:
    meta = _resolve_registry(meta or {})
    if "registry" in meta:
        return _convert_registered(meta["registry"], value, path, src)
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _convert(args[0], value, path, src, meta)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, path, src)
            except ConfigError as e:
                errors.append((a, e))
        if len(errors) == 1:
            raise errors[0][1]
        # a mapping can only have meant the dataclass option: report that option's own error
        classes = [e for a, e in errors if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(classes) == 1:
            raise classes[0]
        raise _mismatch(tp, value, path, src)
    if origin is Literal:
        if value in args:
            return value
        raise _mismatch(tp, value, path, src)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path, src)
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, (list, tuple)):
            if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
                if len(args) != len(value):
                    raise _mismatch(tp, value, path, src)
                items = [_convert(a, v, path + (str(i),), src) for i, (a, v) in enumerate(zip(args, value))]
            else:
                inner = args[0] if args else Any
                items = [_convert(inner, v, path + (str(i),), src) for i, v in enumerate(value)]
            return tuple(items) if (origin or tp) is tuple else items
        raise _mismatch(tp, value, path, src)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _mismatch(tp, value, path, src)
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(vt, v, path + (str(k),), src) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _mismatch(tp, value, path, src)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise _mismatch(tp, value, path, src)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _mismatch(tp, value, path, src)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _mismatch(tp, value, path, src)
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _mismatch(tp, value, path, src)


def _mismatch(tp: Any, value: Any, path: tuple, src: Source) -> ConfigError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ConfigError(
        f"{src.of(path)}: {'.'.join(path)}: expected {_type_name(tp)}, got {type(value).__name__} {shown}"
    )


def _convert_registered(registry: Any, value: Any, path: tuple, src: Source) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{src.of(path)}: {'.'.join(path)}: expected a mapping with a `name` key")
    name = value.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"{src.of(path)}: {'.'.join(path)}.name: missing; known: {', '.join(registry.names())}")
    try:
        entry = registry.entry(name)
    except ConfigError as e:
        raise ConfigError(f"{src.of(path + ('name',))}: {'.'.join(path)}.name: {e}") from None
    if entry.config is None:
        raise ConfigError(f"{src.of(path)}: {'.'.join(path)}: {registry.kind} '{name}' takes no configuration")
    return from_dict(entry.config, value, path, src)


def from_dict(cls: type, data: Any, path: tuple = (), src: Source | None = None) -> Any:
    """Build dataclass `cls` from a plain mapping, checking every key and type."""
    src = src or Source()
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = ".".join(path) or "<root>"
        raise ConfigError(f"{src.of(path)}: {where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            kp = path + (str(key),)
            raise ConfigError(f"{src.of(kp)}: {'.'.join(kp)}: unknown key{closest(str(key), fields)}")
        f = fields[key]
        kwargs[key] = _convert(hints.get(key, Any), value, path + (key,), src, dict(f.metadata))
    for name, f in fields.items():
        if name in kwargs:
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kp = path + (name,)
            raise ConfigError(f"{src.of(path)}: {'.'.join(kp)}: required key missing")
        if "registry" in f.metadata and f.default is None and f.default_factory is dataclasses.MISSING:
            continue
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{src.of(path)}: {'.'.join(path) or '<root>'}: {e}") from None
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except (ValueError, AssertionError) as e:
            raise ConfigError(f"{src.of(path)}: {'.'.join(path) or '<root>'}: {e}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain YAML-safe data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dump_yaml(obj: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None)
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def registered(registry: str, default: Any = None) -> Any:
    """Field whose dataclass is chosen by its `name` key among a registry's entries.

    `registry` is "methods", "datasets", "models" or "losses"; `default` a factory of the default
    config instance (or None).
    """
    if default is None:
        return field(default=None, metadata={"registry": registry})
    return field(default_factory=default, metadata={"registry": registry})


# ------------------------------------------------------------------------------- run schema
def _registries():
    from xmodal import registry

    return registry


@dataclass
class OptimConfig:
    """Optimiser; `no_decay` lists name substrings whose parameters get weight decay 0."""

    name: Literal["sgd", "adamw", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    no_decay: list[str] = field(default_factory=list)


@dataclass
class SchedConfig:
    """LR multiplier over optimisation steps.

    constant | cosine (to min_ratio) | multistep (× gamma at each epoch in `milestones`) |
    epoch_step (CAV-MAE: × gamma after epoch `start`, then every `every` epochs).
    Warm-up is linear from `warmup_start` × lr over `warmup_steps` + `warmup_epochs` of steps.
    """

    name: Literal["constant", "cosine", "multistep", "epoch_step"] = "constant"
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    warmup_start: float = 0.0
    min_ratio: float = 0.0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    start: int = 0
    every: int = 1


@dataclass
class TrainConfig:
    epochs: int = 1
    max_steps: int = 0  # optimiser steps; 0 = epochs × steps per epoch
    batch_size: int = 32  # per process
    grad_accum: int = 1
    clip_grad: float = 0.0  # max global grad norm; 0 = off
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    num_workers: int = 0
    threads: int = 0  # torch intra-op threads; 0 = leave as is
    drop_last: bool = True
    # balanced: draw with replacement by sample weight (CAV-MAE: class weight 1000/(count+0.01),
    # a sample's weight is the sum over its labels; the data's `sample_weights()`)
    sampler: Literal["uniform", "balanced"] = "uniform"
    log_every: int = 10
    eval_every: int = 1  # epochs; 0 = only after training
    ckpt_every_steps: int = 0
    ckpt_every_epochs: int = 1
    keep_last: int = 2
    progress: bool = True
    tensorboard: bool = True
    # Before the final evaluation, re-estimate BatchNorm statistics as exact averages over this
    # many training batches (0 = off): short runs leave momentum-averaged statistics stale.
    recompute_bn: int = 0
    save_epoch_weights: bool = False  # also write epochs/epoch_NNN.safetensors (weight averaging)
    out_dir: str = "runs/{name}"

    def validate(self) -> None:
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be >= 1")


@dataclass
class RunConfig:
    """A whole recipe: which method on which data, optimised how."""

    name: str = "run"
    description: str = ""
    method: Any = field(default=None, metadata={"registry": "methods"})
    data: Any = field(default=None, metadata={"registry": "datasets"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        if self.method is None:
            raise ValueError("`method` section missing")
        if self.data is None:
            raise ValueError("`data` section missing")

    @property
    def out_dir(self) -> Path:
        return Path(self.train.out_dir.format(name=self.name))


def _resolve_registry(meta: dict) -> dict:
    reg = meta.get("registry")
    if isinstance(reg, str):
        r = _registries()
        meta = dict(meta)
        meta["registry"] = {"methods": r.METHODS, "datasets": r.DATASETS, "models": r.MODELS, "losses": r.LOSSES}[reg]
    return meta


def load_config(path: str | Path, overrides: list[str] | None = None, cls: type = RunConfig) -> Any:
    """Recipe file (+ `_base_` chain, + --set overrides) -> typed config of class `cls`."""
    data, src = load_recipe_dict(path)
    data = apply_overrides(data, overrides or [], src)
    return from_dict(cls, data, (), src)


def config_from_data(data: dict, cls: type = RunConfig, where: str = "<dict>") -> Any:
    return from_dict(cls, data, (), Source(default=where))
