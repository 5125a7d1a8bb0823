"""MFH Algorithm 1 as a reusable "will cross-modal KD help?" diagnostic (specs/mfh.md §4).

Xue et al., "The Modality Focusing Hypothesis", ICLR 2023: a student that sees modality b gains
from a teacher on modality a in proportion to γ, the share of the teacher's label-decisive
information that is modality-general (observable in b too), not in proportion to teacher accuracy.
Algorithm 1 scores each channel of a teacher layer (the "place") by how much permuting it across
the samples of a batch breaks the agreement between the teacher's logits and the logits of a
modality-b network on the paired, unpermuted inputs.

* `joint_pretrain`: step 1, f_a and f_b trained together with CE + CE + MSE(logits).
* `features_at` / `head_after`: the place's features via a forward hook; the rest of a Sequential.
* `modality_general_saliency`: steps 2-3 with every (channel, repeat) permutation of a chunk in
  one forward pass of the head.
* `channels_to_remove` / `remove_channels` / `mask_channels`: removal modes 0/1/2.
* `precision_at_k`, `estimate_gamma`, `kd_verdict`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from xmodal.errors import ConfigError, DataError, closest

DISTANCES = ("mse", "mae")
FILLS = ("batch_mean", "zero")
PERMUTATIONS = ("independent", "composed")


# ------------------------------------------------------------------------------- step 1: joint
@dataclass
class JointPretrainOut:
    losses: list[float]  # total loss per optimiser step
    last_terms: dict[str, float]  # ce_a, ce_b, mse at the last step


def _batches(data: Any, keys: tuple[str, str, str]) -> Iterable[tuple[Tensor, Tensor, Tensor]]:
    """Endless (x_a, x_b, y) batches: a 3-tuple of tensors is one full batch; else cycle an iterable."""
    if isinstance(data, (tuple, list)) and len(data) == 3 and all(isinstance(t, Tensor) for t in data):
        return itertools.repeat(tuple(data))

    def cycle() -> Iterable[tuple[Tensor, Tensor, Tensor]]:
        while True:
            empty = True
            for b in data:
                empty = False
                yield tuple(b[k] for k in keys) if isinstance(b, Mapping) else tuple(b)
            if empty:
                raise DataError("joint_pretrain: the batch iterable is empty")

    return cycle()


def joint_pretrain(
    f_a: nn.Module,
    f_b: nn.Module,
    data: Any,
    *,
    steps: int = 1000,
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
    lr: float = 0.01,
    momentum: float = 0.9,
    mse_weight: float = 1.0,
    keys: tuple[str, str, str] = ("a", "b", "label"),
) -> JointPretrainOut:
    """Algorithm 1 step 1: minimise CE(f_a(x_a), y) + CE(f_b(x_b), y) + w·MSE(f_a(x_a), f_b(x_b)).

    Neither side is detached in the MSE term: the two nets are pulled towards each other.
    `data` is either a tuple ``(x_a, x_b, y)`` (full-batch steps, the gauss protocol) or an iterable
    of batches (tuples or dicts read with `keys`), cycled until `steps` optimiser steps are done.
    The default optimiser is the reference's SGD(lr 0.01, momentum 0.9). Both nets are left in
    eval mode.
    """
    params = list(f_a.parameters()) + list(f_b.parameters())
    opt = optimizer(params) if optimizer is not None else torch.optim.SGD(params, lr=lr, momentum=momentum)
    f_a.train()
    f_b.train()
    losses: list[float] = []
    terms: dict[str, float] = {}
    for _, (xa, xb, y) in zip(range(steps), _batches(data, keys)):
        la, lb = f_a(xa), f_b(xb)
        ce_a, ce_b, mse = F.cross_entropy(la, y), F.cross_entropy(lb, y), F.mse_loss(la, lb)
        loss = ce_a + ce_b + mse_weight * mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        terms = {"ce_a": ce_a.item(), "ce_b": ce_b.item(), "mse": mse.item()}
    f_a.eval()
    f_b.eval()
    return JointPretrainOut(losses, terms)


# ---------------------------------------------------------------------------------- the place
def _submodule(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ConfigError(f"module path {path!r}: no such submodule of {type(model).__name__}{closest(path, names)}") from None


def features_at(model: nn.Module, module_path: str, inputs: Tensor | Mapping[str, Any], *, batch_size: int | None = None) -> Tensor:
    """Output of `model.<module_path>` when running `model(inputs)`, read with a forward hook.

    The model runs in eval mode under no_grad (its training flag is restored afterwards); tensor
    inputs (or every tensor of a batch dict) are split into chunks of `batch_size` samples.
    """
    target = _submodule(model, module_path)
    grabbed: list[Tensor] = []

    def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
        if not isinstance(out, Tensor):
            raise ConfigError(f"module path {module_path!r}: output is a {type(out).__name__}, expected a tensor")
        grabbed.append(out.detach())

    n = len(inputs) if isinstance(inputs, Tensor) else len(next(v for v in inputs.values() if isinstance(v, Tensor)))
    step = batch_size or n
    was_training = model.training
    model.eval()
    try:
        with target.register_forward_hook(hook), torch.no_grad():
            for s in range(0, n, step):
                if isinstance(inputs, Tensor):
                    model(inputs[s : s + step])
                else:
                    model({k: v[s : s + step] if isinstance(v, (Tensor, list)) else v for k, v in inputs.items()})
    finally:
        model.train(was_training)
    return torch.cat(grabbed)


def head_after(model: nn.Module, module_path: str) -> nn.Sequential:
    """The part of a (nested) nn.Sequential model that runs after `module_path`, as one Sequential.

    For any other architecture write the head yourself (e.g. ``lambda h: model.fc3(h)``): forward
    code cannot be split generically.
    """
    _submodule(model, module_path)
    parts = module_path.split(".")
    rest: list[nn.Module] = []
    for depth in range(len(parts), 0, -1):
        parent_path = ".".join(parts[: depth - 1])
        parent = model.get_submodule(parent_path) if parent_path else model
        if not isinstance(parent, nn.Sequential):
            where = parent_path or "<model>"
            raise ConfigError(f"head_after({module_path!r}): {where} is a {type(parent).__name__}, not nn.Sequential; pass a head callable instead")
        names = [n for n, _ in parent.named_children()]
        rest.extend(parent[names.index(parts[depth - 1]) + 1 :])
    return nn.Sequential(*rest)


# ------------------------------------------------------------------------- steps 2-3: saliency
@dataclass
class SaliencyResult:
    """Per-channel modality-general saliency of one teacher place (Algorithm 1)."""

    scores: Tensor  # [D] raw min-max normalised to [0, 1]; high = modality-general decisive
    raw: Tensor  # [D] Σ_batches mean_repeats dist(head(permuted), target)
    ranking: Tensor  # [D] channel ids, most salient first
    decisive: Tensor  # [D] Σ_batches mean_repeats dist(head(permuted), head(unpermuted)): reliance
    baseline: float  # Σ_batches dist(head(unpermuted), target)
    repeats: int
    distance: str
    n_samples: int
    batch_size: int
    target_scale: float = 1.0  # β applied to the targets (calibrate=True), else 1
    # the whole place permuted at once (all channels with one σ_m): Σ_batches mean_repeats of
    # dist(head(x[σ]), target) − dist(head(x), target), and of dist(head(x[σ]), head(x))
    joint_gain: float = 0.0
    joint_decisive: float = 0.0

    @property
    def gain(self) -> Tensor:
        """raw − baseline: how much permuting each channel adds to the cross-modal disagreement."""
        return self.raw - self.baseline


def _dist(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """Distance per leading index, averaged over the other dims."""
    d = (a - b).square() if kind == "mse" else (a - b).abs()
    return d.flatten(1).mean(1)


def permuted_logits(head: Callable[[Tensor], Tensor], x: Tensor, channels: Tensor, perms: Tensor, base: Tensor | None = None) -> Tensor:
    """head(x with channel channels[p] replaced by x[perms[p], channels[p]]) for all p at once.

    x [B, D, *rest], channels [P], perms [P, B] -> logits [P, B, C]. Exact shortcuts where only
    one input column changes: an `nn.Linear` head gives base + (x_perm − x)·W[:, i] without
    building the [P, B, D] stack, and an `nn.Sequential` that starts with one applies that update
    to its first layer and runs the rest on the [P·B, H] pre-activations.
    """
    p, b = perms.shape
    moved = x[perms, channels[:, None]]  # [P, B, *rest]
    if x.ndim == 2 and isinstance(head, nn.Linear):
        base = head(x) if base is None else base
        delta = moved - x[:, channels].T  # [P, B]
        return torch.addcmul(base[None], delta[..., None], head.weight[:, channels].T[:, None, :])
    if x.ndim == 2 and isinstance(head, nn.Sequential) and len(head) > 1 and isinstance(head[0], nn.Linear):
        pre = permuted_logits(head[0], x, channels, perms).flatten(0, 1)  # [P·B, H], a fresh tensor
        rest = head[1:]
        if isinstance(rest[0], nn.ReLU):  # in place: one pass less over the largest tensor
            pre.clamp_min_(0)
            rest = rest[1:]
        return rest(pre).reshape(p, b, -1)
    stack = x.unsqueeze(0).repeat(p, *([1] * x.ndim))
    stack[torch.arange(p, device=x.device)[:, None], torch.arange(b, device=x.device)[None], channels[:, None]] = moved
    return head(stack.flatten(0, 1)).reshape(p, b, -1)


def _hidden_width(head: Callable[[Tensor], Tensor]) -> int:
    """Width of the [P·B, H] pre-activations the Sequential shortcut of `permuted_logits` builds."""
    if isinstance(head, nn.Sequential) and len(head) > 1 and isinstance(head[0], nn.Linear):
        return head[0].out_features
    return 0


def _target_scale(head: Callable[[Tensor], Tensor], feats: Tensor, target: Tensor, bs: int) -> float:
    """β minimising ‖c(head(feats)) − β·c(target)‖² with c = centring over classes (softmax-invariant)."""
    num = den = 0.0
    for s in range(0, len(feats), bs):
        la, lb = head(feats[s : s + bs]), target[s : s + bs]
        la, lb = la - la.mean(1, keepdim=True), lb - lb.mean(1, keepdim=True)
        num += (la * lb).sum().item()
        den += lb.square().sum().item()
    # a reference anti-correlated with the teacher is not a rescaled copy of it: β ≥ 0
    return max(0.0, num / den) if den > 0 else 1.0


def modality_general_saliency(
    head: Callable[[Tensor], Tensor],
    feats: Tensor,
    target_logits: Tensor,
    *,
    repeats: int = 100,
    batch_size: int | None = None,
    distance: str = "mse",
    generator: torch.Generator | None = None,
    permutations: str = "composed",
    calibrate: bool = False,
    chunk_elems: int = 1 << 22,
) -> SaliencyResult:
    """Algorithm 1 steps 2-3: permutation saliency of every channel of a teacher place.

    head: the teacher after the place (features [N, D, *rest] -> logits [N, C]); feats: the place's
    features computed from modality-a inputs; target_logits [N, C]: f_b's logits on the paired
    modality-b inputs. For each batch of `batch_size` samples (default: all), each channel i and
    each of `repeats` draws, channel i is permuted across the batch and
    dist(head(permuted), target) recorded (``mse``: mean squared, ``mae``: mean absolute error over
    batch × classes). raw[i] = Σ_batches mean_repeats; scores = min-max(raw); ranking descending.

    permutations: ``independent`` draws a fresh uniform permutation per (channel, repeat), as the
    reference does, at the cost of one sort each. ``composed`` [ours, default] draws one
    permutation σ_m per repeat and τ_i per channel and uses σ_m∘τ_i: for every channel its
    `repeats` permutations are still i.i.d. uniform (so each channel's score has exactly the
    reference's distribution) and two channels' permutations are independent, while only
    D + repeats sorts are needed.
    calibrate [ours]: scale the targets by the least-squares factor β onto the head's own logits
    first, so that a separately trained f_b of another logit scale can serve as the reference for
    `estimate_gamma`. Algorithm 1 as published: False.
    Each chunk holds at most `chunk_elems` stacked feature values (bounds memory).
    """
    if distance not in DISTANCES:
        raise ConfigError(f"distance: expected one of {DISTANCES}, got {distance!r}")
    if feats.ndim < 2 or target_logits.ndim != 2 or len(feats) != len(target_logits):
        raise DataError(f"saliency: expected feats [N, D, ...] and target_logits [N, C] with equal N, got {tuple(feats.shape)} and {tuple(target_logits.shape)}")
    if repeats < 1:
        raise ConfigError(f"repeats: expected ≥ 1, got {repeats}")
    n, d = feats.shape[:2]
    bs = batch_size or n
    raw = torch.zeros(d, dtype=torch.float64, device=feats.device)
    decisive = torch.zeros_like(raw)
    baseline = joint_gain = joint_decisive = 0.0
    if permutations not in PERMUTATIONS:
        raise ConfigError(f"permutations: expected one of {PERMUTATIONS}, got {permutations!r}")
    pairs = torch.arange(d, device=feats.device).repeat_interleave(repeats)  # channel-major
    reps = torch.arange(repeats, device=feats.device).repeat(d)
    gen_device = generator.device if generator is not None else feats.device
    draw = lambda rows, b: torch.rand(rows, b, generator=generator, device=gen_device).argsort(1).to(feats.device)
    # its own stream, so the channel permutations are the same with or without the joint ones
    joint_gen = torch.Generator(device=gen_device).manual_seed((generator.initial_seed() if generator is not None else 0) + 1)
    with torch.no_grad():
        scale = _target_scale(head, feats, target_logits, bs) if calibrate else 1.0
        for s in range(0, n, bs):
            x, t = feats[s : s + bs], target_logits[s : s + bs] * scale
            b = len(x)
            base = head(x)
            base_dist = _dist(base[None], t[None], distance).item()
            baseline += base_dist
            # whole-row permutations need no head call: head(x[σ]) = head(x)[σ]
            rows = torch.rand(repeats, b, generator=joint_gen, device=gen_device).argsort(1).to(feats.device)
            joint_gain += (_dist(base[rows], t[None], distance).mean().item() - base_dist)
            joint_decisive += _dist(base[rows], base[None], distance).mean().item()
            if permutations == "composed":
                sigma, tau = draw(repeats, b), draw(d, b)
            closed = isinstance(head, nn.Linear) and distance == "mse" and x.ndim == 2
            if closed:
                # Linear head + MSE, exact and without logits: permuting channel i moves every
                # logit row by δ_b·w_i (w_i = W[:, i]), so with r = head(x) − t,
                # Σ_bc (r_bc + δ_b w_ci)² = Σ r² + 2 Σ_b δ_b (r_b·w_i) + |w_i|² Σ_b δ_b²
                w = head.weight.double()
                rw, wn, r2 = (base - t).double() @ w, w.square().sum(0), (base - t).double().square().sum()
            chunk = max(1, chunk_elems // (b * (x[0].numel() + base.shape[1] + _hidden_width(head))))
            for c in range(0, len(pairs), chunk):
                ch = pairs[c : c + chunk]
                # composed: perm[p][j] = σ_m[τ_i[j]] for pair p = (channel i, repeat m)
                perms = sigma[reps[c : c + chunk]].gather(1, tau[ch]) if permutations == "composed" else draw(len(ch), b)
                if closed:
                    delta = (x[perms, ch[:, None]] - x[:, ch].T).double()  # [P, B]
                    moved = wn[ch] * delta.square().sum(1)
                    cells = b * base.shape[1]
                    raw.index_add_(0, ch, (r2 + 2 * (delta * rw[:, ch].T).sum(1) + moved) / cells / repeats)
                    decisive.index_add_(0, ch, moved / cells / repeats)
                    continue
                out = permuted_logits(head, x, ch, perms, base)
                raw.index_add_(0, ch, _dist(out, t[None], distance).double() / repeats)
                decisive.index_add_(0, ch, _dist(out, base[None], distance).double() / repeats)
    span = raw.max() - raw.min()
    scores = (raw - raw.min()) / span if span > 0 else torch.zeros_like(raw)
    return SaliencyResult(
        scores=scores.float(),
        raw=raw,
        ranking=torch.argsort(scores, descending=True, stable=True),
        decisive=decisive,
        baseline=baseline,
        repeats=repeats,
        distance=distance,
        n_samples=n,
        batch_size=bs,
        target_scale=scale,
        joint_gain=joint_gain,
        joint_decisive=joint_decisive,
    )


def precision_at_k(ranking: Tensor | Sequence[int], true_channels: Tensor | Sequence[int], k: int | None = None) -> float:
    """Share of the top-k ranked channels that are in `true_channels` (k defaults to its size)."""
    truth = set(torch.as_tensor(true_channels).tolist())
    k = len(truth) if k is None else k
    if k == 0:
        return float("nan")
    top = torch.as_tensor(ranking)[:k].tolist()
    return sum(c in truth for c in top) / k


# ------------------------------------------------------------------------------ channel removal
class RemovalMode(IntEnum):
    RANDOM = 0  # baseline
    LEAST_SALIENT = 1  # keeps the modality-general channels: "MG teacher"
    MOST_SALIENT = 2  # keeps the modality-specific channels


def channels_to_remove(ranking: Tensor | SaliencyResult, ratio: float, mode: int | RemovalMode, *, generator: torch.Generator | None = None) -> Tensor:
    """floor(ratio·D) channel ids to remove, chosen by `mode` from a most-salient-first ranking."""
    ranking = ranking.ranking if isinstance(ranking, SaliencyResult) else torch.as_tensor(ranking)
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"ratio: expected a value in [0, 1], got {ratio}")
    try:
        mode = RemovalMode(int(mode))
    except ValueError:
        raise ConfigError(f"mode: expected 0 (random), 1 (least salient) or 2 (most salient), got {mode!r}") from None
    d = len(ranking)
    k = math.floor(ratio * d + 1e-9)
    if mode is RemovalMode.RANDOM:
        return torch.randperm(d, generator=generator)[:k].to(ranking.device)
    return ranking[d - k :] if mode is RemovalMode.LEAST_SALIENT else ranking[:k]


def remove_channels(feats: Tensor, channels: Tensor | Sequence[int], fill: str = "batch_mean") -> Tensor:
    """Copy of feats [B, D, *rest] with the given channels replaced by their batch mean or by 0."""
    if fill not in FILLS:
        raise ConfigError(f"fill: expected one of {FILLS}, got {fill!r}")
    out = feats.clone()
    ch = torch.as_tensor(channels, dtype=torch.long, device=feats.device)
    out[:, ch] = feats[:, ch].mean(0, keepdim=True) if fill == "batch_mean" else 0.0
    return out


def mask_channels(model: nn.Module, module_path: str, channels: Tensor | Sequence[int], fill: str = "batch_mean") -> RemovableHandle:
    """Forward hook that removes `channels` from the output of `model.<module_path>`.

    Returns the hook handle: call ``.remove()`` or use it as a context manager.
    """
    if fill not in FILLS:
        raise ConfigError(f"fill: expected one of {FILLS}, got {fill!r}")
    ch = torch.as_tensor(channels, dtype=torch.long)
    return _submodule(model, module_path).register_forward_hook(lambda _m, _i, out: remove_channels(out, ch, fill))


# ------------------------------------------------------------------------------------ verdict
def estimate_gamma(result: SaliencyResult, mode: str = "channels") -> float:
    """γ̂ = clip(Σ_i gain_i / Σ_i decisive_i, 0, 1)  (mode ``channels``), or the same ratio for the
    whole place permuted at once (mode ``joint``).

    With MSE distances and a linear view of the head (logit change w_i·δx_i for channel i):
    E[gain_i] ∝ w_i·v_i (v: f_b's weight on the same information) and E[decisive_i] ∝ w_i², so γ̂
    is the share of the teacher's logit variance that f_b also carries: the modality-general share
    of the teacher's decisive signal. Summing the signed gains keeps noise channels unbiased.

    ``joint`` [ours]: with calibrated targets the ratio is the share of the teacher's logit
    variance that the reference explains (R² of the least-squares fit, β ≥ 0) whatever the
    correlation between channels. The per-channel sum equals it only for independent channels
    (gauss inputs); the pooled ReLU features of a CNN are positively correlated, which adds
    −2·Σ_{i≠j} cov(contribution_i, contribution_j) to Σ gain_i and drives the ``channels`` ratio
    below 0 (measured: γ̂ = 0 on avdigits even where KD helps).
    """
    if mode not in ("channels", "joint"):
        raise ConfigError(f"gamma mode: expected 'channels' or 'joint', got {mode!r}")
    gain, total = (result.gain.sum().item(), result.decisive.sum().item()) if mode == "channels" else (result.joint_gain, result.joint_decisive)
    if total <= 0:
        return 0.0
    return float(min(1.0, max(0.0, gain / total)))


def explained_share(teacher_logits: Tensor, reference_logits: Tensor) -> float:
    """Closed form of the whole-place γ̂ for given logits: β·Cov(t, r) / Var(t) with the
    calibration β ≥ 0 of `modality_general_saliency(calibrate=True)` (what ``joint`` estimates
    by permutation). Used for the ceiling of a reference: `teacher_logits` = one-hot labels."""
    t, r = teacher_logits.double(), reference_logits.double()
    tc, rc = t - t.mean(1, keepdim=True), r - r.mean(1, keepdim=True)
    den = rc.square().sum().item()
    beta = max(0.0, (tc * rc).sum().item() / den) if den > 0 else 0.0
    cov = ((t - t.mean(0)) * (r - r.mean(0))).sum(1).mean().item()
    var = (t - t.mean(0)).square().sum(1).mean().item()
    return float(min(1.0, max(0.0, beta * cov / var))) if var > 0 else 0.0


@dataclass
class KDVerdict:
    gamma_hat: float
    helps: bool
    threshold: float
    top_channels: list[int]  # smallest set of channels holding 90 % of the positive gain
    text: str


def kd_verdict(result: SaliencyResult, *, threshold: float = 0.4, teacher_acc: float | None = None, student_acc: float | None = None,
               mode: str = "channels", ceiling: float | None = None) -> KDVerdict:
    """Plain-language MFH verdict: KD is expected to help when γ̂ ≥ threshold.

    MFH: the KD gain grows with γ, not with the teacher's accuracy. `result` should score the
    teacher you would distil against a modality-b net's logits with ``calibrate=True``. The default
    threshold is where the sign of the mean KD gain flips on all three gauss settings (10 runs,
    regular teacher vs the jointly trained f_b): G overlap 2 → 4 gives γ̂ 0.27 → 0.41 and
    Δ −0.3 → +0.4 points; Setting A d = 40 has γ̂ 0.35, Δ ≈ 0; Setting T k = 5 has γ̂ 0.42, Δ +0.3.
    """
    g = estimate_gamma(result, mode)
    if ceiling is not None:  # relative to what the reference can explain at all (mfh_diagnose)
        g = min(1.0, g / ceiling) if ceiling > 0 else 0.0
    gain = result.gain.clamp_min(0)
    order = torch.argsort(gain, descending=True, stable=True)
    cum = torch.cumsum(gain[order], 0)
    n_top = int((cum < 0.9 * cum[-1]).sum().item()) + 1 if cum[-1] > 0 else 0
    top = order[:n_top].tolist()
    helps = g >= threshold
    reason = (
        f"an estimated {g:.0%} of the teacher's decisive signal is modality-general "
        f"(threshold {threshold:.0%}; {len(top)} of {len(gain)} channels carry 90 % of it)"
    )
    acc = ""
    if teacher_acc is not None and student_acc is not None:
        acc = f"; the teacher is {teacher_acc - student_acc:+.1f} points vs the student, which by itself does not predict the KD gain"
    text = f"KD expected {'to help' if helps else 'not to help'}, because {reason}{acc}."
    return KDVerdict(g, helps, threshold, top, text)
