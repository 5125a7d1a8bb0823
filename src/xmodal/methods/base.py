"""The contract between a method and the engine.

A method is an ``nn.Module`` that owns its models and knows which batch keys each reads:

* ``training_step(batch) -> LossOut``: the loss of one (micro-)batch. ``forward`` calls it so
  that DDP's gradient hooks see a forward pass.
* ``backward(out, scale)``: default ``(scale · out.total).backward()``; a method may route
  gradients differently.
* ``param_groups(optim_cfg)``: optimiser groups (see engine/optim.py for the keys).
* ``eval_step(batch) -> dict`` and ``eval_metrics(outputs) -> dict[str, float]``: per-batch
  outputs (tensors / lists, concatenated over batches and ranks by the engine) and the metrics
  computed from all of them. The defaults do classification with ``predict``.
* ``predict(batch) -> logits`` and ``embed(batch) -> dict[str, Tensor]`` for downstream use.

Frozen teachers are submodules kept in eval mode with ``requires_grad=False``; ``train()`` keeps
them in eval mode, so BatchNorm statistics never move.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xmodal.config import OptimConfig
from xmodal.data.bundle import DataInfo
from xmodal.engine.optim import default_param_groups
from xmodal.losses import LossOut


class Method(nn.Module):
    config_cls: type | None = None

    def __init__(self, cfg: Any, info: DataInfo):
        super().__init__()
        self.cfg = cfg
        self.info = info
        self._frozen: list[str] = []

    # -------------------------------------------------------------------------------- training
    def training_step(self, batch: dict) -> LossOut:
        raise NotImplementedError

    def forward(self, batch: dict) -> LossOut:
        return self.training_step(batch)

    def backward(self, out: LossOut, scale: float = 1.0) -> None:
        (out.total * scale).backward()

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        return default_param_groups(self, optim)

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for epoch-dependent behaviour (curricula, re-drawn frames)."""

    # ------------------------------------------------------------------------------- teachers
    def freeze(self, name: str) -> None:
        """Mark submodule `name` as a frozen teacher: eval mode, no gradients, never trained."""
        mod = getattr(self, name)
        mod.eval()
        for p in mod.parameters():
            p.requires_grad_(False)
        self._frozen.append(name)

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self._frozen:
            getattr(self, name).eval()
        return self

    # ------------------------------------------------------------------------------ evaluation
    def predict(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no classifier")

    def embed(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} exposes no embeddings")

    def eval_step(self, batch: dict) -> dict:
        return {"logits": self.predict(batch).float(), "label": batch["label"]}

    def eval_metrics(self, outputs: dict) -> dict[str, float]:
        from xmodal.eval.metrics import classification_report

        return classification_report(outputs["logits"], outputs["label"], multilabel=self.info.multilabel)
