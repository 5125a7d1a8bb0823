"""`make bench`: run every script in benchmarks/ and write BENCHMARKS.md with their output.

Each script prints ratios measured in one run against its reference (see the script's docstring);
this runner adds the machine, the date and the exact command. Scripts run one at a time so they do
not compete for the CPU.

    python -m xmodal.tools.bench_all [--only engine,fbank] [--out BENCHMARKS.md] [--timeout 1800]

With --only, the named scripts' sections of an existing file are replaced and the others kept.
Each section records the 1-minute load average at its start: ratios are measured in one run, but a
busy machine makes them noisier.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

# Arguments each script runs with in the table (defaults sized for a 2-core CPU machine).
ARGS: dict[str, list[str]] = {}


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def run_one(script: Path, timeout: int) -> tuple[str, str, float, int]:
    cmd = [sys.executable, str(script.relative_to(ROOT)), *ARGS.get(script.stem, [])]
    env = dict(os.environ, XMODAL_PROGRESS="0", PYTHONUNBUFFERED="1")
    t0 = time.time()
    load = os.getloadavg()[0]
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        out, rc = r.stdout + (f"\n[stderr tail]\n{r.stderr[-1500:]}" if r.returncode else ""), r.returncode
    except subprocess.TimeoutExpired:
        out, rc = f"timed out after {timeout} s", 124
    return " ".join(["python", *cmd[1:]]), out.strip(), time.time() - t0, rc, load


def sections(text: str) -> dict[str, str]:
    """Existing BENCHMARKS.md split into {script name: its section text}."""
    out = {}
    for chunk in text.split("\n## ")[1:]:
        out[chunk.split("\n", 1)[0].strip()] = "\n## " + chunk.rstrip("\n") + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated script names (without .py)")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--timeout", type=int, default=1800)
    args = ap.parse_args(argv)
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    if args.only:
        keep = set(args.only.split(","))
        scripts = [s for s in scripts if s.stem in keep]
    parts = [
        "# Benchmarks\n",
        f"Measured {dt.date.today().isoformat()} on {machine()}.\n",
        "Regenerate with `make bench` (or `python -m xmodal.tools.bench_all --only NAME`). Every script "
        "measures ours and its reference in the same run and prints the ratio; the reference is named "
        "in each script's docstring.\n",
    ]
    out_path = Path(args.out)
    done = sections(out_path.read_text()) if args.only and out_path.exists() else {}
    failed = 0
    for s in scripts:
        print(f"bench: {s.name} ...", flush=True)
        cmd, out, secs, rc, load = run_one(s, args.timeout)
        failed += rc != 0
        status = f"{secs:.0f} s, {dt.date.today().isoformat()}, load {load:.1f}" + (f", FAILED rc={rc}" if rc else "")
        done[s.stem] = f"\n## {s.stem}\n\n`{cmd}` ({status})\n\n```\n{out}\n```\n"
    parts += [done[k] for k in sorted(done)]
    Path(args.out).write_text("".join(parts))
    print(f"bench: wrote {args.out} ({len(scripts)} scripts, {failed} failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
