"""`xmodal train` and `xmodal eval`."""

from __future__ import annotations

import argparse
import json


def add_commands(sub, common) -> None:
    p = sub.add_parser("train", parents=[common], help="train a recipe (works under torchrun unchanged)",
                       description="Train the method of a recipe. Under `torchrun --nproc_per_node N` the same command trains on N processes.")
    p.add_argument("recipe", help="recipe YAML (see recipes/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--out", default=None, help="run folder (default: train.out_dir of the recipe)")
    p.add_argument("--resume", default=None, metavar="auto|PATH", help="resume from the newest complete checkpoint of the run folder (auto) or a file")
    p.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", parents=[common], help="evaluate a trained run (or a recipe with --ckpt)",
                       description="Evaluate a run folder with the method's own metrics, or with a protocol "
                       "(see xmodal/eval/protocols.py: e.g. linear, knn, retrieval, finetune).")
    e.add_argument("target", nargs="+", metavar="[PROTOCOL] RUN", help="optional protocol name, then a run folder or recipe")
    e.add_argument("--ckpt", default=None, help="weights file (safetensors or checkpoint); default: the run's final weights")
    e.add_argument("--split", default="test", help="split to evaluate (train, val, test or a data extra like pool)")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a key of the run's config")
    e.add_argument("--opt", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="protocol option, e.g. recipe=recipes/eval/ucf101-finetune.yaml (repeatable)")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--json", dest="json_out", default=None, help="also write the metrics to this JSON file")
    e.set_defaults(func=cmd_eval)


def cmd_train(args: argparse.Namespace) -> int:
    from xmodal.config import load_config
    from xmodal.engine.trainer import train

    cfg = load_config(args.recipe, args.overrides)
    result = train(cfg, out_dir=args.out, resume=args.resume)
    if result.status == "finished":
        from xmodal.engine import dist

        if dist.rank() == 0:
            print(json.dumps({"out_dir": str(result.out_dir), **result.metrics}, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from xmodal.engine.evaluate import evaluate
    from xmodal.engine.runs import load_run
    from xmodal.errors import ConfigError, closest
    from xmodal.eval.protocols import protocols

    known = protocols()

    protocol, run = (None, args.target[0]) if len(args.target) == 1 else tuple(args.target[:2])
    if len(args.target) > 2:
        raise ConfigError(f"eval: expected [PROTOCOL] RUN, got {' '.join(args.target)}")
    if protocol is not None and protocol not in known:
        raise ConfigError(f"eval: unknown protocol '{protocol}'{closest(protocol, known)}; known: {', '.join(sorted(known)) or 'none'}")
    loaded = load_run(run, ckpt=args.ckpt, overrides=args.overrides)
    if protocol is not None:
        metrics = known[protocol](args, loaded)
    else:
        ds = loaded.data.split(args.split)
        if ds is None:
            raise ConfigError(f"--split: the data has no split '{args.split}'")
        metrics = evaluate(loaded.method, ds, batch_size=args.batch_size, collate=loaded.data.collate)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.json_out:
        from pathlib import Path

        Path(args.json_out).write_text(text)
    return 0
