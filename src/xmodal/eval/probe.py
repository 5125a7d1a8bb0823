"""Frozen-feature evaluation (`xmodal eval linear|knn`): a linear probe and a weighted kNN classifier.

Both take pre-extracted features ([N,D] float) with integer labels and report test accuracy.
Hyper-parameters are only ever chosen on a held-out slice of the TRAIN features, never on test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from xmodal.errors import DataError
from xmodal.eval.metrics import mean_class_accuracy, topk_accuracy

_CHUNK_ELEMENTS = 1 << 24


@dataclass
class ProbeResult:
    top1: float
    top5: float | None  # None when there are at most 5 classes (top-5 would be trivially 100)
    mean_class_acc: float
    num_train: int
    num_test: int
    num_classes: int
    params: dict[str, float]  # the hyper-parameters used (selected weight decay, k, temperature)
    val_top1: dict[float, float] = field(default_factory=dict)  # weight decay -> held-out train top-1
    scores: torch.Tensor | None = field(default=None, repr=False)  # [num_test, C] test scores

    def metrics(self) -> dict[str, float]:
        out = {"top1": self.top1, "mean_class_acc": self.mean_class_acc}
        if self.top5 is not None:
            out["top5"] = self.top5
        return out


# ------------------------------------------------------------------------------------ inputs
def _features(x: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().cpu()
    if t.dim() != 2 or t.shape[0] == 0:
        raise DataError(f"{what}: expected a non-empty [N, D] feature array, found shape {tuple(t.shape)}")
    t = t.float() if t.dtype != torch.float64 else t
    if not torch.isfinite(t).all():
        raise DataError(f"{what}: expected finite features, found {int((~torch.isfinite(t)).sum())} NaN/inf")
    return t


def _targets(y: Any, n: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(y).detach().cpu()
    if t.dim() != 1 or t.shape[0] != n:
        raise DataError(f"{what}: expected {n} integer labels, found shape {tuple(t.shape)}")
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise DataError(f"{what}: expected integer class indices, found fractional values")
    t = t.long()
    if t.min() < 0:
        raise DataError(f"{what}: expected class indices >= 0, found {int(t.min())}")
    return t


def _prepare(train_x, train_y, test_x, test_y, num_classes):
    xtr, xte = _features(train_x, "train features"), _features(test_x, "test features")
    if xtr.shape[1] != xte.shape[1]:
        raise DataError(
            f"test features: expected dim {xtr.shape[1]} like the train features, found {xte.shape[1]}"
        )
    ytr, yte = _targets(train_y, xtr.shape[0], "train labels"), _targets(test_y, xte.shape[0], "test labels")
    top = int(max(ytr.max(), yte.max())) + 1
    if num_classes is not None and top > num_classes:
        raise DataError(f"labels: expected class indices below num_classes={num_classes}, found {top - 1}")
    dtype = torch.promote_types(xtr.dtype, xte.dtype)
    return xtr.to(dtype), ytr, xte.to(dtype), yte, num_classes or top


def _result(scores, test_y, num_train, num_classes, params, val_top1=None) -> ProbeResult:
    acc = topk_accuracy(scores, test_y, ks=(1, 5))
    return ProbeResult(
        top1=acc["top1"],
        top5=acc["top5"] if num_classes > 5 else None,
        mean_class_acc=mean_class_accuracy(scores, test_y),
        num_train=num_train,
        num_test=len(test_y),
        num_classes=num_classes,
        params=params,
        val_top1=val_top1 or {},
        scores=scores,
    )


# ------------------------------------------------------------------------------ linear probe
def _fit_logreg(x, y, num_classes, weight_decay, epochs, lr, batch_size, seed) -> torch.nn.Linear:
    """Multinomial logistic regression: min_W,b  mean CE(xW^T + b, y) + wd/2 ||W||² (bias free).

    Full batch: L-BFGS with strong-Wolfe line search from zero weights — the problem is convex, so
    the result is deterministic and needs no learning-rate tuning. Mini-batch (`batch_size`): Adam
    over seeded shuffles, for feature sets too large for one batch.
    """
    lin = torch.nn.Linear(x.shape[1], num_classes, dtype=x.dtype)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)

    def objective(xb, yb):
        return F.cross_entropy(lin(xb), yb) + 0.5 * weight_decay * lin.weight.pow(2).sum()

    with torch.enable_grad():
        if batch_size is None:
            opt = torch.optim.LBFGS(
                lin.parameters(),
                lr=lr or 1.0,
                max_iter=epochs,
                history_size=20,
                tolerance_grad=1e-6,
                tolerance_change=1e-10,
                line_search_fn="strong_wolfe",
            )

            def closure():
                opt.zero_grad()
                loss = objective(x, y)
                loss.backward()
                return loss

            opt.step(closure)
        else:
            opt = torch.optim.Adam(lin.parameters(), lr=lr or 1e-3)
            gen = torch.Generator().manual_seed(seed)
            for _ in range(epochs):
                for idx in torch.randperm(x.shape[0], generator=gen).split(batch_size):
                    opt.zero_grad()
                    objective(x[idx], y[idx]).backward()
                    opt.step()
    return lin.requires_grad_(False)


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, held-out indices): about `fraction` of every class with >= 2 samples is held out
    (at least one), chosen at random with `seed`; singleton classes stay in the fit part."""
    n = labels.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    order = perm[torch.sort(labels[perm], stable=True).indices]  # grouped by class, shuffled within
    ys = labels[order]
    counts = torch.bincount(labels)
    starts = counts.cumsum(0) - counts
    pos_in_class = torch.arange(n) - starts[ys]
    n_hold = torch.where(counts >= 2, (counts.double() * fraction).floor().long().clamp(min=1), 0)
    hold = pos_in_class < n_hold[ys]
    return order[~hold], order[hold]


def linear_probe(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    num_classes: int | None = None,
    epochs: int = 100,
    lr: float | None = None,
    weight_decay: float | Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2),
    val_fraction: float = 0.2,
    batch_size: int | None = None,
    seed: int = 0,
) -> ProbeResult:
    """Linear classifier on frozen features, standardised with the TRAIN mean/std.

    `epochs`: L-BFGS iterations (full batch, the default) or passes over the data (with
    `batch_size`, Adam). `lr`: default 1.0 for L-BFGS, 1e-3 for Adam. A sequence of weight decays
    is searched on a stratified held-out `val_fraction` of the train set (the largest decay among
    the best held-out top-1 wins), then the probe is refit on the whole train set.
    """
    xtr, ytr, xte, yte, num_classes = _prepare(train_x, train_y, test_x, test_y, num_classes)
    mean, std = xtr.mean(0), xtr.std(0, correction=0).clamp(min=1e-6)
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    grid = (
        sorted(float(w) for w in weight_decay)
        if isinstance(weight_decay, Sequence)
        else [float(weight_decay)]
    )
    if not grid or min(grid) < 0:
        raise DataError(f"linear_probe weight_decay: expected values >= 0, found {grid}")
    fit = dict(num_classes=num_classes, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    val_top1: dict[float, float] = {}
    if len(grid) > 1:
        fit_idx, val_idx = stratified_holdout(ytr, val_fraction, seed)
        if val_idx.numel() == 0:
            raise DataError(
                "linear_probe: cannot select weight_decay, every class has a single train sample; pass one value"
            )
        for wd in grid:
            lin = _fit_logreg(xtr[fit_idx], ytr[fit_idx], weight_decay=wd, **fit)
            val_top1[wd] = topk_accuracy(lin(xtr[val_idx]), ytr[val_idx], ks=(1,))["top1"]
        best = max(val_top1.values())
        chosen = max(wd for wd, acc in val_top1.items() if acc == best)
    else:
        chosen = grid[0]
    lin = _fit_logreg(xtr, ytr, weight_decay=chosen, **fit)
    return _result(lin(xte), yte, len(ytr), num_classes, {"weight_decay": chosen}, val_top1)


# ---------------------------------------------------------------------------------------- kNN
def knn_classify(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    k: int = 20,
    temperature: float = 0.07,
    *,
    num_classes: int | None = None,
    chunk_size: int | None = None,
) -> ProbeResult:
    """Weighted kNN on cosine similarity (InstDisc / DINO protocol).

    Class score of a test sample = Σ over its k most similar train samples of that class of
    exp(sim / T); features are L2-normalised, test rows processed in chunks to bound memory.
    """
    if k < 1 or temperature <= 0:
        raise DataError(
            f"knn_classify: expected k >= 1 and temperature > 0, found k={k}, temperature={temperature}"
        )
    xtr, ytr, xte, yte, num_classes = _prepare(train_x, train_y, test_x, test_y, num_classes)
    xtr, xte = F.normalize(xtr, dim=1), F.normalize(xte, dim=1)
    k_eff = min(k, xtr.shape[0])
    chunk = chunk_size or max(1, _CHUNK_ELEMENTS // xtr.shape[0])
    votes = []
    for start in range(0, xte.shape[0], chunk):
        top_sim, top_idx = (xte[start : start + chunk] @ xtr.T).topk(k_eff, dim=1)
        # shifting by each row's best similarity keeps exp() in range for small T (ranks unchanged)
        weight = ((top_sim - top_sim[:, :1]) / temperature).exp()
        votes.append(
            torch.zeros(top_idx.shape[0], num_classes, dtype=xtr.dtype).scatter_add_(1, ytr[top_idx], weight)
        )
    params = {"k": float(k_eff), "temperature": float(temperature)}
    return _result(torch.cat(votes), yte, len(ytr), num_classes, params)
