"""Banks of independent linear classifiers trained at once (the MFH gauss study, specs/mfh.md §3).

Every model of a sweep is one slice of a `LinearBank` with weights ``[R, d, C]``; a training step
is two batched matmuls with the gradients written in closed form (checked against autograd in the
tests). Models that read the same inputs (the no-KD and KD students of one run) are trained as one
wider matmul: `fit` takes inputs ``[G, N, d]`` for a bank of ``R = S·G`` models, model ``s·G + g``
reading ``x[g]``. On CPU, a few wide matmuls are much faster than many [2 × d] ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

REDUCTIONS = ("batchmean", "mean_elements")


def _share(r: int, g: int) -> int:
    assert r % g == 0, f"a bank of {r} models cannot share {g} inputs"
    return r // g


@dataclass
class LinearBank:
    weight: Tensor  # [R, d, C]
    bias: Tensor  # [R, C]

    def logits(self, x: Tensor) -> Tensor:
        """x [G, N, d] (G divides R; model s·G + g reads x[g]) -> logits [R, N, C]."""
        x = x.repeat(_share(len(self.weight), len(x)), 1, 1)
        return torch.baddbmm(self.bias[:, None, :], x, self.weight)

    def accuracy(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-model accuracy in percent, [R] (x and y shared as in `logits`)."""
        y = y.repeat(_share(len(self.weight), len(y)), 1)
        return (self.logits(x).argmax(-1) == y).double().mean(1) * 100.0

    def module(self, r: int) -> nn.Linear:
        """Model `r` as an `nn.Linear` (for the generic analysis functions)."""
        d, c = self.weight.shape[1:]
        lin = nn.Linear(d, c)
        with torch.no_grad():
            lin.weight.copy_(self.weight[r].T)
            lin.bias.copy_(self.bias[r])
        return lin

    def split(self, n: int) -> list[LinearBank]:
        """Consecutive blocks of `n` models."""
        return [LinearBank(w, b) for w, b in zip(self.weight.split(n), self.bias.split(n))]


def init_bank(seeds: Sequence[int], d: int, n_classes: int = 2, *, fan_in: Sequence[int] | None = None) -> LinearBank:
    """nn.Linear's default init, U(±1/√fan_in) for weight and bias, one generator per model.

    Seeding per model keeps a run's result independent of how many models are batched with it.
    `fan_in` (default d) lets a model zero-padded to width d start like one of its true width.
    """
    ws, bs = [], []
    for s, f in zip(seeds, fan_in if fan_in is not None else [d] * len(seeds)):
        g = torch.Generator().manual_seed(int(s))
        bound = 1.0 / math.sqrt(f)
        ws.append((torch.rand(d, n_classes, generator=g, dtype=torch.float64) * 2 - 1) * bound)
        bs.append((torch.rand(n_classes, generator=g, dtype=torch.float64) * 2 - 1) * bound)
    return LinearBank(torch.stack(ws).float(), torch.stack(bs).float())


def kd_kl_per_model(student: Tensor, teacher: Tensor, temperature: float = 1.0, reduction: str = "mean_elements") -> Tensor:
    """KD loss per model, logits [R, N, C] -> [R].

    T²·Σ_{n,c} p_t·(log p_t − log p_s) / Z with p = softmax(logits / T), Z = N (``batchmean``) or
    N·C (``mean_elements``, the reference's gauss/RAVDESS reduction). The teacher side is detached.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    log_ps = torch.log_softmax(student / temperature, -1)
    log_pt = torch.log_softmax(teacher.detach() / temperature, -1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum((1, 2))
    z = student.shape[1] * (student.shape[2] if reduction == "mean_elements" else 1)
    return kl * temperature**2 / z


# Training runs in a grouped, class-first layout: weights [G, S, C, d], logits [G, S, C, N].
def _to_grouped(t: Tensor, g: int) -> Tensor:
    """[S·G, N, C] (model-major) -> [G, S, C, N]."""
    return t.reshape(-1, g, *t.shape[1:]).permute(1, 0, 3, 2)


def _from_grouped(t: Tensor) -> Tensor:
    """[G, S, C, k] -> [S·G, k, C]."""
    return t.permute(1, 0, 3, 2).reshape(-1, t.shape[3], t.shape[2])


def _sgd(
    banks: list[LinearBank],
    xs: list[Tensor],
    dlogits: Callable[[list[Tensor]], list[Tensor]],
    *,
    steps: int,
    lr: float,
    momentum: float,
) -> list[LinearBank]:
    """Full-batch SGD (torch semantics: buf = μ·buf + g; p -= lr·buf) given dLoss/dlogits.

    `dlogits` maps grouped logits [G, S, C, N] to their gradients, same shape.
    """
    shapes = [(len(x), _share(len(b.weight), len(x)), b.weight.shape[2]) for b, x in zip(banks, xs)]
    ws = [_to_grouped(b.weight, g).reshape(g, s * c, -1).clone() for b, (g, s, c) in zip(banks, shapes)]
    bs = [_to_grouped(b.bias[:, None, :], g).reshape(g, s * c, 1).clone() for b, (g, s, c) in zip(banks, shapes)]
    xts = [x.transpose(1, 2).contiguous() for x in xs]
    bufs = [(torch.zeros_like(w), torch.zeros_like(b)) for w, b in zip(ws, bs)]
    for _ in range(steps):
        logits = [torch.baddbmm(b, w, xt).view(g, s, c, -1) for w, b, xt, (g, s, c) in zip(ws, bs, xts, shapes)]
        for w, b, x, gr, (bw, bb) in zip(ws, bs, xs, dlogits(logits), bufs):
            gr = gr.reshape(w.shape[0], w.shape[1], -1)
            gw, gb = torch.bmm(gr, x), gr.sum(2, keepdim=True)
            if momentum:
                gw, gb = bw.mul_(momentum).add_(gw), bb.mul_(momentum).add_(gb)
            w.sub_(gw, alpha=lr)
            b.sub_(gb, alpha=lr)
    return [
        LinearBank(_from_grouped(w.view(g, s, c, -1)), _from_grouped(b.view(g, s, c, 1))[:, 0])
        for w, b, (g, s, c) in zip(ws, bs, shapes)
    ]


def _per_model(v: float | Tensor, r: int, g: int) -> Tensor:
    """Scalar or [R] (model-major) -> [G, S, 1, 1]."""
    return torch.as_tensor(v, dtype=torch.float32).expand(r).reshape(-1, g).T[:, :, None, None]


def _onehot(y: Tensor, c: int) -> Tensor:
    """Labels [G, N] -> [G, 1, C, N]."""
    return nn.functional.one_hot(y, c).float().transpose(1, 2)[:, None]


def fit(
    x: Tensor,
    y: Tensor,
    init: LinearBank,
    *,
    steps: int = 1000,
    lr: float = 0.1,
    momentum: float = 0.0,
    teacher_logits: Tensor | None = None,
    w_gt: float | Tensor = 1.0,
    w_kd: float | Tensor = 1.0,
    temperature: float = 1.0,
    reduction: str = "mean_elements",
) -> LinearBank:
    """Train model r = s·G + g on (x[g], y[g]) with w_gt·CE + w_kd·KD(teacher_logits[r]).

    x [G, N, d], y [G, N], init: R = S·G models; teacher_logits [R, N, C] (no KD term if None);
    `w_gt` / `w_kd` scalars or per-model [R], so no-KD (w_kd = 0) and KD students share a batch.
    Gradients: dCE/dl = (p − onehot)/N; dKD/dl = T·(softmax(l/T) − p_t)/Z, Z as in `kd_kl_per_model`.
    """
    r, (g, n, _), c = len(init.weight), x.shape, init.weight.shape[2]
    coef = _per_model(w_gt, r, g) / n
    target = coef * _onehot(y, c)  # dLoss/dl = coef·softmax(l) − target (+ the T ≠ 1 KD part)
    wk = None
    if teacher_logits is not None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        z = n * (c if reduction == "mean_elements" else 1)
        wk = _per_model(w_kd, r, g) * temperature / z
        target = target + wk * _to_grouped(torch.softmax(teacher_logits / temperature, -1), g)
        if temperature == 1.0:
            coef, wk = coef + wk, None

    def dlogits(logits: list[Tensor]) -> list[Tensor]:
        (lo,) = logits
        grad = coef * torch.softmax(lo, 2) - target
        return [grad if wk is None else grad + wk * torch.softmax(lo / temperature, 2)]

    (out,) = _sgd([init], [x], dlogits, steps=steps, lr=lr, momentum=momentum)
    return out


def fit_joint(
    x_a: Tensor,
    x_b: Tensor,
    y: Tensor,
    init_a: LinearBank,
    init_b: LinearBank,
    *,
    steps: int = 1000,
    lr: float = 0.01,
    momentum: float = 0.9,
    mse_weight: float = 1.0,
) -> tuple[LinearBank, LinearBank]:
    """Algorithm 1 step 1 for linear banks: CE(f_a) + CE(f_b) + w·MSE(l_a, l_b), both sides trained.

    One model per input (x_a, x_b, y: [R, N, ·]). dMSE/dl_a = 2·(l_a − l_b)/(N·C) = −dMSE/dl_b.
    """
    n, c = x_a.shape[1], init_a.weight.shape[2]
    onehot = _onehot(y, c)

    def dlogits(logits: list[Tensor]) -> list[Tensor]:
        la, lb = logits
        gm = (2.0 * mse_weight / (n * c)) * (la - lb)
        return [(torch.softmax(la, 2) - onehot) / n + gm, (torch.softmax(lb, 2) - onehot) / n - gm]

    a, b = _sgd([init_a, init_b], [x_a, x_b], dlogits, steps=steps, lr=lr, momentum=momentum)
    return a, b
