"""CLIP-style InfoNCE over the global batch.

With ``gather=True`` each rank concatenates the embeddings of all ranks with
`xmodal.engine.dist.all_gather_with_grad`, so every rank computes the same full-batch loss; the
gather's backward sums the gradients of the W identical copies and DDP's averaging then yields
exactly the single-process full-batch gradient. (CAV-MAE's one-direction variant is
`cavmae_contrastive` in losses/mae.py.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xmodal.engine.dist import all_gather_with_grad
from xmodal.losses import LossOut


@torch.no_grad()
def diagonal_accuracy(logits: torch.Tensor) -> torch.Tensor:
    """Share of rows whose argmax is the diagonal entry (row i retrieves column i)."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return (logits.argmax(dim=1) == target).float().mean()


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    temperature: float = 0.07,
    gather: bool = True,
    symmetric: bool = True,
    normalize: bool = True,
) -> LossOut:
    """InfoNCE between paired rows of `a` [N, D] and `b` [N, D]; nothing detached.

    ``logits = â b̂ᵀ / τ`` over the gathered batch (â, b̂ L2-normalised when `normalize`),
    ``L_ab = CE(logits, diag)``, ``L_ba = CE(logitsᵀ, diag)``; total = ½(L_ab + L_ba), or L_ab
    when not `symmetric`. Terms: both directions' losses and `diagonal_accuracy`.
    """
    assert a.shape == b.shape and a.dim() == 2, "info_nce expects paired [N, D] embeddings"
    if normalize:
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    if gather:
        a, b = all_gather_with_grad(a), all_gather_with_grad(b)
    logits = a @ b.t() / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    l_ab = F.cross_entropy(logits, target)
    terms: dict[str, torch.Tensor | float] = {"loss_a2b": l_ab, "acc_a2b": diagonal_accuracy(logits)}
    if not symmetric:
        return LossOut(l_ab, terms)
    l_ba = F.cross_entropy(logits.t(), target)
    terms.update(loss_b2a=l_ba, acc_b2a=diagonal_accuracy(logits.t()))
    return LossOut(0.5 * (l_ab + l_ba), terms)
