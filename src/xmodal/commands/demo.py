"""`xmodal demo`: every method on embedded data, one HTML report (what `make demo` runs)."""

from __future__ import annotations

import argparse
import sys


def add_commands(sub, common) -> None:
    p = sub.add_parser("demo", parents=[common], help="run the embedded demo of every method and write report.html",
                       description="Generate avdigits, prepare it, pretrain / distil / evaluate each method on embedded data "
                       "and write OUT/report.html and OUT/results.json. Rerunning reuses finished stages.")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="fewer steps and smaller pools (~2.5 min on 2 cores; what CI runs)")
    p.add_argument("--out", default=None, help="output folder (default: runs/demo, or runs/demo-quick with --quick)")
    p.add_argument("--only", default=None, metavar="STAGES", help="comma-separated stages to run (default: all); see --list")
    p.add_argument("--list", action="store_true", help="list the stages and exit")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="commands run side by side, each with cores/N threads (default: one per core, at most 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines or bars")
    p.set_defaults(func=cmd_demo)


def _interrupt(signum, frame) -> None:
    """SIGTERM (a job scheduler, `kill`) unwinds like Ctrl-C, so the running command is stopped too."""
    raise KeyboardInterrupt


def cmd_demo(args: argparse.Namespace) -> int:
    from xmodal.demo.core import STAGES, run_demo, stage_names
    from xmodal.errors import ConfigError

    if args.list:
        for n in stage_names():
            print(f"{n:8s} {STAGES.entry(n).meta['title']}")
        return 0
    import signal

    signal.signal(signal.SIGTERM, _interrupt)
    out = args.out or ("runs/demo-quick" if args.quick else "runs/demo")
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs: needs at least 1 (got {args.jobs})")
    run = run_demo(out, quick=args.quick, only=args.only, progress=not args.no_progress, jobs=args.jobs)
    print(f"\nxmodal demo ({'quick' if args.quick else 'full'}): {run.seconds:.0f} s, peak RSS {run.peak_rss_mb:.0f} MiB")
    for name, r in run.results.items():
        if r.status != "done":
            print(f"  {name:8s} {r.status}: {r.reason}")
            continue
        print(f"  {name:8s} done in {r.seconds:.0f} s (peak {r.peak_rss_mb:.0f} MiB)")
        for c in r.claims:
            mark = "PASS" if c.passed else ("FAIL" if c.checked else "info")
            print(f"    [{mark}] {c.name}: {c.detail}")
    print(f"results: {run.out / 'results.json'}")
    if run.report:
        print(f"report:  {run.report}")
    if run.failed:
        print(f"xmodal demo: stage(s) failed: {', '.join(run.failed)}", file=sys.stderr)
        return 1
    return 0
