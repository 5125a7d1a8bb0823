"""Plain supervised training of one model on one modality (also how teachers are trained)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from xmodal.config import registered
from xmodal.losses import LossOut
from xmodal.methods.base import Method
from xmodal.registry import MODELS, register_method


@dataclass
class SupervisedConfig:
    name: str = "supervised"
    input_key: str = "x"  # batch key the model reads (e.g. "video", "fbank", "x2")
    label_key: str = "label"  # e.g. "audio_label" for an audio teacher trained on its own modality
    model: Any = registered("models")
    label_smoothing: float = 0.0


def fill_model_dims(model_cfg: Any, info, input_key: str) -> Any:
    """Fill `in_dim`/`num_classes` left at 0 from the data's facts."""
    changes = {}
    names = {f.name for f in dataclasses.fields(model_cfg)}
    if "num_classes" in names and model_cfg.num_classes == 0:
        changes["num_classes"] = info.num_classes
    dims = info.extra.get("dims", {})
    if "in_dim" in names and model_cfg.in_dim == 0 and input_key in dims:
        changes["in_dim"] = int(dims[input_key])
    return dataclasses.replace(model_cfg, **changes) if changes else model_cfg


@register_method("supervised", config=SupervisedConfig)
class Supervised(Method):
    def __init__(self, cfg: SupervisedConfig, info):
        super().__init__(cfg, info)
        if cfg.model is None:
            from xmodal.errors import ConfigError

            raise ConfigError("method.model: missing; name a registered model, e.g. {name: mlp}")
        self.model = MODELS.build(fill_model_dims(cfg.model, info, cfg.input_key))

    def _logits(self, batch: dict) -> torch.Tensor:
        if self.cfg.input_key not in batch:
            from xmodal.errors import ConfigError

            raise ConfigError(f"method.input_key: batch has no key '{self.cfg.input_key}'; keys: {sorted(batch)}")
        out = self.model(batch[self.cfg.input_key])
        return out[0] if isinstance(out, tuple) else out

    def training_step(self, batch: dict) -> LossOut:
        logits = self._logits(batch)
        label = batch[self.cfg.label_key]
        if self.info.multilabel:
            loss = F.binary_cross_entropy_with_logits(logits, label.float())
        else:
            loss = F.cross_entropy(logits, label, label_smoothing=self.cfg.label_smoothing)
        return LossOut(loss, {"ce": loss.detach()})

    def predict(self, batch: dict) -> torch.Tensor:
        return self._logits(batch)

    def eval_step(self, batch: dict) -> dict:
        return {"logits": self.predict(batch).float(), "label": batch[self.cfg.label_key]}
