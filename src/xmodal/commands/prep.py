"""`xmodal prep` (raw media -> prepared store) and `xmodal bench <what>` (data benchmarks)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable

# `xmodal bench <name>`: name -> (add_arguments(parser), run(args) -> int). Other modules may add more.
BENCHES: dict[str, tuple[Callable, Callable]] = {}

_PREP_HELP = {
    "video": "select: N frames at int(i*total/N) (CAV-MAE); dense: every frame at --fps; none: audio only",
    "num_frames": "frames per clip for --video select",
    "fps": "frame rate for --video dense (0 = the file's own)",
    "short_side": "resize frames to this short side (0 = native)",
    "max_duration": "seconds kept from each clip's start (0 = all)",
    "min_duration": "reject clips with a stream shorter than this (too_short)",
    "audio": "store 16 kHz mono audio",
    "sample_rate": "audio sample rate",
    "audio_channel": "first channel (CAV-MAE) or the mean of all channels",
    "require": "streams whose absence rejects a file",
    "frame_format": "npy (fast, large) or jpg (small; real data)",
    "jpeg_quality": "JPEG quality for --frame-format jpg",
    "audio_format": "16-bit FLAC or WAV",
    "shard_size": "samples per shard (aim for 100-500 MB shards)",
    "backend": "decoder: auto (torchcodec when installed), pyav or torchcodec",
    "workers": "decoding processes (0 = one per CPU core)",
}


def _add_config_flags(p: argparse.ArgumentParser, cls: type) -> None:
    """One --flag per PrepConfig field (default: the dataclass default, left unset here)."""
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        shown = " ".join(default) if isinstance(default, list) else default
        kw: dict = {"dest": f"cfg_{f.name}", "default": None, "help": f"{_PREP_HELP.get(f.name, '')} (default: {shown})"}
        if typing.get_origin(tp) is typing.Literal:
            kw["choices"] = list(typing.get_args(tp))
        elif tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is list:
            kw.update(nargs="+", choices=["video", "audio"])
        else:
            kw.update(type=tp, metavar=f.name.split("_")[-1].upper())
        p.add_argument(flag, **kw)


def _part(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/N (e.g. 0/4), found {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"expected i/N with 0 <= i < N, found {text!r}")
    return i, n


def add_commands(sub, common) -> None:
    from xmodal.data.prep import PrepConfig

    p = sub.add_parser(
        "prep", parents=[common], help="raw media -> prepared store (tar shards + manifest + index)",
        description="Decode a manifest (from `xmodal import`) or media files/folders into tar shards, "
        "in parallel. Idempotent and resumable: rerun the same command after an interruption. Unusable "
        "files go to rejects.jsonl with a reason; prep never stops on one bad file.",
    )  # fmt: skip
    p.add_argument("inputs", nargs="+", help="a manifest.jsonl (labels.csv beside it), or media files, folders, .txt lists")
    p.add_argument("--out", required=True, help="store folder")
    p.add_argument("--part", type=_part, default=(0, 1), metavar="i/N", help="build only shards k with k mod N == i (N machines, one store)")
    p.add_argument("--overwrite", action="store_true", help="replace a store made with other settings")
    p.add_argument("--split", default="train", help="split name for media-file inputs")
    p.add_argument("--label-from-folder", action="store_true", help="media-file inputs: the parent folder name is the label")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_flags(p, PrepConfig)
    p.set_defaults(func=cmd_prep)

    b = sub.add_parser("bench", parents=[common], help="benchmarks: " + ", ".join(sorted(BENCHES)),
                       description="Measure components; prints one summary line per measurement.")  # fmt: skip
    bsub = b.add_subparsers(dest="bench", metavar="<what>", required=True)
    for name, (add_args, run) in sorted(BENCHES.items()):
        q = bsub.add_parser(name, parents=[common], help=(run.__doc__ or "").strip().splitlines()[0])
        add_args(q)
        q.set_defaults(func=run)


def cmd_prep(args: argparse.Namespace) -> int:
    from xmodal.data.prep import PrepConfig, load_source, prepare

    given = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
    cfg = dataclasses.replace(PrepConfig(), **given)
    inputs = args.inputs[0] if len(args.inputs) == 1 else args.inputs
    src = load_source(inputs, split=args.split, label_from_folder=args.label_from_folder)
    result = prepare(src, args.out, cfg, part=args.part, overwrite=args.overwrite, progress=not args.no_progress)
    print(result.summary())
    return 0


# ------------------------------------------------------------------------------- bench data
def _bench_data_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("recipe", help="recipe YAML whose data section to measure")
    q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    q.add_argument("--batches", type=int, default=20, help="loader batches to time (after one warm-up batch)")
    q.add_argument("--steps", type=int, default=20, help="train steps for the data-wait share (0 = skip)")
    q.add_argument("--out", default=None, help="run folder for the short training (default: a temporary one)")


@dataclasses.dataclass
class DataBench:
    recipe: str
    samples_per_s: float  # loader throughput over the timed batches (first batch excluded)
    batch_size: int
    num_workers: int
    data_wait: list[float]  # the engine's data-wait share per logged window of a short training

    def lines(self) -> list[str]:
        out = [f"bench data {self.recipe}: loader {self.samples_per_s:.1f} samples/s "
               f"(batch {self.batch_size}, {self.num_workers} workers)"]  # fmt: skip
        if self.data_wait:
            steady = self.data_wait[-1]
            verdict = "within" if steady <= 0.05 else "above"
            shares = ", ".join(f"{w:.1%}" for w in self.data_wait)
            out.append(f"bench data {self.recipe}: data-wait share of a train step {steady:.1%} "
                       f"(windows: {shares}; {verdict} the 5% goal)")  # fmt: skip
        return out


def bench_data(recipe: str, overrides: list[str], *, batches: int = 20, steps: int = 20, out: str | None = None) -> DataBench:
    """Time the recipe's training loader alone, then read `data_wait` from a short real training.

    The training runs `steps` optimiser steps with two log windows (the first one includes the
    loader start-up), no evaluation and no checkpoints between; the last window is the steady state.
    """
    import tempfile
    import time

    from torch.utils.data import DataLoader

    from xmodal.config import load_config
    from xmodal.data.bundle import collate
    from xmodal.engine.dist import ResumableSampler
    from xmodal.engine.logging import read_metrics
    from xmodal.engine.trainer import train
    from xmodal.errors import ConfigError
    from xmodal.registry import DATASETS

    if batches < 1 or steps < 0:
        raise ConfigError(f"bench data: --batches must be >= 1 and --steps >= 0, found {batches} and {steps}")
    cfg = load_config(recipe, overrides)
    tc = cfg.train
    data = DATASETS.build(cfg.data)
    sampler = ResumableSampler(len(data.train), shuffle=True, seed=tc.seed)
    n, t0, epoch = 0, None, 0
    while n < batches:
        sampler.set_epoch(epoch)
        if hasattr(data.train, "set_epoch"):
            data.train.set_epoch(epoch)
        loader = DataLoader(data.train, batch_size=tc.batch_size, sampler=sampler, num_workers=tc.num_workers,
                            collate_fn=data.collate or collate, drop_last=tc.drop_last)  # fmt: skip
        got = 0
        for _batch in loader:
            got += 1
            if t0 is None:  # the first batch pays for worker start-up
                t0, n = time.perf_counter(), 0
                continue
            n += 1
            if n >= batches:
                break
        if not got:
            raise ConfigError(f"bench data: the training loader of {recipe} yields no batch (batch_size "
                              f"{tc.batch_size} > {len(data.train)} samples with drop_last)")  # fmt: skip
        epoch += 1
    rate = n * tc.batch_size / (time.perf_counter() - t0)
    del _batch  # frees the last batch before training
    waits: list[float] = []
    if steps > 0:
        cfg.train = dataclasses.replace(tc, max_steps=steps, log_every=max(1, steps // 2), eval_every=0,
                                        ckpt_every_epochs=0, ckpt_every_steps=0, progress=False,
                                        tensorboard=False)  # fmt: skip
        data.val = data.test = None  # measure training only
        with tempfile.TemporaryDirectory() as tmp:
            run = train(cfg, out_dir=out or tmp, data=data)
            waits = [r["data_wait"] for r in read_metrics(run.out_dir) if r["split"] == "train"]
    return DataBench(recipe, rate, tc.batch_size, tc.num_workers, waits)


def cmd_bench_data(args: argparse.Namespace) -> int:
    """Loader samples/s and the data-wait share of a train step for a recipe."""
    for line in bench_data(args.recipe, args.overrides, batches=args.batches, steps=args.steps, out=args.out).lines():
        print(line)
    return 0


BENCHES["data"] = (_bench_data_args, cmd_bench_data)
