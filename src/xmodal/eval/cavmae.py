"""CAV-MAE evaluation protocol (spec §10-§11): weight averaging, multi-frame averaging, retrieval.

* `average_weights`: uniform mean of per-epoch weight files ``wa_start..wa_end`` (the reference
  averages its saved ``audio_model.<epoch>.pth`` files before testing).
* multi-frame averaging: probabilities (sigmoid for mAP, softmax for accuracy) of every stored
  frame of a clip are averaged, then scored — a store read with ``image.eval_all`` yields one item
  per frame and `CavmaeFinetune.eval_metrics` averages them by clip (``group``); clips held in
  memory (a ``video`` key) are averaged inside the method over ``inputs.eval_frames`` frames.
* `retrieval_metrics`: pretrained model, unmasked modality features, mean-pooled, cosine; both
  directions with R@1/5/10 and median rank, exact pair (the paper's protocol) and, given labels,
  class-level (any clip of the same class counts: the embedded-data protocol).

Protocols for ``xmodal eval``: ``cavmae-retrieval`` and ``cavmae-test`` (WA + frame averaging with
the recipe's ``wa_start``/``wa_end`` and ``inputs.eval_frames``); ``xmodal cavmae retrieval|test``
expose the same with command-line options.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from xmodal.errors import CheckpointError, ConfigError
from xmodal.eval.metrics import classification_report, retrieval_report
from xmodal.eval.protocols import register_protocol

log = logging.getLogger(__name__)

EPOCH_DIR = "epochs"  # run_dir/epochs/epoch_XXX.safetensors: weights after epoch XXX (1-based)


# ------------------------------------------------------------------------------- weight averaging
def epoch_weight_path(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / EPOCH_DIR / f"epoch_{epoch:03d}.safetensors"


def epoch_weight_files(run_dir: str | Path, start: int, end: int) -> list[Path]:
    """The per-epoch weight files start..end (inclusive) of a run; CheckpointError naming the missing ones."""
    if not 1 <= start <= end:
        raise ConfigError(f"weight averaging: expected 1 <= wa_start <= wa_end, got {start}..{end}")
    paths = [epoch_weight_path(run_dir, e) for e in range(start, end + 1)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise CheckpointError(
            f"{Path(run_dir) / EPOCH_DIR}: weight averaging {start}..{end} needs {len(missing)} missing file(s): "
            f"{', '.join(missing[:4])} (train with per-epoch weights kept)"
        )
    return paths


def average_weights(sources: Sequence[str | Path | dict]) -> dict[str, torch.Tensor]:
    """Uniform mean Σ_i w_i / n of state dicts (files or dicts) with identical keys and shapes.

    Floating tensors are summed in float64 and cast back; integer buffers must agree across
    sources (they are counters or indices, not weights) and are taken from the first.
    """
    from xmodal.engine.checkpoint import load_state_file

    if not sources:
        raise ConfigError("weight averaging: no weight files given")
    acc: dict[str, torch.Tensor] = {}
    first: dict[str, torch.Tensor] = {}
    for i, src in enumerate(sources):
        state = src if isinstance(src, dict) else load_state_file(src)
        if isinstance(state.get("model"), dict):
            state = state["model"]
        name = str(src) if not isinstance(src, dict) else f"state #{i}"
        if i == 0:
            first = state
            acc = {k: v.double() if v.is_floating_point() else v.clone() for k, v in state.items()}
            continue
        if state.keys() != acc.keys():
            diff = sorted(set(state) ^ set(acc))
            raise CheckpointError(f"{name}: keys differ from the first weights: {', '.join(diff[:4])}")
        for k, v in state.items():
            if v.shape != acc[k].shape:
                raise CheckpointError(f"{name}: {k} has shape {tuple(v.shape)}, the first weights {tuple(acc[k].shape)}")
            if v.is_floating_point():
                acc[k] += v.double()
            elif not torch.equal(v, acc[k]):
                raise CheckpointError(f"{name}: integer tensor {k} differs from the first weights")
    n = len(sources)
    return {k: (v / n).to(first[k].dtype) if first[k].is_floating_point() else v for k, v in acc.items()}


# ------------------------------------------------------------------------------ classification
def classification_metrics(probs: Any, labels: Any, multilabel: bool) -> dict[str, float]:
    """mAP (multi-label) or top-1 accuracy (single-label) of averaged probabilities.

    Soft eval labels (smoothed by a dataset) are hardened first: multi-hot = label > 0.5,
    single-label = argmax.
    """
    y = torch.as_tensor(labels)
    if y.is_floating_point() and y.dim() == 2:
        y = (y > 0.5).long() if multilabel else y.argmax(dim=1)
    return classification_report(probs, y, multilabel=multilabel)


# ----------------------------------------------------------------------------------- retrieval
def retrieval_metrics(audio: Any, image: Any, labels: Any = None, center: bool = False) -> dict[str, float]:
    """Both directions (v2a: visual query -> audio gallery; a2v) with R@1/5/10, median/mean rank.

    Exact-pair keys ``v2a_R@1``...; with labels also class-level ``class_v2a_R@1``... (a match is
    any gallery clip of the query's class; multi-hot: any shared class). ``center`` subtracts each
    side's mean first: for models trained with ``method.center`` (their pooled vectors share a large
    common component that the contrastive term never saw, and it would make hubs of some clips).
    """
    if center:
        audio, image = (torch.as_tensor(x).float() for x in (audio, image))
        audio, image = audio - audio.mean(0, keepdim=True), image - image.mean(0, keepdim=True)
    out = retrieval_report(image, audio, names=("v", "a"))
    y = None if labels is None else torch.as_tensor(labels)
    if y is not None and y.is_floating_point() and y.dim() == 2:
        y = (y > 0.5).long()
    if y is not None and (y.dim() == 2 or bool((y >= 0).all())):  # -1 = unlabelled clips: no class-level view
        out.update({f"class_{k}": v for k, v in retrieval_report(image, audio, labels=y, names=("v", "a")).items()})
    return out


def collect_retrieval(method: Any, dataset: Any, *, batch_size: int = 64, collate=None, progress_bar: bool = True) -> dict[str, float]:
    from xmodal.engine.evaluate import collect_outputs

    if not hasattr(method, "retrieval_step"):
        raise ConfigError(f"cavmae retrieval needs a pretrained CAV-MAE run (cavmae_pretrain), got {type(method).__name__}")
    out = collect_outputs(method, dataset, batch_size=batch_size, collate=collate, desc="retrieval", step_fn="retrieval_step",
                          progress_bar=progress_bar)
    return retrieval_metrics(out["audio"], out["image"], out.get("label"), center=bool(getattr(method.cfg, "center", False)))


# ------------------------------------------------------------------------------------ protocols
def _split(loaded: Any, name: str):
    ds = loaded.data.split(name)
    if ds is None:
        raise ConfigError(f"--split: the data has no split '{name}'")
    return ds


def evaluate_finetuned(
    loaded: Any,
    run_dir: str | Path | None,
    *,
    split: str = "test",
    wa: tuple[int, int] | None = None,
    frames: int = 1,
    batch_size: int = 64,
) -> dict[str, float]:
    """The reference's final test: optional weight averaging, then multi-frame probability averaging.

    `frames` > 1 sets the method's ``inputs.eval_frames`` (clips held in memory); a prepared store
    averages the stored frames when its recipe reads them all (``data.image.eval_all: true``).
    """
    from xmodal.engine.checkpoint import load_weights
    from xmodal.engine.evaluate import evaluate

    method = loaded.method
    if not hasattr(method, "predict_probs"):
        raise ConfigError(f"cavmae test needs a finetuned CAV-MAE run (cavmae_finetune), got {type(method).__name__}")
    metrics: dict[str, float] = {}
    if wa is not None:
        if run_dir is None:
            raise ConfigError("weight averaging needs a run folder")
        files = epoch_weight_files(run_dir, *wa)
        load_weights(method, average_weights(files), strict=True, what=f"average of {len(files)} epoch weights")
        metrics.update(wa_start=float(wa[0]), wa_end=float(wa[1]))
    if frames > 1:
        method.cfg.inputs.eval_frames = frames
    metrics.update(evaluate(method, _split(loaded, split), batch_size=batch_size, collate=loaded.data.collate))
    metrics["frames"] = float(frames)
    return metrics


@register_protocol("cavmae-retrieval")
def retrieval_protocol(args, loaded) -> dict[str, float]:
    return collect_retrieval(loaded.method, _split(loaded, args.split), batch_size=args.batch_size, collate=loaded.data.collate)


@register_protocol("cavmae-test")
def test_protocol(args, loaded) -> dict[str, float]:
    c = loaded.method.cfg
    wa = (c.wa_start, c.wa_end) if getattr(c, "wa_end", 0) else None
    run = Path(args.target[-1])
    frames = max(1, c.inputs.eval_frames) if hasattr(c, "inputs") else 1
    return evaluate_finetuned(loaded, run if run.is_dir() else None, split=args.split, wa=wa, frames=frames, batch_size=args.batch_size)
