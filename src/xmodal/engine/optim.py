"""Optimisers with parameter groups and step-resolution LR schedules.

A method returns parameter groups as dicts ``{"params": [...], "name": str, "lr_scale": float,
"weight_decay": float?, "scheduled": bool}``: ``lr_scale`` multiplies the base lr (CAV-MAE's head
lr ratio, GDT's trunk/head lrs), ``scheduled=False`` keeps a group at its lr (CCL's composition
heads). Groups that omit keys get the defaults.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from xmodal.config import OptimConfig, SchedConfig


def default_param_groups(module: nn.Module, optim: OptimConfig, name: str = "all", lr_scale: float = 1.0) -> list[dict]:
    """Trainable parameters of `module`, split by `optim.no_decay` name substrings."""
    decay, no_decay = [], []
    for n, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if any(s in n for s in optim.no_decay) else decay).append(p)
    groups = [{"params": decay, "name": name, "lr_scale": lr_scale}]
    if no_decay:
        groups.append({"params": no_decay, "name": f"{name}_no_decay", "lr_scale": lr_scale, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(groups: Iterable[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = [dict(g) for g in groups]
    if not groups or not any(g["params"] for g in groups):
        raise ValueError("no trainable parameters")
    for g in groups:
        g["params"] = list(g["params"])
        g.setdefault("lr_scale", 1.0)
        g.setdefault("scheduled", True)
        g.setdefault("name", "group")
        g["lr"] = cfg.lr * g["lr_scale"]
        g.setdefault("weight_decay", cfg.weight_decay)
        g["base_lr"] = g["lr"]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, dampening=cfg.dampening, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    raise AssertionError(cfg.name)


def lr_factor(cfg: SchedConfig, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of the base lr at optimisation step `step` (0-based)."""
    spe = max(1, steps_per_epoch)
    warm = cfg.warmup_steps + int(round(cfg.warmup_epochs * spe))
    if warm > 0 and step < warm:
        return cfg.warmup_start + (1.0 - cfg.warmup_start) * step / warm
    epoch = step // spe
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "cosine":
        span = max(1, total_steps - warm)
        t = min(1.0, (step - warm) / span)
        return cfg.min_ratio + (1.0 - cfg.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    if cfg.name == "multistep":
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    if cfg.name == "epoch_step":
        # CAV-MAE: × gamma once epoch `start` (1-based) has finished, then after every `every` more;
        # with 0-based running epoch E the decays applied so far are the milestones <= E.
        if epoch < cfg.start:
            return 1.0
        return cfg.gamma ** (1 + (epoch - cfg.start) // max(1, cfg.every))
    raise AssertionError(cfg.name)


class Schedule:
    """Sets every scheduled group's lr = base_lr × lr_factor(step); state is just the step."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: SchedConfig, steps_per_epoch: int, total_steps: int):
        self.optimizer, self.cfg = optimizer, cfg
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.step_count = 0
        self._apply()

    def _apply(self) -> None:
        f = lr_factor(self.cfg, self.step_count, self.steps_per_epoch, self.total_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * (f if g.get("scheduled", True) else 1.0)

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self._apply()

    def last_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]
