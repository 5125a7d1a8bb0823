"""`xmodal textkd <verb>`: the stages of text-to-video distillation (specs/textkd.md §1).

    xmodal textkd corpus --out corpus.txt                 # embedded: avdigits-seq grammar text corpus
    xmodal textkd mlm --corpus corpus.txt --out lm/       # 1. masked-LM pretraining (model + tokenizer)
    xmodal train recipes/textkd/<data>-teacher.yaml       # 2. teacher fine-tuning (method text_teacher)
    xmodal textkd teacher-preds runs/<teacher> --out preds.safetensors [--data <student recipe>]
    xmodal train recipes/textkd/<data>-student-kd.yaml    # 3. the student reads the stored predictions
    xmodal textkd ensemble runs/<student-a> runs/<student-b> --split val   # score-averaging ensemble
    xmodal textkd windows manifest.jsonl --tau-a 1 --tau-o 10 --out windows/manifest.jsonl  # real data prep
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def add_commands(sub, common) -> None:
    p = sub.add_parser("textkd", parents=[common], help="text-KD stages: corpus, mlm, teacher-preds, ensemble, windows",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="textkd_verb", metavar="<stage>", required=True)

    c = verbs.add_parser("corpus", parents=[common], help="write the avdigits-seq grammar's text corpus (one recipe per line)")
    c.add_argument("--out", required=True, help="text file to write")
    c.add_argument("--lines", type=int, default=20000, help="number of lines (default: 20000)")
    c.add_argument("--seed", type=int, default=0, help="which lines (the grammar is fixed by grammar_seed)")
    c.add_argument("--recipe", default=None, help="take the grammar from this recipe's avdigits_seq data section")
    c.set_defaults(func=cmd_corpus)

    m = verbs.add_parser("mlm", parents=[common], help="masked-LM pretraining on a corpus (saves model + tokenizer)")
    m.add_argument("--corpus", required=True, help="text file, one example per line")
    m.add_argument("--out", required=True, help="output folder (an HF model folder with its tokenizer)")
    m.add_argument("--init", default=None, help="start from this local HF folder (default: random init of --family/--size)")
    m.add_argument("--family", default="bert", help="random init: bert, roberta, distilbert, albert, deberta, electra")
    m.add_argument("--size", default="tiny", choices=["tiny", "base"], help="random init size (default: tiny)")
    m.add_argument("--vocab-size", type=int, default=0,
                   help="random init: 0 = every word of the corpus (deterministic), N = a WordPiece vocabulary of N trained on it")
    m.add_argument("--steps", type=int, default=200_000, help="optimisation steps (default: 200000, the published run)")
    m.add_argument("--batch-size", type=int, default=12, help="(default: 12)")
    m.add_argument("--lr", type=float, default=5e-5, help="peak lr, linear decay to 0 (default: 5e-5)")
    m.add_argument("--mask-prob", type=float, default=0.15, help="(default: 0.15)")
    m.add_argument("--max-len", type=int, default=512, help="tokens per line (default: 512)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--device", default="cpu")
    m.set_defaults(func=cmd_mlm)

    t = verbs.add_parser("teacher-preds", parents=[common], help="store a trained teacher's per-uid logits and LM features")
    t.add_argument("run", help="the teacher's run folder (xmodal train of a text_teacher recipe)")
    t.add_argument("--out", required=True, help="prediction store to write (.safetensors)")
    t.add_argument("--data", default=None, help="recipe whose data section lists the segments (default: the teacher's)")
    t.add_argument("--splits", default="train,val,test", help="comma-separated roles to cover (default: train,val,test)")
    t.add_argument("--ckpt", default=None, help="weights file (default: the run's final weights)")
    t.add_argument("--batch-size", type=int, default=64)
    t.set_defaults(func=cmd_teacher_preds)

    e = verbs.add_parser("ensemble", parents=[common], help="evaluate the score average of several student runs")
    e.add_argument("runs", nargs="+", help="run folders of students trained on the same data")
    e.add_argument("--split", default="test", help="split to evaluate (default: test)")
    e.add_argument("--mode", default="prob", choices=["prob", "logit"], help="average softmax probabilities or logits")
    e.add_argument("--weights", default=None, help="comma-separated weight per run (default: equal)")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--json", dest="json_out", default=None, help="also write the metrics to this JSON file")
    e.set_defaults(func=cmd_ensemble)

    w = verbs.add_parser("windows", parents=[common], help="segment manifest -> observed-window manifest + past-frame labels")
    w.add_argument("manifest", help="an imported segment manifest (xmodal import egtea|epic55)")
    w.add_argument("--out", required=True, help="manifest.jsonl to write (labels.csv and json extras are copied)")
    w.add_argument("--tau-a", type=float, required=True, help="anticipation time (s): EGTEA 0.5, EK55 1.0")
    w.add_argument("--tau-o", type=float, default=10.0, help="observed window (s) before it (default: 10)")
    w.add_argument("--fps", type=float, default=1.0, help="frame rate the windows will be prepared at (default: 1)")
    w.add_argument("--frames", type=int, default=10, help="frames the student reads (the last ones; default: 10)")
    w.set_defaults(func=cmd_windows)


# ------------------------------------------------------------------------------------- stages
def _seq_config(recipe: str | None):
    from xmodal.data.embedded.avdigits_seq import SeqConfig

    if recipe is None:
        return SeqConfig()
    from dataclasses import fields

    from xmodal.config import load_config
    from xmodal.errors import ConfigError

    data = load_config(recipe).data
    names = {f.name for f in fields(SeqConfig)}
    if not names <= {f.name for f in fields(data)}:
        raise ConfigError(f"{recipe}: data section '{data.name}' is not an avdigits_seq grammar")
    return SeqConfig(**{n: getattr(data, n) for n in names})


def cmd_corpus(args: argparse.Namespace) -> int:
    from xmodal.data.embedded.avdigits_seq import text_corpus

    lines = text_corpus(_seq_config(args.recipe), args.seed, args.lines)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(json.dumps({"out": str(out), "lines": len(lines)}))
    return 0


def read_corpus(path: str | Path) -> list[str]:
    from xmodal.errors import DataError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: corpus file not found")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{p}: the corpus has no non-empty line")
    return lines


def cmd_mlm(args: argparse.Namespace) -> int:
    import torch

    from xmodal.methods.text_teacher import word_tokenizer
    from xmodal.models.text import mlm_pretrain, text_config, train_wordpiece_tokenizer

    lines = read_corpus(args.corpus)
    tokenizer = None
    init = args.init
    torch.manual_seed(args.seed)  # the random init below draws from the global generator
    if init is None:
        tokenizer = train_wordpiece_tokenizer(lines, vocab_size=args.vocab_size) if args.vocab_size else word_tokenizer(lines)
        init = text_config(args.family, size=args.size, vocab_size=len(tokenizer), max_len=args.max_len,
                           pad_token_id=tokenizer.pad_token_id)
    res = mlm_pretrain(init, lines, args.out, tokenizer=tokenizer, steps=args.steps, batch_size=args.batch_size,
                       lr=args.lr, mask_prob=args.mask_prob, max_len=args.max_len, seed=args.seed, device=args.device)
    tail = res.losses[-min(50, len(res.losses)):]
    print(json.dumps({"out": str(res.out_dir), "steps": len(res.losses), "first_loss": res.losses[0] if res.losses else None,
                      "last_loss_mean": sum(tail) / len(tail) if tail else None}))
    return 0


def cmd_teacher_preds(args: argparse.Namespace) -> int:
    roles = [s.strip() for s in args.splits.split(",") if s.strip()]
    out = write_teacher_predictions(args.run, args.out, data_recipe=args.data, roles=roles, ckpt=args.ckpt,
                                    batch_size=args.batch_size)
    print(json.dumps({"out": str(out.path), "uids": out.count, "per_split": out.per_split, "seconds": round(out.seconds, 3)}))
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    metrics = ensemble_runs(args.runs, split=args.split, mode=args.mode, weights=weights, batch_size=args.batch_size)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text)
    return 0


def cmd_windows(args: argparse.Namespace) -> int:
    import shutil

    import torch

    from xmodal.data.features import FeatureStore
    from xmodal.data.manifest import read_manifest, write_manifest
    from xmodal.data.sequences import anticipation_window_rows, past_frame_labels
    from xmodal.errors import ConfigError

    src = Path(args.manifest)
    out = Path(args.out)
    if out.resolve() == src.resolve():
        raise ConfigError(f"--out {out}: would overwrite the segment manifest; write to another folder")
    rows = read_manifest(src)
    kept = anticipation_window_rows(rows, tau_a=args.tau_a, tau_o=args.tau_o)
    if not kept:
        from xmodal.errors import DataError

        raise DataError(f"{src}: no segment starts later than tau_a = {args.tau_a} s into its video; nothing is observed")
    write_manifest(kept, out)
    past = past_frame_labels(rows, kept, fps=args.fps, frames=args.frames)
    labels_store = out.parent / "past_labels.safetensors"
    FeatureStore.write(labels_store, [r.uid for r in kept], {"past_labels": torch.tensor([past[r.uid] for r in kept])},
                       {"fps": str(args.fps), "frames": str(args.frames), "tau_a": str(args.tau_a)})
    for extra in ["labels.csv", *(p.name for p in src.parent.glob("*.json"))]:
        if (src.parent / extra).is_file() and (src.parent / extra).resolve() != (out.parent / extra).resolve():
            shutil.copyfile(src.parent / extra, out.parent / extra)
    print(json.dumps({"out": str(out), "rows": len(kept), "dropped": len(rows) - len(kept),
                      "past_labels": str(labels_store)}))
    return 0


# ---------------------------------------------------------------------------- teacher predictions
@dataclass
class PredsOut:
    path: Path
    count: int  # uids stored
    per_split: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # time spent running the teacher


def text_only(data_cfg: Any) -> Any:
    """A data section reduced to what the teacher reads: no per-frame inputs, no feature stores
    (a student recipe names the very store being written)."""
    names = {f.name for f in fields(data_cfg)}
    changes = {k: v for k, v in (("inputs", []), ("features", {})) if k in names}
    return replace(data_cfg, **changes) if changes else data_cfg


def write_teacher_predictions(run: str | Path, out: str | Path, *, data_recipe: str | None = None,
                              roles: list[str] | tuple[str, ...] = ("train", "val", "test"), ckpt: str | None = None,
                              batch_size: int = 64) -> PredsOut:
    """Run a trained text teacher once over every segment of `roles` and store, per uid, its mean
    action logits [C] and mean first-token feature [H] over the candidate histories
    (FeatureStore tensors "logits" and "feature"; the student's data reads them back)."""
    from xmodal.config import load_config, to_dict
    from xmodal.data.features import FeatureStore
    from xmodal.engine.evaluate import collect_outputs
    from xmodal.engine.runs import load_run, resolve_config_path
    from xmodal.errors import CheckpointError, ConfigError
    from xmodal.registry import DATASETS

    teacher_cfg = load_config(resolve_config_path(run))
    if teacher_cfg.method.name != "text_teacher":
        raise ConfigError(f"{run}: method '{teacher_cfg.method.name}' is not a text_teacher run")
    data = DATASETS.build(text_only(teacher_cfg.data))
    loaded = load_run(run, ckpt=ckpt, data=data)
    if loaded.weights is None:
        raise CheckpointError(f"{run}: no trained weights (weights.safetensors or a checkpoint); train the teacher first")
    if data_recipe is not None:
        data = DATASETS.build(text_only(load_config(data_recipe).data))
        ours, theirs = loaded.data.info.extra.get("action_texts"), data.info.extra.get("action_texts")
        if ours != theirs:
            raise ConfigError(f"--data {data_recipe}: its actions differ from the teacher's ({len(theirs or [])} vs {len(ours or [])} action texts)")
    uids, logits, feats, per_split = [], [], [], {}
    t0 = time.perf_counter()
    for role in roles:
        ds = data.split(role)
        if ds is None:
            log.info("teacher-preds: the data has no '%s' split; skipped", role)
            continue
        o = collect_outputs(loaded.method, ds, batch_size=batch_size, collate=data.collate, desc=f"teacher {role}")
        uids += [str(u) for u in o["uid"]]
        logits.append(o["logits"].float())
        feats.append(o["feature"].float())
        per_split[role] = len(o["uid"])
    seconds = time.perf_counter() - t0
    if not uids:
        raise ConfigError(f"--splits {','.join(roles)}: none of these splits exists in the data")
    m = loaded.cfg.method
    meta = {"teacher_run": str(run), "weights": str(loaded.weights), "method": json.dumps(to_dict(m)),
            "hist_len": str(m.hist_len), "num_classes": str(loaded.data.info.num_classes),
            "feature_dim": str(feats[0].shape[1]), "splits": json.dumps(per_split)}  # fmt: skip
    path = FeatureStore.write(out, uids, {"logits": _cat(logits), "feature": _cat(feats)}, meta)
    return PredsOut(Path(path), len(uids), per_split, seconds)


def _cat(parts: list) -> Any:
    import torch

    return torch.cat(parts).contiguous()


# ------------------------------------------------------------------------------------ ensembles
def ensemble_runs(runs: list[str], *, split: str = "test", mode: str = "prob", weights: list[float] | None = None,
                  batch_size: int = 64) -> dict:
    """Each run's eval outputs on `split` (data rebuilt once per distinct data section), aligned by
    uid and averaged; metrics of the ensemble and of every member."""
    from xmodal.config import load_config, to_dict
    from xmodal.engine.evaluate import collect_outputs
    from xmodal.engine.runs import load_run, resolve_config_path
    from xmodal.errors import CheckpointError, ConfigError
    from xmodal.eval.anticipation import anticipation_metrics, ensemble_outputs

    cache: dict[str, Any] = {}
    outputs, members, space = [], {}, None
    for run in runs:
        key = json.dumps(to_dict(load_config(resolve_config_path(run)).data), sort_keys=True)
        loaded = load_run(run, data=cache.get(key))
        cache[key] = loaded.data
        if loaded.weights is None:
            raise CheckpointError(f"{run}: no trained weights to evaluate")
        ds = loaded.data.split(split)
        if ds is None:
            raise ConfigError(f"--split: run {run} has no split '{split}'")
        out = collect_outputs(loaded.method, ds, batch_size=batch_size, collate=loaded.data.collate, desc=str(run))
        if "uid" not in out:
            raise ConfigError(f"{run}: its method's eval outputs carry no uid (needed to align ensemble members)")
        outputs.append(out)
        members[str(run)] = loaded.method.eval_metrics(out)
        space = space or getattr(loaded.method, "space", None)
    ens = ensemble_outputs(outputs, mode=mode, weights=weights, names=[str(r) for r in runs])
    return {"ensemble": anticipation_metrics(ens.scores, ens.labels, space), "members": members,
            "mode": mode, "split": split, "samples": len(ens.uids)}
