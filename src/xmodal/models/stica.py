"""STiCA's feature aggregation and feature-map crops (specs/gdt-stica.md §3.5, §8.5, §8.7, §11).

* ``TemporalPooling`` g(·): ``layers=0`` is global average pooling over (T', H', W'); ``layers>0``
  adaptive-average-pools the map to (T_tok, 1, 1), runs ``layers`` post-LN transformer layers over
  the T_tok tokens and returns token 0 (no CLS token, no positional embedding unless asked).
  T_tok is a fixed property of the module: the T' of the full clip's map (4 for 30 frames, 8 for
  60). The full map must have exactly T_tok steps (a mismatch is an error, not a silent reshape:
  §8.7); crops are resampled to T_tok tokens (a shorter temporal crop gets overlapping bins).
* ``PostLNLayer``: x = LN(x + MHA(x)); x = LN(x + FFN(x)); LN eps 1e-12; q, k Linear(D, D);
  value and output projections are identities unless ``qkv_mha``; heads are contiguous D/h slices
  and scores are scaled by 1/sqrt(D/h) (scaled_dot_product_attention's default); FFN D→4D→D with
  exact GELU; Linear weights N(0, 0.02), biases 0. Two layers at D=512: 5.25 M parameters.
* ``sample_crops``: large/small spatial crops (all T' steps, an h×w window of the grid) and
  large/small temporal crops (the whole grid, a window of steps). Offsets are uniform over
  0..size−window inclusive, drawn independently per crop and shared across the batch;
  ``offbyone=True`` reproduces the reference's exclusive upper bound (§8.5) for parity runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xmodal.errors import ConfigError
from xmodal.registry import register_model


class PostLNLayer(nn.Module):
    """One post-LN transformer layer (see the module docstring)."""

    def __init__(self, dim: int = 512, heads: int = 4, ffn: int = 2048, qkv_mha: bool = False, eps: float = 1e-12):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"pooling transformer: dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim) if qkv_mha else None
        self.out = nn.Linear(dim, dim) if qkv_mha else None
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def _split(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # [B, h, N, D/h]

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        v = self.v(x) if self.v is not None else x
        att = F.scaled_dot_product_attention(self._split(self.q(x)), self._split(self.k(x)), self._split(v))
        att = att.transpose(1, 2).reshape(b, n, d)
        if self.out is not None:
            att = self.out(att)
        x = self.norm1(x + att)
        return self.norm2(x + self.ffn(x))


class TemporalPooling(nn.Module):
    """g(·): map [B, D, T, H, W] -> [B, D] by GAP (layers 0) or the pooling transformer."""

    def __init__(self, dim: int = 512, layers: int = 0, t_tok: int = 4, heads: int = 4, ffn: int = 2048,
                 qkv_mha: bool = False, pos_emb: bool = False):
        super().__init__()
        if layers < 0 or (layers > 0 and t_tok < 1):
            raise ConfigError(f"pooling: layers must be >= 0 and t_tok >= 1, got layers={layers} t_tok={t_tok}")
        self.layers_n, self.t_tok = layers, t_tok
        self.layers = nn.ModuleList(PostLNLayer(dim, heads, ffn, qkv_mha) for _ in range(layers))
        self.pos = None
        if layers and pos_emb:
            self.pos = nn.Parameter(torch.zeros(1, t_tok, dim))
            nn.init.normal_(self.pos, 0.0, 0.02)

    def forward(self, fmap: Tensor, *, full: bool = True) -> Tensor:
        """`full`: the map of the whole clip, whose T' must equal T_tok (crops pass False)."""
        if not self.layers_n:
            return fmap.mean(dim=(2, 3, 4))
        if full and fmap.shape[2] != self.t_tok:
            raise ConfigError(f"pooling.t_tok: the transformer expects T'={self.t_tok} time steps but the clip's "
                              f"feature map has {fmap.shape[2]} (set pooling t_tok to the trunk's T', e.g. 8 for 60 frames)")
        tok = F.adaptive_avg_pool3d(fmap, (self.t_tok, 1, 1)).flatten(2).transpose(1, 2)  # [B, T_tok, D]
        if self.pos is not None:
            tok = tok + self.pos
        for layer in self.layers:
            tok = layer(tok)
        return tok[:, 0]


@register_model("stica_pooling")
def stica_pooling(dim: int = 512, layers: int = 0, t_tok: int = 4, heads: int = 4, ffn: int = 2048,
                  qkv_mha: bool = False, pos_emb: bool = False) -> TemporalPooling:
    """STiCA temporal pooling: 0 layers = GAP; L >= 1 post-LN transformer layers over T_tok tokens."""
    return TemporalPooling(dim, layers, t_tok, heads, ffn, qkv_mha, pos_emb)


# ------------------------------------------------------------------------------------- crops
class CropBox(NamedTuple):
    """Half-open index ranges of a crop of a [B, D, T', H', W'] map."""

    t0: int
    t1: int
    y0: int
    y1: int
    x0: int
    x1: int

    def take(self, fmap: Tensor) -> Tensor:
        return fmap[:, :, self.t0 : self.t1, self.y0 : self.y1, self.x0 : self.x1]


@dataclass
class CropConfig:
    """Feature-crop counts and sizes (§3.5, recipe (Lg_s, S_s, S_t, Lg_t) = (2, 4, 1, 2)).

    Sizes 0 derive from the map: spatial large round(6/7·H'), small round(4/7·H') (6 and 4 on the
    7×7 grid); temporal large round(3/4·T'), small T'//2 (3/2 for T'=4, 6/4 for T'=8).
    """

    spatial_large: int = 2
    spatial_small: int = 4
    temporal_small: int = 1
    temporal_large: int = 2
    spatial_large_size: int = 0
    spatial_small_size: int = 0
    temporal_large_size: int = 0
    temporal_small_size: int = 0
    offbyone: bool = False  # the reference's exclusive offset bound (§8.5), for parity only

    def validate(self) -> None:
        counts = (self.spatial_large, self.spatial_small, self.temporal_small, self.temporal_large)
        if min(counts) < 0 or self.spatial_large > 2 or self.temporal_large > 2:
            raise ValueError(f"crop counts must be >= 0 with at most 2 large crops per type, got {counts}")
        if self.spatial_small and not self.spatial_large or self.temporal_small and not self.temporal_large:
            raise ValueError("small crops are matched to large crops: a type with small crops needs >= 1 large crop")


class ViewCrops(NamedTuple):
    spatial_large: list[CropBox]
    spatial_small: list[CropBox]
    temporal_large: list[CropBox]
    temporal_small: list[CropBox]


def crop_sizes(cfg: CropConfig, t: int, h: int, w: int) -> dict[str, int]:
    side = min(h, w)
    sizes = {
        "spatial_large": cfg.spatial_large_size or round(6 * side / 7),
        "spatial_small": cfg.spatial_small_size or round(4 * side / 7),
        "temporal_large": cfg.temporal_large_size or round(3 * t / 4),
        "temporal_small": cfg.temporal_small_size or t // 2,
    }
    for name, s in sizes.items():
        limit = t if name.startswith("temporal") else side
        if not 1 <= s <= limit:
            raise ConfigError(f"crops.{name}_size: {s} does not fit the feature map (T'={t}, H'={h}, W'={w})")
    return sizes


def crop_offset(size: int, window: int, gen: torch.Generator | None = None, offbyone: bool = False) -> int:
    """Uniform over 0..size−window inclusive; `offbyone`: 0..size−window−1 (the reference, §8.5)."""
    hi = size - window + (0 if offbyone else 1)
    return int(torch.randint(0, max(hi, 1), (), generator=gen))


def sample_crops(cfg: CropConfig, shape: tuple[int, int, int], gen: torch.Generator | None = None) -> ViewCrops:
    """Crop boxes of one view for a map with (T', H', W') = `shape`."""
    t, h, w = shape
    sizes = crop_sizes(cfg, t, h, w)
    off = lambda n, k: crop_offset(n, k, gen, cfg.offbyone)
    out = []
    for name in ViewCrops._fields:
        k, n = sizes[name], getattr(cfg, name)
        if name.startswith("spatial"):
            boxes = [(0, t, y, y + k, x, x + k) for y, x in ((off(h, k), off(w, k)) for _ in range(n))]
        else:
            boxes = [(s, s + k, 0, h, 0, w) for s in (off(t, k) for _ in range(n))]
        out.append([CropBox(*b) for b in boxes])
    return ViewCrops(*out)


class TrunkProbe(NamedTuple):
    steps: int  # T' of the map
    unused: list[str]  # trunk parameters the map does not depend on


def probe_trunk(trunk: nn.Module, frames: int, size: int = 32) -> TrunkProbe:
    """T' of `trunk`'s map for `frames`-frame clips, and the parameters that do not shape the map
    (one eval-mode forward/backward of zeros; mode, BatchNorm statistics and gradients restored).

    A parameter outside the map (e.g. a layer applied after the map is taken) would get no
    gradient from STiCA's losses, and DDP would then stall waiting for it."""
    was = trunk.training
    params = dict(trunk.named_parameters())
    saved = {k: p.grad for k, p in params.items()}
    trunk.eval()
    try:
        for p in params.values():
            p.grad = None
        p0 = next(iter(params.values()))
        x = torch.zeros(1, 3, frames, size, size, device=p0.device, dtype=p0.dtype)
        fmap = trunk(x, return_map=True).fmap
        if fmap is None or fmap.dim() != 5:
            raise ConfigError(f"STiCA: the video trunk {type(trunk).__name__} returns no [B, D, T', H', W'] map")
        fmap.sum().backward()
        unused = [k for k, p in params.items() if p.requires_grad and p.grad is None]
    finally:
        for k, p in params.items():
            p.grad = saved[k]
        trunk.train(was)
    return TrunkProbe(int(fmap.shape[2]), unused)


def map_steps(trunk: nn.Module, frames: int, size: int = 32) -> int:
    """T' of `trunk`'s map for a clip of `frames` frames (see `probe_trunk`)."""
    return probe_trunk(trunk, frames, size).steps


class PooledTrunk(nn.Module):
    """Video trunk + STiCA pooling: video [B, C, T, H, W] -> [B, D] (what fine-tuning transfers)."""

    def __init__(self, trunk: nn.Module, pool: TemporalPooling):
        super().__init__()
        self.trunk, self.pool = trunk, pool
        self.feature_dim = trunk.feature_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.trunk(x, return_map=True).fmap, full=True)


@dataclass
class PoolConfig:
    """``layers`` 0 = GAP; ``t_tok`` 0 = the trunk's T' for ``frames``-frame clips (derived)."""

    layers: int = 0
    t_tok: int = 0
    heads: int = 4
    ffn: int = 0  # 0 = 4 × feature dim (2048 at 512)
    qkv_mha: bool = False
    pos_emb: bool = False

    def validate(self) -> None:
        if self.layers < 0 or self.t_tok < 0 or self.heads < 1 or self.ffn < 0:
            raise ValueError("pool: layers, t_tok, ffn must be >= 0 and heads >= 1")


def build_pooling(cfg: PoolConfig, trunk: nn.Module, frames: int, steps: int | None = None) -> TemporalPooling:
    """The pooling for `trunk`'s map; T_tok = cfg.t_tok, or the map's T' for `frames` frames
    (`steps` when already probed)."""
    dim = trunk.feature_dim
    t_tok = cfg.t_tok or ((steps or map_steps(trunk, frames)) if cfg.layers else 1)
    return TemporalPooling(dim, cfg.layers, t_tok, cfg.heads, cfg.ffn or 4 * dim, cfg.qkv_mha, cfg.pos_emb)

