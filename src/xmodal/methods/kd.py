"""Plain cross-modal knowledge distillation between any teacher and student modalities.

    total = w_ce · CE(z_s, y)                               (labelled rows only: label >= 0)
          + w_kd · T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))    (full or top-K; rows of `kd.rows`)
          + w_cos · mean(1 − cos(f_s, f_t)) + w_mse · mean(‖f̂_s − f̂_t‖²)

The student reads `input_key` (e.g. "video"); the frozen teacher reads its own key (e.g. "fbank"
for an audio teacher), either live from a `supervised` run folder or from a teacher cache (batch
keys "<teacher.key>.logits" / ".feature", see methods/_distill.py) — then no teacher forward runs.
The data gives labelled clips plus an unlabelled paired pool (avdigits `train_split: train+pool`,
data/kd_pool.py): the pool is where a cross-modal teacher teaches (EMBEDDED-DATA.md).
`kd.weight: 0` with no feature terms is the no-KD baseline on the same batches (pool rows then
contribute nothing).

Evaluation: clip-level and video-level accuracy over `eval_windows` uniform windows of
`clip_frames` frames (whole clip when 0) and, via `video_retrieval`, R@k with student features.

Python use (no CLI): ``run_kd("recipes/kd/avdigits-audio.yaml", ["data.gap=0.8"])`` trains the
student and returns a `KDResult` with the test accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from xmodal.config import registered
from xmodal.errors import ConfigError
from xmodal.losses import LossOut
from xmodal.losses.kd import add_feature_terms, check_kd_settings, kd_kl, topk_kl
from xmodal.methods._distill import (
    TeacherConfig,
    WindowedStudent,
    load_teacher,
    random_window,
    teacher_outputs,
)
from xmodal.methods.base import Method
from xmodal.methods.supervised import fill_model_dims
from xmodal.registry import MODELS, register_method


@dataclass
class KDTermConfig:
    weight: float = 1.0  # logit KD weight; 0 = off
    temperature: float = 4.0
    variant: Literal["full", "top_k"] = "full"
    k: int = 5  # classes kept by top_k (the teacher's K largest logits)
    t2_scale: bool = True
    feature_cosine: float = 0.0
    feature_mse: float = 0.0
    rows: Literal["all", "unlabelled", "labelled"] = "all"  # which rows the KD terms see

    def validate(self) -> None:
        check_kd_settings(self)

    @property
    def active(self) -> bool:
        return bool(self.weight or self.feature_cosine or self.feature_mse)


@dataclass
class KDConfig:
    name: str = "kd"
    student: Any = registered("models")  # e.g. {name: tiny_video, num_classes: 0} (0 = from the data)
    input_key: str = "video"
    label_key: str = "label"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    kd: KDTermConfig = field(default_factory=KDTermConfig)
    ce_weight: float = 1.0
    clip_frames: int = 0  # train on random windows of this many frames (0 = the whole clip)
    eval_windows: int = 1  # uniform windows per test video (video-level accuracy)


def build_student(model_cfg: Any, info, input_key: str):
    if model_cfg is None:
        raise ConfigError("method.student: missing; name a registered model, e.g. {name: tiny_video}")
    return MODELS.build(fill_model_dims(model_cfg, info, input_key))


@register_method("kd", config=KDConfig)
class KD(WindowedStudent, Method):
    def __init__(self, cfg: KDConfig, info):
        super().__init__(cfg, info)
        self.student = build_student(cfg.student, info, cfg.input_key)
        self.teacher, self.teacher_key = None, cfg.teacher.input_key
        # The teacher is loaded only when distilling, so the baseline needs no teacher run.
        if cfg.teacher.run and cfg.kd.active:
            self.teacher, self.teacher_key = load_teacher(cfg.teacher, info)
            self.freeze("teacher")
        self.teacher_forwards = 0  # counts live teacher passes (0 when every batch was cached)

    def state_dict(self, *args, **kwargs):
        # The frozen teacher belongs to its own run folder: keep it out of the student's weights.
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        return type(state)((k, v) for k, v in state.items() if not k.startswith(f"{prefix}teacher."))

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        if self.teacher is not None:
            own = {f"teacher.{k}": v for k, v in self.teacher.state_dict().items()}
            state = {**own, **state}
        return super().load_state_dict(state, strict=strict, assign=assign)

    def training_step(self, batch: dict) -> LossOut:
        cfg = self.cfg
        if cfg.input_key not in batch:
            raise ConfigError(f"method.input_key: batch has no key '{cfg.input_key}'; keys: {sorted(batch)}")
        x = batch[cfg.input_key]
        if x.dim() == 5:
            x = random_window(x, cfg.clip_frames)
        out = self.student(x)
        label = batch[cfg.label_key]
        has = label >= 0
        terms: dict[str, Any] = {}
        total = out.logits.sum() * 0.0
        if cfg.ce_weight and bool(has.any()):
            ce = F.cross_entropy(out.logits[has], label[has])
            total = total + cfg.ce_weight * ce
            terms["ce"] = ce.detach()
        if cfg.kd.active:
            total = total + self._kd_terms(batch, out, has, terms)
        return LossOut(total, terms)

    def _kd_terms(self, batch: dict, out, has: torch.Tensor, terms: dict) -> torch.Tensor:
        kd = self.cfg.kd
        t = teacher_outputs(batch, self.cfg.teacher, self.teacher, self.teacher_key, self.training)
        if not t.cached:
            self.teacher_forwards += 1
        rows = {"all": torch.ones_like(has), "unlabelled": ~has, "labelled": has}[kd.rows]
        total = out.logits.new_zeros(())
        if not bool(rows.any()):
            return total
        if kd.weight:
            if t.logits is None:
                raise ConfigError(f"method.kd.weight: the teacher cache has no '{self.cfg.teacher.key}.logits'")
            s, tl = out.logits[rows], t.logits[rows].to(out.logits.dtype)
            if kd.variant == "top_k":
                k = topk_kl(s, tl, k=kd.k, temperature=kd.temperature, t2_scale=kd.t2_scale)
            else:
                k = kd_kl(s, tl, temperature=kd.temperature, t2_scale=kd.t2_scale)
            total = total + kd.weight * k
            terms["kd"] = k.detach()
        if kd.feature_cosine or kd.feature_mse:
            if t.feature is None or t.feature.shape[-1] != out.feature.shape[-1]:
                have = None if t.feature is None else t.feature.shape[-1]
                raise ConfigError(f"method.kd.feature_*: student feature is {out.feature.shape[-1]}-d, teacher "
                                  f"feature {have}-d; they must match")  # fmt: skip
            s, tf = out.feature[rows], t.feature[rows].to(out.feature.dtype)
            total, logged = add_feature_terms(total, s, tf, cosine=kd.feature_cosine, mse=kd.feature_mse)
            terms.update(logged)
        return total


# ---------------------------------------------------------------------------------- Python API
@dataclass
class KDResult:
    acc: float  # video-level test top-1 (%)
    metrics: dict[str, Any]  # everything the run reported ("test": {...}, "retrieval_*", ...)
    out_dir: Path
    method: Any = None


def run_kd(recipe: str | Path | Any, overrides: list[str] | None = None, *, out_dir: str | Path | None = None,
           data=None, retrieval: bool = False) -> KDResult:
    """Train the student of a `kd` (or `ccl`) recipe — a path or a `RunConfig` — and return its
    test accuracy. `overrides` are `--set` strings (e.g. ["data.gap=0.8", "train.seed=1"]);
    `data` reuses an already built DataBundle (same data config). With `retrieval`, also video
    retrieval R@k (test queries, labelled training clips as gallery)."""
    from xmodal.config import RunConfig, Source, apply_overrides, from_dict, load_config, to_dict
    from xmodal.engine.trainer import train

    if isinstance(recipe, RunConfig):
        cfg = recipe
        if overrides:
            src = Source(default="<run_kd>")
            cfg = from_dict(RunConfig, apply_overrides(to_dict(cfg), overrides, src), (), src)
    else:
        cfg = load_config(recipe, overrides)
    res = train(cfg, out_dir=out_dir, data=data)
    metrics = dict(res.metrics)
    if retrieval:
        from xmodal.methods._distill import video_retrieval
        from xmodal.registry import DATASETS

        bundle = data if data is not None else DATASETS.build(cfg.data)
        gallery = bundle.split("labelled") or bundle.train
        metrics.update(video_retrieval(res.method, bundle.test, gallery))
    return KDResult(float(metrics["test"]["acc"]), metrics, res.out_dir, res.method)
