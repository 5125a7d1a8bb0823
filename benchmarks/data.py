"""Training from a prepared store: loader samples/s and the engine's data-wait share, cache off vs on.

Corpus: avdigits clips (32x32, 8 frames at 8 fps, 1 s of 16 kHz audio) written as mp4 and
prepared into a dense store. Recipes: a tiny video classifier (`tiny_video`) trained on the
store's pool split with CCL's training transform at 32 px (RandomResizedCrop + flip) on 8-frame
clips, keys "video" only ("video") or also a 64-bin Kaldi log-mel with SpecAugment and CAV-MAE
noise ("av"). Each configuration runs `xmodal bench data` (the training loader alone, then a short
real training whose last log window gives the data-wait share) with `cache: off` (every sample
read and decoded from the shards) and `cache: auto` (decoded once into memory), with 0 and
`--workers` loader processes. The goal is a data-wait share <= 5 %. A "floor" row trains the same
model from a loader that only copies one prepared batch: the share it shows is what the machine
costs (loader start, inter-process transfer, scheduling on a busy machine), not the data pipeline.

    python benchmarks/data.py --clips 1000 --workers 1

Timings on a shared machine are noisy: compare ratios from one run, re-run on a quiet machine.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

RECIPE = """
name: store-{name}
method: {{name: supervised, input_key: video, model: {{name: tiny_video, num_classes: 10, widths: [16, 32, 64]}}}}
data:
  name: store
  root: {root}
  train: pool
  test: test
  keys: {keys}
  clip: {{frames: 8}}
  video_train: ccl_train
  video_eval: ccl_eval
  video_size: 32
  fbank: {{mel: 64, frames: 100, specaugment: {{freq_width: 8, time_width: 20}}, noise: true}}
optim: {{name: adam, lr: 0.001}}
train: {{batch_size: {batch}, num_workers: 0, threads: {threads}}}
"""
KEYS = {"video": "[video, label]", "av": "[video, fbank, label]"}


def _register_floor() -> None:
    """Data source "bench_floor": the recipe's first store batch, copied for every batch."""
    import torch
    from torch.utils.data import Dataset

    from xmodal.config import load_config
    from xmodal.data.bundle import DataBundle, collate
    from xmodal.registry import DATASETS, register_dataset

    class Copies(Dataset):
        def __init__(self, batch: dict, n: int):
            self.batch, self.n = batch, n

        def __len__(self) -> int:
            return self.n

        def __getitems__(self, idx: list[int]) -> dict:
            return {k: v[: len(idx)].clone() if isinstance(v, torch.Tensor) else v[: len(idx)] for k, v in self.batch.items()}

    @register_dataset("bench_floor")
    def bench_floor(recipe: str = "") -> DataBundle:
        cfg = load_config(recipe)
        real = DATASETS.build(cfg.data)
        real.train.set_epoch(0)
        batch = real.train.__getitems__(list(range(cfg.train.batch_size)))
        return DataBundle(train=Copies(batch, len(real.train)), info=real.info, collate=collate)


def make_store(folder: Path, clips: int) -> Path:
    from xmodal.data.embedded.avdigits import AVDigitsConfig, write_files
    from xmodal.data.prep import PrepConfig, prepare

    manifest = write_files(AVDigitsConfig(n_pool=clips, n_train_per_class=1, n_test_per_class=5), folder / "avdigits")
    store = folder / "store"
    prepare(manifest, store, PrepConfig(video="dense", short_side=32, max_duration=0, shard_size=256), progress=False)
    return store


def main() -> None:
    from xmodal.commands.prep import bench_data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=1000, help="pool clips (the training split)")
    ap.add_argument("--workers", type=int, default=1, help="loader processes of the second setting (first: 0)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--recipes", nargs="+", default=sorted(KEYS), choices=sorted(KEYS))
    ap.add_argument("--keep", default=None, help="folder for the corpus and store (kept, reused)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)  # the loader timing runs before the training sets it

    _register_floor()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        store = folder / "store" if (folder / "store" / "index.json").exists() else make_store(folder, args.clips)
        rows = {}
        for name in args.recipes:
            recipe = Path(tmp) / f"{name}.yaml"
            recipe.write_text(RECIPE.format(name=name, root=store, keys=KEYS[name], batch=args.batch, threads=args.threads))
            for workers in (0, args.workers):
                for cache in ("floor", "off", "auto"):
                    sets = [f"train.num_workers={workers}"]
                    sets += [f"data={{name: bench_floor, recipe: {recipe}}}"] if cache == "floor" else [f"data.cache={cache}"]
                    r = bench_data(str(recipe), sets, batches=args.batches, steps=args.steps)
                    rows[name, workers, cache] = r
                    print(f"{name:5s} workers {workers} cache {cache:4s}: loader {r.samples_per_s:7.1f} samples/s, "
                          f"data-wait {r.data_wait[-1]:6.1%}", flush=True)  # fmt: skip
        print("summary (cache auto vs off, same recipe and workers; floor = a loader that only copies a batch):")
        for (name, workers, cache), r in rows.items():
            if cache != "auto":
                continue
            off, floor = rows[name, workers, "off"], rows[name, workers, "floor"]
            verdict = "within" if r.data_wait[-1] <= 0.05 else "above"
            print(f"  {name:5s} {workers} workers: loader {r.samples_per_s / off.samples_per_s:.1f}x "
                  f"({off.samples_per_s:.0f} -> {r.samples_per_s:.0f} samples/s), data-wait "
                  f"{off.data_wait[-1]:.1%} -> {r.data_wait[-1]:.1%} ({verdict} the 5% goal; "
                  f"floor {floor.data_wait[-1]:.1%})")  # fmt: skip


if __name__ == "__main__":
    main()
