"""Shared ViT pieces: pre-norm Block (fused qkv + SDPA), patch embedding, 2-D sin-cos tables.

Parameter names follow the timm/MAE layout (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
``mlp.fc1``, ``mlp.fc2``, ``patch_embed.proj``) so that released checkpoints load unchanged.
A Block can own extra LayerNorm pairs per modality (CAV-MAE's ``norm1_a``/``norm2_a``, ...): the
attention and MLP weights are shared, only the normalisation switches with ``modality``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection; softmax(q kᵀ / sqrt(d_h)) v."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} is not divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        # [B, N, 3, H, Dh] -> three [B, H, N, Dh] views: SDPA reads the strided views directly,
        # so no contiguous copy of q/k/v is made.
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        # SDPA's default scale is Dh^-0.5, the same as timm's `qk_scale=None`.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 (d -> r·d), exact (erf) GELU, fc2 (r·d -> d)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x += attn(LN1(x)); x += mlp(LN2(x))``.

    ``modality_norms=("a", "v")`` adds the LayerNorm pairs ``norm1_a/norm2_a`` and
    ``norm1_v/norm2_v`` (CAV-MAE); ``forward(x, modality="a")`` then uses those instead of the
    default ``norm1/norm2``. With the default ``()`` this is a plain ViT block.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        *,
        qkv_bias: bool = True,
        norm_eps: float = 1e-5,
        modality_norms: tuple[str, ...] = (),
    ):
        super().__init__()
        self.modalities = tuple(modality_norms)
        # Registration order = the checkpoint's key order (norm1, norm1_a, norm1_v, attn, norm2, ...).
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        for m in self.modalities:
            self.add_module(f"norm1_{m}", nn.LayerNorm(dim, eps=norm_eps))
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        for m in self.modalities:
            self.add_module(f"norm2_{m}", nn.LayerNorm(dim, eps=norm_eps))
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, modality: str | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if modality is None:
            n1, n2 = self.norm1, self.norm2
        else:
            assert modality in self.modalities, f"block has no '{modality}' norms (has {self.modalities})"
            n1, n2 = getattr(self, f"norm1_{modality}"), getattr(self, f"norm2_{modality}")
        x = x + self.attn(n1(x), attn_mask)
        return x + self.mlp(n2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patches: Conv2d(kernel = stride = patch) -> tokens [B, h·w, D], row-major."""

    def __init__(self, in_chans: int, dim: int, patch: int, grid: tuple[int, int]):
        super().__init__()
        self.patch = patch
        self.grid = grid  # (rows, cols) of the patch grid
        self.num_patches = grid[0] * grid[1]
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.patch
        assert (h // p, w // p) == self.grid and h % p == 0 and w % p == 0, (
            f"input {h}x{w} does not tile the {self.grid} grid of {p}-pixel patches"
        )
        # With kernel == stride the convolution is one GEMM over (c, p, q)-ordered patch vectors;
        # doing it as a linear avoids the im2col copy and oneDNN's slow weight-gradient path on CPU.
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
        return F.linear(patches, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """[len(pos), dim] = concat(sin(p·ω_k), cos(p·ω_k)), ω_k = 10000^(−k/(dim/2)), float64."""
    assert dim % 2 == 0
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(np.asarray(pos, dtype=np.float64).reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, rows: int, cols: int) -> torch.Tensor:
    """MAE 2-D sin-cos table [rows·cols, dim] (float32) for a row-major token grid.

    Channels [0, dim/2) encode the column index, [dim/2, dim) the row index; computed in float64.
    """
    assert dim % 4 == 0, f"sin-cos table needs dim divisible by 4, got {dim}"
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    table = np.concatenate([sincos_1d(dim // 2, c), sincos_1d(dim // 2, r)], axis=1)
    return torch.from_numpy(table).float()


def init_vit_weights(module: nn.Module) -> None:
    """MAE init: xavier-uniform Linear weights, zero biases, LayerNorm (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, PatchEmbed):
            # xavier on the conv weight viewed as [out, in·p·q], like a Linear
            w = m.proj.weight
            bound = math.sqrt(6.0 / (w.shape[0] + w[0].numel()))
            nn.init.uniform_(w, -bound, bound)
