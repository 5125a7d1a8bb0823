"""Masked-autoencoder pieces: random token masking, the MAE reconstruction loss, CAV-MAE's contrastive term.

All pure functions (randomness comes from an injectable ``noise`` tensor or ``generator``).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from xmodal.errors import ConfigError
from xmodal.losses import LossOut
from xmodal.losses.contrastive import info_nce

MaskMode = Literal["unstructured", "time", "freq", "tf"]


class Masked(NamedTuple):
    """Output of `random_masking`.

    x_kept: [B, keep, D] visible tokens in shuffled order; mask: [B, L] 1 = removed, 0 = kept
    (original token order); ids_restore: [B, L] un-shuffles ``cat([kept, removed])``.
    """

    x_kept: torch.Tensor
    mask: torch.Tensor
    ids_restore: torch.Tensor


def num_kept(length: int, ratio: float) -> int:
    """Tokens kept at mask `ratio`: int(L·(1−ratio)) (truncation, e.g. 128 of 512 and 49 of 196 at 0.75)."""
    return int(length * (1 - ratio))


def random_masking(x: torch.Tensor, ratio: float, noise: torch.Tensor | None = None) -> Masked:
    """Keep the int(L·(1−ratio)) tokens with the smallest noise (per sample).

    ``ids_shuffle = argsort(noise)`` ascending; kept = x gathered by ``ids_shuffle[:, :keep]``;
    ``ids_restore = argsort(ids_shuffle)``. noise: [B, L] (default ``torch.rand``).
    """
    b, n, d = x.shape
    keep = num_kept(n, ratio)
    if noise is None:
        noise = torch.rand(b, n, device=x.device)
    assert noise.shape == (b, n), f"noise {tuple(noise.shape)} != {(b, n)}"
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(b, keep, d))
    # mask in original order: position i is removed iff its rank in the shuffle is >= keep
    mask = (ids_restore >= keep).to(x.dtype)
    return Masked(x_kept, mask, ids_restore)


def structured_noise(
    noise: torch.Tensor,
    grid: tuple[int, int],
    ratio: float,
    mode: MaskMode,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Raise the noise of whole time columns / frequency rows to 1.1 so they are removed first.

    ``noise`` [B, f·t] over a frequency-major grid ``(f, t)``. 'time': int(t·r) columns per example;
    'freq': int(f·r) rows; 'tf': int(t·r·0.7) columns and int(f·r·0.7) rows. The caller still
    keeps int(L·(1−r)) tokens, so the number removed does not depend on the mode.
    """
    if mode == "unstructured":
        return noise
    f, t = grid
    b = noise.shape[0]
    assert noise.shape[1] == f * t, f"noise length {noise.shape[1]} != {f}x{t} grid"
    if mode == "time":
        n_t, n_f = int(t * ratio), 0
    elif mode == "freq":
        n_t, n_f = 0, int(f * ratio)
    elif mode == "tf":
        n_t, n_f = int(t * ratio * 0.7), int(f * ratio * 0.7)
    else:
        raise ConfigError(f"mask_mode: expected one of unstructured, time, freq, tf; got {mode!r}")
    dev = noise.device

    def pick(size: int, count: int) -> torch.Tensor:
        # `count` distinct random indices per example, as a [B, size] boolean
        ranks = torch.rand(b, size, generator=generator, device="cpu").argsort(dim=1).argsort(dim=1)
        return (ranks < count).to(dev)

    hit = pick(t, n_t)[:, None, :] | pick(f, n_f)[:, :, None]  # [B, f, t]
    return noise.view(b, f, t).masked_fill(hit, 1.1).reshape(b, f * t)


def patchify(imgs: torch.Tensor, patch: int) -> torch.Tensor:
    """[N, c, h·p, w·p] -> [N, h·w, p·p·c]; patches row-major, within a patch (p, q, c), c fastest."""
    n, c, hp, wp = imgs.shape
    h, w = hp // patch, wp // patch
    assert h * patch == hp and w * patch == wp, f"{hp}x{wp} is not a multiple of patch {patch}"
    x = imgs.reshape(n, c, h, patch, w, patch)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, h * w, patch * patch * c)


def unpatchify(x: torch.Tensor, patch: int, c: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of `patchify`: [N, h·w, p·p·c] -> [N, c, h·p, w·p] for grid (h, w)."""
    n = x.shape[0]
    h, w = grid
    assert x.shape[1] == h * w and x.shape[2] == patch * patch * c
    x = x.reshape(n, h, w, patch, patch, c)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(n, c, h * patch, w * patch)


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """Σ_i m_i·mean_j (pred_ij − t̂_ij)² / Σ_i m_i over patches i, patch values j.

    With ``norm_pix``, t̂ = (t − mean_j t) / sqrt(var_j t + 1e-6) with the UNBIASED variance
    (as the reference computes it). pred/target: [B, L, P]; mask: [B, L], 1 = masked (scored).
    """
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased (n - 1)
        target = (target - mean) / (var + 1.0e-6).sqrt()
    per_patch = (pred - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def cavmae_contrastive(
    a: torch.Tensor,
    v: torch.Tensor,
    temperature: float = 0.05,
    symmetric: bool = False,
    gather: bool = False,
) -> LossOut:
    """InfoNCE over pooled, L2-normalised audio/visual vectors: S = Â V̂ᵀ / τ, nothing detached.

    Single direction (default): nce = −mean_i log_softmax(S, dim=0)[i, i] — for each visual column,
    a softmax over the batch's audios, i.e. `info_nce` with the visual side as the query.
    ``symmetric`` averages it with the dim-1 version. c_acc = share of columns (and rows, averaged,
    when symmetric) whose argmax is the diagonal. a, v: [B, D] (already mean-pooled). ``gather``
    concatenates both sides over ranks with gradients; the reference did not (per-GPU negatives).
    """
    out = info_nce(v, a, temperature=temperature, gather=gather, symmetric=symmetric)
    acc = out.terms["acc_a2b"]
    if symmetric:
        acc = (acc + out.terms["acc_b2a"]) / 2
    return LossOut(out.total, {"nce": out.total.detach(), "c_acc": acc})
