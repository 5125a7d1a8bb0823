"""Run logs: JSONL metrics, optional TensorBoard, tqdm progress; only rank 0 writes."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("xmodal")


def setup_logging(level: int = logging.INFO) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("xmodal").setLevel(level)


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "numel", lambda: 2)() == 1:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricLogger:
    """Append-only JSONL (`metrics.jsonl`) + TensorBoard scalars; a no-op on non-zero ranks."""

    def __init__(self, out_dir: str | Path | None, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled and out_dir is not None
        self.path = Path(out_dir) / "metrics.jsonl" if self.enabled else None
        self._tb = None
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(str(Path(out_dir) / "tb"))
                except Exception:  # noqa: BLE001 - tensorboard is optional
                    log.debug("tensorboard unavailable; JSONL only")

    def log(self, split: str, step: int, metrics: dict[str, Any], **extra: Any) -> None:
        if not self.enabled:
            return
        row = {"split": split, "step": step, **{k: _plain(v) for k, v in extra.items()}}
        row.update({k: _plain(v) for k, v in metrics.items()})
        row["time"] = round(time.time(), 3)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self._tb.add_scalar(f"{split}/{k}", v, step)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step` (a resumed run re-logs them)."""
        if not self.enabled or not self.path.exists():
            return
        rows = [ln for ln in self.path.read_text().splitlines() if ln.strip()]
        kept = []
        for ln in rows:
            try:
                if json.loads(ln).get("step", 0) <= step:
                    kept.append(ln)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(r + "\n" for r in kept))
        tmp.replace(self.path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    out = []
    for ln in p.read_text().splitlines():
        if ln.strip():
            out.append(json.loads(ln))
    return out


def progress(iterable=None, total: int | None = None, desc: str = "", enabled: bool = True, **kw):
    """tqdm bar on rank 0; XMODAL_PROGRESS=0 turns every bar off."""
    from tqdm.auto import tqdm

    off = not enabled or os.environ.get("XMODAL_PROGRESS", "1") == "0"
    return tqdm(iterable, total=total, desc=desc, disable=off, dynamic_ncols=True, mininterval=0.5, leave=False, **kw)
