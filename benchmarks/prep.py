"""`xmodal prep` speed: prepared clips/s against a straightforward ffmpeg-CLI reference.

Corpus: avdigits clips written as real mp4 files (H.264 + AAC, 32x32, 8 frames, 1 s of audio).
Ours: `prepare()` end to end (decode, check, encode frames + FLAC, write tar shards and index) with
`--workers` processes. Reference: what a simple script does per clip: one `ffmpeg` call for the
frames (raw RGB to a pipe), one for 16 kHz mono audio (float32 to a pipe), then load both into
numpy; nothing is written. Run sequentially (a plain loop) and with `--workers` threads, each
driving its own ffmpeg processes, on the first `--ref-clips` clips. Best of `--repeats` runs each. The goal is >= 3x the reference
with the same parallelism. Without an `ffmpeg` binary (Debian: apt-get install -y ffmpeg) the
reference is skipped with a message.

    python benchmarks/prep.py --clips 300 --workers 2
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from xmodal.data.embedded.avdigits import AVDigitsConfig, write_files
from xmodal.data.manifest import read_manifest, resolve_media
from xmodal.data.prep import PrepConfig, prepare


def reference_clip(ffmpeg: str, path: Path, size: int, sample_rate: int = 16000) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [T, size, size, 3] and mono float32 audio, via two ffmpeg CLI calls."""
    common = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path)]
    raw = subprocess.run(common + ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, size, size, 3)
    pcm = subprocess.run(common + ["-vn", "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-"],
                         capture_output=True, check=True).stdout  # fmt: skip
    return frames, np.frombuffer(pcm, np.float32)


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=300, help="clips in the corpus (pool clips of avdigits)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-clips", type=int, default=60, help="clips timed for the (slow) reference; its rate is per clip")
    ap.add_argument("--video", choices=["dense", "select"], default="dense")
    ap.add_argument("--keep", default=None, help="folder for the corpus (kept, reused); default: temporary")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp) / "avdigits"
        t0 = time.perf_counter()
        cfg = AVDigitsConfig(n_train_per_class=0, n_pool=args.clips, n_test_per_class=0)
        manifest = write_files(cfg, root)
        print(f"corpus: {args.clips} avdigits clips ({cfg.size}x{cfg.size}, {cfg.frames} frames) in "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        paths = [resolve_media(r.video, manifest) for r in read_manifest(manifest)]
        prep_cfg = PrepConfig(video=args.video, short_side=0, shard_size=64, workers=args.workers)
        runs = iter(range(10**6))

        def ours() -> None:
            prepare(manifest, Path(tmp) / f"store{next(runs)}", prep_cfg, progress=False)

        ours()  # warm-up: imports, page cache
        t_ours = _best(ours, args.repeats)
        rate = len(paths) / t_ours
        print(f"xmodal prep ({args.video}, {args.workers} workers): {rate:.1f} clips/s ({t_ours:.2f} s)")

        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            print("reference skipped: no `ffmpeg` binary on PATH (Debian/Ubuntu: apt-get install -y ffmpeg)")
            return
        frames, audio = reference_clip(ffmpeg, paths[0], cfg.size)
        assert frames.shape[0] == cfg.frames and abs(len(audio) - 16000) < 1100, (frames.shape, audio.shape)

        sub = paths[: args.ref_clips]

        def ref_seq() -> None:
            for p in sub:
                reference_clip(ffmpeg, p, cfg.size)

        def ref_par() -> None:
            with ThreadPoolExecutor(args.workers) as ex:
                list(ex.map(lambda p: reference_clip(ffmpeg, p, cfg.size), sub))

        t_seq = _best(ref_seq, args.repeats)
        t_par = _best(ref_par, args.repeats)
        r_seq, r_par = len(sub) / t_seq, len(sub) / t_par
        print(f"reference ffmpeg CLI, sequential: {r_seq:.1f} clips/s; {args.workers} threads: {r_par:.1f} clips/s")
        print(f"summary: xmodal prep {rate:.1f} clips/s = {rate / r_par:.1f}x the ffmpeg-CLI reference at equal "
              f"parallelism ({rate / r_seq:.1f}x a sequential loop); goal >= 3x")  # fmt: skip


if __name__ == "__main__":
    main()
