"""GDT: cross-modal NCE with generalized data transformations (Patrick et al., ICCV 2021).

Models (specs/gdt-stica.md §3): a video trunk (``video``, default R(2+1)D-18 in torchvision's
layout), a second-modality trunk (``audio``: ResNet-9 on a log-mel spectrogram, or the
video-text variant's ``text_gdt`` caption encoder) and one projection head per modality
(``mlp_v``, ``mlp_a``: §3.3, 256-d, L2-normalised; dropped for downstream use). The attribute
names match the released checkpoints after `xmodal.convert.gdt` (``video_network.base`` →
``video``, ``audio_network.base`` → ``audio``).

Loss: `xmodal.losses.gdt.gdt_loss` of the configured hypothesis 1..9 (§4.4) over the views
V (clip 1), VR (clip 1 reversed), V2 (clip 2 = time shift), V2R, each a (video, audio) pair;
negatives are the whole global batch (the loss gathers the other ranks' detached embeddings).

Batch keys. Prepared views (data pipeline): ``{video_key}{suffix}`` [B, C, T, H, W] and
``{audio_key}{suffix}`` ([B, 1, F, T] spectrogram, [B, frames, mel] fbank, or [B, L] token ids
for text) with suffixes V "", VR "_rev", V2 "_shift", V2R "_shift_rev" — what the ``store`` data
source gives with ``views: gdt``; only the views the hypothesis uses are read. Whole clips (``views.enabled``, embedded data such as avdigits): ``video`` [B, C, N, H,
W] in [0, 1] and the clip's fbank; the method cuts two windows of ``views.frames`` per sample
(GDT's start rule), reverses them in time and crops/flips each view independently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from xmodal.config import registered
from xmodal.engine import dist
from xmodal.errors import ConfigError
from xmodal.losses import LossOut
from xmodal.losses.contrastive import diagonal_accuracy
from xmodal.losses.gdt import NEGATIVE_MODES, gdt_loss, hypothesis_terms
from xmodal.methods import _clipviews as cv
from xmodal.methods.base import Method
from xmodal.models.heads import projection_head
from xmodal.registry import MODELS, register_method

VIEW_SUFFIX = {"V": "", "VR": "_rev", "V2": "_shift", "V2R": "_shift_rev"}  # the store's `views: gdt` keys


def model_default(name: str, **kw: Any):
    """Default factory of a registered model's config (for dataclass fields)."""
    return lambda: MODELS.entry(name).config(**kw)


@dataclass
class HeadConfig:
    """Projection heads (§3.3): MLP in→hidden→dim (or one Linear with ``mlp: false``), L2."""

    dim: int = 256
    hidden: int = 512
    mlp: bool = True
    dropout: float = 0.3


@dataclass
class GDTConfig:
    name: str = "gdt"
    video: Any = registered("models", model_default("r2plus1d_18"))
    audio: Any = registered("models", model_default("resnet9"))
    head: HeadConfig = field(default_factory=HeadConfig)
    hypothesis: int = 1
    temperature: float = 0.07
    negatives: Literal["clean", "official"] = "clean"
    video_key: str = "video"
    audio_key: str = "fbank"  # "text" for the video-text variant
    text_max_words: int = 20  # captions given as strings are tokenised to this many words
    views: cv.ClipViewsConfig = field(default_factory=cv.ClipViewsConfig)
    sync_bn: bool = True  # SyncBatchNorm when distributed on CUDA (§5.1)

    def validate(self) -> None:
        hypothesis_terms(self.hypothesis)
        if self.negatives not in NEGATIVE_MODES:
            raise ValueError(f"negatives: expected one of {NEGATIVE_MODES}, got {self.negatives!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class TrunkFeature(nn.Module):
    """A trunk returning `EncoderOut` seen as video [B, C, T, H, W] -> feature [B, D]."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.feature_dim = trunk.feature_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.trunk(x).feature


def build_encoder(spec: Any, what: str) -> nn.Module:
    if spec is None:
        raise ConfigError(f"method.{what}: missing; name a registered model, e.g. {{name: tiny_video}}")
    model = MODELS.build(spec)
    if not hasattr(model, "feature_dim"):
        raise ConfigError(f"method.{what}: model '{spec.name}' has no feature_dim (not an encoder)")
    return model


def maybe_sync_bn(module: nn.Module, enabled: bool) -> nn.Module:
    """SyncBatchNorm across processes (§5.1) when distributed with NCCL (CUDA); gloo (CPU) keeps
    per-process BatchNorm, as SyncBatchNorm needs CUDA tensors."""
    import torch.distributed as tdist

    if enabled and dist.world_size() > 1 and tdist.get_backend() == "nccl":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def encoder_input(x: Tensor) -> Tensor:
    return cv.as_spectrogram(x)


@register_method("gdt", config=GDTConfig)
class GDT(Method):
    def __init__(self, cfg: GDTConfig, info):
        super().__init__(cfg, info)
        self.video = build_encoder(cfg.video, "video")
        self.audio = build_encoder(cfg.audio, "audio")
        h = cfg.head
        self.mlp_v = projection_head(self.video.feature_dim, h.hidden, h.dim, h.mlp, h.dropout)
        self.mlp_a = projection_head(self.audio.feature_dim, h.hidden, h.dim, h.mlp, h.dropout)
        self.views_used = [v for v in VIEW_SUFFIX if any(v in (t.p, t.q) for t in hypothesis_terms(cfg.hypothesis))]
        self.fps = float(info.extra.get("fps", 30.0))
        for name in ("video", "audio", "mlp_v", "mlp_a"):
            setattr(self, name, maybe_sync_bn(getattr(self, name), cfg.sync_bn))

    # ------------------------------------------------------------------------------------ views
    def _key(self, batch: dict, key: str) -> Tensor:
        if key not in batch:
            raise ConfigError(f"method: batch has no key '{key}' (keys: {sorted(batch)}); "
                              "set method.video_key/audio_key, or views.enabled for whole clips")
        return batch[key]

    def prepared_views(self, batch: dict) -> dict[str, tuple[Tensor, Tensor]]:
        c = self.cfg
        return {v: (self._key(batch, c.video_key + VIEW_SUFFIX[v]), self.second_input(self._key(batch, c.audio_key + VIEW_SUFFIX[v])))
                for v in self.views_used}

    def second_input(self, x) -> Tensor:
        """The second modality's batch value as its encoder input: fbank [B, frames, mel] ->
        [B, 1, mel, frames]; raw captions (a list of str, as the store gives "text") -> token ids
        with the caption encoder's own tokenizer."""
        if isinstance(x, (list, tuple)):
            tokenizer = getattr(self.audio, "tokenizer", None)
            if tokenizer is None:
                raise ConfigError(f"method.audio_key: '{self.cfg.audio_key}' holds strings but "
                                  f"'{self.cfg.audio.name}' has no tokenizer (use text_gdt)")
            return tokenizer.encode(list(x), self.cfg.text_max_words).to(next(self.audio.parameters()).device)
        return encoder_input(x)

    def derived_views(self, batch: dict) -> dict[str, tuple[Tensor, Tensor]]:
        """Two GDT windows per clip, their time reversals, independent spatial augmentation per view."""
        vc = self.cfg.views
        video = self._key(batch, self.cfg.video_key)
        spec = self.second_input(self._key(batch, self.cfg.audio_key))
        b, n = video.shape[0], video.shape[2]
        length = vc.frames or n
        out = {}
        for clip in ("V", "V2"):
            if clip + "R" not in self.views_used and clip not in self.views_used:
                continue
            v, a = cv.cut_window(video, spec, cv.gdt_window_starts(n, length, b), length, self.fps, vc.spec_rate)
            for view, flip in ((clip, False), (clip + "R", True)):
                if view in self.views_used:
                    vv, aa = (v.flip(2), a.flip(-1)) if flip else (v, a)
                    out[view] = (cv.spatial_view(vv, vc), aa)
        return out

    def eval_inputs(self, batch: dict) -> tuple[Tensor, Tensor | None]:
        """One deterministic clip: the centre window and centre crop when deriving views."""
        vc = self.cfg.views
        video = self._key(batch, self.cfg.video_key)
        spec = batch.get(self.cfg.audio_key)
        spec = self.second_input(spec) if spec is not None else None
        if not vc.enabled:
            return video, spec
        n = video.shape[2]
        length = vc.frames or n
        s = torch.full((video.shape[0],), cv.center_start(n, length))
        video, spec = cv.cut_window(video, spec, s, length, self.fps, vc.spec_rate)
        return cv.spatial_view(video, vc, train=False), spec

    # --------------------------------------------------------------------------------- training
    def training_step(self, batch: dict) -> LossOut:
        views = self.derived_views(batch) if self.cfg.views.enabled else self.prepared_views(batch)
        feats = {v: (self.mlp_v(self.video(x).feature), self.mlp_a(self.audio(a).feature)) for v, (x, a) in views.items()}
        out = gdt_loss(self.cfg.hypothesis, feats, temperature=self.cfg.temperature, negatives=self.cfg.negatives)
        v, a = feats["V"] if "V" in feats else next(iter(feats.values()))
        out.terms["acc_a2v"] = diagonal_accuracy(a.detach() @ v.detach().t())
        return out

    # ------------------------------------------------------------------------------- evaluation
    def embed(self, batch: dict) -> dict[str, Tensor]:
        """Trunk features (``video``, ``audio``: what transfer uses) and head embeddings
        (``video_proj``, ``audio_proj``: the contrastive space, for cross-modal retrieval)."""
        video, spec = self.eval_inputs(batch)
        fv = self.video(video).feature
        out = {"video": fv, "video_proj": self.mlp_v(fv)}
        if spec is not None:
            fa = self.audio(spec).feature
            out.update(audio=fa, audio_proj=self.mlp_a(fa))
        return out

    def video_encoder(self) -> nn.Module:
        """The transferable video trunk: video [B, C, T, H, W] -> [B, D] (heads dropped)."""
        return TrunkFeature(self.video)

    def eval_step(self, batch: dict) -> dict:
        out = self.embed(batch)
        out = {k: v.float() for k, v in out.items() if k.endswith("_proj")}
        if "label" in batch:
            out["label"] = batch["label"]
        return out

    def eval_metrics(self, outputs: dict) -> dict[str, float]:
        return cross_modal_metrics(outputs)


def cross_modal_metrics(outputs: dict) -> dict[str, float]:
    """Audio↔video retrieval in the head space: class-level (any clip of the query's class is a
    hit, when labels exist) and clip-level (only the paired clip) R@1/5/10 and ranks."""
    from xmodal.eval.metrics import retrieval_report

    if "audio_proj" not in outputs:
        return {}
    v, a = outputs["video_proj"], outputs["audio_proj"]
    out = {f"clip_{k}": val for k, val in retrieval_report(v, a, names=("v", "a")).items()}
    if "label" in outputs and torch.as_tensor(outputs["label"]).dim() == 1:
        out.update(retrieval_report(v, a, labels=outputs["label"], names=("v", "a")))
    return out
