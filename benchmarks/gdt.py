"""GDT pre-training throughput at 1 and 2 processes, and the cost of the gathered loss.

Weak scaling, as GDT trains (a fixed batch per process, 8 per GPU in the paper): each process
runs the `gdt` method's training step (all views of the hypothesis through both encoders and
heads, `gdt_loss` with the other ranks' keys gathered, backward, SGD step) on synthetic prepared
views, wrapped in DDP when W = 2 (gloo on CPU, one thread per process; NCCL with one GPU each
when two are visible). Reported:

* clips/s at W = 1 and W = 2 (global: W × batch / step time) and scaling efficiency
  = clips/s(W=2) / (2 × clips/s(W=1)) (reference: perfect linear scaling = 1.0);
* the gathered loss's share of the step: time of `gdt_loss` forward + backward on detached
  leaf embeddings (including the all_gather of the keys) / step time, at each W.

Sizes: ``--size tiny`` (default: tiny_video + tiny_audio on 32-px, 4-frame clips; CPU-friendly) or
``--size full`` (R(2+1)D-18 on 30x112x112 + ResNet-9 on 40x99 log-mel, the paper's model).

    python benchmarks/gdt.py [--size tiny] [--hypothesis 9] [--batch 16] [--steps 10]
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SIZES = {
    "tiny": dict(video={"name": "tiny_video", "num_classes": 0, "widths": [16, 32, 32]},
                 audio={"name": "tiny_audio", "mel_bins": 40, "widths": [128, 128]},
                 head={"dim": 64, "hidden": 128}, clip=(3, 4, 32, 32), spec=(1, 40, 98)),
    "full": dict(video={"name": "r2plus1d_18"}, audio={"name": "resnet9"}, head={},
                 clip=(3, 30, 112, 112), spec=(1, 40, 99)),
}


def build(size: str, hypothesis: int):
    from xmodal.config import config_from_data
    from xmodal.data.bundle import DataInfo
    from xmodal.registry import METHODS

    s = SIZES[size]
    method = {"name": "gdt", "hypothesis": hypothesis, "video": s["video"], "audio": s["audio"], "head": s["head"]}
    cfg = config_from_data({"method": method, "data": {"name": "gauss"}}).method
    torch.manual_seed(0)
    return METHODS.build(cfg, info=DataInfo())


def batch(size: str, n: int, device) -> dict:
    from xmodal.methods.gdt import VIEW_SUFFIX

    s = SIZES[size]
    g = torch.Generator().manual_seed(1)
    out = {}
    for suffix in VIEW_SUFFIX.values():
        out["video" + suffix] = torch.randn(n, *s["clip"], generator=g).to(device)
        out["fbank" + suffix] = torch.randn(n, *s["spec"], generator=g).to(device)
    return out


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if dist.is_initialized():
        dist.barrier()


def measure(rank: int, world: int, args, device) -> dict:
    from xmodal.losses.gdt import gdt_loss

    method = build(args.size, args.hypothesis).to(device)
    model = torch.nn.parallel.DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else method
    opt = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    b = batch(args.size, args.batch, device)

    def step():
        out = model(b)
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    step_s = (time.perf_counter() - t0) / args.steps
    with torch.no_grad():  # the embeddings of one step, as leaves: time the loss alone
        views = method.prepared_views(b)
        feats = {v: (method.mlp_v(method.video(x).feature), method.mlp_a(method.audio(a).feature)) for v, (x, a) in views.items()}
    leaves = {v: (x.clone().requires_grad_(), a.clone().requires_grad_()) for v, (x, a) in feats.items()}
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        gdt_loss(args.hypothesis, leaves, temperature=0.07).total.backward()
    _sync(device)
    loss_s = (time.perf_counter() - t0) / args.steps
    return {"step_s": step_s, "loss_s": loss_s}


def _worker(rank: int, world: int, args, tmp: str) -> None:
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.device_count() >= world and not args.cpu
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{tmp}/rdv", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=300))
    try:
        res = measure(rank, world, args, device)
        if rank == 0:
            torch.save({**res, "device": str(device)}, f"{tmp}/w{world}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run(world: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        if world == 1:
            _worker(0, 1, args, tmp)
        else:
            mp.start_processes(_worker, args=(world, args, tmp), nprocs=world, start_method="spawn")
        return torch.load(f"{tmp}/w{world}.pt", weights_only=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--hypothesis", type=int, default=9)
    ap.add_argument("--batch", type=int, default=16, help="clips per process")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--cpu", action="store_true", help="stay on CPU even with GPUs")
    args = ap.parse_args()
    os.environ.setdefault("XMODAL_PROGRESS", "0")
    res = {w: run(w, args) for w in (1, 2)}
    print(f"GDT H{args.hypothesis}, size {args.size}, {args.batch} clips per process, {args.steps} steps, "
          f"device {res[1]['device']}, {args.threads} thread(s) per process")
    rate = {}
    for w, r in res.items():
        rate[w] = w * args.batch / r["step_s"]
        print(f"W={w}: step {1000 * r['step_s']:.1f} ms, {rate[w]:.1f} clips/s, gathered loss "
              f"{1000 * r['loss_s']:.2f} ms = {100 * r['loss_s'] / r['step_s']:.1f} % of the step")
    print(f"scaling efficiency W=2 vs W=1: {rate[2] / (2 * rate[1]):.2f} (1.00 = linear)")


if __name__ == "__main__":
    main()
