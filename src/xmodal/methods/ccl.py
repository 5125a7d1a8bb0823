"""CCL: compositional contrastive distillation from audio and/or image teachers (specs/ccl.md).

Per teacher X with feature t (frozen; live from a `supervised` run or cached "<key>.feature"),
student feature v and logits z_v, the composition head gives (z_m, m) = CompositionHead_X(t, v):
    r = W_r [t/‖t‖ ; v/‖v‖] + b_r,   m = t + r,   z_m = W_c m + b_c          (spec §3.3)
    J_v = CE(z_v, y) + w Σ_X (L_vm + L_vt + S(z_v, z_m))                      (student)
    J_X = CE(z_m, y) + L_vm + L_mt + S(z_v, z_m)                             (head X)
with L_ab = N_T(a, b) + N_T(b, a) the label-aware contrastive loss at the teacher's temperature
(audio 0.5, image 0.1) and S the symmetric KL (losses/ccl.py). w = 1 for one teacher, 0.5 for
both. Gradient routing (spec §4.4) in one backward: J_X is computed on the head run again on the
detached student feature, so the student receives dJ_v only and each head d(J_X + J_v).
Rows whose audio feature is all zero leave every audio term (spec §4.5).
Variants: `baseline` (CE only), `audio`, `image`, `audio_image`.

Optimiser: one optimiser with a group per part; the heads are unscheduled (`schedule_heads`
false, the reference's MultiStepLR runs on the student only).

Unlabelled pool rows (label -1, avdigits `train_split: train+pool`) [ours]: with
`pool_labels: teacher` they take the teacher's predicted class (the audio teacher's when
present) as the label of the contrastive masks and of the head's CE, and the student learns from
them through the contrastive and symmetric-KL terms (its CE stays on labelled rows); with
`pool_labels: drop` they leave every term.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from xmodal.config import registered
from xmodal.errors import ConfigError
from xmodal.losses import LossOut
from xmodal.losses.ccl import ccl_objectives, nonzero_rows
from xmodal.methods._distill import (
    TeacherConfig,
    WindowedStudent,
    load_teacher,
    random_window,
    teacher_outputs,
)
from xmodal.methods.base import Method
from xmodal.methods.kd import build_student
from xmodal.registry import register_method

VARIANTS = ("baseline", "audio", "image", "audio_image")


class CompositionHead(nn.Module):
    """Spec §3.3: one affine layer on the concatenated normalised (teacher, student) features,
    residual on the raw teacher feature, and a classifier. Returns (z_m, m)."""

    def __init__(self, num_classes: int, teacher_dim: int = 512, student_dim: int = 512):
        super().__init__()
        self.compose = nn.Linear(teacher_dim + student_dim, teacher_dim)
        self.classifier = nn.Linear(teacher_dim, num_classes)

    def forward(self, t: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t, v = t.flatten(1), v.flatten(1)  # spec §8 defect 4: never squeeze the batch away
        r = self.compose(torch.cat([F.normalize(t, dim=1, eps=1e-12), F.normalize(v, dim=1, eps=1e-12)], 1))
        m = t + r
        return self.classifier(m), m


@dataclass
class CCLConfig:
    name: str = "ccl"
    student: Any = registered("models")  # r2plus1d_vcop (published) / tiny_video (embedded)
    input_key: str = "video"
    label_key: str = "label"
    variant: Literal["baseline", "audio", "image", "audio_image"] = "audio_image"
    audio_teacher: TeacherConfig = field(default_factory=lambda: TeacherConfig(key="audio_teacher"))
    image_teacher: TeacherConfig = field(default_factory=lambda: TeacherConfig(key="image_teacher", frame="random"))
    audio_temperature: float = 0.5
    image_temperature: float = 0.1
    weight: float = 0.0  # w of the student's distillation terms; 0 = 1 for one teacher, 0.5 for two
    teacher_dim: int = 0  # teacher feature size; 0 = the student's feature size
    gather: bool = True  # contrastive terms over the global batch under DDP
    schedule_heads: bool = False
    missing_audio: bool = True  # all-zero audio features leave the audio terms (spec §4.5)
    pool_labels: Literal["teacher", "drop"] = "teacher"  # unlabelled rows (label -1) [ours]
    clip_frames: int = 0
    eval_windows: int = 1

    def validate(self) -> None:
        if self.audio_temperature <= 0 or self.image_temperature <= 0:
            raise ValueError("temperatures must be > 0")


@register_method("ccl", config=CCLConfig)
class CCL(WindowedStudent, Method):
    def __init__(self, cfg: CCLConfig, info):
        super().__init__(cfg, info)
        self.student = build_student(cfg.student, info, cfg.input_key)
        s_dim = getattr(self.student, "feature_dim", 0)
        t_dim = cfg.teacher_dim or s_dim
        if not s_dim:
            raise ConfigError("method.student: the model exposes no feature_dim; set method.teacher_dim")
        self.teachers = [x for x in ("audio", "image") if x in cfg.variant]
        self.heads = nn.ModuleDict({x: CompositionHead(info.num_classes, t_dim, s_dim) for x in self.teachers})
        self._teacher_keys: dict[str, str] = {}
        for x in self.teachers:
            tc = getattr(cfg, f"{x}_teacher")
            model, key = (None, tc.input_key)
            if tc.run:
                model, key = load_teacher(tc, info)
            if model is not None:
                self.add_module(f"{x}_teacher_model", model)
                self.freeze(f"{x}_teacher_model")
            self._teacher_keys[x] = key
        self.teacher_forwards = 0

    # teachers live in their own run folders: keep them out of the student's weights
    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        return type(state)((k, v) for k, v in state.items() if "_teacher_model." not in k)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        own = {k: v for k, v in super().state_dict().items() if "_teacher_model." in k}
        return super().load_state_dict({**own, **state}, strict=strict, assign=assign)

    def param_groups(self, optim) -> list[dict]:
        from xmodal.engine.optim import default_param_groups

        groups = default_param_groups(self.student, optim, name="student")
        for x, head in self.heads.items():
            groups += [dict(g, scheduled=self.cfg.schedule_heads) for g in default_param_groups(head, optim, name=f"head_{x}")]
        return groups

    def _teacher(self, batch: dict, x: str):
        tc = getattr(self.cfg, f"{x}_teacher")
        out = teacher_outputs(batch, tc, getattr(self, f"{x}_teacher_model", None), self._teacher_keys[x], self.training)
        if not out.cached:
            self.teacher_forwards += 1
        if out.feature is None:
            raise ConfigError(f"method.{x}_teacher: no teacher feature (cache '{tc.key}.feature' or a teacher run)")
        return out

    def training_step(self, batch: dict) -> LossOut:
        cfg = self.cfg
        x = batch[cfg.input_key]
        if x.dim() == 5:
            x = random_window(x, cfg.clip_frames)
        out = self.student(x)
        v, z_v = out.feature, out.logits
        label = batch[cfg.label_key]
        has = label >= 0
        ce = F.cross_entropy(z_v[has], label[has]) if bool(has.any()) else z_v.sum() * 0.0
        total, terms = ce, {"ce": ce.detach()}
        if not self.teachers:
            return LossOut(total, terms)
        t_out = {t: self._teacher(batch, t) for t in self.teachers}
        labels, keep = label, has
        if cfg.pool_labels == "teacher" and not bool(has.all()):
            src = t_out["audio" if "audio" in t_out and t_out["audio"].logits is not None else self.teachers[-1]]
            if src.logits is None:
                raise ConfigError("method.pool_labels teacher: the teacher gives no logits for the unlabelled rows")
            labels = torch.where(has, label, src.logits.argmax(1).to(label.dtype))
            keep = torch.ones_like(has)
        w = cfg.weight or (1.0 if len(self.teachers) == 1 else 0.5)
        for name, t in t_out.items():
            tf = t.feature.flatten(1).to(v.dtype)
            mask = keep & nonzero_rows(tf) if name == "audio" and cfg.missing_audio else keep
            head = self.heads[name]
            z_m, m = head(tf, v)
            z_m_r, m_r = head(tf, v.detach())  # routing: J_X never reaches the student (spec §4.4)
            temp = cfg.audio_temperature if name == "audio" else cfg.image_temperature
            obj = ccl_objectives(v, tf, m, z_v, z_m, labels.clamp_min(0), temperature=temp, weight=w, mask=mask,
                                 gather=cfg.gather, m_routed=m_r, z_m_routed=z_m_r)
            total = total + obj.student.total + obj.composition.total
            terms.update({f"{name}_{k}": float(v_) if not torch.is_tensor(v_) else v_.detach() for k, v_ in obj.student.terms.items()})
            terms[f"{name}_head_ce"] = obj.composition.terms.get("ce", torch.zeros(())).detach() if obj.composition.terms else 0.0
        return LossOut(total, terms)
