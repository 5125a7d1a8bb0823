"""CCL / KD student throughput, and what a teacher cache saves per epoch. One run, ratios printed.

1. Student train step (the `ccl` method, audio variant with a cached 512-d / 32-d teacher
   feature, forward + routed backward + SGD step) in clips/s:
   * plain: fp32, eager, contiguous (NCDHW) input;
   * ours: the defaults we recommend on CPU: channels_last_3d input and weights, then
     torch.compile of the student (inductor fuses BN + ReLU into the conv epilogues). Each is
     measured on its own as well, so a default that does not help on this machine shows it.
   bf16 autocast is for GPUs (`train.amp: auto` turns it on there only) and is not timed here.
2. Teacher cache: seconds per student epoch of the embedded KD recipe (tiny video student,
   tiny audio teacher on log-mel) with the teacher run live vs its outputs read from the batch
   (a FeatureStore), and the ratio.

Sizes: ``--size tiny`` (default: tiny R(2+1)D widths 8/16/32/32 on 3x8x32x32 clips, CPU-friendly)
or ``--size full`` (the published R(2+1)D-18 "1111" student on 3x16x112x112, 51 classes).

    OMP_NUM_THREADS=2 python benchmarks/ccl.py [--size tiny] [--batch 16] [--steps 10] [--no-compile]
"""

from __future__ import annotations

import argparse
import time

import torch

SIZES = {
    "tiny": dict(student={"name": "r2plus1d_vcop", "num_classes": 0, "widths": [8, 16, 32, 32]}, clip=(3, 8, 32, 32),
                 classes=10, dim=32),
    "full": dict(student={"name": "r2plus1d_vcop", "num_classes": 0}, clip=(3, 16, 112, 112), classes=51, dim=512),
}


def build(size: str):
    from xmodal.config import config_from_data
    from xmodal.data.bundle import DataInfo
    from xmodal.registry import METHODS

    s = SIZES[size]
    method = {"name": "ccl", "variant": "audio", "student": s["student"], "audio_teacher": {"key": "a"}}
    cfg = config_from_data({"method": method, "data": {"name": "gauss"}}).method
    torch.manual_seed(0)
    return METHODS.build(cfg, info=DataInfo(num_classes=s["classes"]))


def make_batch(size: str, n: int) -> dict:
    s = SIZES[size]
    g = torch.Generator().manual_seed(1)
    return {"video": torch.randn(n, *s["clip"], generator=g), "label": torch.arange(n) % s["classes"],
            "a.feature": torch.randn(n, s["dim"], generator=g).relu()}


def step_rate(size: str, n: int, steps: int, *, channels_last: bool, compile_: bool) -> float:
    method = build(size).train()
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    batch = make_batch(size, n)
    if channels_last:
        method.student.to(memory_format=torch.channels_last_3d)
        batch["video"] = batch["video"].contiguous(memory_format=torch.channels_last_3d)
    if compile_:
        method.student = torch.compile(method.student)

    def one():
        out = method.training_step(batch)
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        opt.step()

    for _ in range(2):  # warm-up (and compilation)
        one()
    t = time.perf_counter()
    for _ in range(steps):
        one()
    return n * steps / (time.perf_counter() - t)


def cache_epoch(steps: int) -> tuple[float, float]:
    """Seconds per epoch-equivalent (`steps` KD steps of the embedded recipe) live vs cached."""
    from xmodal.config import config_from_data
    from xmodal.data.embedded.avdigits import AVDigitsDataConfig, avdigits_data
    from xmodal.methods._distill import TeacherConfig
    from xmodal.methods.kd import KD
    from xmodal.registry import MODELS

    data = avdigits_data(AVDigitsDataConfig(n_pool=64 * steps, n_test_per_class=1, fbank_bins=40, train_split="train+pool"))
    cfg = config_from_data({"method": {"name": "kd", "student": {"name": "tiny_video", "num_classes": 0, "widths": [16, 32, 32]}},
                            "data": {"name": "gauss"}}).method
    torch.manual_seed(0)
    method = KD(cfg, data.info).train()
    teacher = MODELS.build_named("tiny_audio", mel_bins=40, widths=[128, 32], num_classes=10).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    method.teacher, method.teacher_key = teacher, "fbank"
    opt = torch.optim.Adam(method.student.parameters(), lr=1e-3)
    batches = [data.train.__getitems__(list(range(i * 32, (i + 1) * 32))) for i in range(steps)]
    with torch.no_grad():
        cached = [{**b, "teacher.logits": teacher(b["fbank"]).logits} for b in batches]

    def epoch(bs) -> float:
        t = time.perf_counter()
        for b in bs:
            out = method.training_step(b)
            opt.zero_grad(set_to_none=True)
            out.total.backward()
            opt.step()
        return time.perf_counter() - t

    method.cfg.teacher = TeacherConfig(key="teacher")
    epoch(batches[:2])  # warm-up
    live = epoch(batches)
    fast = epoch(cached)
    assert method.teacher_forwards == len(batches) + 2
    return live, fast


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (no C compiler)")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, size {args.size}, batch {args.batch}")
    rates = {"plain fp32 eager": step_rate(args.size, args.batch, args.steps, channels_last=False, compile_=False),
             "channels_last": step_rate(args.size, args.batch, args.steps, channels_last=True, compile_=False)}
    if not args.no_compile:
        rates["compile"] = step_rate(args.size, args.batch, args.steps, channels_last=False, compile_=True)
        rates["channels_last + compile"] = step_rate(args.size, args.batch, args.steps, channels_last=True, compile_=True)
    base = rates["plain fp32 eager"]
    for k, v in rates.items():
        print(f"student train step  {k:26s} {v:8.1f} clips/s  x{v / base:.2f}")
    live, fast = cache_epoch(args.steps)
    print(f"KD epoch ({args.steps} steps of 32+32 clips)  live teacher {live:.2f} s  cached {fast:.2f} s  speedup x{live / fast:.2f}")


if __name__ == "__main__":
    main()
