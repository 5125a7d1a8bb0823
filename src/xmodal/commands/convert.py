"""`xmodal convert <converter> IN OUT`: turn released checkpoints into xmodal weight files.

A converter is ``fn(in_path, out_path, args) -> str`` (a one-line summary) where ``args`` holds
the parsed command line with ``args.options`` = the ``--opt KEY=VALUE`` pairs as a dict. Add one
with a single entry in `CONVERTERS`; the function is named as ``"module:function"`` so that it is
imported only when used. Nothing here downloads anything.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import NamedTuple

from xmodal.errors import ConfigError, closest


class Converter(NamedTuple):
    help: str
    fn: str | Callable  # "module:function" (lazy) or the function


CONVERTERS: dict[str, Converter] = {
    "cavmae": Converter("released CAV-MAE .pth (pretrained or finetuned, module.-prefixed) -> safetensors",
                        "xmodal.commands.cavmae:convert_official"),
    "cavmae-imagenet": Converter("ImageNet MAE ViT-B checkpoint -> CAV-MAE pretraining init (both streams; "
                                 "the reference's ori_mae_11.pth); --opt size=base|tiny",
                                 "xmodal.commands.cavmae:convert_imagenet"),
    "gdt": Converter("released GDT/STiCA checkpoint -> our r2plus1d_18 / resnet9 / projection-head keys; "
                     "--opt parts=video (trunk only) | video,audio | video,audio,heads (default)",
                     "xmodal.commands.convert:convert_gdt_file"),
}


def resolve(name: str) -> Callable:
    if name not in CONVERTERS:
        raise ConfigError(f"convert: unknown converter '{name}'{closest(name, CONVERTERS)}; known: {', '.join(sorted(CONVERTERS))}")
    fn = CONVERTERS[name].fn
    if isinstance(fn, str):
        module, _, attr = fn.partition(":")
        fn = getattr(importlib.import_module(module), attr)
    return fn


def convert_gdt_file(in_path: str, out_path: str, args) -> str:
    """GDT/STiCA release -> safetensors; fails unless the video trunk is fully covered."""
    from xmodal.convert.gdt import convert_gdt
    from xmodal.engine.checkpoint import save_safetensors_atomic

    opts = dict(getattr(args, "options", {}) or {})
    unknown = sorted(set(opts) - {"parts"})
    if unknown:
        raise ConfigError(f"convert gdt: unknown option(s) {unknown}; known: parts")
    parts = opts.get("parts", "video,audio,heads")
    parts = tuple(p.strip() for p in (parts.split(",") if isinstance(parts, str) else parts))
    conv = convert_gdt(in_path, parts=parts)
    save_safetensors_atomic(conv.state, out_path, {"source": str(in_path), "parts": ",".join(parts)})
    return f"{in_path} -> {out_path}: {conv.summary()}"


def parse_options(pairs: list[str]) -> dict:
    from xmodal.config import parse_scalar

    out = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"--opt {p}: expected KEY=VALUE")
        k, _, v = p.partition("=")
        out[k.strip()] = parse_scalar(v)
    return out


def add_commands(sub, common) -> None:
    listing = "\n".join(f"  {name:<16} {c.help}" for name, c in sorted(CONVERTERS.items()))
    p = sub.add_parser("convert", parents=[common], help="convert released checkpoints to xmodal weights",
                       description=f"Convert a released checkpoint.\n\nconverters:\n{listing}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("converter", metavar="CONVERTER", help=f"one of: {', '.join(sorted(CONVERTERS))}")
    p.add_argument("input", help="checkpoint to read (never executed: torch.load(weights_only=True) or safetensors)")
    p.add_argument("output", help="file to write (.safetensors)")
    p.add_argument("--opt", dest="opts", action="append", default=[], metavar="KEY=VALUE", help="converter option (repeatable)")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    fn = resolve(args.converter)
    args.options = parse_options(args.opts)
    print(fn(args.input, args.output, args))
    return 0
