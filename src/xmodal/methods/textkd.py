"""Text-KD student (specs/textkd.md §4, §10): an AVT trained with its own losses plus distillation
to a language-model teacher's stored next-action predictions.

    total = w_cls·CE(ŷ, y) + w_feat·MSE(future feats) + w_past·CE(past frames)      (AVT, mean-reduced)
          + w_kd · T²·KL(softmax(t/T) ‖ softmax(s/T))                               (reduction below)
          + w_cos · mean_b(1 − cos(f_s, f_t)) + w_mse · mean(‖f̂_s − f̂_t‖²)         (unused in the paper)

The teacher logits t (and LM feature f_t) come from the batch, as the data source read them once
from a prediction store (`xmodal textkd teacher-preds`): keys "<teacher_key>.logits" /
"<teacher_key>.feature" and optionally "<teacher_key>.present" (False where the store had no row;
without that key, an all-zero logit row marks a missing teacher, which is what a store read with
`missing_features: zeros` gives). The teacher model is never run here.

KD variants: ``full`` (EGTEA: T = 10, weight 150), ``top_k`` (EK55: the K = 50 largest teacher
logits per sample, softmax renormalised over them; T = 5, weight 20), ``top_mid_bottom`` (3K
classes). Reduction ``elements_mean`` (reference: mean over B·C, so the effective weight is
w·T²/C) or ``batchmean``. Missing teachers: ``skip`` (masked out of the KD term and its
denominator) or ``uniform`` (reference parity: a −1 constant row, i.e. a uniform target).
`kd.weight: 0` is the same student without distillation (the baseline), which needs no store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from xmodal.config import registered
from xmodal.errors import ConfigError
from xmodal.losses import LossOut
from xmodal.losses.kd import (
    add_feature_terms,
    check_kd_settings,
    kd_kl,
    missing_teacher,
    top_mid_bottom_kl,
    topk_kl,
)
from xmodal.methods.base import Method
from xmodal.methods.supervised import fill_model_dims
from xmodal.models.avt import AVTLossWeights, AVTOut, avt_losses
from xmodal.registry import MODELS, register_method


@dataclass
class KDConfig:
    """Distillation term; defaults = the EGTEA published run (full KL, T = 10, weight 150)."""

    weight: float = 150.0  # 0 = no distillation (the AVT baseline)
    temperature: float = 10.0
    variant: Literal["full", "top_k", "top_mid_bottom"] = "full"
    k: int = 50  # classes for top_k / top_mid_bottom (EK55: 50)
    reduction: Literal["elements_mean", "batchmean"] = "elements_mean"
    missing_teacher: Literal["skip", "uniform"] = "skip"
    feature_cosine: float = 0.0  # 1 − cos(student future feature, LM feature); 0 in the paper
    feature_mse: float = 0.0  # MSE of the L2-normalised features; 0 in the paper
    teacher_key: str = "teacher"  # batch keys <key>.logits / <key>.feature / <key>.present

    def validate(self) -> None:
        check_kd_settings(self)


@dataclass
class TextKDConfig:
    name: str = "textkd"
    model: Any = registered("models")  # an AVT ({name: avt, ...}); num_classes 0 = from the data
    input_key: str = "video"  # "video" [B,C,T,H,W] or precomputed per-frame features [B,T,d]
    loss: AVTLossWeights = field(default_factory=AVTLossWeights)  # cls / feat / past_cls
    kd: KDConfig = field(default_factory=KDConfig)
    # verb/noun metrics when the data's DataInfo lacks the maps (e.g. a prepared store):
    actions: str | None = None  # an importer's actions.json (action -> verb, noun)
    many_shot: str | None = None  # an importer's many_shot.json (EK55)
    topk: int = 5  # k of the top-k accuracy and class-mean top-k recall


def kd_term(student: torch.Tensor, teacher: torch.Tensor, present: torch.Tensor, cfg: KDConfig) -> torch.Tensor:
    """The configured KD variant of `student` [B,C] logits towards `teacher` [B,C] logits."""
    targets = missing_teacher(teacher, present, cfg.missing_teacher)
    kw = dict(temperature=cfg.temperature, reduction=cfg.reduction, mask=targets.mask)
    if cfg.variant == "full":
        return kd_kl(student, targets.logits, **kw)
    if cfg.variant == "top_k":
        return topk_kl(student, targets.logits, k=cfg.k, **kw)
    return top_mid_bottom_kl(student, targets.logits, k=cfg.k, **kw)


@register_method("textkd", config=TextKDConfig)
class TextKD(Method):
    def __init__(self, cfg: TextKDConfig, info):
        super().__init__(cfg, info)
        if cfg.model is None:
            raise ConfigError("method.model: missing; e.g. {name: avt, preset: egtea_avt_b, num_classes: 0}")
        self.model = MODELS.build(fill_model_dims(cfg.model, info, cfg.input_key))
        from xmodal.eval.anticipation import ActionSpace

        # files named in the recipe win over what the data source knows (a store knows nothing)
        self.space = ActionSpace.from_files(cfg.actions, cfg.many_shot).or_else(ActionSpace.from_info(info.extra))

    # ------------------------------------------------------------------------------- training
    def _forward(self, batch: dict) -> AVTOut:
        if self.cfg.input_key not in batch:
            raise ConfigError(f"method.input_key: batch has no key '{self.cfg.input_key}'; keys: {sorted(batch)}")
        return self.model(batch[self.cfg.input_key])

    def _teacher(self, batch: dict, what: str) -> torch.Tensor:
        key = f"{self.cfg.kd.teacher_key}.{what}"
        if key not in batch:
            raise ConfigError(f"method.kd: batch has no key '{key}'; give the data a teacher prediction store "
                              f"(data.features: {{{self.cfg.kd.teacher_key}: <store from `xmodal textkd teacher-preds`>}}) "
                              "or set method.kd.weight to 0")  # fmt: skip
        return batch[key]

    def training_step(self, batch: dict) -> LossOut:
        out = self._forward(batch)
        base = avt_losses(out, batch, self.cfg.loss)
        kd = self.cfg.kd
        total, terms = base.total, dict(base.terms)
        if kd.weight or kd.feature_cosine or kd.feature_mse:
            logits = self._teacher(batch, "logits").to(out.logits.dtype)
            present = batch.get(f"{kd.teacher_key}.present")
            if present is None:  # a zero row is what a store read with missing_features: zeros returns
                present = logits.ne(0).any(1)
            present = present.to(device=logits.device, dtype=torch.bool)
            if kd.weight:
                k = kd_term(out.logits, logits, present, kd)
                total = total + kd.weight * k
                terms["kd"] = k.detach()
            if kd.feature_cosine or kd.feature_mse:
                total = total + self._feature_terms(out, self._teacher(batch, "feature"), present, terms)
            terms["teacher_present"] = present.float().mean()
        return LossOut(total, terms)

    def _feature_terms(self, out: AVTOut, feature: torch.Tensor, present: torch.Tensor, terms: dict) -> torch.Tensor:
        """Feature alignment of the predicted future feature with the LM feature (present rows only)."""
        kd = self.cfg.kd
        s = out.future_feature
        if feature.shape[-1] != s.shape[-1]:
            raise ConfigError(f"method.kd.feature_*: student future feature is {s.shape[-1]}-d, teacher feature "
                              f"{feature.shape[-1]}-d; they must match (e.g. AVT-b's 768-d with a base LM)")  # fmt: skip
        if not present.any():
            return s.sum() * 0.0
        s, t = s[present], feature[present].to(s.dtype)
        total, logged = add_feature_terms(s.new_zeros(()), s, t, cosine=kd.feature_cosine, mse=kd.feature_mse)
        terms.update(logged)
        return total

    # ----------------------------------------------------------------------------- evaluation
    def predict(self, batch: dict) -> torch.Tensor:
        return self._forward(batch).logits

    def eval_step(self, batch: dict) -> dict:
        return {"logits": self.predict(batch).float(), "label": batch["label"], "uid": list(batch["uid"])}

    def eval_metrics(self, outputs: dict) -> dict[str, float]:
        from xmodal.eval.anticipation import anticipation_metrics

        return anticipation_metrics(outputs["logits"], outputs["label"], self.space, k=self.cfg.topk)
