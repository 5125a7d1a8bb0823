"""Keep README.md's recipe list in step with recipes/: one row per recipe, its first comment line.

    python -m xmodal.tools.recipe_list            # rewrite the list between the README markers
    python -m xmodal.tools.recipe_list --check    # exit 1 if the README is stale (tests use this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BEGIN, END = "<!-- recipe-list -->", "<!-- /recipe-list -->"


def summary(path: Path) -> str:
    """The recipe's leading comment block, first sentence, as one line."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    text = " ".join(lines)
    cut = text.find(". ")
    return (text if cut < 0 else text[: cut + 1]).replace("|", "\\|")


def render(root: Path = ROOT) -> str:
    rows = ["| recipe | what it is |", "|---|---|"]
    for path in sorted((root / "recipes").glob("*/*.yaml")):
        rel = path.relative_to(root).as_posix()
        rows.append(f"| [`{rel}`]({rel}) | {summary(path)} |")
    return "\n".join([BEGIN, "", *rows, "", END])


def splice(readme: str, table: str) -> str:
    start = readme.find(BEGIN)
    if start < 0:
        raise SystemExit(f"README.md: marker {BEGIN} not found")
    end = readme.find(END, start)
    end = start + len(BEGIN) if end < 0 else end + len(END)
    return readme[:start] + table + readme[end:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    path = ROOT / "README.md"
    old = path.read_text()
    new = splice(old, render())
    if args.check:
        if new != old:
            print("README.md: recipe list is stale; run python -m xmodal.tools.recipe_list", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
