"""Engine overhead per optimisation step vs a hand-written minimal PyTorch loop.

Same tiny model (MLP 256→256→10), same in-memory data, same batch size, optimiser and number of
steps. The minimal loop is what one would write by hand: a DataLoader over a TensorDataset,
forward, cross-entropy, backward, SGD step. The engine run includes everything it always does
(sampler, dict batches, loss-term bookkeeping, JSONL logging every 10 steps, progress bar off).
Both run in this process, interleaved, best of several repeats. Goal: ratio ≤ 1.05.

    python benchmarks/engine.py [--steps 400] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from xmodal.config import config_from_data
from xmodal.data.bundle import DataBundle, DataInfo, DictDataset
from xmodal.engine.trainer import train
from xmodal.models.mlp import MLP

N, D, C, B = 8192, 256, 10, 64


def make_data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    y = torch.randint(0, C, (N,), generator=g)
    return x, y


def minimal_loop(x, y, steps: int) -> float:
    torch.manual_seed(0)
    model = MLP(D, C, (256,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(TensorDataset(x, y), batch_size=B, shuffle=True, drop_last=True)
    done = 0
    t0 = time.perf_counter()
    while done < steps:
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb).logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return (time.perf_counter() - t0) / steps


def engine_loop(x, y, steps: int) -> float:
    bundle = DataBundle(train=DictDataset(x=x, label=y), info=DataInfo(num_classes=C, extra={"dims": {"x": D}}))
    cfg = config_from_data({
        "name": "bench",
        "method": {"name": "supervised", "input_key": "x", "model": {"name": "mlp", "hidden": [256]}},
        "data": {"name": "gauss"},  # placeholder section: the bundle above is passed in directly
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"max_steps": steps, "batch_size": B, "log_every": 10, "eval_every": 0, "ckpt_every_epochs": 0,
                  "progress": False, "tensorboard": False},
    })
    with tempfile.TemporaryDirectory() as d:
        res = train(cfg, out_dir=d, data=bundle)
    return res.metrics["train_seconds"] / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    x, y = make_data()
    minimal_loop(x, y, 20), engine_loop(x, y, 20)  # warm-up
    ref, ours = [], []
    for _ in range(args.repeats):
        ref.append(minimal_loop(x, y, args.steps))
        ours.append(engine_loop(x, y, args.steps))
    r, o = min(ref), min(ours)
    print(f"threads={torch.get_num_threads()} steps={args.steps} batch={B} model=MLP({D}->256->{C})")
    print(f"minimal loop : {r * 1e3:.3f} ms/step")
    print(f"xmodal engine: {o * 1e3:.3f} ms/step")
    print(f"engine/minimal time ratio: {o / r:.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
