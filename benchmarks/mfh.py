"""MFH benchmark: seconds per γ point of the gauss sweep, and Algorithm 1's permutation cost per
channel, batched vs a straightforward per-channel Python loop (goal ≥ 5×).

    OMP_NUM_THREADS=1 python benchmarks/mfh.py [--runs 10] [--threads 1] [--quick]

Every number comes from this one run; the loop and the batched saliency are checked to agree
before their times are compared.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from xmodal.analysis import mfh
from xmodal.analysis import mfh_synthetic as ms
from xmodal.analysis.mfh_linear import init_bank, kd_kl_per_model
from xmodal.data.embedded import gauss


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


# ------------------------------------------------------------------------------- γ sweep
def sgd_linear(model: nn.Linear, x: torch.Tensor, y: torch.Tensor, steps: int, teacher_logits: torch.Tensor | None = None) -> nn.Linear:
    """CE (+ mean-element KL to the teacher) with autograd and torch SGD, full batch."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if teacher_logits is not None:
            loss = loss + kd_kl_per_model(logits[None], teacher_logits[None])[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def loop_point(o: int, n_runs: int, steps: int) -> None:
    """One γ point the straightforward way: per run, three nn.Linear models trained one by one."""
    for s in range(n_runs):
        train, _, _ = gauss.make_run("G", o, s)
        x1, x2, y = (torch.from_numpy(v) for v in (train.x1, train.x2, train.y))
        teacher = sgd_linear(init_bank([s], 25).module(0), x1, y, steps)
        with torch.no_grad():
            tl = teacher(x1)
        sgd_linear(init_bank([s + 1], 50).module(0), x2, y, steps)
        sgd_linear(init_bank([s + 1], 50).module(0), x2, y, steps, tl)


def bench_sweep(n_runs: int, quick: bool) -> None:
    overlaps = (0, 2, 4, 6, 8, 10)
    steps = 200 if quick else 1000
    train = ms.TrainConfig(steps=steps)
    t_plain, _ = timed(lambda: ms.sweep_gamma(overlaps, n_runs=n_runs, train=train, alg1=ms.Alg1Config(diagnose=False)))
    t_diag, _ = timed(lambda: ms.sweep_gamma(overlaps, n_runs=n_runs, train=train, alg1=ms.Alg1Config(steps=steps)))
    t_loop, _ = timed(lambda: loop_point(6, n_runs, steps))
    per = t_plain / len(overlaps)
    print(f"gauss G sweep, {len(overlaps)} γ points × {n_runs} runs, {steps} steps per model")
    print(f"  vectorised: {per:.3f} s per γ point (teacher + no-KD + KD); with the γ̂ diagnostic {t_diag / len(overlaps):.3f} s")
    print(f"  per-model autograd loop: {t_loop:.3f} s per γ point  -> {t_loop / per:.1f}x")


# ----------------------------------------------------------------------- permutation saliency
def loop_saliency(head: Callable, feats: torch.Tensor, target: torch.Tensor, repeats: int, perms: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """The straightforward version: one head forward per (channel, repeat)."""
    d = feats.shape[1]
    raw = torch.zeros(d, dtype=torch.float64)
    for i in range(d):
        for r in range(repeats):
            x = feats.clone()
            x[:, i] = feats[perms(i, r), i]
            raw[i] += (head(x) - target).square().mean().item() / repeats
    return raw


def bench_saliency(name: str, head: nn.Module, d: int, b: int, repeats: int, c: int) -> None:
    g = torch.Generator().manual_seed(0)
    feats, target = torch.randn(b, d, generator=g), torch.randn(b, c, generator=g)
    with torch.no_grad():
        t_b, res = timed(lambda: mfh.modality_general_saliency(head, feats, target, repeats=repeats, generator=torch.Generator().manual_seed(1)))
        t_i, _ = timed(lambda: mfh.modality_general_saliency(head, feats, target, repeats=repeats, permutations="independent", generator=torch.Generator().manual_seed(1)))
        # correctness: the loop with the batched call's composed permutations σ_m∘τ_i
        gen = torch.Generator().manual_seed(1)
        sigma, tau = torch.rand(repeats, b, generator=gen).argsort(1), torch.rand(d, b, generator=gen).argsort(1)
        ref = loop_saliency(head, feats, target, repeats, lambda i, r: sigma[r][tau[i]])
        torch.testing.assert_close(res.raw, ref, rtol=1e-4, atol=1e-6)
        # timing: the loop drawing its own permutation per (channel, repeat), as one would write it
        t_l, _ = timed(lambda: loop_saliency(head, feats, target, repeats, lambda i, r: torch.randperm(b, generator=gen)))
    print(f"  {name}: D={d} B={b} M={repeats}: batched {t_b / d * 1e3:.2f} ms/channel (independent perms {t_i / d * 1e3:.2f}),"
          f" loop {t_l / d * 1e3:.2f} ms/channel -> {t_l / t_b:.1f}x (results equal)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="200 instead of 1000 training steps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    bench_sweep(args.runs, args.quick)
    print("Algorithm 1 permutation saliency")
    torch.manual_seed(0)
    bench_saliency("gauss linear teacher", nn.Linear(50, 2), 50, 200, 100, 2)
    bench_saliency("RAVDESS place 5 (fc 128→8)", nn.Linear(128, 8), 128, 512, 10, 8)
    bench_saliency("MLP head 128→256→8", nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 8)), 128, 512, 10, 8)


if __name__ == "__main__":
    main()
