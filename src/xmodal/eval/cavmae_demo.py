"""The embedded CAV-MAE chain in one Python call: pretrain -> retrieval -> finetune (-> from scratch)
-> inpainting, on avdigits (no downloads). The same runs as these commands (docs/cavmae.md):

    xmodal train recipes/cavmae/avdigits-pretrain.yaml --out OUT/pretrain
    xmodal cavmae retrieval OUT/pretrain
    xmodal train recipes/cavmae/avdigits-finetune.yaml --out OUT/finetune --set method.init_from=OUT/pretrain
    xmodal train recipes/cavmae/avdigits-finetune-scratch.yaml --out OUT/scratch
    xmodal cavmae inpaint OUT/pretrain --out OUT/inpaint

Here each dataset is generated once and shared (pretraining and retrieval; finetuning and the
from-scratch baseline), and the untrained model is scored first (`before`) so the effect of
pretraining is visible in one result.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECIPES = Path(__file__).resolve().parents[3] / "recipes" / "cavmae"
QUIET = ("train.progress=false", "train.tensorboard=false")


@dataclass
class AvdigitsChain:
    before: dict[str, float]  # test metrics of the untrained pretraining model (same seed, same clips)
    pretrain: dict[str, float]  # test metrics after pretraining (losses, c_acc, retrieval)
    retrieval: dict[str, float]  # `xmodal cavmae retrieval` on the test clips
    finetune: dict[str, float]  # test metrics, finetuned from the pretrained run
    scratch: dict[str, float] | None  # the same recipe and steps from random weights
    inpaint: dict[str, Any] | None  # inpaint.json summary (PNG names under out/inpaint)
    runs: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def run_avdigits_chain(
    out_dir: str | Path,
    *,
    recipes: str | Path = RECIPES,
    pretrain_overrides: Sequence[str] = (),
    finetune_overrides: Sequence[str] = (),
    scratch: bool = True,
    inpaint: int = 4,
    quiet: bool = True,
) -> AvdigitsChain:
    """Run the chain under `out_dir` (pretrain/, finetune/, scratch/, inpaint/); returns its metrics.

    ``*_overrides`` are recipe ``--set`` values (e.g. ``train.max_steps=100``); ``inpaint`` is the
    number of test clips drawn (0: none).
    """
    import torch

    from xmodal.config import load_config
    from xmodal.engine.evaluate import evaluate
    from xmodal.engine.trainer import build_method, seed_everything, train
    from xmodal.eval.cavmae import collect_retrieval
    from xmodal.registry import DATASETS
    from xmodal.report.inpaint import write_inpainting

    out, recipes = Path(out_dir), Path(recipes)
    base = list(QUIET) if quiet else []
    clock: dict[str, float] = {}
    t = time.time()

    cfg = load_config(recipes / "avdigits-pretrain.yaml", base + list(pretrain_overrides))
    data = DATASETS.build(cfg.data)
    seed_everything(cfg.train.seed)
    _, fresh = build_method(cfg, data)
    before = evaluate(fresh, data.test, batch_size=cfg.train.batch_size, progress_bar=not quiet)
    clock["data+before"], t = time.time() - t, time.time()
    pre = train(cfg, out_dir=out / "pretrain", data=data)
    clock["pretrain"], t = time.time() - t, time.time()
    pre.method.eval()
    retrieval = collect_retrieval(pre.method, data.test, batch_size=cfg.train.batch_size, collate=data.collate,
                                  progress_bar=not quiet)
    summary = None
    if inpaint:
        with torch.no_grad():
            summary = write_inpainting(pre.method, data.test, out / "inpaint", n=inpaint, collate=data.collate)
    clock["retrieval+inpaint"], t = time.time() - t, time.time()

    runs = {"pretrain": pre.out_dir}
    ft_cfg = load_config(recipes / "avdigits-finetune.yaml", base + [f"method.init_from={pre.out_dir}"] + list(finetune_overrides))
    ft_data = DATASETS.build(ft_cfg.data)
    ft = train(ft_cfg, out_dir=out / "finetune", data=ft_data)
    runs["finetune"] = ft.out_dir
    clock["finetune"], t = time.time() - t, time.time()
    scratch_metrics = None
    if scratch:
        sc_cfg = load_config(recipes / "avdigits-finetune-scratch.yaml", base + list(finetune_overrides))
        sc = train(sc_cfg, out_dir=out / "scratch", data=ft_data)
        scratch_metrics, runs["scratch"] = sc.metrics["test"], sc.out_dir
        clock["scratch"] = time.time() - t
    return AvdigitsChain(before, pre.metrics["test"], retrieval, ft.metrics["test"], scratch_metrics, summary, runs, clock)


__all__ = ["AvdigitsChain", "RECIPES", "run_avdigits_chain"]
