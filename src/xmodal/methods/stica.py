"""STiCA: Space-Time Crop & Attend (Patrick et al., ICCV 2021; specs/gdt-stica.md §2.3, §3.5, §4.6).

Two spatial views of one clip go through the video trunk once each; the pre-pool map X is
aggregated by the temporal pooling g (GAP, or a post-LN transformer over T_tok tokens) and
projected by ``mlp_v`` into the global embedding. Feature-map crops (large/small spatial and
temporal windows of X, offsets drawn per view and crop, shared across the batch) are pooled by the
same g and projected by the same head — each crop once, as its own head call (BatchNorm statistics
per crop, dropout active: §11). The clip's audio goes through its trunk once and through ``mlp_a``
once per view (the reference re-encodes it per view; the trunk output is identical, the head's
dropout differs per call as there).

Loss: `xmodal.losses.gdt.stica_loss`: (1 − α)·L_crops + α·L_av, every NCE with keys from all
processes (the loss gathers them).

Batch keys. Prepared views (the ``store`` source with ``views: stica``): ``{video_key}``
[B, 2, C, T, H, W] (the two spatial views) and ``{audio_key}`` ([B, 1, F, T] or fbank [B, frames,
mel]). Whole clips (``views.enabled``): video [B, C, N, H, W] in [0, 1]; the method takes one
window of ``views.frames`` (GDT's start rule) and two independent spatial augmentations of it.
The trunk must shape its map with all of its parameters (checked at construction: a parameter
outside the map would never get a gradient and would stall DDP).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from xmodal.config import registered
from xmodal.errors import ConfigError
from xmodal.losses import LossOut
from xmodal.losses.contrastive import diagonal_accuracy
from xmodal.losses.gdt import CropFeats, StiCAFeats, stica_loss
from xmodal.methods import _clipviews as cv
from xmodal.methods.base import Method
from xmodal.methods.gdt import (
    HeadConfig,
    build_encoder,
    cross_modal_metrics,
    encoder_input,
    maybe_sync_bn,
    model_default,
)
from xmodal.models.heads import projection_head
from xmodal.models.stica import (
    CropConfig,
    PoolConfig,
    PooledTrunk,
    ViewCrops,
    build_pooling,
    probe_trunk,
    sample_crops,
)
from xmodal.registry import register_method


@dataclass
class STiCAConfig:
    name: str = "stica"
    video: Any = registered("models", model_default("r2plus1d_18"))
    audio: Any = registered("models", model_default("resnet9"))
    head: HeadConfig = field(default_factory=HeadConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    frames: int = 30  # clip length the trunk sees (derives T_tok); 60 for the 2-s model
    alpha: float = 0.5  # L = (1 − α) L_crops + α L_av; 0 = crops only
    av_temperature: float = 0.1
    crop_temperature: float = 0.5
    av_symmetric: bool = True
    video_key: str = "video"
    audio_key: str = "fbank"
    views: cv.ClipViewsConfig = field(default_factory=cv.ClipViewsConfig)
    sync_bn: bool = True

    def validate(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if min(self.av_temperature, self.crop_temperature) <= 0:
            raise ValueError("temperatures must be > 0")
        if self.views.enabled and self.views.frames and self.views.frames != self.frames:
            raise ValueError(f"views.frames ({self.views.frames}) must equal frames ({self.frames})")


@register_method("stica", config=STiCAConfig)
class STiCA(Method):
    def __init__(self, cfg: STiCAConfig, info):
        super().__init__(cfg, info)
        self.video = build_encoder(cfg.video, "video")
        self.audio = build_encoder(cfg.audio, "audio")
        probe = probe_trunk(self.video, cfg.frames)
        if probe.unused:
            raise ConfigError(f"method.video: {len(probe.unused)} parameters of '{cfg.video.name}' do not shape the "
                              f"feature map STiCA crops and pools ({', '.join(probe.unused[:3])}); e.g. tiny_video "
                              "needs temporal_kernel: 0")
        self.pool = build_pooling(cfg.pool, self.video, cfg.frames, probe.steps)
        h = cfg.head
        self.mlp_v = projection_head(self.video.feature_dim, h.hidden, h.dim, h.mlp, h.dropout)
        self.mlp_a = projection_head(self.audio.feature_dim, h.hidden, h.dim, h.mlp, h.dropout)
        self.fps = float(info.extra.get("fps", 30.0))
        for name in ("video", "audio", "mlp_v", "mlp_a"):
            setattr(self, name, maybe_sync_bn(getattr(self, name), cfg.sync_bn))

    # ------------------------------------------------------------------------------------ views
    def _key(self, batch: dict, key: str) -> Tensor:
        if key not in batch:
            raise ConfigError(f"method: batch has no key '{key}' (keys: {sorted(batch)})")
        return batch[key]

    def _window(self, batch: dict, train: bool) -> tuple[Tensor, Tensor | None]:
        """(clip window [B, C, L, H, W] in [0, 1], aligned spectrogram) of whole-clip batches."""
        vc = self.cfg.views
        video = self._key(batch, self.cfg.video_key)
        spec = batch.get(self.cfg.audio_key)
        spec = encoder_input(spec) if spec is not None else None
        b, n = video.shape[0], video.shape[2]
        length = vc.frames or n
        s = cv.gdt_window_starts(n, length, b) if train else torch.full((b,), cv.center_start(n, length))
        return cv.cut_window(video, spec, s, length, self.fps, vc.spec_rate)

    def train_views(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        if self.cfg.views.enabled:
            clip, spec = self._window(batch, train=True)
            if spec is None:
                raise ConfigError(f"method.audio_key: batch has no key '{self.cfg.audio_key}'")
            return cv.spatial_view(clip, self.cfg.views), cv.spatial_view(clip, self.cfg.views), spec
        video = self._key(batch, self.cfg.video_key)
        if video.dim() != 6 or video.shape[1] != 2:
            raise ConfigError(f"method.video_key: expected two views [B, 2, C, T, H, W], got {tuple(video.shape)}")
        return video[:, 0], video[:, 1], encoder_input(self._key(batch, self.cfg.audio_key))

    # --------------------------------------------------------------------------------- training
    def crop_feats(self, fmap: Tensor, boxes: ViewCrops) -> CropFeats:
        """h(X_crop) = L2(mlp_v(g(X_crop))) for every crop box, one pooling + head call each."""
        embed = lambda box: self.mlp_v(self.pool(box.take(fmap), full=False))
        return CropFeats(*([embed(b) for b in group] for group in boxes))

    def training_step(self, batch: dict) -> LossOut:
        x1, x2, spec = self.train_views(batch)
        fa = self.audio(spec).feature
        passes = []
        for x in (x1, x2):
            fmap = self.video(x, return_map=True).fmap
            crops = sample_crops(self.cfg.crops, tuple(fmap.shape[2:]))
            passes.append((self.mlp_v(self.pool(fmap, full=True)), self.mlp_a(fa), self.crop_feats(fmap, crops)))
        (v1, a1, c1), (v2, a2, c2) = passes
        c = self.cfg
        out = stica_loss(StiCAFeats(v1, a1, v2, a2, c1, c2), alpha=c.alpha, av_temperature=c.av_temperature,
                         crop_temperature=c.crop_temperature, av_symmetric=c.av_symmetric)
        out.terms["acc_a2v"] = diagonal_accuracy(a1.detach() @ v1.detach().t())
        return out

    # ------------------------------------------------------------------------------- evaluation
    def eval_inputs(self, batch: dict) -> tuple[Tensor, Tensor | None]:
        if self.cfg.views.enabled:
            clip, spec = self._window(batch, train=False)
            return cv.spatial_view(clip, self.cfg.views, train=False), spec
        spec = batch.get(self.cfg.audio_key)
        return self._key(batch, self.cfg.video_key), encoder_input(spec) if spec is not None else None

    def embed(self, batch: dict) -> dict[str, Tensor]:
        """``video``: trunk + pooling g (what transfers), ``audio``: audio trunk feature;
        ``*_proj``: the head embeddings (cross-modal retrieval)."""
        video, spec = self.eval_inputs(batch)
        fv = self.pool(self.video(video, return_map=True).fmap, full=True)
        out = {"video": fv, "video_proj": self.mlp_v(fv)}
        if spec is not None:
            fa = self.audio(spec).feature
            out.update(audio=fa, audio_proj=self.mlp_a(fa))
        return out

    def video_encoder(self) -> nn.Module:
        return PooledTrunk(self.video, self.pool)

    def eval_step(self, batch: dict) -> dict:
        out = {k: v.float() for k, v in self.embed(batch).items() if k.endswith("_proj")}
        if "label" in batch:
            out["label"] = batch["label"]
        return out

    def eval_metrics(self, outputs: dict) -> dict[str, float]:
        return cross_modal_metrics(outputs)
