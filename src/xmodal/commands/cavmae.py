"""`xmodal cavmae inpaint|retrieval|test` and the CAV-MAE converters of `xmodal convert`.

RUN is a run folder (its final weights are loaded) or a recipe; ``--ckpt`` loads any CAV-MAE
weights instead (a released ``.pth``, a converted file, a run's weights or checkpoint).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_commands(sub, common) -> None:
    p = sub.add_parser("cavmae", parents=[common], help="CAV-MAE tools: inpainting figures, retrieval, final test",
                       description="CAV-MAE evaluation tools (see docs/cavmae.md).")
    verbs = p.add_subparsers(dest="cavmae_verb", metavar="<cavmae verb>")

    def run_parser(name: str, help_: str) -> argparse.ArgumentParser:
        q = verbs.add_parser(name, parents=[common], help=help_, description=help_)
        q.add_argument("run", metavar="RUN", help="run folder or recipe")
        q.add_argument("--ckpt", default=None, help="CAV-MAE weights to load instead of the run's (official .pth accepted)")
        q.add_argument("--split", default="test", help="data split (train, val, test or an extra such as pool)")
        q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
        return q

    q = run_parser("inpaint", "PNGs of masked input / reconstruction / target for spectrograms and frames (pretrained model)")
    q.add_argument("--out", required=True, help="folder for the PNGs and inpaint.json")
    q.add_argument("--n", type=int, default=4, help="number of clips (the first n of the split)")
    q.add_argument("--ratio", type=float, default=0.75, help="masking ratio of both modalities")
    q.add_argument("--mode", default="unstructured", choices=["unstructured", "time", "freq", "tf"], help="audio masking mode")
    q.add_argument("--seed", type=int, default=0, help="masking seed")
    q.set_defaults(func=cmd_inpaint)

    q = run_parser("retrieval", "audio<->visual retrieval R@1/5/10 and median rank, both directions (pretrained model)")
    q.add_argument("--batch-size", type=int, default=64)
    q.add_argument("--json", dest="json_out", default=None, help="also write the metrics here")
    q.set_defaults(func=cmd_retrieval)

    q = run_parser("test", "finetuned model: weight averaging over epochs, then probabilities averaged over frames")
    q.add_argument("--wa", type=int, nargs=2, default=None, metavar=("START", "END"),
                   help="average the per-epoch weights START..END (default: the recipe's wa_start/wa_end)")
    q.add_argument("--no-wa", action="store_true", help="evaluate the final weights as they are")
    q.add_argument("--frames", type=int, default=None, help="frames to average (default: the recipe's inputs.eval_frames)")
    q.add_argument("--batch-size", type=int, default=64)
    q.add_argument("--json", dest="json_out", default=None, help="also write the metrics here")
    q.set_defaults(func=cmd_test)
    p.set_defaults(func=lambda args: p.print_help())


def _load(args: argparse.Namespace):
    """LoadedRun with --ckpt applied (every model key must be present in the file)."""
    from xmodal.engine.runs import load_run
    from xmodal.errors import CheckpointError
    from xmodal.methods.cavmae import read_cavmae_state
    from xmodal.models.cavmae import load_cavmae_checkpoint

    loaded = load_run(args.run, overrides=args.overrides)
    model = getattr(loaded.method, "model", None)
    if args.ckpt:
        if model is None:
            raise CheckpointError(f"--ckpt: {type(loaded.method).__name__} is not a CAV-MAE method")
        rep = load_cavmae_checkpoint(model, read_cavmae_state(args.ckpt, getattr(loaded.method, "arch", None)), strict=False)
        if rep.missing:
            raise CheckpointError(f"{args.ckpt}: {len(rep.missing)} model weights missing from the file: {', '.join(rep.missing[:4])}")
    return loaded


def _emit(metrics: dict, json_out: str | None) -> None:
    text = json.dumps(metrics, indent=2)
    print(text)
    if json_out:
        Path(json_out).write_text(text)


def cmd_inpaint(args: argparse.Namespace) -> int:
    from xmodal.errors import ConfigError
    from xmodal.report.inpaint import write_inpainting

    loaded = _load(args)
    method = loaded.method
    if not hasattr(method, "losses"):  # the pretraining method: it owns the decoder
        raise ConfigError(f"cavmae inpaint needs a pretrained CAV-MAE (method cavmae_pretrain), got {type(method).__name__}")
    ds = loaded.data.split(args.split)
    if ds is None or len(ds) == 0:
        raise ConfigError(f"--split: the data has no (non-empty) split '{args.split}'")
    summary = write_inpainting(method, ds, args.out, n=args.n, ratio=args.ratio, mode=args.mode, seed=args.seed,
                               collate=loaded.data.collate)
    _emit(summary, None)
    return 0


def cmd_retrieval(args: argparse.Namespace) -> int:
    from xmodal.errors import ConfigError
    from xmodal.eval.cavmae import collect_retrieval

    loaded = _load(args)
    ds = loaded.data.split(args.split)
    if ds is None:
        raise ConfigError(f"--split: the data has no split '{args.split}'")
    _emit(collect_retrieval(loaded.method, ds, batch_size=args.batch_size, collate=loaded.data.collate), args.json_out)
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from xmodal.eval.cavmae import evaluate_finetuned

    loaded = _load(args)
    c = loaded.method.cfg
    wa = None if args.no_wa else (tuple(args.wa) if args.wa else ((c.wa_start, c.wa_end) if getattr(c, "wa_end", 0) else None))
    frames = args.frames if args.frames is not None else getattr(getattr(c, "inputs", None), "eval_frames", 1)
    run = Path(args.run)
    metrics = evaluate_finetuned(loaded, run if run.is_dir() else None, split=args.split, wa=wa, frames=frames, batch_size=args.batch_size)
    _emit(metrics, args.json_out)
    return 0


# ------------------------------------------------------------------------------------ converters
def convert_official(in_path: str, out_path: str, args) -> str:
    """Released CAV-MAE file -> safetensors with our key names (validated against our layout).

    Options: size (base, the layout of every release; tiny for tests). Audio length, depth and
    class count are read from the file.
    """
    from xmodal.convert.cavmae import official_to_ours
    from xmodal.engine.checkpoint import load_state_file, save_safetensors_atomic
    from xmodal.models.cavmae import cavmae_config

    size = _options(args, "cavmae", size="base")["size"]
    state = official_to_ours(load_state_file(in_path), cavmae_config(size))
    kind = "pretrain" if "decoder_embed.weight" in state else "finetune"
    meta = {"source": Path(in_path).name, "kind": kind, "size": size}
    if "mlp_head.1.weight" in state:
        meta["label_dim"] = state["mlp_head.1.weight"].shape[0]
    save_safetensors_atomic(state, out_path, meta)
    return f"{in_path} -> {out_path}: CAV-MAE {kind}, {len(state)} tensors, {sum(v.numel() for v in state.values()) / 1e6:.2f} M values"


def _options(args, converter: str, **defaults) -> dict:
    """`--opt` values over `defaults`; unknown keys are an error."""
    from xmodal.errors import ConfigError

    opts = dict(getattr(args, "options", {}) or {})
    unknown = sorted(set(opts) - set(defaults))
    if unknown:
        raise ConfigError(f"convert {converter}: unknown option(s) {', '.join(unknown)}; known: {', '.join(defaults)}")
    return {**defaults, **opts}


def convert_imagenet(in_path: str, out_path: str, args) -> str:
    """ImageNet MAE ViT -> CAV-MAE pretraining init; options: size (base|tiny), seed."""
    from xmodal.convert.cavmae import imagenet_mae_to_cavmae
    from xmodal.engine.checkpoint import load_state_file, save_safetensors_atomic
    from xmodal.models.cavmae import cavmae_config

    opts = _options(args, "cavmae-imagenet", size="base", seed=0)
    size, seed = opts["size"], int(opts["seed"])
    state = imagenet_mae_to_cavmae(load_state_file(in_path), cavmae_config(size), seed=seed)
    save_safetensors_atomic(state, out_path, {"source": Path(in_path).name, "kind": "pretrain-init", "size": size})
    return f"{in_path} -> {out_path}: CAV-MAE pretraining init ({size}), {len(state)} tensors"
