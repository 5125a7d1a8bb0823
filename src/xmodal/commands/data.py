"""`xmodal import <format> ... --out DIR` and `xmodal validate <manifest.jsonl | store dir>`.

Each importer's options come from its function signature (keyword `fold: int = 1` becomes
`--fold N`, `list[str]` takes several values, `bool` becomes --x/--no-x) and the help text from
the ``Args:`` section of its docstring, so an importer module needs no CLI code of its own.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable
from typing import Any


def _doc_args(fn: Callable) -> dict[str, str]:
    """`name: text` entries (continuation lines joined) of the `Args:` section of fn's docstring."""
    doc = inspect.getdoc(fn) or ""
    section = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    out: dict[str, str] = {}
    last = None
    for line in section.splitlines():
        m = re.match(r"^    (\w+): (.*)$", line)
        if m:
            last = m.group(1)
            out[last] = m.group(2).strip()
        elif line.startswith("        ") and last:
            out[last] += " " + line.strip()
        elif line.strip():
            break
    return out


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(element type, is_list) of an annotation, with Optional stripped."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0], True
    return tp, False


def add_signature_options(parser: argparse.ArgumentParser, fn: Callable) -> list[str]:
    """Add one option per keyword parameter of `fn`; returns the parameter names."""
    hints = typing.get_type_hints(fn)
    helps = _doc_args(fn)
    names = []
    for p in inspect.signature(fn).parameters.values():
        tp, many = _base_type(hints.get(p.name, str))
        flag = "--" + p.name.replace("_", "-")
        required = p.default is inspect.Parameter.empty
        text = helps.get(p.name, "")
        kwargs: dict[str, Any] = {"dest": p.name, "help": text + ("" if required or p.default is None else f" (default: {p.default})")}
        if tp is bool:
            kwargs.update(action=argparse.BooleanOptionalAction, default=p.default)
        else:
            kwargs.update(type=tp, metavar=p.name.upper(), required=required)
            if many:
                kwargs["nargs"] = "+"
            if not required:
                kwargs["default"] = p.default
        parser.add_argument(flag, **kwargs)
        names.append(p.name)
    return names


def add_commands(sub, common) -> None:
    from xmodal.data.importers import IMPORTERS

    imp = sub.add_parser("import", parents=[common], help="annotation files of a dataset -> manifest.jsonl + labels.csv",
                         description="Convert a dataset's annotation files into an xmodal manifest (manifest.jsonl + labels.csv) in --out.")
    formats = imp.add_subparsers(dest="format", metavar="<format>", required=True)
    for name in IMPORTERS.names():
        entry = IMPORTERS.entry(name)
        doc = (inspect.getdoc(entry.obj) or "").split("\n\n")[0]
        p = formats.add_parser(name, parents=[common], help=entry.meta.get("help", doc), description=doc)
        params = add_signature_options(p, entry.obj)
        p.add_argument("--out", required=True, help="output folder for manifest.jsonl, labels.csv (and extra .json files)")
        p.set_defaults(func=cmd_import, importer=name, importer_params=params)

    v = sub.add_parser("validate", parents=[common], help="check a manifest or prepared store; one line per problem",
                       description="Check a manifest (missing media, unknown labels, duplicate uids, empty splits, start >= end, "
                                   "rows without media) or a prepared store folder (plus index.json and shards). "
                                   "Exit status 1 when there are problems.")
    v.add_argument("target", help="manifest.jsonl, or a folder holding one (a prepared store)")
    v.add_argument("--labels", default=None, help="labels.csv (default: the one next to the manifest)")
    v.add_argument("--no-media", dest="check_media", action="store_false", help="skip the media-file existence checks")
    v.add_argument("--splits", nargs="+", default=[], metavar="SPLIT", help="splits that must have rows, e.g. train test")
    v.add_argument("--deep", action="store_true", help="store: also open every shard and check its member files")
    v.set_defaults(func=cmd_validate)


def cmd_import(args: argparse.Namespace) -> int:
    from xmodal.data.importers import run_importer

    result = run_importer(args.importer, args.out, **{k: getattr(args, k) for k in args.importer_params})
    imp = result.imported
    counts = ", ".join(f"{k} {v}" for k, v in imp.split_counts().items())
    print(f"{args.importer}: {len(imp.rows)} rows ({counts}), {len(imp.labels)} labels -> {result.manifest}")
    for note in imp.notes:
        print(f"  {note}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from xmodal.data.validate import validate

    result = validate(args.target, args.labels, check_media=args.check_media, expect_splits=args.splits, deep=args.deep)
    # stdout: exactly one line per problem, or the one OK line; counts and notes go to stderr
    for problem in result.problems:
        print(problem)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if result.problems:
        print(f"{len(result.problems)} problem(s) in {args.target}", file=sys.stderr)
        return 1
    print(result.summary(args.target))
    return 0
