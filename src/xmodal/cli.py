"""`xmodal <verb>`: one entry point; each verb lives in xmodal/commands/<module>.py.

A command module defines ``add_commands(subparsers, common)`` and registers its verbs with
``set_defaults(func=...)``. User errors (XmodalError) print one line without a traceback;
``--debug`` shows it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
    import xmodal
    import xmodal.commands as commands

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser = argparse.ArgumentParser(
        prog="xmodal",
        description="Cross-modal learning and distillation from raw video: prep, train, distil, evaluate.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"xmodal {xmodal.__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not mod.name.startswith("_"):
            importlib.import_module(f"xmodal.commands.{mod.name}").add_commands(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    from xmodal.errors import XmodalError

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    from xmodal.engine.logging import setup_logging

    setup_logging(logging.DEBUG if debug else logging.INFO)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except XmodalError as e:
        if debug:
            raise
        print(f"xmodal: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xmodal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
