"""Cost of the per-sample transform pipelines at published sizes, and batched vs per-clip photometrics.

Prints milliseconds per sample for each preset on decoded 240x320 uint8 clips (the CCL/GDT frame
size), the CAV-MAE fbank augmentation on [998, 128], and the ratio between applying STiCA's
photometric ops (jitter + grayscale + blur) to a batch at once vs clip by clip, for published-size
clips and for tiny embedded-data clips (goal: batched <= per-clip). One thread, best of `--repeats`. Timings on a shared machine are noisy: re-run on a
quiet one before quoting them.

    python benchmarks/transforms.py [--repeats 3] [--batch 8]
"""

from __future__ import annotations

import argparse
import time

import torch

from xmodal.data.transforms import CavmaeAugment, PhotoParams, clip_preset, photometric, sample_generator


def best_ms(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    cases = {
        "ccl_train (16 frames)": ("ccl_train", 16),
        "ccl_eval views (16)": ("ccl_eval", 16),
        "gdt_pretrain (30)": ("gdt_pretrain", 30),
        "stica_pretrain (30)": ("stica_pretrain", 30),
        "gdt_test views (32)": ("gdt_test", 32),
        "avt_train (10)": ("avt_train", 10),
        "cavmae_image (1)": ("cavmae_image", 1),
    }
    print(f"{'pipeline':28s} ms/sample")
    for label, (name, frames) in cases.items():
        t = clip_preset(name)
        h, w = (256, 340) if name.startswith("avt") else (240, 320)
        clip = torch.randint(0, 256, (frames, h, w, 3), dtype=torch.uint8, generator=g)
        if t.random:
            fn = lambda t=t, clip=clip: t(clip, sample_generator(0, 1))
        else:
            fn = lambda t=t, clip=clip: t.views(clip)
        print(f"{label:28s} {best_ms(fn, args.repeats):8.1f}")

    aug = CavmaeAugment()
    fb = torch.randn(998, 128) - 5
    print(
        f"{'cavmae fbank train aug':28s} {best_ms(lambda: aug.fbank(fb, sample_generator(0), train=True), args.repeats):8.1f}"
    )

    # photometric: one batched call vs a loop of per-clip calls with the same parameters
    t = clip_preset("stica_pretrain")
    for b, frames, side in ((args.batch, 30, 112), (4 * args.batch, 8, 32)):
        x = torch.rand(b, frames, 3, side, side, generator=g)
        params = PhotoParams.cat([t.sample(side, side, sample_generator(1, i)).photo for i in range(b)])
        per = [PhotoParams(*(p[i : i + 1] for p in params)) for i in range(b)]
        batched = best_ms(lambda x=x, params=params: photometric(x, params), args.repeats)
        looped = best_ms(
            lambda x=x, per=per, b=b: [photometric(x[i : i + 1], per[i]) for i in range(b)], args.repeats
        )
        print(
            f"photometric STiCA, {b} x {frames} x {side}^2: batched {batched:.1f} ms, "
            f"per-clip {looped:.1f} ms, ratio {batched / looped:.2f}"
        )


if __name__ == "__main__":
    main()
