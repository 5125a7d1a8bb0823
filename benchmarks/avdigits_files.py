"""Time the avdigits generator: in memory, and as real mp4 files (DESIGN §4 asks < 1 min).

    python benchmarks/avdigits_files.py [--pool 1000] [--out DIR]

Prints one line per stage. Numbers are from one run on whatever else the machine is doing:
compare ratios within a run, re-run on a quiet machine before quoting absolute times.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

from xmodal.data.embedded.avdigits import AVDigitsConfig, generate, load_digits, load_voices, write_files
from xmodal.data.manifest import read_manifest, resolve_media
from xmodal.data.media import decode_audio, decode_video


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=AVDigitsConfig.n_pool)
    ap.add_argument(
        "--out", type=Path, default=None, help="folder for the files (default: a temp dir, removed)"
    )
    ap.add_argument("--decode", type=int, default=100, help="clips to decode back")
    args = ap.parse_args()
    cfg = dataclasses.replace(AVDigitsConfig(), n_pool=args.pool)
    n = cfg.num_classes * (cfg.n_train_per_class + cfg.n_test_per_class) + cfg.n_pool

    t = time.perf_counter()
    load_digits(), load_voices()
    print(f"assets (digits + 400 FLAC renders): {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    data = generate(cfg)
    dt = time.perf_counter() - t
    mb = (data.video.nbytes + data.audio.nbytes) / 1e6
    print(f"in memory: {n} clips in {dt:.2f} s ({1e3 * dt / n:.2f} ms/clip, {mb:.0f} MB)")

    root = args.out or Path(tempfile.mkdtemp(prefix="avdigits-"))
    try:
        t = time.perf_counter()
        manifest = write_files(cfg, root)
        dt = time.perf_counter() - t
        size = sum(p.stat().st_size for p in (root / "clips").iterdir()) / 1e6
        print(f"mp4 files: {n} clips in {dt:.1f} s ({1e3 * dt / n:.1f} ms/clip, {size:.1f} MB) -> {root}")
        t = time.perf_counter()
        write_files(cfg, root)
        print(f"second call (nothing to write): {time.perf_counter() - t:.2f} s")
        rows = read_manifest(manifest)[: args.decode]
        t = time.perf_counter()
        for r in rows:
            path = resolve_media(r.video, manifest)
            decode_video(path)
            decode_audio(path)
        dt = time.perf_counter() - t
        print(
            f"decode back (frames + 16 kHz audio): {1e3 * dt / len(rows):.1f} ms/clip over {len(rows)} clips"
        )
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
