"""CAV-MAE pretraining and finetuning as engine methods (spec: /work/shared/specs/cavmae.md §3-§6, §10).

``cavmae_pretrain``: masked audio + image -> CAVMAE; loss = w_mae·(L_mae_a + L_mae_v) + w_c·NCE(Â, V̂)
over the visible tokens' mean-pooled modality features, times ``loss_scale``. ``negative_groups`` /
``gather`` choose the contrastive negatives: the reference ran ``nn.DataParallel`` on 4 GPUs, so
each quarter batch only saw its own negatives and the four replica losses were *summed*
(``*-reference`` recipes: per-GPU batch, no gather, loss_scale = world size — or, on one process,
``negative_groups: 4`` and ``loss_scale: 4``).

``cavmae_finetune``: CAVMAEFT in one of the five modes; BCE (multi-label) or soft-target CE; head
learning-rate ratio through the ``lr_scale`` of its parameter group; ``freeze_base`` is linear
probing; label smoothing and (batch-level) mixup for sources that do not mix in the dataset.

Both read ``fbank`` [B, T, F] (cut / zero-padded to the model's T) and an image: the batch's
``image`` [B, 3, H, W] as delivered (already normalised), or one frame of ``video`` [B, C, T, H, W]
in [0, 1] (random in training, middle at eval; resized bicubic and ImageNet-normalised) for
in-memory sources such as ``avdigits``. Initialisation (``init_from``) accepts an xmodal run
folder / weights / training checkpoint, a released CAV-MAE ``.pth`` (``module.``-prefixed), a
file written by ``xmodal convert cavmae-imagenet``, or a raw ImageNet MAE ViT checkpoint.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from xmodal.config import OptimConfig
from xmodal.errors import CheckpointError, ConfigError, DataError
from xmodal.losses import LossOut
from xmodal.losses.mae import MaskMode, cavmae_contrastive, mae_loss
from xmodal.methods.base import Method
from xmodal.models.cavmae import (
    CAVMAE,
    CAVMAEFT,
    CAVMAEConfig,
    CAVMAEEncoder,
    FinetuneMode,
    cavmae_config,
    load_cavmae_checkpoint,
)
from xmodal.registry import register_method

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------- configs
@dataclass
class CavmaeNet:
    """Architecture: a size preset (`base` = every released checkpoint, `tiny` for tests) plus overrides."""

    size: Literal["base", "tiny"] = "base"
    audio_length: int | None = None  # T, fbank frames per clip (1024 for the released models)
    audio_bins: int | None = None  # F, mel bins
    image_size: int | None = None
    patch_size: int | None = None
    modality_specific_depth: int | None = None
    embed_dim: int | None = None
    num_heads: int | None = None
    decoder_dim: int | None = None
    decoder_heads: int | None = None
    decoder_depth: int | None = None
    trainable_pos: bool | None = None  # default: fixed in pretraining, trainable in finetuning

    def arch(self, norm_pix_loss: bool = True) -> CAVMAEConfig:
        sizes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("size", "trainable_pos")}
        return cavmae_config(self.size, norm_pix_loss=norm_pix_loss, **sizes)


@dataclass
class CavmaeInputs:
    """Which batch keys feed the two streams and how a frame is taken from a clip."""

    audio_key: str = "fbank"
    image_key: str = "image"  # used as is when present (the prepared store's CAV-MAE frame)
    video_key: str = "video"  # otherwise one frame of this [B, C, T, H, W] clip in [0, 1]
    train_frame: Literal["random", "middle"] = "random"
    eval_frames: int = 1  # finetune eval on video clips: average probabilities over this many frames
    normalize_video: bool = True  # ImageNet mean/std on frames taken from `video_key`
    # frames from `video_key` as grey (ITU-R 601 luma in all three channels), in training and eval:
    # for embedded data whose colours are random per clip and carry no class (avdigits) [ours]
    grayscale: bool = False


@dataclass
class CavmaePretrainConfig:
    name: str = "cavmae_pretrain"
    net: CavmaeNet = field(default_factory=CavmaeNet)
    inputs: CavmaeInputs = field(default_factory=CavmaeInputs)
    norm_pix_loss: bool = True  # False only for the inpainting (*-NoNorm) model
    mask_ratio_a: float = 0.75
    mask_ratio_v: float = 0.75
    mask_mode: MaskMode = "unstructured"  # audio only; images are always unstructured
    w_mae: float = 1.0
    w_c: float = 0.01
    temperature: float = 0.05
    symmetric: bool = False  # the "Symc" ablation: average both softmax directions
    # [ours] subtract each side's batch mean from the pooled vectors before the L2 norm: a from-scratch
    # ViT's mean-pooled tokens are nearly identical at init (cosines ~0.99, dominated by the position
    # tables), and the contrastive term then collapses them instead of aligning them (avdigits recipes)
    center: bool = False
    # [ours] "unmasked": the contrastive term uses a second, unmasked pass through the modality streams
    # (forward_feat, as retrieval does) instead of the masked pass's visible tokens (the reference).
    # For tiny grids: at 75 % masking 4 of 16 frame patches remain and most miss a small digit.
    contrast_tokens: Literal["visible", "unmasked"] = "visible"
    gather: bool = False  # all-gather negatives over processes (the reference did not)
    negative_groups: int = 1  # split the local batch into this many contrastive groups (DataParallel replicas)
    loss_scale: float | Literal["world_size"] = 1.0  # the reference summed its replicas' losses
    init_from: str | None = None  # checkpoint / run folder: continued pretraining or ImageNet-MAE init
    eval_retrieval: bool = True  # retrieval R@k on the eval split after each epoch

    def validate(self) -> None:
        for k in ("mask_ratio_a", "mask_ratio_v"):
            if not 0.0 <= getattr(self, k) < 1.0:
                raise ValueError(f"{k} must be in [0, 1), got {getattr(self, k)}")
        if self.negative_groups < 1:
            raise ValueError(f"negative_groups must be >= 1, got {self.negative_groups}")
        if self.gather and self.negative_groups > 1:
            raise ValueError("gather and negative_groups > 1 exclude each other")


@dataclass
class CavmaeFinetuneConfig:
    name: str = "cavmae_finetune"
    net: CavmaeNet = field(default_factory=CavmaeNet)
    inputs: CavmaeInputs = field(default_factory=CavmaeInputs)
    mode: FinetuneMode = "multimodal"  # multimodal | audioonly | videoonly (training)
    eval_mode: FinetuneMode | None = None  # e.g. missingaudioonly: a multimodal model fed audio only
    init_from: str | None = None  # pretrained CAV-MAE (ours or released) or a finetuned one
    freeze_base: bool = False  # linear probing: only mlp_head trains
    head_lr: float = 1.0  # lr(mlp_head) / lr(base); the reference uses 10-100
    loss: Literal["auto", "bce", "ce"] = "auto"  # auto: BCE for multi-label data, soft-target CE otherwise
    label_smoothing: float = 0.0  # applied to hard labels (0/1); soft labels from the data are kept
    mixup: float = 0.0  # batch-level mixup probability (for sources that do not mix in the dataset)
    mixup_alpha: float = 10.0
    wa_start: int = 0  # weight averaging of per-epoch weights wa_start..wa_end (1-based, inclusive)
    wa_end: int = 0  # 0 = no averaging

    def validate(self) -> None:
        if self.mode.startswith("missing"):
            raise ValueError(f"mode {self.mode!r} is an inference mode; train multimodal and set eval_mode")
        if self.head_lr <= 0:
            raise ValueError(f"head_lr must be > 0, got {self.head_lr}")
        if not 0.0 <= self.label_smoothing < 1.0 or not 0.0 <= self.mixup <= 1.0:
            raise ValueError("label_smoothing must be in [0, 1) and mixup in [0, 1]")
        if self.wa_end and not 1 <= self.wa_start <= self.wa_end:
            raise ValueError(f"weight averaging needs 1 <= wa_start <= wa_end, got {self.wa_start}..{self.wa_end}")


# ---------------------------------------------------------------------------------- checkpoints
def read_cavmae_state(path: str | Path, arch: CAVMAEConfig | None = None) -> dict[str, torch.Tensor]:
    """Any CAV-MAE weights as a plain state dict with our key names (no prefix).

    Accepts a run folder (its final weights), ``weights.safetensors`` of a cavmae run (keys
    ``model.*``), a full training checkpoint, a released ``module.``-prefixed ``.pth``, a converted
    file, or a raw ImageNet MAE ViT checkpoint (converted on the fly with `arch`).
    """
    from xmodal.convert.cavmae import imagenet_mae_to_cavmae
    from xmodal.engine.checkpoint import load_state_file, strip_prefix
    from xmodal.engine.runs import find_weights

    p = Path(path)
    if p.is_dir():
        found = find_weights(p)
        if found is None:
            raise CheckpointError(f"{p}: run folder has no weights.safetensors or checkpoint")
        p = found
    state = load_state_file(p)
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{p}: expected a state dict, found {type(state).__name__}")
    state = strip_prefix(state)
    if state and all(k.startswith("model.") for k in state):  # an xmodal cavmae method
        state = {k[len("model."):]: v for k, v in state.items()}
    if "blocks.0.attn.qkv.weight" in state and "blocks_a.0.attn.qkv.weight" not in state:
        state = imagenet_mae_to_cavmae(state, arch)
    if "blocks_a.0.attn.qkv.weight" not in state:
        raise CheckpointError(f"{p}: not a CAV-MAE or ImageNet-MAE checkpoint (first keys: {', '.join(list(state)[:3])})")
    return dict(state)


def init_weights(model: CAVMAEEncoder, path: str | Path, arch: CAVMAEConfig) -> None:
    """Non-strict load of `path` (a pretrain file into a finetune model leaves mlp_head new and
    ignores the decoder); shape mismatches name the file and the recipe key."""
    try:
        load_cavmae_checkpoint(model, read_cavmae_state(path, arch), strict=False)
    except CheckpointError as e:
        raise CheckpointError(f"method.init_from: {path}: {e}") from None


# ------------------------------------------------------------------------------------- inputs
def take_audio(batch: dict, inputs: CavmaeInputs, arch: CAVMAEConfig) -> torch.Tensor:
    """[B, T, F] fbank cut / zero-padded (in its normalised domain) to the model's length."""
    if inputs.audio_key not in batch:
        raise DataError(f"cavmae: batch has no audio key '{inputs.audio_key}'; keys: {sorted(batch)}")
    fb = batch[inputs.audio_key].float()
    if fb.dim() != 3 or fb.shape[2] != arch.audio_bins:
        raise DataError(f"cavmae: '{inputs.audio_key}': expected [B, frames, {arch.audio_bins}] (net.audio_bins), got {list(fb.shape)}")
    t = arch.audio_length
    return fb[:, :t] if fb.shape[1] >= t else F.pad(fb, (0, 0, 0, t - fb.shape[1]))


def frame_indices(num_frames: int, count: int) -> list[int]:
    """`count` frames spread over the clip like CAV-MAE's stored frames: int(i·T/count)."""
    return [int(i * num_frames / count) for i in range(count)]


def take_image(batch: dict, inputs: CavmaeInputs, arch: CAVMAEConfig, frame: int | torch.Tensor | None) -> torch.Tensor:
    """[B, 3, S, S] model image: the batch's `image`, or frame `frame` of its video.

    frame: a per-sample index tensor [B], an int, or None = the middle frame.
    """
    if inputs.image_key in batch:
        img = batch[inputs.image_key].float()
    elif inputs.video_key in batch:
        video = batch[inputs.video_key]
        if video.dim() != 5:
            raise DataError(f"cavmae: '{inputs.video_key}': expected [B, C, T, H, W], got {list(video.shape)}")
        b, t = video.shape[0], video.shape[2]
        idx = torch.full((b,), t // 2) if frame is None else torch.as_tensor(frame).expand(b)
        img = video[torch.arange(b), :, idx.to(video.device)].float()
        if inputs.grayscale:
            luma = img.new_tensor((0.299, 0.587, 0.114)).view(1, 3, 1, 1)
            img = (img * luma).sum(1, keepdim=True).expand(-1, 3, -1, -1)
        if inputs.normalize_video:
            mean = img.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            img = (img - mean) / img.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    else:
        raise DataError(f"cavmae: batch has neither '{inputs.image_key}' nor '{inputs.video_key}'; keys: {sorted(batch)}")
    s = arch.image_size
    if img.shape[-2:] != (s, s):
        h, w = img.shape[-2:]
        scale = s / min(h, w)  # resize the short side, then centre-crop (spec §9)
        nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
        img = F.interpolate(img, size=(nh, nw), mode="bicubic", align_corners=False, antialias=scale < 1)
        top, left = (nh - s) // 2, (nw - s) // 2
        img = img[..., top:top + s, left:left + s]
    return img


def train_frame(batch: dict, inputs: CavmaeInputs) -> torch.Tensor | None:
    video = batch.get(inputs.video_key)
    if inputs.image_key in batch or video is None or inputs.train_frame == "middle":
        return None
    return torch.randint(video.shape[2], (video.shape[0],))


def batch_noise(batch: dict, b: int, la: int, lv: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Masking noise for `b` clips seeded by the batch's uids: eval losses do not depend on the global RNG."""
    g = torch.Generator().manual_seed(zlib.crc32("|".join(map(str, batch.get("uid", []))).encode()))
    return torch.rand(b, la, generator=g).to(device), torch.rand(b, lv, generator=g).to(device)


# --------------------------------------------------------------------------------------- pretrain
@register_method("cavmae_pretrain", config=CavmaePretrainConfig)
class CavmaePretrain(Method):
    def __init__(self, cfg: CavmaePretrainConfig, info):
        super().__init__(cfg, info)
        self.arch = cfg.net.arch(cfg.norm_pix_loss)
        self.model = CAVMAE(self.arch, trainable_pos=bool(cfg.net.trainable_pos))
        if cfg.init_from:
            init_weights(self.model, cfg.init_from, self.arch)

    def model_inputs(self, batch: dict, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        frame = train_frame(batch, self.cfg.inputs) if train else None
        return take_audio(batch, self.cfg.inputs, self.arch), take_image(batch, self.cfg.inputs, self.arch, frame)

    def losses(self, audio: torch.Tensor, image: torch.Tensor, noise=None) -> dict[str, torch.Tensor]:
        """Unscaled terms: loss_mae_a, loss_mae_v (unweighted), nce, c_acc, and the weighted total."""
        c, m = self.cfg, self.model
        enc = m.forward_encoder(audio, image, c.mask_ratio_a, c.mask_ratio_v, c.mask_mode, noise)
        zero = enc.latent.new_zeros(())
        terms = {"loss_mae_a": zero, "loss_mae_v": zero, "nce": zero, "c_acc": zero}
        if c.w_mae:
            pred_a, pred_v = m.forward_decoder(enc)
            terms["loss_mae_a"] = mae_loss(pred_a, m.patchify_audio(audio), enc.mask_a, self.arch.norm_pix_loss)
            terms["loss_mae_v"] = mae_loss(pred_v, m.patchify_image(image), enc.mask_v, self.arch.norm_pix_loss)
        if c.w_c:
            if c.contrast_tokens == "unmasked":
                feats = m.forward_feat(audio, image)
                a, v = feats.audio.mean(dim=1), feats.image.mean(dim=1)
            else:
                a, v = enc.c_a.mean(dim=1), enc.c_v.mean(dim=1)
            g = c.negative_groups
            if a.shape[0] % g:
                raise ConfigError(f"method.negative_groups: batch of {a.shape[0]} is not divisible into {g} groups")
            center = (lambda x: x - x.mean(dim=0, keepdim=True)) if c.center else (lambda x: x)  # per group (local batch)
            outs = [cavmae_contrastive(center(ai), center(vi), c.temperature, c.symmetric, c.gather)
                    for ai, vi in zip(a.chunk(g), v.chunk(g))]
            terms["nce"] = torch.stack([o.total for o in outs]).mean()
            terms["c_acc"] = torch.stack([torch.as_tensor(o.terms["c_acc"]) for o in outs]).float().mean()
        terms["loss"] = c.w_mae * (terms["loss_mae_a"] + terms["loss_mae_v"]) + c.w_c * terms["nce"]
        return terms

    def loss_scale(self) -> float:
        from xmodal.engine.dist import world_size

        s = self.cfg.loss_scale
        return float(world_size()) if s == "world_size" else float(s)

    def training_step(self, batch: dict) -> LossOut:
        t = self.losses(*self.model_inputs(batch, train=True))
        total = t.pop("loss") * self.loss_scale()
        return LossOut(total, {k: v.detach() for k, v in t.items()})

    @torch.no_grad()
    def embed(self, batch: dict) -> dict[str, torch.Tensor]:
        """Mean-pooled unmasked modality features (retrieval, spec §11)."""
        feats = self.model.forward_feat(*self.model_inputs(batch, train=False))
        return {"audio": feats.audio.mean(dim=1), "image": feats.image.mean(dim=1)}

    @torch.no_grad()
    def retrieval_step(self, batch: dict) -> dict:
        out = self.embed(batch)
        if "label" in batch:
            out["label"] = batch["label"]
        return out

    @torch.no_grad()
    def eval_step(self, batch: dict) -> dict:
        audio, image = self.model_inputs(batch, train=False)
        noise = batch_noise(batch, audio.shape[0], self.model.patch_embed_a.num_patches,
                            self.model.patch_embed_v.num_patches, audio.device)
        t = self.losses(audio, image, noise=noise)
        n = audio.shape[0]
        out = {k: v.float().expand(n).clone() for k, v in t.items()}  # per-sample rows: batch-size-weighted means
        if self.cfg.eval_retrieval:
            out.update(self.retrieval_step(batch))
        return out

    def eval_metrics(self, outputs: dict) -> dict[str, float]:
        metrics = {k: float(outputs[k].mean()) for k in ("loss", "loss_mae_a", "loss_mae_v", "nce", "c_acc")}
        if "audio" in outputs:
            from xmodal.eval.cavmae import retrieval_metrics

            metrics.update(retrieval_metrics(outputs["audio"], outputs["image"], outputs.get("label"), center=self.cfg.center))
        return metrics


# --------------------------------------------------------------------------------------- finetune
@register_method("cavmae_finetune", config=CavmaeFinetuneConfig)
class CavmaeFinetune(Method):
    def __init__(self, cfg: CavmaeFinetuneConfig, info):
        super().__init__(cfg, info)
        if info.num_classes < 1:
            raise ConfigError("cavmae_finetune: the data reports no classes (info.num_classes = 0)")
        self.arch = cfg.net.arch()
        pos = True if cfg.net.trainable_pos is None else cfg.net.trainable_pos
        self.model = CAVMAEFT(self.arch, label_dim=info.num_classes, trainable_pos=pos)
        if cfg.init_from:
            init_weights(self.model, cfg.init_from, self.arch)
        if cfg.freeze_base:
            for n, p in self.model.named_parameters():
                p.requires_grad_(n.startswith("mlp_head."))
        self.multilabel = info.multilabel
        self.loss_kind = cfg.loss if cfg.loss != "auto" else ("bce" if info.multilabel else "ce")

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        """base (lr) and mlp_head (lr × head_lr), each split by `optim.no_decay`."""
        groups = []
        for name, scale, is_head in (("base", 1.0, False), ("head", self.cfg.head_lr, True)):
            for decay in (True, False):
                params = [p for n, p in self.model.named_parameters() if p.requires_grad
                          and n.startswith("mlp_head.") == is_head and (not any(s in n for s in optim.no_decay)) == decay]
                if params:
                    g = {"params": params, "name": name if decay else f"{name}_no_decay", "lr_scale": scale}
                    groups.append(g if decay else {**g, "weight_decay": 0.0})
        return groups

    def _streams(self, batch: dict, mode: str, frame) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        inputs = self.cfg.inputs
        a = take_audio(batch, inputs, self.arch) if mode in ("multimodal", "audioonly", "missingaudioonly") else None
        v = take_image(batch, inputs, self.arch, frame) if mode in ("multimodal", "videoonly", "missingvideoonly") else None
        return a, v

    def targets(self, label: torch.Tensor) -> torch.Tensor:
        """[B, K] float targets: one-hot / multi-hot, label-smoothed when hard (positives 1−ε, negatives ε/K)."""
        k = self.info.num_classes
        y = F.one_hot(label.long(), k).float() if label.dim() == 1 else label.float()
        eps = self.cfg.label_smoothing
        if eps and bool(((y == 0) | (y == 1)).all()):
            y = torch.where(y > 0, 1.0 - eps, eps / k)
        return y

    def training_step(self, batch: dict) -> LossOut:
        a, v = self._streams(batch, self.cfg.mode, train_frame(batch, self.cfg.inputs))
        y = self.targets(batch["label"])
        if self.cfg.mixup and torch.rand(()) < self.cfg.mixup:
            # the reference mixes waveforms and images in the dataset; this batch-level form mixes
            # normalised fbanks and images with one λ ~ Beta(α, α) and a shuffled partner
            lam = float(torch.distributions.Beta(self.cfg.mixup_alpha, self.cfg.mixup_alpha).sample())
            perm = torch.randperm(y.shape[0], device=y.device)
            a, v = (None if x is None else lam * x + (1 - lam) * x[perm] for x in (a, v))
            y = lam * y + (1 - lam) * y[perm]
        logits = self.model(a, v, self.cfg.mode)
        if self.loss_kind == "bce":
            loss = F.binary_cross_entropy_with_logits(logits, y)
        else:
            loss = torch.sum(-y * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return LossOut(loss, {self.loss_kind: loss.detach()})

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid() if self.multilabel else logits.float().softmax(dim=-1)

    @torch.no_grad()
    def predict_probs(self, batch: dict, mode: str | None = None) -> torch.Tensor:
        """Class probabilities (sigmoid multi-label / softmax), averaged over `inputs.eval_frames`
        frames when the batch carries video clips (spec §10 evaluation protocol)."""
        mode = mode or self.cfg.eval_mode or self.cfg.mode
        video = batch.get(self.cfg.inputs.video_key)
        n = self.cfg.inputs.eval_frames
        if self.cfg.inputs.image_key in batch or video is None or n <= 1 or mode in ("audioonly", "missingaudioonly"):
            return self._probs(self.model(*self._streams(batch, mode, None), mode))
        probs = [self._probs(self.model(*self._streams(batch, mode, i), mode)) for i in frame_indices(video.shape[2], n)]
        return torch.stack(probs).mean(0)

    def predict(self, batch: dict) -> torch.Tensor:
        mode = self.cfg.eval_mode or self.cfg.mode
        return self.model(*self._streams(batch, mode, None), mode)

    @torch.no_grad()
    def embed(self, batch: dict) -> dict[str, torch.Tensor]:
        mode = self.cfg.eval_mode or self.cfg.mode
        return {"feature": self.model.forward_features(*self._streams(batch, mode, None), mode)}

    def eval_step(self, batch: dict) -> dict:
        out = {"probs": self.predict_probs(batch), "label": batch["label"]}
        if "group" in batch:  # a store with image.eval_all: one item per stored frame
            out["group"] = list(batch["group"])
        return out

    def eval_metrics(self, outputs: dict) -> dict[str, float]:
        """mAP / accuracy; items of one clip (its stored frames) are averaged first (spec §10)."""
        from xmodal.eval.cavmae import classification_metrics

        probs, label = outputs["probs"], outputs["label"]
        if "group" in outputs and len(set(outputs["group"])) < len(outputs["group"]):
            from xmodal.eval.aggregate import aggregate_outputs

            _, probs, label = aggregate_outputs(outputs["group"], probs, label, how="mean_logits")
        return classification_metrics(probs, label, self.multilabel)


__all__ = [
    "CavmaeFinetune", "CavmaeFinetuneConfig", "CavmaeInputs", "CavmaeNet", "CavmaePretrain",
    "CavmaePretrainConfig", "frame_indices", "read_cavmae_state", "take_audio", "take_image",
]
