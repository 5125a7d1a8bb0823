"""Full fine-tuning protocol of GDT/STiCA (specs/gdt-stica.md §6), usable on any video trunk.

Model: the pretrained trunk (``method.video_encoder()``: GDT's R(2+1)D, STiCA's trunk + pooling)
+ ``LinearClassifier`` (orthogonal init, zero bias). SGD momentum 0.9, wd 0.005, batch 32,
head lr 0.0025 and trunk lr 0.00025; per-epoch schedule: warm-up multiplier 8 over 2 epochs
(factor 1 + 7·e/2 at epoch e < 2, then 8), × 0.05 at epochs 6 and 10, 12 epochs.
``freeze_trunk`` trains only the linear layer through the same pipeline (the reference's
"feature-extract" linear evaluation).

Train: ``train_clips`` (10) random clips of ``clip_frames`` (32) frames per video and epoch with
the ``gdt_finetune`` transform (RandomResizedCrop 128, scale (0.14, 1), h-flip, colour jitter
p 0.8 of 0.4). Test (deterministic, §8.8): ``test_clips`` (10) uniformly spaced clips, start_k =
floor(k (n − L) / 10), × the ``gdt_test`` three crops (short side 128; left/centre/right); video
score = mean of the 30 views' logits. Reports video top-1/top-5 and single-view (clip) top-1 of
the last epoch (§6, §8.9: the reference picks the best epoch on test; we do not). Folds named by
a recipe are averaged.

Two data sources: the ``store`` source already yields augmented train clips (``video_train:
gdt_finetune``, one per video per epoch: it is iterated ``train_clips`` times with fresh epoch
seeds) and grouped eval views (``video_eval: gdt_test``, ``clip.windows: 10``, items with
"group"); in-memory sources (avdigits) yield whole videos ``video`` [C, N, H, W] in [0, 1] and
this module cuts and transforms the clips itself with the same transforms.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from xmodal.config import registered
from xmodal.data import transforms as T
from xmodal.errors import ConfigError, DataError
from xmodal.eval.aggregate import aggregate_outputs
from xmodal.eval.metrics import topk_accuracy
from xmodal.methods._clipviews import grayscale
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
    grayscale: float = 0.0  # train: probability per clip; 1.0 also greys the test views (grey-pretrained models)
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


# ------------------------------------------------------------------------------- clip sources
def as_frames(video: Any) -> Tensor:
    """[N, H, W, 3] frames (what the clip transforms read) from [C, N, H, W] float in [0, 1]
    (in-memory sources such as avdigits) or [N, H, W, 3] uint8/float."""
    x = torch.as_tensor(video)
    if x.dim() != 4 or 3 not in (x.shape[0], x.shape[-1]):
        raise DataError(f"finetune: expected a video [C, N, H, W] or [N, H, W, 3], got shape {tuple(x.shape)}")
    return x if x.shape[-1] == 3 else x.permute(1, 2, 3, 0)


class TrainClips(Dataset):
    """``train_clips`` random clips per whole video for one epoch: `transforms.train_window` +
    the ``gdt_finetune`` preset, reproducible per (seed, epoch, index)."""

    def __init__(self, base: Dataset, cfg: FinetuneConfig, epoch: int):
        self.base, self.cfg, self.epoch = base, cfg, epoch
        self.transform = T.clip_preset("gdt_finetune", size=cfg.crop, scale=tuple(cfg.scale), jitter=cfg.jitter_p,
                                       brightness=cfg.jitter, contrast=cfg.jitter, saturation=cfg.jitter,
                                       grayscale=cfg.grayscale, mean=(cfg.mean,) * 3, std=(cfg.std,) * 3)  # fmt: skip

    def __len__(self) -> int:
        return len(self.base) * self.cfg.train_clips

    def __getitem__(self, i: int) -> dict:
        item = self.base[i // self.cfg.train_clips]
        gen = T.sample_generator(self.cfg.seed, self.epoch, i)
        frames = as_frames(item["video"])
        win = T.train_window(frames.shape[0], self.cfg.clip_frames, gen=gen)
        return {"video": self.transform(frames[win.indices()], gen), "label": torch.as_tensor(item["label"])}


class EvalViews(Dataset):
    """Item (video v, clip k): the ``gdt_test`` views [3, 3, L, S, S] (left/centre/right) of the
    k-th of ``test_clips`` uniformly spaced windows ("spread": start_k = floor(k (n − L) / count))."""

    def __init__(self, base: Dataset, cfg: FinetuneConfig):
        self.base, self.cfg = base, cfg
        crop = "three" if cfg.test_crops == 3 else "center"
        self.transform = T.clip_preset("gdt_test", size=cfg.crop, resize=cfg.crop, crop=crop,
                                       mean=(cfg.mean,) * 3, std=(cfg.std,) * 3)  # fmt: skip

    def __len__(self) -> int:
        return len(self.base) * self.cfg.test_clips

    def __getitem__(self, i: int) -> dict:
        v, k = divmod(i, self.cfg.test_clips)
        item = self.base[v]
        frames = as_frames(item["video"])
        win = T.uniform_windows(frames.shape[0], self.cfg.clip_frames, count=self.cfg.test_clips)[k]
        views = self.transform.views(frames[win.indices()])  # [V, 3, L, S, S]
        if self.cfg.grayscale >= 1:  # luma commutes with the channel-independent normalisation
            views = grayscale(views, 1.0)
        return {"video": views, "label": torch.as_tensor(item["label"]), "group": str(v)}


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


def clip_source(test: Dataset) -> str:
    """"dataset" when the data already yields augmented train clips and grouped eval views (the
    ``store`` source: items carry "group"), else "sample" (whole videos: the protocol cuts clips)."""
    item = test[0]
    return "dataset" if isinstance(item, dict) and "group" in item else "sample"


def _train_loaders(train: Dataset, cfg: FinetuneConfig, epoch: int, source: str):
    """`train_clips` random clips per video for this epoch."""
    from xmodal.data.bundle import collate

    kw = dict(batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers, collate_fn=collate)
    if source == "sample":
        order = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        yield DataLoader(TrainClips(train, cfg, epoch), generator=order, **kw)
        return
    for r in range(cfg.train_clips):  # the dataset draws a fresh clip per video for each sub-epoch
        if hasattr(train, "set_epoch"):
            train.set_epoch(epoch * cfg.train_clips + r)
        yield DataLoader(train, generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch * cfg.train_clips + r), **kw)


def finetune(encoder: nn.Module, train: Dataset, test: Dataset, num_classes: int, cfg: FinetuneConfig,
             device: torch.device | str = "cpu", source: str = "auto") -> FinetuneResult:
    """Fine-tune a copy of `encoder` (video -> [B, D], with ``feature_dim``) and test it (§6).

    `source`: "sample" (whole videos; this module cuts and augments clips), "dataset" (the data
    yields train clips and eval views with "group"), or "auto" (`clip_source`)."""
    source = clip_source(test) if source == "auto" else source
    if source not in ("sample", "dataset"):
        raise ConfigError(f"finetune source: expected auto, sample or dataset, found '{source}'")
    torch.manual_seed(cfg.seed)
    model = Classifier(copy.deepcopy(encoder), num_classes).to(device)
    model.encoder.requires_grad_(not cfg.freeze_trunk)
    groups = [{"params": list(model.head.parameters()), "base": cfg.head_lr}]
    if not cfg.freeze_trunk:
        groups.append({"params": list(model.encoder.parameters()), "base": cfg.trunk_lr})
    opt = torch.optim.SGD(groups, lr=cfg.head_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    losses = []
    for epoch in range(cfg.epochs):
        for g in opt.param_groups:
            g["lr"] = g["base"] * finetune_lr_factor(epoch, cfg)
        model.train()
        if cfg.freeze_trunk:
            model.encoder.eval()
        total, count = 0.0, 0
        for loader in _train_loaders(train, cfg, epoch, source):
            for batch in loader:
                x, y = batch["video"].to(device), torch.as_tensor(batch["label"]).to(device)
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, count = total + float(loss.detach()) * len(y), count + len(y)
        losses.append(total / max(count, 1))
    return _test(model, test if source == "dataset" else EvalViews(test, cfg), num_classes, cfg, device, losses)


@torch.no_grad()
def _test(model: nn.Module, views: Dataset, num_classes: int, cfg: FinetuneConfig, device, losses) -> FinetuneResult:
    """Video score = mean of the logits of all views of its group; clip top-1 over single views."""
    from xmodal.data.bundle import collate

    model.eval()
    loader = DataLoader(views, batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=collate)
    logits, labels, groups = [], [], []
    for batch in loader:
        x = batch["video"].to(device)
        v = x.shape[1] if x.dim() == 6 else 1  # [B, V, C, L, S, S] or one view per item
        logits.append(model(x.flatten(0, 1) if v > 1 or x.dim() == 6 else x).float().cpu())
        labels.append(torch.as_tensor(batch["label"]).repeat_interleave(v))
        groups += [str(g) for g in batch["group"] for _ in range(v)]
    logits, labels = torch.cat(logits), torch.cat(labels)
    video = aggregate_outputs(groups, logits, labels, "mean_logits")
    acc = topk_accuracy(video.scores, video.labels, ks=(1, 5))
    clip = topk_accuracy(logits, labels, ks=(1,))
    return FinetuneResult(acc["top1"], acc["top5"] if num_classes > 5 else None, clip["top1"], losses)


@dataclass
class FinetuneRecipe:
    """``recipes/eval/*.yaml``: the downstream data, the protocol settings and the folds."""

    data: Any = registered("datasets")
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # one mapping of data-config overrides per fold, e.g. [{root: data/ucf101-1-store}, ...]
    # (the importers write one store per official fold); empty = the data as given
    folds: list[dict[str, Any]] = field(default_factory=list)
    train_split: str = "train"
    test_split: str = "test"


@dataclass
class FinetuneOptions(FinetuneConfig):
    recipe: str = ""  # recipes/eval/<name>.yaml; "" = the run's own data
    train_split: str = "train"
    test_split: str = ""


def finetune_from_run(args, run) -> dict[str, float]:
    """`xmodal eval finetune RUN [--opt recipe=...] [--opt epochs=...]`."""
    from xmodal.config import from_dict, load_config, to_dict
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
    folds = recipe.folds or [{}]
    per_fold = []
    for i, fold in enumerate(folds):
        data_cfg = from_dict(type(recipe.data), {**to_dict(recipe.data), **fold}, ("folds", str(i)))
        data = DATASETS.build(data_cfg)
        train, test = data.split(recipe.train_split), data.split(recipe.test_split)
        if train is None or test is None:
            raise ConfigError(f"{opts.recipe}: data has no '{recipe.train_split}' or '{recipe.test_split}' split")
        per_fold.append(finetune(encoder, train, test, data.info.num_classes, cfg, device).metrics())
    out = {k: sum(m[k] for m in per_fold) / len(per_fold) for k in per_fold[0]}
    if len(per_fold) > 1:
        out.update({f"fold{i + 1}_{k}": v for i, m in enumerate(per_fold) for k, v in m.items()})
    return out
