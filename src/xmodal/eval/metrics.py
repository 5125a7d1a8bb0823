"""Evaluation metrics: classification accuracy, mAP and cross-modal retrieval.

Every function takes torch tensors (numpy arrays and lists are converted with ``torch.as_tensor``),
is vectorised over samples and returns percentages in [0, 100] as Python floats; ranks are 1-based.

Tie rule for top-k (shared by every accuracy here so that they agree with each other): the label's
position among the C scores of its row is ``#{c : s_c > s_y} + #{c > y : s_c == s_y}``, i.e. equal
scores are ordered by *decreasing* class index. This is exactly what scikit-learn's
``top_k_accuracy_score`` does (a stable ascending sort reversed), so our numbers equal its numbers
even on integer-valued scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from xmodal.errors import DataError

# Bound on the number of similarity entries held at once by retrieval (rows are chunked).
_CHUNK_ELEMENTS = 1 << 24


# ------------------------------------------------------------------------------------ inputs
def _scores(x: Any, what: str = "scores", ndim: int = 2) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() != ndim:
        raise DataError(f"{what}: expected a {ndim}-d array, found shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.double()
    elif t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    if t.numel() and not torch.isfinite(t).all():
        raise DataError(f"{what}: expected finite values, found {int((~torch.isfinite(t)).sum())} NaN/inf")
    return t.detach().cpu()


def _labels(y: Any, n: int, num_classes: int, what: str = "labels") -> torch.Tensor:
    t = torch.as_tensor(y).detach().cpu()
    if t.dim() != 1 or t.shape[0] != n:
        raise DataError(f"{what}: expected shape ({n},) to match the scores, found {tuple(t.shape)}")
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise DataError(f"{what}: expected integer class indices, found fractional values")
    t = t.long()
    if n == 0:
        raise DataError(f"{what}: expected at least one sample, found none")
    if t.min() < 0 or t.max() >= num_classes:
        raise DataError(
            f"{what}: expected class indices in [0, {num_classes - 1}], found [{int(t.min())}, {int(t.max())}]"
        )
    return t


def _multi_hot(y: Any, shape: torch.Size, what: str = "targets") -> torch.Tensor:
    t = torch.as_tensor(y).detach().cpu()
    if tuple(t.shape) != tuple(shape):
        raise DataError(f"{what}: expected shape {tuple(shape)} to match the scores, found {tuple(t.shape)}")
    if t.numel() and not ((t == 0) | (t == 1)).all():
        raise DataError(f"{what}: expected binary 0/1 (multi-hot) values, found others")
    return t.bool()


# ---------------------------------------------------------------------------- classification
def label_rank(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """0-based position of each row's label when its scores are sorted (see the module tie rule)."""
    s_true = scores.gather(1, labels[:, None])
    idx = torch.arange(scores.shape[1])
    ahead = (scores > s_true) | ((scores == s_true) & (idx[None, :] > labels[:, None]))
    return ahead.sum(1)


def top1_class(scores: torch.Tensor) -> torch.Tensor:
    """Top-1 class of every row under the module tie rule (the highest index among tied maxima)."""
    return (scores.shape[1] - 1) - scores.flip(1).argmax(1)


def topk_accuracy(scores: Any, labels: Any, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """{"top{k}": % of samples whose label is among the k highest scores}; k > C counts as C."""
    s = _scores(scores)
    y = _labels(labels, s.shape[0], s.shape[1])
    rank = label_rank(s, y)
    return {f"top{k}": 100.0 * (rank < min(k, s.shape[1])).double().mean().item() for k in ks}


def _class_mean_hits(hits: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor) -> float:
    """Mean over `classes` of the hit rate among samples of that class (all classes must be present)."""
    per_class_hits = torch.zeros(int(labels.max()) + 1, dtype=torch.float64).index_add_(
        0, labels, hits.double()
    )
    counts = torch.bincount(labels).double()
    return 100.0 * (per_class_hits[classes] / counts[classes]).mean().item()


def mean_class_accuracy(scores: Any, labels: Any, num_classes: int | None = None) -> float:
    """Mean over the classes present in `labels` of per-class top-1 recall (absent classes skipped)."""
    s = _scores(scores)
    if num_classes is not None and s.shape[1] != num_classes:
        raise DataError(f"scores: expected {num_classes} class columns, found {s.shape[1]}")
    y = _labels(labels, s.shape[0], s.shape[1])
    present = torch.unique(y)
    return _class_mean_hits(label_rank(s, y) < 1, y, present)


def class_mean_topk_recall(scores: Any, labels: Any, k: int = 5, classes: Any = None) -> float:
    """EPIC-Kitchens-55 class-mean top-k recall.

    For every class c present in `labels` (and, when `classes` is given, also in that subset, e.g.
    the many-shot actions), the fraction of its samples whose top-k contains c; averaged over those
    classes. Raises DataError when the subset has no class present in the labels.
    """
    s = _scores(scores)
    y = _labels(labels, s.shape[0], s.shape[1])
    present = torch.unique(y)
    if classes is not None:
        subset = torch.as_tensor(classes).long().flatten()
        present = present[torch.isin(present, subset)]
        if present.numel() == 0:
            raise DataError(
                f"class_mean_topk_recall: none of the {subset.numel()} requested classes occurs in the labels"
            )
    return _class_mean_hits(label_rank(s, y) < min(k, s.shape[1]), y, present)


def _average_precision_columns(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """AP of every column of scores [N,K] against binary targets [N,K]; NaN for columns without positives.

    AP = Σ_n (R_n − R_{n−1}) P_n over the distinct score thresholds (scikit-learn's step integral):
    each positive contributes precision measured at the *end* of its group of tied scores, / #pos.
    """
    n = scores.shape[0]
    s_sorted, order = torch.sort(scores, dim=0, descending=True, stable=True)
    t_sorted = targets.gather(0, order).double()
    tp = t_sorted.cumsum(0)
    pos = torch.arange(n).unsqueeze(1).expand_as(s_sorted)
    # a position ends a tie group when the next score differs (or it is the last row)
    is_end = torch.ones_like(s_sorted, dtype=torch.bool)
    is_end[:-1] = s_sorted[1:] != s_sorted[:-1]
    end_of_group = torch.where(is_end, pos, n).flip(0).cummin(0).values.flip(0)
    precision_at_end = tp.gather(0, end_of_group) / (end_of_group + 1).double()
    num_pos = tp[-1]
    return (t_sorted * precision_at_end).sum(0) / num_pos  # 0/0 -> NaN marks no positives


def average_precision(scores: Any, targets: Any) -> float:
    """Average precision (%) of one binary problem; equals sklearn's average_precision_score × 100."""
    s = _scores(scores, ndim=1)
    t = _multi_hot(targets, s.shape)
    if not t.any():
        raise DataError("average_precision: targets have no positive sample, AP is undefined")
    return 100.0 * _average_precision_columns(s[:, None], t[:, None]).item()


def mean_average_precision(scores: Any, targets: Any) -> float:
    """mAP (%): mean over classes with at least one positive of the per-class average precision."""
    s = _scores(scores)
    t = _multi_hot(targets, s.shape)
    has_pos = t.any(0)
    if s.shape[0] == 0 or not has_pos.any():
        raise DataError("mean_average_precision: no class has a positive sample, mAP is undefined")
    s, t = s[:, has_pos], t[:, has_pos]
    step = max(1, _CHUNK_ELEMENTS // s.shape[0])  # classes per chunk, to bound memory on large eval sets
    ap = torch.cat(
        [
            _average_precision_columns(s[:, i : i + step], t[:, i : i + step])
            for i in range(0, s.shape[1], step)
        ]
    )
    return 100.0 * ap.mean().item()


def classification_report(
    scores: Any, labels: Any, multilabel: bool = False, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """The metrics a method's eval reports.

    Single-label (labels [N] class indices): "top{k}" for k = 1 and every k < C (top-k with k >= C
    is trivially 100 and would only clutter logs), plus "mean_class_acc".
    Multi-label (labels [N,K] multi-hot): "mAP" and "top1_hit" = % of samples whose highest-scoring
    class is one of their positives.
    """
    s = _scores(scores)
    if multilabel:
        t = _multi_hot(labels, s.shape, what="labels")
        top = top1_class(s)
        return {
            "mAP": mean_average_precision(s, t),
            "top1_hit": 100.0 * t.gather(1, top[:, None]).double().mean().item(),
        }
    num_classes = s.shape[1]
    out = topk_accuracy(s, labels, ks=[k for k in ks if k == 1 or k < num_classes])
    out["mean_class_acc"] = mean_class_accuracy(s, labels)
    return out


# --------------------------------------------------------------------------------- retrieval
def _hit_matrix(q_labels: torch.Tensor, g_labels: torch.Tensor) -> torch.Tensor:
    """[Nq,Ng] bool: same class (1-d labels) or at least one shared class (multi-hot labels)."""
    if q_labels.dim() == 1:
        return q_labels[:, None] == g_labels[None, :]
    return (q_labels.double() @ g_labels.double().T) > 0


def retrieval_ranks(
    query: Any,
    gallery: Any,
    *,
    query_labels: Any = None,
    gallery_labels: Any = None,
    normalize: bool = True,
    ties: str = "optimistic",
    chunk_size: int | None = None,
    tie_tol: float = 1e-9,
) -> torch.Tensor:
    """1-based rank of the first correct gallery item for every query ([Nq] long).

    Similarity is the dot product (cosine when `normalize`). Without labels, query i's only match is
    gallery i. With labels, every gallery item of the query's class is a match (multi-hot labels:
    any shared class) and the first correct item is the best-scoring one.
    ties="optimistic": rank = 1 + #{wrong items scoring strictly higher} (the true item is counted
    after all strictly better ones); "pessimistic": 1 + #{wrong items scoring higher or equal}.

    Similarities are computed in float64 and two of them are tied when they differ by at most
    `tie_tol` · (1 + |s_true|): a matrix product rounds the same exact value differently depending
    on blocking (e.g. how rows are chunked), so exact comparison would make duplicates flip order.
    1e-9 is far below the resolution of float32 embeddings and far above float64 rounding.
    """
    if ties not in ("optimistic", "pessimistic"):
        raise DataError(f"retrieval ties: expected 'optimistic' or 'pessimistic', found '{ties}'")
    q = _scores(query, "query")
    g = _scores(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise DataError(f"retrieval: query dim {q.shape[1]} != gallery dim {g.shape[1]}")
    if q.shape[0] == 0 or g.shape[0] == 0:
        raise DataError(f"retrieval: empty query ({q.shape[0]}) or gallery ({g.shape[0]})")
    if (query_labels is None) != (gallery_labels is None):
        raise DataError("retrieval: give both query_labels and gallery_labels, or neither")
    paired = query_labels is None
    if paired and q.shape[0] != g.shape[0]:
        raise DataError(
            f"retrieval without labels pairs query i with gallery i: {q.shape[0]} != {g.shape[0]} items"
        )
    if not paired:
        ql, gl = torch.as_tensor(query_labels).cpu(), torch.as_tensor(gallery_labels).cpu()
        if ql.shape[0] != q.shape[0] or gl.shape[0] != g.shape[0] or ql.shape[1:] != gl.shape[1:]:
            raise DataError(
                f"retrieval labels: expected query {q.shape[0]} and gallery {g.shape[0]} rows with the same"
                f" trailing shape, found {tuple(ql.shape)} and {tuple(gl.shape)}"
            )
    q, g = q.double(), g.double()
    if normalize:
        q, g = F.normalize(q, dim=1), F.normalize(g, dim=1)
    chunk = chunk_size or max(1, _CHUNK_ELEMENTS // g.shape[0])
    ranks = []
    for start in range(0, q.shape[0], chunk):
        sims = q[start : start + chunk] @ g.T
        rows = torch.arange(sims.shape[0])
        if paired:
            hit = torch.zeros_like(sims, dtype=torch.bool)
            hit[rows, rows + start] = True
        else:
            hit = _hit_matrix(ql[start : start + chunk], gl)
            missing = ~hit.any(1)
            if missing.any():
                i = int(missing.nonzero()[0]) + start
                raise DataError(
                    f"retrieval: query {i} (label {ql[i].tolist()}) has no gallery item of its class;"
                    f" {int(missing.sum())} such queries in rows {start}..{start + sims.shape[0] - 1}"
                )
        best_true = torch.where(hit, sims, -math.inf).max(1, keepdim=True).values
        tol = tie_tol * (1 + best_true.abs())
        beats = sims > best_true + tol if ties == "optimistic" else sims >= best_true - tol
        ranks.append(1 + (beats & ~hit).sum(1))
    return torch.cat(ranks)


def rank_summary(ranks: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@k (%), median rank and mean rank from 1-based ranks.

    Median rank follows the common retrieval convention (VSE++, CAV-MAE): floor(median) of the ranks,
    the median of an even count being the mean of its two middle values.
    """
    r = ranks.double().sort().values
    n = r.numel()
    out = {f"R@{k}": 100.0 * (r <= k).double().mean().item() for k in ks}
    out["median_rank"] = float(math.floor((r[(n - 1) // 2] + r[n // 2]).item() / 2))
    out["mean_rank"] = r.mean().item()
    return out


def retrieval_metrics(
    query: Any,
    gallery: Any,
    *,
    query_labels: Any = None,
    gallery_labels: Any = None,
    normalize: bool = True,
    ks: Sequence[int] = (1, 5, 10),
    ties: str = "optimistic",
    chunk_size: int | None = None,
    tie_tol: float = 1e-9,
) -> dict[str, float]:
    """{"R@k": %, "median_rank", "mean_rank"} for queries against a gallery (see retrieval_ranks)."""
    ranks = retrieval_ranks(
        query,
        gallery,
        query_labels=query_labels,
        gallery_labels=gallery_labels,
        normalize=normalize,
        ties=ties,
        chunk_size=chunk_size,
        tie_tol=tie_tol,
    )
    return rank_summary(ranks, ks)


def retrieval_report(
    a: Any,
    b: Any,
    labels: Any = None,
    names: tuple[str, str] = ("a", "b"),
    **kw: Any,
) -> dict[str, float]:
    """Retrieval in both directions between two views of the same N items.

    Keys "{a}2{b}_R@1", ..., "{b}2{a}_median_rank". With `labels`, any item of the same class counts.
    Extra keyword arguments (ks, ties, normalize, chunk_size, tie_tol) go to retrieval_metrics.
    """
    na, nb = names
    out: dict[str, float] = {}
    for src, dst, q, g in ((na, nb, a, b), (nb, na, b, a)):
        m = retrieval_metrics(q, g, query_labels=labels, gallery_labels=labels, **kw)
        out.update({f"{src}2{dst}_{k}": v for k, v in m.items()})
    return out
