"""Install guard: torch must be the 2.13 CPU-compatible line and none of the packages that break
beside it (torchvision, torchaudio, timm) may be present (see docs/architecture.md)."""

from __future__ import annotations

import importlib.metadata as md
import sys


def problems() -> list[str]:
    out = []
    try:
        version = md.version("torch")
        if not version.startswith("2.13."):
            out.append(f"torch {version} installed; xmodal needs torch>=2.13,<2.14")
    except md.PackageNotFoundError:
        out.append("torch is not installed")
    for bad in ("torchvision", "torchaudio", "timm"):
        try:
            out.append(f"{bad} {md.version(bad)} is installed; it breaks beside torch 2.13 here: pip uninstall {bad}")
        except md.PackageNotFoundError:
            pass
    return out


def main() -> int:
    found = problems()
    for p in found:
        print(f"envcheck: {p}", file=sys.stderr)
    if not found:
        print(f"envcheck: ok (torch {md.version('torch')})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
