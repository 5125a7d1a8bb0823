"""Full fine-tuning protocol of GDT/STiCA (specs/gdt-stica.md §6), usable on any video trunk.

Model: the pretrained trunk (``method.video_encoder()``: GDT's R(2+1)D, STiCA's trunk + pooling)
+ ``LinearClassifier`` (orthogonal init, zero bias). SGD momentum 0.9, wd 0.005, batch 32,
head lr 0.0025 and trunk lr 0.00025; per-epoch schedule: warm-up multiplier 8 over 2 epochs
(factor 1 + 7·e/2 at epoch e < 2, then 8), × 0.05 at epochs 6 and 10, 12 epochs.

Train: each epoch draws ``train_clips`` (10) random clips of ``clip_frames`` (32) frames per video;
RandomResizedCrop ``crop`` (128, scale (0.14, 1)), h-flip, colour jitter with p 0.8 (brightness,
contrast, saturation 0.4, random order, same on every frame), normalise 0.45/0.225.
Test (deterministic, §8.8): ``test_clips`` (10) uniformly spaced clips, start_k = floor(k (n − L) /
10), × ``test_crops`` (3) crops of ``crop`` px (left/centre/right along the long side) after
resizing the short side to ``crop``; video score = mean of the 30 views' logits. Reports video
top-1/top-5 and per-view (clip) top-1 of the last epoch (§6: the reference picks the best epoch on
test; we do not). Folds are averaged when a recipe names several.

Data: datasets whose items hold a whole video (or a long clip) ``video`` [C, N, H, W] float in
[0, 1] (or [N, H, W, 3] uint8) and a single ``label``; videos shorter than a clip loop.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from xmodal.config import registered
from xmodal.errors import ConfigError, DataError
from xmodal.eval.aggregate import aggregate_scores
from xmodal.eval.metrics import topk_accuracy
from xmodal.models.heads import LinearClassifier


@dataclass
class FinetuneConfig:
    epochs: int = 12
    batch_size: int = 32
    head_lr: float = 0.0025
    trunk_lr: float = 0.00025
    momentum: float = 0.9
    weight_decay: float = 0.005
    warmup_epochs: int = 2
    warmup_multiplier: float = 8.0
    milestones: tuple[int, ...] = (6, 10)
    gamma: float = 0.05
    clip_frames: int = 32
    train_clips: int = 10
    test_clips: int = 10
    test_crops: int = 3
    crop: int = 128
    scale: tuple[float, float] = (0.14, 1.0)
    jitter: float = 0.4
    jitter_p: float = 0.8
    mean: float = 0.45
    std: float = 0.225
    freeze_trunk: bool = False  # True: linear probe through the same pipeline (reference feature-extract)
    seed: int = 0
    num_workers: int = 0

    def validate(self) -> None:
        if min(self.epochs, self.batch_size, self.clip_frames, self.train_clips, self.test_clips, self.crop) < 1:
            raise ValueError("epochs, batch_size, clip_frames, train_clips, test_clips and crop must be >= 1")
        if self.test_crops not in (1, 3):
            raise ValueError(f"test_crops must be 1 (centre) or 3 (left/centre/right), got {self.test_crops}")


def finetune_lr_factor(epoch: int, cfg: FinetuneConfig) -> float:
    """Multiplier of the listed lrs at (0-based) `epoch`: linear warm-up 1 → multiplier over
    ``warmup_epochs``, then the multiplier × gamma per milestone reached."""
    if epoch < cfg.warmup_epochs:
        return 1.0 + (cfg.warmup_multiplier - 1.0) * epoch / cfg.warmup_epochs
    return cfg.warmup_multiplier * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)


# ------------------------------------------------------------------------------- clip ops
def as_cthw(video: Any) -> Tensor:
    """[C, N, H, W] float in [0, 1] from that layout or decoded [N, H, W, 3] uint8 frames."""
    x = torch.as_tensor(video)
    if x.dim() != 4:
        raise DataError(f"finetune: expected a video [C, N, H, W] or [N, H, W, 3], got shape {tuple(x.shape)}")
    if x.shape[-1] == 3 and x.shape[0] != 3:
        x = x.permute(3, 0, 1, 2)
    return x.float().div(255) if x.dtype == torch.uint8 else x.float()


def clip_at(video: Tensor, start: int, length: int) -> Tensor:
    """Frames start..start+length−1, looping over the video when it is shorter."""
    return video[:, (start + torch.arange(length)) % video.shape[1]]


def uniform_starts(n: int, length: int, count: int) -> list[int]:
    return [k * max(n - length, 0) // count for k in range(count)]


def resized_crop_box(h: int, w: int, scale: tuple[float, float], gen: torch.Generator) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (y, x, bh, bw): area ~ U(scale)·HW, log-ratio ~ U(log 3/4, log 4/3),
    10 attempts, then the centre crop of the clamped ratio (torchvision's rule)."""
    u = torch.rand(10, 4, generator=gen).tolist()
    for ua, ur, uy, ux in u:
        area = h * w * (scale[0] + (scale[1] - scale[0]) * ua)
        ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * ur)
        bw, bh = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < bw <= w and 0 < bh <= h:
            return int(uy * (h - bh + 1)), int(ux * (w - bw + 1)), bh, bw
    ratio = min(max(w / h, 3 / 4), 4 / 3)
    bw, bh = (w, round(w / ratio)) if w / h < ratio else (round(h * ratio), h)
    return (h - bh) // 2, (w - bw) // 2, bh, bw


def _gray(x: Tensor) -> Tensor:  # [C, T, H, W] -> [1, T, H, W]
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)


def colour_jitter(x: Tensor, amount: float, gen: torch.Generator) -> Tensor:
    """Brightness, contrast, saturation factors ~ U(1 − a, 1 + a) in random order, one set per
    clip, applied to the RGB channels of every frame (not across frames: §8.4)."""
    f = (1 + amount * (2 * torch.rand(3, generator=gen) - 1)).tolist()
    for op in torch.randperm(3, generator=gen).tolist():
        if op == 0:
            x = x * f[0]
        elif op == 1:
            x = _gray(x).mean(dim=(2, 3), keepdim=True) * (1 - f[1]) + x * f[1]
        else:
            x = _gray(x) * (1 - f[2]) + x * f[2]
        x = x.clamp(0, 1)
    return x


class TrainClips(Dataset):
    """``clips`` random augmented clips per video for one epoch (reproducible per seed, epoch, index)."""

    def __init__(self, base: Dataset, cfg: FinetuneConfig, epoch: int):
        self.base, self.cfg, self.epoch = base, cfg, epoch

    def __len__(self) -> int:
        return len(self.base) * self.cfg.train_clips

    def __getitem__(self, i: int) -> dict:
        c = self.cfg
        item = self.base[i // c.train_clips]
        gen = torch.Generator().manual_seed((c.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
        video = as_cthw(item["video"])
        n, h, w = video.shape[1:]
        start = int(torch.randint(0, max(n - c.clip_frames, 0) + 1, (), generator=gen))
        y, x, bh, bw = resized_crop_box(h, w, c.scale, gen)
        clip = clip_at(video, start, c.clip_frames)[:, :, y : y + bh, x : x + bw]
        clip = F.interpolate(clip, size=(c.crop, c.crop), mode="bilinear", align_corners=False)
        if torch.rand((), generator=gen) < 0.5:
            clip = clip.flip(-1)
        if c.jitter > 0 and torch.rand((), generator=gen) < c.jitter_p:
            clip = colour_jitter(clip, c.jitter, gen)
        return {"video": (clip - c.mean) / c.std, "label": torch.as_tensor(item["label"])}


class TestViews(Dataset):
    """Item (video v, clip k): [test_crops, C, L, S, S] views of the k-th uniformly spaced clip."""

    def __init__(self, base: Dataset, cfg: FinetuneConfig):
        self.base, self.cfg = base, cfg

    def __len__(self) -> int:
        return len(self.base) * self.cfg.test_clips

    def __getitem__(self, i: int) -> dict:
        c = self.cfg
        v, k = divmod(i, c.test_clips)
        item = self.base[v]
        video = as_cthw(item["video"])
        n, h, w = video.shape[1:]
        clip = clip_at(video, uniform_starts(n, c.clip_frames, c.test_clips)[k], c.clip_frames)
        if min(h, w) != c.crop:
            size = (c.crop, round(w * c.crop / h)) if h <= w else (round(h * c.crop / w), c.crop)
            clip = F.interpolate(clip, size=size, mode="bilinear", align_corners=False)
        h, w = clip.shape[-2:]
        spots = [(h - c.crop) // 2] if c.test_crops == 1 else [0, (h - c.crop) // 2, h - c.crop]
        along_w = w > h
        if along_w:
            spots = [(w - c.crop) // 2] if c.test_crops == 1 else [0, (w - c.crop) // 2, w - c.crop]
        views = []
        for s in spots:
            y, x = ((h - c.crop) // 2, s) if along_w else (s, (w - c.crop) // 2)
            views.append(clip[:, :, y : y + c.crop, x : x + c.crop])
        return {"video": (torch.stack(views) - c.mean) / c.std, "label": torch.as_tensor(item["label"]), "uid": str(v)}


# ------------------------------------------------------------------------------- protocol
class FinetuneResult(NamedTuple):
    video_top1: float
    video_top5: float | None
    clip_top1: float
    train_loss: list[float]  # mean per epoch

    def metrics(self) -> dict[str, float]:
        out = {"video_top1": self.video_top1, "clip_top1": self.clip_top1}
        if self.video_top5 is not None:
            out["video_top5"] = self.video_top5
        return out


class Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = LinearClassifier(encoder.feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


def finetune(encoder: nn.Module, train: Dataset, test: Dataset, num_classes: int, cfg: FinetuneConfig,
             device: torch.device | str = "cpu") -> FinetuneResult:
    """Fine-tune a copy of `encoder` (video -> [B, D], with ``feature_dim``) and test it (§6)."""
    torch.manual_seed(cfg.seed)
    model = Classifier(copy.deepcopy(encoder), num_classes).to(device)
    trunk = [] if cfg.freeze_trunk else [p for p in model.encoder.parameters() if p.requires_grad]
    model.encoder.requires_grad_(not cfg.freeze_trunk)
    groups = [{"params": list(model.head.parameters()), "lr": cfg.head_lr, "base": cfg.head_lr}]
    if trunk:
        groups.append({"params": trunk, "lr": cfg.trunk_lr, "base": cfg.trunk_lr})
    opt = torch.optim.SGD(groups, lr=cfg.head_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    losses = []
    for epoch in range(cfg.epochs):
        for g in opt.param_groups:
            g["lr"] = g["base"] * finetune_lr_factor(epoch, cfg)
        model.train()
        if cfg.freeze_trunk:
            model.encoder.eval()
        order = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        loader = DataLoader(TrainClips(train, cfg, epoch), batch_size=cfg.batch_size, shuffle=True,
                            generator=order, num_workers=cfg.num_workers)
        total, count = 0.0, 0
        for batch in loader:
            x, y = batch["video"].to(device), batch["label"].to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + float(loss) * len(y), count + len(y)
        losses.append(total / max(count, 1))
    return _test(model, test, num_classes, cfg, device, losses)


@torch.no_grad()
def _test(model: nn.Module, test: Dataset, num_classes: int, cfg: FinetuneConfig, device, losses) -> FinetuneResult:
    model.eval()
    loader = DataLoader(TestViews(test, cfg), batch_size=max(1, cfg.batch_size // cfg.test_crops),
                        num_workers=cfg.num_workers)
    logits, labels, groups = [], [], []
    for batch in loader:
        x = batch["video"].to(device)  # [B, V, C, L, S, S]
        b, v = x.shape[:2]
        logits.append(model(x.flatten(0, 1)).float().cpu())
        labels.append(batch["label"].repeat_interleave(v))
        groups += [g for g in batch["uid"] for _ in range(v)]
    logits, labels = torch.cat(logits), torch.cat(labels)
    video = aggregate_scores(groups, logits, "mean_logits")
    first = {g: i for i, g in reversed(list(enumerate(groups)))}
    video_labels = labels[torch.tensor([first[g] for g in video.groups])]
    acc = topk_accuracy(video.scores, video_labels, ks=(1, 5))
    clip = topk_accuracy(logits, labels, ks=(1,))
    return FinetuneResult(acc["top1"], acc["top5"] if num_classes > 5 else None, clip["top1"], losses)


@dataclass
class FinetuneRecipe:
    """``recipes/eval/*.yaml``: the downstream data, the protocol settings and the folds."""

    data: Any = registered("datasets")
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    folds: list[int] = field(default_factory=list)  # e.g. [1, 2, 3]; empty = the data as given
    fold_key: str = "fold"  # data config field that selects the fold
    train_split: str = "train"
    test_split: str = "test"


@dataclass
class FinetuneOptions(FinetuneConfig):
    recipe: str = ""  # recipes/eval/<name>.yaml; "" = the run's own data
    train_split: str = "train"
    test_split: str = ""


def finetune_from_run(args, run) -> dict[str, float]:
    """`xmodal eval finetune RUN [--opt recipe=...] [--opt epochs=...]`."""
    from xmodal.config import load_config
    from xmodal.eval.ssl import protocol_options, split_of
    from xmodal.registry import DATASETS

    opts = protocol_options(args, FinetuneOptions)
    if not hasattr(run.method, "video_encoder"):
        raise ConfigError(f"finetune: {type(run.method).__name__} exposes no video trunk (video_encoder())")
    encoder = run.method.video_encoder()
    device = next((p.device for p in run.method.parameters()), torch.device("cpu"))
    own = {f.name: getattr(opts, f.name) for f in dataclasses.fields(FinetuneConfig)}
    if not opts.recipe:
        cfg = FinetuneConfig(**own)
        test = split_of(run, opts.test_split or getattr(args, "split", "test"))
        res = finetune(encoder, split_of(run, opts.train_split), test, run.data.info.num_classes, cfg, device)
        return {**res.metrics(), "final_train_loss": res.train_loss[-1]}
    recipe = load_config(opts.recipe, [], cls=FinetuneRecipe)
    given = {k for k in (getattr(args, "options", None) or []) if "=" in k}
    changed = {k.split("=", 1)[0].strip() for k in given} & set(own)
    cfg = dataclasses.replace(recipe.finetune, **{k: own[k] for k in changed})
    folds = recipe.folds or [None]
    per_fold = []
    for fold in folds:
        data_cfg = recipe.data if fold is None else dataclasses.replace(recipe.data, **{recipe.fold_key: fold})
        data = DATASETS.build(data_cfg)
        train, test = data.split(recipe.train_split), data.split(recipe.test_split)
        if train is None or test is None:
            raise ConfigError(f"{opts.recipe}: data has no '{recipe.train_split}' or '{recipe.test_split}' split")
        per_fold.append(finetune(encoder, train, test, data.info.num_classes, cfg, device).metrics())
    out = {k: sum(m[k] for m in per_fold) / len(per_fold) for k in per_fold[0]}
    if len(per_fold) > 1:
        out.update({f"fold{f}_{k}": v for f, m in zip(folds, per_fold) for k, v in m.items()})
    return out
