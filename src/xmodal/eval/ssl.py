"""Self-supervised evaluation suite: `xmodal eval linear|knn|retrieval|finetune RUN`.

Works on any method that implements ``embed(batch) -> {name: [B, D]}`` (linear, knn, retrieval)
and, for fine-tuning, ``video_encoder() -> nn.Module`` (video [B, C, T, H, W] -> [B, D]; GDT: the
R(2+1)D trunk, STiCA: trunk + pooling). Protocol options come from ``args.options``
(``KEY=VALUE`` strings) and are typed by the dataclasses below.

* linear: L-BFGS logistic regression on frozen ``feature`` embeddings (`eval.probe.linear_probe`:
  train-held-out weight-decay search), train split -> test split.
* knn: weighted cosine kNN (k 20, T 0.07) on the same features.
* retrieval: cross-modal audio↔video in the head space on the test split (class-level hits when
  labels exist, and clip-level), plus the GDT paper's video retrieval (test queries against the
  train gallery, same class = hit, R@1/5/20).
* finetune: the GDT/STiCA protocol (§6), `finetune` in eval/ssl_finetune.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

from xmodal.config import from_dict, parse_scalar
from xmodal.engine.evaluate import to_device
from xmodal.errors import ConfigError, DataError
from xmodal.eval.metrics import retrieval_metrics, retrieval_report
from xmodal.eval.probe import knn_classify, linear_probe
from xmodal.eval.protocols import register_protocol


class Features(NamedTuple):
    emb: dict[str, torch.Tensor]  # name -> [N, D] float32 on CPU
    label: torch.Tensor | None  # [N] (or [N, K]) when the data has labels
    uid: list[str]


def _method_device(method) -> torch.device:
    return next((p.device for p in method.parameters()), torch.device("cpu"))


@torch.no_grad()
def extract_features(method, dataset: Dataset, *, keys: list[str] | None = None, batch_size: int = 64,
                     collate=None, num_workers: int = 0) -> Features:
    """``method.embed`` over a dataset in eval mode (the method's mode is restored)."""
    from xmodal.data.bundle import collate as default_collate

    if not hasattr(method, "embed"):
        raise ConfigError(f"{type(method).__name__} exposes no embeddings (no embed method)")
    device = _method_device(method)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate or default_collate)
    was = method.training
    method.eval()
    parts: dict[str, list] = {}
    labels, uids = [], []
    try:
        for batch in loader:
            out = method.embed(to_device(batch, device))
            missing = [k for k in keys or [] if k not in out]
            if missing:
                raise ConfigError(f"feature: {type(method).__name__}.embed gives {sorted(out)}, not {missing}")
            for k, v in out.items():
                if keys is None or k in keys:
                    parts.setdefault(k, []).append(v.detach().float().cpu())
            if "label" in batch:
                labels.append(torch.as_tensor(batch["label"]).cpu())
            uids += list(batch.get("uid", []))
    finally:
        method.train(was)
    emb = {k: torch.cat(v) for k, v in parts.items()}
    return Features(emb, torch.cat(labels) if labels else None, uids)


def _labelled(f: Features, what: str) -> torch.Tensor:
    if f.label is None or f.label.dim() != 1:
        raise DataError(f"{what}: needs single-label data (a 'label' key of shape [B])")
    return f.label


# --------------------------------------------------------------------------------- functions
def linear_eval(method, train: Dataset, test: Dataset, *, feature: str = "video", batch_size: int = 64,
                collate=None, num_classes: int | None = None, **probe_kw: Any):
    """Linear probe on frozen ``embed()[feature]`` (train -> test); returns `ProbeResult`."""
    ftr = extract_features(method, train, keys=[feature], batch_size=batch_size, collate=collate)
    fte = extract_features(method, test, keys=[feature], batch_size=batch_size, collate=collate)
    return linear_probe(ftr.emb[feature], _labelled(ftr, "linear probe"), fte.emb[feature],
                        _labelled(fte, "linear probe"), num_classes=num_classes, **probe_kw)


def knn_eval(method, train: Dataset, test: Dataset, *, feature: str = "video", k: int = 20,
             temperature: float = 0.07, batch_size: int = 64, collate=None, num_classes: int | None = None):
    ftr = extract_features(method, train, keys=[feature], batch_size=batch_size, collate=collate)
    fte = extract_features(method, test, keys=[feature], batch_size=batch_size, collate=collate)
    return knn_classify(ftr.emb[feature], _labelled(ftr, "knn"), fte.emb[feature], _labelled(fte, "knn"),
                        k=k, temperature=temperature, num_classes=num_classes)


def cross_modal_retrieval(f: Features, a: str = "audio_proj", b: str = "video_proj",
                          ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Retrieval between two embeddings of the same clips: clip-level (only the paired clip is a
    hit) and, with single labels, class-level (any clip of the query's class is a hit)."""
    if a not in f.emb or b not in f.emb:
        raise ConfigError(f"retrieval: embeddings '{a}' and '{b}' needed, the method gives {sorted(f.emb)}")
    names = (a.removesuffix("_proj")[0], b.removesuffix("_proj")[0])
    out = {f"clip_{k}": v for k, v in retrieval_report(f.emb[a], f.emb[b], names=names, ks=ks).items()}
    if f.label is not None and f.label.dim() == 1:
        out.update(retrieval_report(f.emb[a], f.emb[b], labels=f.label, names=names, ks=ks))
    return out


def video_retrieval(train: Features, test: Features, feature: str = "video",
                    ks: tuple[int, ...] = (1, 5, 20)) -> dict[str, float]:
    """GDT's nearest-neighbour video retrieval: test clips query the train gallery, a retrieved
    clip of the query's class is a hit (cosine similarity)."""
    m = retrieval_metrics(test.emb[feature], train.emb[feature], query_labels=_labelled(test, "video retrieval"),
                          gallery_labels=_labelled(train, "video retrieval"), ks=ks)
    return {f"video_{k}": v for k, v in m.items()}


# --------------------------------------------------------------------------------- protocols
@dataclass
class ProbeOptions:
    train_split: str = "train"
    test_split: str = ""  # "" = the --split argument
    feature: str = "video"
    k: int = 20
    temperature: float = 0.07


@dataclass
class RetrievalOptions:
    train_split: str = "train"  # video retrieval gallery ("" = skip)
    test_split: str = ""
    query: str = "audio_proj"
    gallery: str = "video_proj"
    feature: str = "video"
    ks: tuple[int, ...] = (1, 5, 10, 20)


def protocol_options(args: Any, cls: type):
    """Typed protocol options from ``args.options`` (["key=value", ...])."""
    raw = {}
    for item in getattr(args, "options", None) or []:
        if "=" not in item:
            raise ConfigError(f"--opt {item}: expected key=value")
        key, _, value = item.partition("=")
        raw[key.strip()] = parse_scalar(value)
    return from_dict(cls, raw, ("opt",))


def split_of(run, name: str) -> Dataset:
    ds = run.data.split(name)
    if ds is None:
        raise ConfigError(f"split: the data of this run has no split '{name}' (use --set data.train_split=... or --opt)")
    return ds


def _prep(args, run, cls):
    opts = protocol_options(args, cls)
    test = opts.test_split or getattr(args, "split", "test")
    return opts, test


@register_protocol("linear")
def linear_protocol(args, run) -> dict[str, float]:
    opts, test = _prep(args, run, ProbeOptions)
    res = linear_eval(run.method, split_of(run, opts.train_split), split_of(run, test), feature=opts.feature,
                      batch_size=getattr(args, "batch_size", 64), collate=run.data.collate,
                      num_classes=run.data.info.num_classes or None)
    return {f"linear_{k}": v for k, v in res.metrics().items()}


@register_protocol("knn")
def knn_protocol(args, run) -> dict[str, float]:
    opts, test = _prep(args, run, ProbeOptions)
    res = knn_eval(run.method, split_of(run, opts.train_split), split_of(run, test), feature=opts.feature,
                   k=opts.k, temperature=opts.temperature, batch_size=getattr(args, "batch_size", 64),
                   collate=run.data.collate, num_classes=run.data.info.num_classes or None)
    return {f"knn_{k}": v for k, v in res.metrics().items()}


@register_protocol("retrieval")
def retrieval_protocol(args, run) -> dict[str, float]:
    opts, test = _prep(args, run, RetrievalOptions)
    bs = getattr(args, "batch_size", 64)
    fte = extract_features(run.method, split_of(run, test), batch_size=bs, collate=run.data.collate)
    out: dict[str, float] = {}
    if opts.query in fte.emb and opts.gallery in fte.emb:
        out.update(cross_modal_retrieval(fte, opts.query, opts.gallery, ks=opts.ks))
    if opts.train_split and opts.feature in fte.emb and fte.label is not None:
        ftr = extract_features(run.method, split_of(run, opts.train_split), keys=[opts.feature], batch_size=bs,
                               collate=run.data.collate)
        out.update(video_retrieval(ftr, fte, opts.feature, ks=opts.ks))
    if not out:
        raise ConfigError(f"retrieval: nothing to evaluate with embeddings {sorted(fte.emb)}")
    return out


@register_protocol("finetune")
def finetune_protocol(args, run) -> dict[str, float]:
    from xmodal.eval.ssl_finetune import finetune_from_run

    return finetune_from_run(args, run)
