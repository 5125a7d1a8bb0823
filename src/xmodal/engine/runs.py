"""Rebuild a trained run (config + data + method + weights) for evaluation and reuse."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xmodal.config import RunConfig, load_config
from xmodal.engine.checkpoint import CheckpointManager, load_state_file, load_weights
from xmodal.errors import CheckpointError, ConfigError


@dataclass
class LoadedRun:
    cfg: RunConfig
    data: Any
    method: Any
    weights: Path | None


def resolve_config_path(run: str | Path) -> Path:
    p = Path(run)
    if p.is_dir():
        if not (p / "config.yaml").is_file():
            raise ConfigError(f"{p}: not a run folder (no config.yaml)")
        return p / "config.yaml"
    if not p.is_file():
        raise ConfigError(f"{p}: no such recipe or run folder")
    return p


def find_weights(run_dir: Path) -> Path | None:
    if (run_dir / "weights.safetensors").is_file():
        return run_dir / "weights.safetensors"
    found = CheckpointManager(run_dir / "checkpoints").latest_loadable()
    return found[0] if found else None


def load_run(run: str | Path, *, ckpt: str | Path | None = None, overrides: list[str] | None = None, data=None) -> LoadedRun:
    """Config from a run folder (or a recipe), its data and method, with trained weights loaded."""
    from xmodal.engine.trainer import build_method

    cfg_path = resolve_config_path(run)
    cfg = load_config(cfg_path, overrides)
    data, method = build_method(cfg, data)
    weights = Path(ckpt) if ckpt else (find_weights(cfg_path.parent) if Path(run).is_dir() else None)
    if weights is not None:
        state = load_state_file(weights)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        if not isinstance(state, dict):
            raise CheckpointError(f"{weights}: expected a state dict")
        load_weights(method, state, strict=True, what=str(weights))
    return LoadedRun(cfg, data, method, weights)
