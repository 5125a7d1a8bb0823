"""CCL losses (Chen et al., CVPR 2021): label-aware contrastive distillation and the per-teacher
student / composition objectives (specs/ccl.md §4).

Distributed semantics: with ``gather=True`` features are all-gathered with gradients (labels and
masks without), so the contrastive terms see the global batch on every rank, as the reference's
DataParallel did. Per-sample terms (CE, symmetric KL) are averaged with the *global* count of kept
rows, scaled so that DDP's gradient averaging reproduces the single-process mean exactly even
when ranks keep different numbers of rows (missing audio). The value logged on one rank is then
that rank's share (the mean over ranks is the full-batch value).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

from xmodal.engine.dist import all_gather_nograd, all_gather_with_grad, world_size
from xmodal.losses import LossOut
from xmodal.losses.kd import symmetric_kl

_EPS = 1e-10


def nonzero_rows(t: torch.Tensor) -> torch.Tensor:
    """bool [B]: rows with at least one non-zero entry (all-zero audio features mark "no audio")."""
    return (t.flatten(1) != 0).any(dim=1)


def _distributed(gather: bool) -> bool:
    return gather and world_size() > 1


def _gather_rows(x: torch.Tensor, gather: bool) -> torch.Tensor:
    if not _distributed(gather):
        return x
    if x.requires_grad:
        return all_gather_with_grad(x)
    if x.dtype == torch.bool:  # gloo cannot gather bool tensors
        return torch.cat(all_gather_nograd(x.to(torch.uint8)), 0).bool()
    return torch.cat(all_gather_nograd(x), 0)


def _n_t(x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """N_T on already gathered/masked rows (see `multiclass_contrastive`)."""
    if x.shape[0] == 0:
        return (x.sum() + y.sum()) * 0.0
    xh = F.normalize(x.flatten(1), dim=1, eps=1e-12)
    yh = F.normalize(y.flatten(1), dim=1, eps=1e-12)
    # Distance form 1 − ½‖x̂−ŷ‖² (spec §11); cdist without the matmul shortcut is the exact distance.
    d2 = torch.cdist(xh, yh, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    p = torch.softmax((1 - 0.5 * d2) / temperature, dim=1)
    pos = (labels[:, None] == labels[None, :]).to(p.dtype)
    neg = 1 - pos
    n_neg = neg.sum(1)
    if bool((n_neg == 0).any()):
        warnings.warn(
            "multiclass_contrastive: a row has no negative (every sample in the batch has its label); "
            "its negative term is set to 0", RuntimeWarning, stacklevel=3,
        )
    loss_pos = -(torch.log(p + _EPS) * pos).sum(1) / pos.sum(1)
    loss_neg = -(torch.log(1 - p + _EPS) * neg).sum(1) / n_neg.clamp_min(1)
    return (loss_pos + loss_neg).mean()


def multiclass_contrastive(
    x: torch.Tensor,
    y: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    gather: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """CCL's label-aware contrastive loss N_T(x, y) (asymmetric; nothing detached).

    x̂, ŷ = L2-normalised rows, s_ij = 1 − ½‖x̂_i − ŷ_j‖² (= cosine), p_ij = softmax_j(s_ij / T),
    P_i = {j: l_j = l_i}, Q_i = {j: l_j ≠ l_i}:
    ``N_T = mean_i [ mean_{j∈P_i} −log(p_ij + 1e-10) + mean_{j∈Q_i} −log(1 − p_ij + 1e-10) ]``.
    A row with Q_i empty gets negative term 0 (with a warning). `mask` (bool [B]) drops rows
    before the loss (after the gather, so ranks may keep different counts).
    """
    assert x.shape[0] == y.shape[0] == labels.shape[0], "x, y and labels need the same batch size"
    x, y, labels = _gather_rows(x, gather), _gather_rows(y, gather), _gather_rows(labels, gather)
    if mask is not None:
        mask = _gather_rows(mask, gather)
        x, y, labels = x[mask], y[mask], labels[mask]
    return _n_t(x, y, labels, temperature)


def pair_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    gather: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetrised L_T(x, y) = N_T(x, y) + N_T(y, x)."""
    kw = dict(temperature=temperature, gather=gather, mask=mask)
    return multiclass_contrastive(x, y, labels, **kw) + multiclass_contrastive(y, x, labels, **kw)


def _global_count(keep: torch.Tensor, gather: bool) -> torch.Tensor:
    count = keep.sum().to(torch.float64).reshape(1)
    if _distributed(gather):
        count = torch.cat(all_gather_nograd(count)).sum()
    return count.sum()


def _masked_mean(per: torch.Tensor, keep: torch.Tensor, count: torch.Tensor, gather: bool) -> torch.Tensor:
    """Σ_kept per / global count, times W under DDP (whose gradient averaging divides by W)."""
    scale = world_size() if _distributed(gather) else 1
    total = torch.where(keep, per, torch.zeros_like(per)).sum()
    return total * (scale / count.clamp_min(1)).to(per.dtype)


class CCLObjectives(NamedTuple):
    """Per-teacher CCL objectives: `student` = J_v's distillation part, `composition` = J_X."""

    student: LossOut
    composition: LossOut


def ccl_objectives(
    v: torch.Tensor,
    t: torch.Tensor,
    m: torch.Tensor,
    z_v: torch.Tensor,
    z_m: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    weight: float = 1.0,
    mask: torch.Tensor | None = None,
    gather: bool = True,
    m_routed: torch.Tensor | None = None,
    z_m_routed: torch.Tensor | None = None,
) -> CCLObjectives:
    """The two objectives of one teacher X (spec §4.3); teacher feature `t` is detached.

    v/z_v: student feature/logits; (z_m, m) = CompositionHead_X(t, v); labels [B] long.
    - student:     J_v^X = w · (L_vm + L_vt + S(z_v, z_m)); the method adds CE(z_v, y) once.
    - composition: J_X  = CE(z_m, y) + L_vm + L_mt + S(z_v, z_m), with v and z_v detached.
    L_ab = `pair_loss` at `temperature`, S = `symmetric_kl`.

    Gradient routing of §4.4 (students get dJ_v only, heads get d(J_X + J_v)) with ONE backward:
    pass ``m_routed, z_m_routed = head(t, v.detach())`` — the head run again on the detached
    student feature — then ``(J_v.total + J_X.total).backward()``: J_X then has no path to the
    student, while the head parameters get the same dJ_X as in the reference's separate backward.
    Without them J_X reaches the student through m; use the reference's two backward passes.

    `mask` (bool [B], e.g. `nonzero_rows(t)` for audio) removes rows from every term; if fewer
    than 2 rows are kept over all ranks, both objectives are 0 (still attached to the graph).
    Rows left without negatives keep only their positive term (`multiclass_contrastive`).
    """
    m_x = m if m_routed is None else m_routed
    z_x = z_m if z_m_routed is None else z_m_routed
    t = t.detach()
    keep = mask if mask is not None else torch.ones(v.shape[0], dtype=torch.bool, device=v.device)
    count = _global_count(keep, gather)
    if count < 2:
        zero = (v.sum() + m.sum() + z_v.sum() + z_m.sum() + m_x.sum() + z_x.sum()) * 0.0
        return CCLObjectives(LossOut(zero, {}), LossOut(zero, {}))

    # Gather every feature once; the six N_T calls then run on the global, masked rows.
    g_keep = _gather_rows(keep, gather)
    lab = _gather_rows(labels, gather)[g_keep]
    vg, tg, mg = (_gather_rows(a, gather)[g_keep] for a in (v, t, m))
    vd = vg.detach()
    mxg = mg if m_routed is None else _gather_rows(m_routed, gather)[g_keep]

    def L(a, b):  # noqa: N802 - the spec's name
        return _n_t(a, b, lab, temperature) + _n_t(b, a, lab, temperature)

    s_student = _masked_mean(symmetric_kl(z_v, z_m, reduction="none"), keep, count, gather)
    l_vm, l_vt = L(vg, mg), L(vg, tg)
    student = LossOut(weight * (l_vm + l_vt + s_student), {"vm": l_vm, "vt": l_vt, "S": s_student})

    ce = _masked_mean(F.cross_entropy(z_x, labels, reduction="none"), keep, count, gather)
    s_comp = _masked_mean(symmetric_kl(z_v.detach(), z_x, reduction="none"), keep, count, gather)
    l_vm_x, l_mt = L(vd, mxg), L(mxg, tg)
    composition = LossOut(ce + l_vm_x + l_mt + s_comp, {"ce": ce, "vm": l_vm_x, "mt": l_mt, "S": s_comp})
    return CCLObjectives(student, composition)
