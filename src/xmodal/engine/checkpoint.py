"""Atomic checkpoints with full training state, and safe loading of any weight file.

* ``save_atomic``: write to a temporary file in the same folder, fsync, then ``os.replace``;
  a crash leaves either the old file or the new one, never half of one.
* ``CheckpointManager``: ``step_00001234.ckpt`` files holding model/optimizer/scheduler/scaler,
  RNG states, sampler position, epoch/step and the resolved config; ``latest_loadable`` walks back
  from the newest when one is truncated or corrupt.
* ``load_state_file``: safetensors, or ``torch.load(weights_only=True)``; a pickle that would
  execute code is refused with a one-line CheckpointError.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import random
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmodal.errors import CheckpointError

log = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"^step_(\d{8})\.ckpt$")


def save_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save `obj` to `path` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def save_safetensors_atomic(state: Mapping[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> Path:
    from safetensors.torch import save as st_save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared storage and non-contiguous tensors: store plain copies.
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    data = st_save(plain, metadata={k: str(v) for k, v in (metadata or {}).items()})
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_state_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a .safetensors file or a torch file without executing code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(map_location))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        hint = next((ln for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
        raise CheckpointError(
            f"{path}: refusing to load: the file needs code execution to unpickle ({hint.strip()[:160]}); "
            "convert it to safetensors in a trusted environment"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({msg[:160]})") from None


def strip_prefix(state: Mapping[str, Any], prefixes: tuple[str, ...] = ("module.", "_orig_mod.")) -> dict:
    """Remove DataParallel/DDP/compile prefixes from every key that has them."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k = k[len(p) :]
                    changed = True
        out[k] = v
    return out


def load_weights(module: torch.nn.Module, state: Mapping[str, torch.Tensor], *, strict: bool = True, what: str = "") -> tuple[list[str], list[str]]:
    """load_state_dict with a one-line error listing missing/unexpected/mismatched keys."""
    state = strip_prefix(state)
    own = module.state_dict()
    mismatched = [
        f"{k} {tuple(v.shape)}!={tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if mismatched or (strict and (missing or unexpected)):
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys and (strict or label == "shape mismatch"):
                shown = ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        raise CheckpointError(f"{what or type(module).__name__}: weights do not fit the model: {'; '.join(parts)}")
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return missing, unexpected


# ------------------------------------------------------------------------------------ RNG state
def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": _py_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    random.setstate(_py_state_from_plain(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state_to_plain(s: tuple) -> list:
    version, internal, gauss = s
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


def _py_state_from_plain(s: list) -> tuple:
    return (s[0], tuple(int(v) for v in s[1].tolist()), s[2])


# -------------------------------------------------------------------------------------- manager
class CheckpointManager:
    """Numbered full-state checkpoints in one folder; keeps the newest `keep` of them."""

    def __init__(self, folder: str | Path, keep: int = 2):
        self.folder = Path(folder)
        self.keep = max(1, keep)

    def path_for(self, step: int) -> Path:
        return self.folder / f"step_{step:08d}.ckpt"

    def list(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _CKPT_RE.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, state: dict, step: int) -> Path:
        path = save_atomic(state, self.path_for(step))
        for old in self.list()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def latest_loadable(self) -> tuple[Path, dict] | None:
        """The newest checkpoint that loads; corrupt or truncated newer ones are skipped with a warning."""
        for path in reversed(self.list()):
            try:
                state = load_state_file(path)
            except CheckpointError as e:
                log.warning("skipping unusable checkpoint: %s", e)
                continue
            if not isinstance(state, dict) or "model" not in state:
                log.warning("skipping %s: not a full training checkpoint", path)
                continue
            return path, state
        return None


def tensor_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """Deterministic serialisation of a state dict (for equality checks in tests/tools)."""
    buf = io.BytesIO()
    for k in sorted(state):
        buf.write(k.encode())
        buf.write(state[k].detach().cpu().contiguous().numpy().tobytes())
    return buf.getvalue()
