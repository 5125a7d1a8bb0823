"""Anticipative Video Transformer (AVT), the video student of text-KD (specs/textkd.md §10).

Per-frame backbone -> causal "AVT-h" predictor -> action classifier:

* Backbone (one frame at a time, frames fold into the batch):
  - ``vit_b16`` "AVT-b": ViT-B/16 at 224×224, the final-norm class token (768-d). Parameter names
    follow timm's ``VisionTransformer`` so an ImageNet ViT-B/16 state dict a user has locally
    loads directly (`load_vit_weights`): ``cls_token [1,1,D]``, ``pos_embed [1,1+N,D]``,
    ``patch_embed.proj.{weight,bias}`` (Conv2d P×P stride P), ``blocks.{i}.norm1``,
    ``blocks.{i}.attn.qkv`` (one Linear D->3D, q|k|v stacked), ``blocks.{i}.attn.proj``,
    ``blocks.{i}.norm2``, ``blocks.{i}.mlp.fc1`` / ``fc2``, ``norm``; ``head.*`` /
    ``pre_logits.*`` / ``fc_norm.*`` are dropped. LayerNorm eps 1e-6, exact GELU.
    Inputs are expected normalised with mean = std = 0.5 (a transform's job, not the model's).
  - ``vit_tiny`` / ``frame_cnn``: small backbones over 32×32 frames for embedded data and tests.
  - ``none`` ("AVT-h only"): the input is precomputed per-frame features [B, T, d].
* Head "AVT-h": encoder Linear(d -> width, no bias); GPT-2 style causal transformer (learned
  positions, pre-LN blocks, tanh-GELU MLP ×4, final LayerNorm, GPT-2 init and dropouts);
  decoder Linear(width -> d, no bias). Output t is the predicted feature of frame t+1.
* Classifier: Dropout(p) + Linear(d -> C) on the predicted future feature (last position) ->
  anticipated-action logits; the same classifier on the "past" -> past logits per observed frame
  (frame 0 from its observed feature, frames 1..T-1 from the predictions of outputs 0..T-2, as
  the AVT reference does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xmodal.errors import ConfigError
from xmodal.losses import LossOut
from xmodal.registry import register_model


# ------------------------------------------------------------------------------ transformer
class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, *, causal: bool = False, attn_drop: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"attention: width {dim} is not divisible by {heads} heads")
        self.heads, self.causal, self.attn_drop = heads, causal, attn_drop
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0,
                                           is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, gelu: str):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(approximate=gelu), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block: x + drop(attn(ln(x))), then x + drop(mlp(ln(x)))."""

    def __init__(self, dim: int, heads: int, *, mlp_ratio: float = 4.0, eps: float = 1e-6, gelu: str = "none",
                 causal: bool = False, attn_drop: float = 0.0, drop: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, causal=causal, attn_drop=attn_drop)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), gelu)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


# ------------------------------------------------------------------------------- backbones
class ViT(nn.Module):
    """Plain ViT (timm key layout, see module docstring); forward: images [N,C,H,W] -> class token [N,D]."""

    def __init__(self, img_size: int = 224, patch: int = 16, dim: int = 768, depth: int = 12, heads: int = 12,
                 in_channels: int = 3):
        super().__init__()
        if img_size % patch:
            raise ConfigError(f"vit: image size {img_size} is not a multiple of the patch size {patch}")
        self.img_size, self.patch, self.out_dim = img_size, patch, dim
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (img_size // patch) ** 2, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ConfigError(f"vit: expected {self.img_size}×{self.img_size} frames, found {tuple(x.shape[-2:])}")
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]


def vit_b16(in_channels: int = 3) -> ViT:
    return ViT(224, 16, 768, 12, 12, in_channels)


def load_vit_weights(vit: ViT, path: str) -> None:
    """Load a timm-layout ViT state dict (safetensors or a weights-only torch file), dropping the
    classification head; the position grid is resized bicubically if the image size differs."""
    from xmodal.engine.checkpoint import load_state_file, load_weights, strip_prefix

    state = load_state_file(path)
    for key in ("model", "state_dict"):  # common wrappers around the weights
        if isinstance(state.get(key), dict):
            state = state[key]
    state = {k: v for k, v in strip_prefix(state).items() if not k.startswith(("head", "pre_logits.", "fc_norm."))}
    pe = state.get("pos_embed")
    if pe is not None and pe.shape != vit.pos_embed.shape and pe.shape[-1] == vit.pos_embed.shape[-1]:
        old, new = int(math.isqrt(pe.shape[1] - 1)), vit.img_size // vit.patch
        grid = pe[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
        state["pos_embed"] = torch.cat([pe[:, :1], grid.permute(0, 2, 3, 1).reshape(1, new * new, -1).to(pe.dtype)], 1)
    load_weights(vit, state, strict=True, what=f"{path} (ViT backbone)")


class FrameCNN(nn.Module):
    """Small per-frame CNN for 32×32 frames: 2×2 average pool first (a stride-2 first conv on noisy
    frames did not learn, EMBEDDED-DATA.md), three 3×3 convs, global average -> [N, dim]."""

    def __init__(self, in_channels: int = 3, dim: int = 64, width: int = 32):
        super().__init__()
        self.out_dim = dim
        self.net = nn.Sequential(
            nn.AvgPool2d(2), nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, dim, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ----------------------------------------------------------------------------------- AVT-h
class CausalPredictor(nn.Module):
    """AVT-h: [B,T,d] features -> [B,T,d] predictions, output t = predicted feature of frame t+1."""

    def __init__(self, feat_dim: int, width: int = 2048, layers: int = 2, heads: int = 4,
                 max_positions: int = 1024, dropout: float = 0.1):
        super().__init__()
        self.encoder = nn.Linear(feat_dim, width, bias=False)
        self.wpe = nn.Embedding(max_positions, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(width, heads, eps=1e-5, gelu="tanh", causal=True, attn_drop=dropout, drop=dropout) for _ in range(layers)
        )
        self.ln_f = nn.LayerNorm(width, eps=1e-5)
        self.decoder = nn.Linear(width, feat_dim, bias=False)
        # GPT-2 init for the transformer (residual projections scaled by 1/sqrt(2·layers));
        # encoder/decoder keep torch's default init, as they sit outside GPT-2 in the reference.
        for m in [self.wpe, *self.blocks.modules()]:
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        for blk in self.blocks:
            for proj in (blk.attn.proj, blk.mlp.fc2):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * layers))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        t = feats.shape[1]
        if t > self.wpe.num_embeddings:
            raise ConfigError(f"avt: {t} frames exceed max_positions {self.wpe.num_embeddings}")
        x = self.drop(self.encoder(feats) + self.wpe.weight[:t])
        for blk in self.blocks:
            x = blk(x)
        return self.decoder(self.ln_f(x))


# ------------------------------------------------------------------------------------- AVT
@dataclass
class AVTOut:
    features: torch.Tensor  # [B,T,d] observed per-frame features (regression targets)
    predicted: torch.Tensor  # [B,T,d] decoded outputs; [:, t] predicts frame t+1
    future_feature: torch.Tensor  # [B,d] = predicted[:, -1], the anticipated frame's feature
    logits: torch.Tensor  # [B,C] anticipated action
    past_logits: torch.Tensor  # [B,T,C] action of each observed frame


class AVT(nn.Module):
    def __init__(self, num_classes: int, feat_dim: int, *, backbone: nn.Module | None = None, width: int = 2048,
                 layers: int = 2, heads: int = 4, dropout: float = 0.2, gpt_dropout: float = 0.1,
                 max_positions: int = 1024):
        super().__init__()
        self.backbone = backbone
        self.feat_dim = feat_dim
        self.predictor = CausalPredictor(feat_dim, width, layers, heads, max_positions, gpt_dropout)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(feat_dim, num_classes))

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """video [B,C,T,H,W] through the backbone, or precomputed features [B,T,d] -> [B,T,d]."""
        if self.backbone is None:
            if x.ndim != 3 or x.shape[-1] != self.feat_dim:
                raise ConfigError(f"avt (features input): expected [B, T, {self.feat_dim}], found {list(x.shape)}")
            return x
        if x.ndim != 5:
            raise ConfigError(f"avt: expected video [B, C, T, H, W], found {list(x.shape)}")
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        return self.backbone(frames).view(b, t, -1)

    def forward(self, x: torch.Tensor) -> AVTOut:
        feats = self.frame_features(x)
        pred = self.predictor(feats)
        past = torch.cat([feats[:, :1], pred[:, :-1]], dim=1)
        return AVTOut(feats, pred, pred[:, -1], self.classifier(pred[:, -1]), self.classifier(past))


@dataclass
class AVTLossWeights:
    cls: float = 1.0
    feat: float = 1.0
    past_cls: float = 0.1


def avt_losses(out: AVTOut, batch: dict, weights: AVTLossWeights | None = None) -> LossOut:
    """AVT's three terms, each mean-reduced then weighted:

    total = w_cls·CE(logits, label) + w_feat·MSE(predicted[:, :T-1], features[:, 1:])
            + w_past·CE(past_logits, past_labels)
    MSE is the mean over B·(T-1)·d elements; neither side is detached (as in AVT). `past_labels`
    [B,T] are the observed frames' action ids, -1 = ignore (a batch with none gives 0).
    """
    w = weights or AVTLossWeights()
    cls = F.cross_entropy(out.logits, batch["label"])
    feat = F.mse_loss(out.predicted[:, :-1], out.features[:, 1:]) if out.features.shape[1] > 1 else out.logits.new_zeros(())
    total = w.cls * cls + w.feat * feat
    terms = {"cls": cls.detach(), "feat": feat.detach()}
    if w.past_cls:
        if "past_labels" not in batch:
            raise ConfigError("avt loss: past_cls weight > 0 needs batch key 'past_labels' [B, T] (or set the weight to 0)")
        labels = batch["past_labels"].reshape(-1)
        logits = out.past_logits.reshape(-1, out.past_logits.shape[-1])
        valid = labels >= 0
        past = F.cross_entropy(logits[valid], labels[valid]) if valid.any() else logits.sum() * 0.0
        total = total + w.past_cls * past
        terms["past_cls"] = past.detach()
    return LossOut(total, terms)


# --------------------------------------------------------------------------------- builders
PRESETS: dict[str, dict] = {
    # EGTEA: AVT-b, 10 frames at 1 fps, predictor 2 layers × 4 heads × 2048, dropout 0.2.
    "egtea_avt_b": dict(backbone="vit_b16", feat_dim=768, width=2048, layers=2, heads=4, dropout=0.2),
    # EPIC-55: AVT-b, 6 layers × 4 heads, dropout 0.8.
    "ek55_avt_b": dict(backbone="vit_b16", feat_dim=768, width=2048, layers=6, heads=4, dropout=0.8),
    # EPIC-55 "AVT-h only" on precomputed irCSN-152 features (2048-d), 12 layers × 8 heads.
    "ek55_features": dict(backbone="none", feat_dim=2048, width=2048, layers=12, heads=8, dropout=0.8),
    # Embedded data / tests: 32×32 frames.
    "tiny": dict(backbone="frame_cnn", feat_dim=32, width=64, layers=2, heads=2, dropout=0.2, max_positions=16,
                 image_size=32),
}


@register_model("avt")
def build_avt(num_classes: int, preset: str | None = None, backbone: str = "vit_b16", feat_dim: int = 768,
              width: int = 2048, layers: int = 2, heads: int = 4, dropout: float = 0.2, gpt_dropout: float = 0.1,
              max_positions: int = 1024, image_size: int = 224, in_channels: int = 3,
              backbone_weights: str | None = None) -> AVT:
    """AVT from explicit sizes, or from a `preset` (PRESETS) whose values replace the arguments.

    backbone: vit_b16 (feat_dim 768) | vit_tiny (patch 8 over image_size, dim feat_dim, 2 layers)
    | frame_cnn (dim feat_dim) | none (precomputed features). `backbone_weights`: a local timm
    ViT state dict for the ViT backbones.
    """
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"avt.preset '{preset}': expected one of {', '.join(PRESETS)}")
        p = PRESETS[preset]
        backbone, feat_dim, width, layers, heads = p["backbone"], p["feat_dim"], p["width"], p["layers"], p["heads"]
        dropout = p["dropout"]
        max_positions, image_size = p.get("max_positions", max_positions), p.get("image_size", image_size)
    if backbone == "vit_b16":
        if feat_dim != 768:
            raise ConfigError(f"avt.feat_dim: vit_b16 gives 768-d features, found {feat_dim}")
        net: nn.Module | None = vit_b16(in_channels)
    elif backbone == "vit_tiny":
        net = ViT(image_size, 8, feat_dim, 2, 2, in_channels)
    elif backbone == "frame_cnn":
        net = FrameCNN(in_channels, feat_dim)
    elif backbone == "none":
        net = None
    else:
        raise ConfigError(f"avt.backbone '{backbone}': expected vit_b16, vit_tiny, frame_cnn or none")
    if backbone_weights:
        if not isinstance(net, ViT):
            raise ConfigError(f"avt.backbone_weights: only ViT backbones load weights, backbone is '{backbone}'")
        load_vit_weights(net, backbone_weights)
    return AVT(num_classes, feat_dim, backbone=net, width=width, layers=layers, heads=heads, dropout=dropout,
               gpt_dropout=gpt_dropout, max_positions=max_positions)
