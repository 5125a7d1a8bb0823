"""Kaldi fbank speed: xmodal's batched pure-torch `kaldi_fbank` vs kaldi-native-fbank (C++).

kaldi-native-fbank computes one clip at a time (single-threaded C++ behind a Python binding), so we
compare total wall time for the whole batch, reading its frames into one numpy array per clip as a
data loader would (its compute alone is printed too). Ours runs with 1 torch thread and with the
default thread count. Best of `--repeats` runs. Prints a table and one summary line with the ratio.

    python benchmarks/fbank.py --batch 32 --seconds 10
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from xmodal.data.fbank import FbankConfig, kaldi_fbank


def _best(fn, repeats: int) -> float:
    fn()  # warm-up: caches, FFT plans, allocator
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _knf_options(knf, cfg: FbankConfig):
    opts = knf.FbankOptions()
    opts.frame_opts.dither = cfg.dither
    opts.frame_opts.window_type = cfg.window
    opts.frame_opts.samp_freq = cfg.sample_rate
    opts.mel_opts.num_bins = cfg.num_mel_bins
    opts.mel_opts.low_freq = cfg.low_freq
    opts.mel_opts.high_freq = cfg.high_freq
    opts.use_energy = cfg.use_energy
    return opts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    cfg = FbankConfig()
    gen = torch.Generator().manual_seed(0)
    n = int(args.seconds * cfg.sample_rate)
    t = torch.arange(n) / cfg.sample_rate
    wave = 0.1 * torch.randn(args.batch, n, generator=gen) + 0.3 * torch.sin(2 * torch.pi * 440 * t)
    wave_np = wave.numpy()
    default_threads = torch.get_num_threads()

    ours = {}
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        ours[threads] = _best(lambda: kaldi_fbank(wave, cfg), args.repeats)
    torch.set_num_threads(default_threads)
    rows = [(f"xmodal kaldi_fbank, batched, {k} thread(s)", v) for k, v in ours.items()]

    try:
        import kaldi_native_fbank as knf
    except ImportError:
        knf = None
    if knf is not None:
        opts = _knf_options(knf, cfg)

        def run_knf(read: bool) -> None:
            for clip in wave_np:
                f = knf.OnlineFbank(opts)
                f.accept_waveform(cfg.sample_rate, clip)
                f.input_finished()
                if read:
                    np.stack([f.get_frame(i) for i in range(f.num_frames_ready)])

        knf_total = _best(lambda: run_knf(True), args.repeats)
        rows.append(("kaldi-native-fbank, per clip, compute + read frames", knf_total))
        rows.append(
            ("kaldi-native-fbank, per clip, compute only", _best(lambda: run_knf(False), args.repeats))
        )

    what = f"{args.batch} x {args.seconds:g} s clips at {cfg.sample_rate} Hz"
    print(f"Kaldi fbank ({cfg.num_mel_bins} mel, {cfg.window}), {what}, best of {args.repeats}")
    for name, sec in rows:
        print(f"  {name:<55s} {1000 * sec:9.1f} ms  ({1000 * sec / args.batch:6.2f} ms/clip)")
    if knf is None:
        print(
            f"SUMMARY fbank {what}: ours {1000 * ours[1]:.1f} ms (1 thread); kaldi-native-fbank not installed"
        )
        return
    print(
        f"SUMMARY fbank {what}: speed-up vs kaldi-native-fbank {knf_total / ours[1]:.2f}x (1 thread), "
        f"{knf_total / ours[default_threads]:.2f}x ({default_threads} threads)"
    )


if __name__ == "__main__":
    main()
