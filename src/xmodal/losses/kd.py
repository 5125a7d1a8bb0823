"""Knowledge-distillation losses: tempered KL (full, top-K, top/middle/bottom-K), symmetric KL and
feature alignment.

All functions take logits/features of shape [B, C] / [B, D] and return a tensor (a scalar, or
[B] for ``reduction="none"``). The teacher side is always detached; ``symmetric_kl`` detaches
nothing (both arguments are trained in CCL).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from xmodal.errors import ConfigError, DataError

REDUCTIONS = ("batchmean", "mean_elements", "none")
# textkd recipes spell the per-element mean "elements_mean"; both names mean the same reduction.
_REDUCTION_ALIASES = {"elements_mean": "mean_elements"}
MISSING_TEACHER_MODES = ("skip", "uniform")


def check_kd_settings(cfg) -> None:
    """Shared `validate()` of the KD-term configs (methods/kd.py, methods/textkd.py): a config with
    `temperature`, `k`, `weight`, `feature_cosine` and `feature_mse`."""
    if cfg.temperature <= 0 or cfg.k < 1:
        raise ValueError(f"temperature must be > 0 and k >= 1, found {cfg.temperature}, {cfg.k}")
    if min(cfg.weight, cfg.feature_cosine, cfg.feature_mse) < 0:
        raise ValueError("weight, feature_cosine and feature_mse must be >= 0")


def _reduction(name: str) -> str:
    name = _REDUCTION_ALIASES.get(name, name)
    if name not in REDUCTIONS:
        raise ConfigError(f"reduction: expected one of {', '.join(REDUCTIONS)}, found '{name}'")
    return name


def _check_logits(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> None:
    if student.dim() != 2 or student.shape != teacher.shape:
        raise DataError(
            f"KD logits: expected student and teacher of the same shape [B, C], "
            f"found {tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if mask is not None:
        assert mask.dtype == torch.bool and mask.shape == student.shape[:1], "mask must be bool [B]"


def kd_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    t2_scale: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tempered KD loss  T² · KL(softmax(t/T) ‖ softmax(s/T)),  teacher `t` detached.

    Per sample: ``k_b = T² Σ_c p_t (log p_t − log p_s)`` (T² only when `t2_scale`). Reductions:
    ``batchmean`` = Σ_b k_b / B, ``mean_elements`` = Σ_b k_b / (B·C) (the reference reduction of
    text-KD and MFH: the effective weight is w·T²/C), ``none`` = [B] vector. `mask` (bool [B])
    keeps only the True samples ("skip" mode for missing teachers): B becomes the kept count,
    masked samples give 0 (also with ``none``), and with no sample kept the loss is 0.
    """
    reduction = _reduction(reduction)
    _check_logits(student_logits, teacher_logits, mask)
    teacher = teacher_logits.detach()
    if mask is not None:
        # Missing teachers may be NaN/garbage; replace them so neither value nor gradient sees them.
        teacher = torch.where(mask[:, None], teacher, torch.zeros_like(teacher))
    log_ps = F.log_softmax(student_logits / temperature, dim=-1)
    log_pt = F.log_softmax(teacher / temperature, dim=-1)
    p_t = log_pt.exp()
    # p_t = 0 (a −inf teacher logit) contributes 0, not 0·(−inf) = NaN.
    per = torch.where(p_t > 0, p_t * (log_pt - log_ps), torch.zeros_like(p_t)).sum(-1)
    if t2_scale:
        per = per * (temperature * temperature)
    if mask is not None:
        per = torch.where(mask, per, torch.zeros_like(per))
    if reduction == "none":
        return per
    denom = mask.sum().to(per.dtype) if mask is not None else per.new_tensor(per.shape[0])
    if reduction == "mean_elements":
        denom = denom * student_logits.shape[1]
    return per.sum() / denom.clamp_min(1)


def topk_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    k: int,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    t2_scale: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """`kd_kl` restricted, per sample, to the K classes with the largest TEACHER logits.

    Both distributions are renormalised over the selected K classes (softmax over the gathered
    logits), so ``mean_elements`` divides by B·K. K ≥ C is exactly the full `kd_kl`.
    """
    _check_logits(student_logits, teacher_logits, mask)
    if k < 1:
        raise ConfigError(f"top_k: expected a positive number of classes, found {k}")
    if k >= student_logits.shape[1]:
        return kd_kl(student_logits, teacher_logits, temperature=temperature, reduction=reduction,
                     t2_scale=t2_scale, mask=mask)
    idx = teacher_logits.detach().topk(k, dim=-1).indices
    return kd_kl(student_logits.gather(1, idx), teacher_logits.gather(1, idx), temperature=temperature,
                 reduction=reduction, t2_scale=t2_scale, mask=mask)


def top_mid_bottom_indices(teacher_logits: torch.Tensor, k: int) -> torch.Tensor:
    """[B, 3K] class indices: the K smallest, K around the median and K largest teacher logits.

    Positions in the ascending (stable) sort: [0, K), [⌊(C−K)/2⌋, ⌊(C+K)/2⌋), [C−K, C); K is capped
    at C, and a class appears twice when 3K > C (kept, as in the reference).
    """
    c = teacher_logits.shape[1]
    k = min(k, c)
    order = teacher_logits.detach().argsort(dim=-1, stable=True)
    pos = torch.cat([
        torch.arange(0, k),
        torch.arange((c - k) // 2, (c + k) // 2),
        torch.arange(c - k, c),
    ]).to(order.device)
    return order[:, pos]


def top_mid_bottom_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    k: int,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    t2_scale: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """`kd_kl` over the 3K classes of `top_mid_bottom_indices` (softmax renormalised over them)."""
    _check_logits(student_logits, teacher_logits, mask)
    if k < 1:
        raise ConfigError(f"top_k: expected a positive number of classes, found {k}")
    idx = top_mid_bottom_indices(teacher_logits, k)
    return kd_kl(student_logits.gather(1, idx), teacher_logits.gather(1, idx), temperature=temperature,
                 reduction=reduction, t2_scale=t2_scale, mask=mask)


def symmetric_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """CCL's logit consistency ("JSD" in the reference; it is a symmetric KL). Nothing detached.

    p = softmax(p_logits), q = softmax(q_logits):
    ``S = ½ · mean_b [ Σ_c p log(p/q + 1e-10) + Σ_c q log(q/p + 1e-10) ]`` (the 1e-10 sits inside
    the log of the ratio). ``reduction="none"`` returns the [B] per-sample values (½·[...]).
    Computed as log(exp(log p − log q) + 1e-10) so an underflowing q gives a finite value.
    """
    if reduction not in ("mean", "none"):
        raise ConfigError(f"reduction: expected 'mean' or 'none', found '{reduction}'")
    lp = F.log_softmax(p_logits, dim=-1)
    lq = F.log_softmax(q_logits, dim=-1)
    eps = math.log(1e-10)
    pq = (lp.exp() * torch.logaddexp(lp - lq, torch.full_like(lp, eps))).sum(-1)
    qp = (lq.exp() * torch.logaddexp(lq - lp, torch.full_like(lq, eps))).sum(-1)
    per = 0.5 * (pq + qp)
    return per if reduction == "none" else per.mean()


def feature_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean_b (1 − cos(s_b, t_b)); teacher detached."""
    return (1 - F.cosine_similarity(student, teacher.detach(), dim=-1)).mean()


def feature_mse(student: torch.Tensor, teacher: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
    """mean over all B·D elements of (ŝ − t̂)², ŝ/t̂ L2-normalised when `normalize`; teacher detached."""
    t = teacher.detach()
    if normalize:
        student, t = F.normalize(student, dim=-1), F.normalize(t, dim=-1)
    return (student - t).pow(2).mean()


def add_feature_terms(total: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor, *, cosine: float = 0.0,
                      mse: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """total + cosine · feature_cosine + mse · feature_mse (each only when its weight is set), and the
    detached terms to log as "feat_cos" / "feat_mse"."""
    logged: dict[str, torch.Tensor] = {}
    if cosine:
        c = feature_cosine(student, teacher)
        total, logged["feat_cos"] = total + cosine * c, c.detach()
    if mse:
        m = feature_mse(student, teacher)
        total, logged["feat_mse"] = total + mse * m, m.detach()
    return total, logged


class TeacherTargets(NamedTuple):
    """Teacher logits ready for `kd_kl` and the mask to pass with them (None: keep all)."""

    logits: torch.Tensor
    mask: torch.Tensor | None


def missing_teacher(teacher_logits: torch.Tensor, present: torch.Tensor, mode: str = "skip") -> TeacherTargets:
    """Handle samples without a stored teacher prediction (`present` bool [B]).

    ``skip`` (xmodal default): keep the logits, return `present` as the KD mask, so those samples
    leave the KD term (and its denominator). ``uniform`` (reference parity): replace their logits
    by the constant −1, i.e. a uniform teacher that is still distilled; no mask.
    """
    if mode not in MISSING_TEACHER_MODES:
        raise ConfigError(f"missing_teacher: expected one of {', '.join(MISSING_TEACHER_MODES)}, found '{mode}'")
    present = present.to(device=teacher_logits.device, dtype=torch.bool)
    if mode == "skip":
        return TeacherTargets(teacher_logits, present)
    uniform = torch.full_like(teacher_logits, -1.0)
    return TeacherTargets(torch.where(present[:, None], teacher_logits, uniform), None)
