"""Pieces shared by the distillation methods (kd.py, ccl.py): frozen teachers from `supervised`
runs or from a teacher cache, temporal windows of the student's clips, clip- and video-level
evaluation.

Teacher outputs come from one of two places, checked per batch:
1. the batch already holds ``<key>.logits`` / ``<key>.feature`` (a teacher cache written by
   `xmodal teacher-cache`, read back by the data source's ``features: {<key>: file}``): the
   teacher network is never run;
2. otherwise the teacher network loaded from ``run`` (the folder of a `supervised` run: its
   config.yaml says which model and which batch key it reads) runs under no_grad in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from xmodal.errors import ConfigError


@dataclass
class TeacherConfig:
    """A frozen teacher: a `supervised` run folder and/or cached outputs under batch keys `key.*`."""

    run: str | None = None  # folder of a `supervised` run (config.yaml + weights); None = cache only
    input_key: str = ""  # batch key the teacher reads; "" = the run's own input_key
    # image teacher on a video key: one frame per step (CCL: random index, same for the batch)
    frame: Literal["none", "random", "middle"] = "none"
    key: str = "teacher"  # cached batch keys: <key>.logits, <key>.feature
    image_size: int = 0  # resize the selected frame to this side (bilinear, H and W only; 0 = off)


class TeacherOut(NamedTuple):
    logits: torch.Tensor | None
    feature: torch.Tensor | None
    cached: bool


def load_teacher(cfg: TeacherConfig, info) -> tuple[nn.Module, str]:
    """(frozen model, input key) of the `supervised` run in `cfg.run`.

    Built from the run's own config with the student data's facts (class count) and loaded
    strictly from the run's final weights (or its newest complete checkpoint).
    """
    from xmodal.config import load_config
    from xmodal.engine.checkpoint import load_state_file, load_weights
    from xmodal.engine.runs import find_weights
    from xmodal.registry import METHODS

    run = Path(cfg.run)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"method.teacher.run: {run} is not a run folder (no config.yaml); train the teacher recipe first")
    rcfg = load_config(run / "config.yaml")
    if getattr(rcfg.method, "name", "") != "supervised":
        raise ConfigError(f"method.teacher.run: {run} is a '{rcfg.method.name}' run; a teacher is a `supervised` run")
    weights = find_weights(run)
    if weights is None:
        raise ConfigError(f"method.teacher.run: {run} has no weights (unfinished run?)")
    teacher = METHODS.build(rcfg.method, info=info)
    state = load_state_file(weights)
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "step" in state:
        state = state["model"]
    load_weights(teacher, state, strict=True, what=str(weights))
    model = teacher.model
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, cfg.input_key or rcfg.method.input_key


def select_frame(x: torch.Tensor, mode: str, training: bool) -> torch.Tensor:
    """[B,C,T,H,W] -> [B,C,H,W]: CCL's image-teacher frame (spec §11: one index t ~ U{0..T-1} per
    step, the same for the whole batch; the middle frame at eval or with mode "middle")."""
    if x.dim() != 5:
        return x
    t = x.shape[2]
    i = int(torch.randint(t, ())) if mode == "random" and training else t // 2
    return x[:, :, i]


def teacher_outputs(batch: dict, cfg: TeacherConfig, model: nn.Module | None, input_key: str,
                    training: bool = True) -> TeacherOut:
    """Cached outputs when the batch has them, else a no-grad forward of the frozen teacher."""
    lk, fk = f"{cfg.key}.logits", f"{cfg.key}.feature"
    if lk in batch or fk in batch:
        return TeacherOut(batch.get(lk), batch.get(fk), True)
    if model is None:
        raise ConfigError(f"method.teacher: the batch has no cached '{lk}' and no teacher run is named; "
                          f"set method.teacher.run or data.features: {{{cfg.key}: <xmodal teacher-cache output>}}")
    if input_key not in batch:
        raise ConfigError(f"method.teacher.input_key: batch has no key '{input_key}'; keys: {sorted(batch)}")
    x = batch[input_key]
    if cfg.frame != "none":
        x = resize_frame(select_frame(x, cfg.frame, training), cfg.image_size)
    with torch.no_grad():
        out = model(x)
    return TeacherOut(out.logits, out.feature, False)


def resize_frame(x: torch.Tensor, size: int) -> torch.Tensor:
    """[B,C,H,W] -> [B,C,size,size] bilinear (spec §8 defect 3: a 2-D resize of the frame, never of
    time); unchanged when size is 0 or already right."""
    if not size or x.dim() != 4 or tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------ windows
def window_starts(t: int, frames: int, n: int) -> list[int]:
    """`n` uniformly spaced starts of `frames`-frame windows in a T-frame clip (first and last
    window included); one window (the centre) when n == 1."""
    if frames >= t:
        return [0]
    if n <= 1:
        return [(t - frames) // 2]
    return sorted({round(i * (t - frames) / (n - 1)) for i in range(n)})


def random_window(x: torch.Tensor, frames: int) -> torch.Tensor:
    """A random `frames`-frame window per sample of video [B,C,T,H,W] (whole clip if frames = 0)."""
    t = x.shape[2]
    if frames <= 0 or frames >= t:
        return x
    starts = torch.randint(t - frames + 1, (x.shape[0],), device=x.device)
    idx = starts[:, None] + torch.arange(frames, device=x.device)  # [B, frames]
    return x.gather(2, idx[:, None, :, None, None].expand(-1, x.shape[1], -1, x.shape[3], x.shape[4]))


def windowed(x: torch.Tensor, frames: int, n: int) -> torch.Tensor:
    """[B,C,T,H,W] -> [B·W, C, frames, H, W]: W uniform windows per clip (sample-major)."""
    if frames <= 0 or frames >= x.shape[2]:
        return x
    starts = window_starts(x.shape[2], frames, n)
    w = torch.stack([x[:, :, s : s + frames] for s in starts], 1)  # [B, W, C, f, H, W]
    return w.flatten(0, 1)


# --------------------------------------------------------------------------------- evaluation
def video_level_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """logits [N, W, C] of W windows per video: clip-level accuracy (every window counted) and
    video-level accuracy (CCL §6: mean of the per-window softmaxes, argmax), in %."""
    from xmodal.eval.metrics import mean_class_accuracy

    n, w, c = logits.shape
    clip = (logits.argmax(-1) == labels[:, None]).double().mean().item() * 100.0
    video = logits.float().softmax(-1).mean(1)
    return {
        "acc": (video.argmax(-1) == labels).double().mean().item() * 100.0,
        "clip_acc": clip,
        "mean_class_acc": mean_class_accuracy(video, labels),
        "windows": float(w),
    }


@torch.no_grad()
def video_retrieval(method, query, gallery, *, batch_size: int = 256, ks=(1, 5, 10, 20)) -> dict[str, float]:
    """CCL §6 retrieval: window-averaged student features, cosine, test videos as queries and
    training videos as gallery; R@k = % of queries with a same-class item in the top k."""
    from xmodal.engine.evaluate import collect_outputs
    from xmodal.eval.metrics import retrieval_metrics

    q = collect_outputs(method, query, batch_size=batch_size, progress_bar=False)
    g = collect_outputs(method, gallery, batch_size=batch_size, progress_bar=False)
    ks = [k for k in ks if k <= len(g["label"])]
    m = retrieval_metrics(q["feature"], g["feature"], query_labels=q["label"], gallery_labels=g["label"], ks=ks)
    return {f"retrieval_{k}": v for k, v in m.items()}


class WindowedStudent:
    """Mixin: a video student evaluated over uniform windows (needs `self.student`, `self.cfg`
    with input_key / clip_frames / eval_windows / label_key)."""

    def student_out(self, x: torch.Tensor):
        return self.student(x)

    def eval_step(self, batch: dict) -> dict:
        x = batch[self.cfg.input_key]
        n = x.shape[0]
        xw = windowed(x, self.cfg.clip_frames, self.cfg.eval_windows) if x.dim() == 5 else x
        out = self.student_out(xw)
        w = xw.shape[0] // n
        res = {
            "logits": out.logits.float().reshape(n, w, -1),
            "feature": F.normalize(out.feature.float().reshape(n, w, -1), dim=-1).mean(1),
            "label": batch[self.cfg.label_key],
        }
        if "group" in batch:  # a store's eval items are windows of a video: pooled in eval_metrics
            res["group"] = [str(g) for g in batch["group"]]
        return res

    def predict(self, batch: dict) -> torch.Tensor:
        return self.eval_step(batch)["logits"].softmax(-1).mean(1)

    def embed(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"video": self.eval_step(batch)["feature"]}

    def eval_metrics(self, outputs: dict) -> dict[str, float]:
        logits, label = outputs["logits"], outputs["label"]
        if "group" not in outputs:
            return video_level_metrics(logits, label)
        # windows of one video arrive as separate items (store data, `clip.window_mode: cover`)
        from xmodal.eval.aggregate import aggregate_outputs
        from xmodal.eval.metrics import mean_class_accuracy

        items = logits.float().softmax(-1).mean(1)  # [N, C] per item
        v = aggregate_outputs(outputs["group"], items.log(), label, how="mean_softmax")
        return {"acc": (v.scores.argmax(1) == v.labels).double().mean().item() * 100.0,
                "clip_acc": (logits.argmax(-1) == label[:, None]).double().mean().item() * 100.0,
                "mean_class_acc": mean_class_accuracy(v.scores, v.labels), "videos": float(len(v.groups))}
