"""The training loop every method runs in.

Steps, grad accumulation, optional bf16 autocast (CUDA), clipping, schedules, deterministic
seeding, periodic atomic checkpoints with exact mid-epoch resume, SIGTERM/SIGUSR1 → checkpoint and
clean exit, JSONL/TensorBoard metrics and a progress bar. Only rank 0 writes files.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from xmodal.config import RunConfig, dump_yaml, to_dict
from xmodal.data.bundle import collate
from xmodal.engine import dist
from xmodal.engine.checkpoint import (
    CheckpointManager,
    load_state_file,
    rng_state,
    save_safetensors_atomic,
    set_rng_state,
)
from xmodal.engine.evaluate import autocast_ctx, evaluate, to_device
from xmodal.engine.loader import training_loader
from xmodal.engine.logging import MetricLogger, progress
from xmodal.engine.optim import Schedule, build_optimizer
from xmodal.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def configure_cpu(threads: int = 0) -> None:
    # Denormal floats made a run whose loss approaches 0 take >10x longer on this CPU.
    torch.set_flush_denormal(True)
    if threads > 0:
        torch.set_num_threads(threads)


@dataclass
class TrainResult:
    out_dir: Path
    status: str  # "finished" | "interrupted"
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)
    method: Any = None


class _StopFlag:
    """Set by SIGTERM/SIGUSR1 (SLURM pre-emption); checked at optimiser-step boundaries."""

    def __init__(self):
        self.raised = False
        self._old: dict = {}

    def __enter__(self):
        if hasattr(signal, "SIGUSR1"):
            try:
                for sig in (signal.SIGTERM, signal.SIGUSR1):
                    self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no signal handling
                self._old = {}
        return self

    def _handle(self, signum, frame):  # noqa: ARG002
        self.raised = True

    def __exit__(self, *exc):
        for sig, h in self._old.items():
            signal.signal(sig, h)


def build_method(cfg: RunConfig, data=None):
    """Data bundle + method from a run config (no training state)."""
    from xmodal.registry import DATASETS, METHODS

    data = data if data is not None else DATASETS.build(cfg.data)
    method = METHODS.build(cfg.method, info=data.info)
    return data, method


def train(cfg: RunConfig, *, out_dir: str | Path | None = None, resume: str | None = None, data=None) -> TrainResult:
    """Train `cfg` to completion (or until a stop signal) and evaluate; returns the metrics."""
    ctx = dist.init_distributed(cfg.train.device)
    configure_cpu(cfg.train.threads)
    out = Path(out_dir) if out_dir is not None else cfg.out_dir
    tc = cfg.train
    seed_everything(tc.seed, tc.deterministic)
    data, method = build_method(cfg, data)
    method.to(ctx.device)
    optimizer = build_optimizer(method.param_groups(cfg.optim), cfg.optim)

    weights = None
    if tc.sampler == "balanced":
        get = getattr(data.train, "sample_weights", None)
        if get is None:
            raise ConfigError(f"train.sampler: balanced sampling needs sample weights; data source '{cfg.data.name}' provides none")
        weights = get()
    sampler = dist.ResumableSampler(len(data.train), shuffle=True, seed=tc.seed, rank=ctx.rank, world_size=ctx.world_size,
                                    drop_last=tc.drop_last, weights=weights)
    batches_per_epoch = (sampler.per_rank // tc.batch_size) if tc.drop_last else -(-sampler.per_rank // tc.batch_size)
    steps_per_epoch = batches_per_epoch // tc.grad_accum
    if steps_per_epoch < 1:
        raise ConfigError(
            f"train.batch_size: {tc.batch_size} × grad_accum {tc.grad_accum} × {ctx.world_size} process(es) "
            f"exceeds the {len(data.train)} training samples"
        )
    total_steps = tc.max_steps if tc.max_steps > 0 else tc.epochs * steps_per_epoch
    epochs = -(-total_steps // steps_per_epoch)
    schedule = Schedule(optimizer, cfg.sched, steps_per_epoch, total_steps)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=tc.amp == "fp16")

    model = method
    if ctx.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            method, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None, broadcast_buffers=False
        )

    logger = MetricLogger(out, enabled=ctx.is_main, tensorboard=tc.tensorboard)
    ckpts = CheckpointManager(out / "checkpoints", keep=tc.keep_last)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, out / "config.yaml")

    step, epoch, position = 0, 0, 0
    window: dict = {"sums": {}, "n": 0}  # running means of the loss terms between two log rows
    if resume:
        found = _resolve_resume(resume, ckpts)
        if found is not None:
            path, state = found
            _check_same_run(state, cfg, path)
            method.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            scaler.load_state_dict(state["scaler"])
            rngs = state["rng"]
            set_rng_state(rngs[ctx.rank] if isinstance(rngs, list) and len(rngs) == ctx.world_size else rngs[0])
            step, epoch, position = state["step"], state["epoch"], state["position"]
            window = state.get("log_window", window)
            logger.truncate_after(step)
            if ctx.is_main:
                log.info("resumed from %s (epoch %d, step %d)", path, epoch, step)

    def save(ep: int, pos: int) -> None:
        rngs = dist.all_gather_object(rng_state())
        if ctx.is_main:
            state = {
                "model": method.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rngs,
                "epoch": ep,
                "step": step,
                "position": pos,
                "log_window": {"sums": {k: float(v) for k, v in window["sums"].items()}, "n": window["n"]},
                "world_size": ctx.world_size,
                "config": to_dict(cfg),
            }
            ckpts.save(state, step)
        dist.barrier()

    loader_kw = dict(
        batch_size=tc.batch_size,
        sampler=sampler,
        num_workers=tc.num_workers,
        collate_fn=data.collate or collate,
        pin_memory=ctx.device.type == "cuda",
        drop_last=tc.drop_last,
    )
    status = "finished"
    faults = _FaultInjection.from_env()
    eval_split = data.val if data.val is not None else data.test
    t0 = time.time()
    it = None  # one loader iterator for the whole run (engine/loader.py): workers start once
    with _StopFlag() as stop:
        while step < total_steps:
            sampler.set_epoch(epoch, position)
            if hasattr(data.train, "set_epoch"):
                data.train.set_epoch(epoch)
            method.on_epoch_start(epoch)
            model.train()
            micro = position // tc.batch_size
            remaining = steps_per_epoch * tc.grad_accum - micro
            bar = progress(total=steps_per_epoch, desc=f"{cfg.name} ep {epoch + 1}/{epochs}", enabled=ctx.is_main and tc.progress, initial=micro // tc.grad_accum)
            wait, busy = 0.0, 0.0
            if it is None:
                kw = {k: v for k, v in loader_kw.items() if k not in ("batch_size", "sampler", "drop_last")}
                it = iter(training_loader(data.train, sampler, batch_size=tc.batch_size, per_epoch=steps_per_epoch * tc.grad_accum,
                                          epoch=epoch, start=position, drop_last=tc.drop_last, **kw))  # fmt: skip
            else:
                # A loader per epoch drew one number from the global generator at every epoch (its
                # workers' base seed); drawing it here keeps every run's random stream as it was.
                torch.empty((), dtype=torch.int64).random_()
            for _ in range(remaining):
                tw = time.perf_counter()
                batch = next(it)
                tb = time.perf_counter()
                wait += tb - tw
                batch = to_device(batch, ctx.device, non_blocking=True)
                last_micro = (micro + 1) % tc.grad_accum == 0
                sync = last_micro or not ctx.distributed
                with (model.no_sync() if not sync else _null()):
                    with autocast_ctx(ctx.device, tc.amp):
                        out_ = model(batch)
                    method.backward(out_, scale=scaler.get_scale() / tc.grad_accum if scaler.is_enabled() else 1.0 / tc.grad_accum)
                sums = window["sums"]
                for k, v in {"loss": out_.total, **out_.terms}.items():
                    sums[k] = sums.get(k, 0.0) + (v.detach() if isinstance(v, torch.Tensor) else float(v))
                window["n"] += 1
                micro += 1
                position = micro * tc.batch_size
                if not last_micro:
                    busy += time.perf_counter() - tb
                    continue
                if scaler.is_enabled():
                    scaler.unscale_(optimizer)
                if tc.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], tc.clip_grad)
                scaler.step(optimizer) if scaler.is_enabled() else optimizer.step()
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
                step += 1
                busy += time.perf_counter() - tb
                bar.update(1)
                if step % tc.log_every == 0 or step == total_steps:
                    row = {k: float(v) / window["n"] for k, v in window["sums"].items()}
                    if not all(map(_finite, row.values())):  # checked here, not every step: no per-step sync
                        raise FloatingPointError(f"non-finite loss before step {step}: {row}")
                    row["lr"] = schedule.last_lr()
                    row["data_wait"] = wait / max(1e-9, wait + busy)
                    logger.log("train", step, row, epoch=epoch)
                    bar.set_postfix(loss=f"{row['loss']:.4f}")
                    window = {"sums": {}, "n": 0}
                    wait, busy = 0.0, 0.0
                end_of_epoch = micro >= steps_per_epoch * tc.grad_accum
                if step >= total_steps:
                    break
                if tc.ckpt_every_steps and step % tc.ckpt_every_steps == 0 and not end_of_epoch:
                    save(epoch, position)
                faults.after_step(step)
                if dist.all_reduce_flag(stop.raised):
                    save(epoch, position)
                    status = "interrupted"
                    break
            bar.close()
            if status == "interrupted":
                break
            finished_epoch = micro >= steps_per_epoch * tc.grad_accum
            if finished_epoch:
                epoch, position = epoch + 1, 0
                if tc.save_epoch_weights and ctx.is_main:
                    save_safetensors_atomic(method.state_dict(), out / "epochs" / f"epoch_{epoch:03d}.safetensors",
                                            {"name": cfg.name, "epoch": epoch, "step": step})
                if eval_split is not None and tc.eval_every and epoch % tc.eval_every == 0 and step < total_steps:
                    metrics = evaluate(method, eval_split, batch_size=tc.batch_size, collate=data.collate or collate, device=ctx.device, amp=tc.amp, num_workers=tc.num_workers, progress_bar=tc.progress)
                    logger.log("val" if data.val is not None else "test", step, metrics, epoch=epoch)
                if step < total_steps and tc.ckpt_every_epochs and epoch % tc.ckpt_every_epochs == 0:
                    save(epoch, position)
    del it  # stops the loader's workers
    result = TrainResult(out, status, step, method=method)
    if status == "interrupted":
        if ctx.is_main:
            log.info("stopped by signal at step %d; checkpoint written, resume with --resume auto", step)
        logger.close()
        return result
    train_seconds = round(time.time() - t0, 3)
    if tc.recompute_bn > 0:
        sampler.set_epoch(epoch, 0)
        recompute_batchnorm(model, DataLoader(data.train, **loader_kw), tc.recompute_bn, ctx.device, tc.amp)
    save(epoch, position)
    final: dict[str, Any] = {"steps": step, "train_seconds": train_seconds}
    for split in ("val", "test"):
        ds = data.split(split)
        if ds is not None:
            metrics = evaluate(method, ds, batch_size=tc.batch_size, collate=data.collate or collate, device=ctx.device, amp=tc.amp, num_workers=tc.num_workers, progress_bar=tc.progress)
            logger.log(split, step, metrics, epoch=epoch, final=True)
            final[split] = metrics
    if ctx.is_main:
        save_safetensors_atomic(method.state_dict(), out / "weights.safetensors", {"name": cfg.name, "step": step})
        tmp = out / ".final.json.tmp"
        tmp.write_text(json.dumps(final, indent=2))
        tmp.replace(out / "final.json")
    logger.close()
    result.metrics = final
    return result


@torch.no_grad()
def recompute_batchnorm(model: torch.nn.Module, loader, batches: int, device: torch.device, amp: str = "auto") -> int:
    """Reset every trainable BatchNorm's running statistics and re-estimate them as the exact
    average over `batches` training batches (train-mode forwards, no parameter change).

    Frozen teachers keep their statistics (they stay in eval mode). Returns the batches used.
    """
    bns = [
        m for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        and any(p.requires_grad for p in m.parameters())
    ]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = exact mean over the batches seen
    model.train()
    used = 0
    for batch in loader:
        if used >= batches:
            break
        with autocast_ctx(device, amp):
            model(to_device(batch, device))
        used += 1
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    return used


class _FaultInjection:
    """Crash or signal this process at a given step, for the resume tests.

    XMODAL_FAULT_KILL_AT_STEP=N sends SIGKILL (an unannounced crash) and
    XMODAL_FAULT_SIGNAL_AT_STEP=N sends SIGTERM (pre-emption) right after optimisation step N.
    """

    def __init__(self, kill_at: int = 0, signal_at: int = 0):
        self.kill_at, self.signal_at = kill_at, signal_at

    @classmethod
    def from_env(cls) -> _FaultInjection:
        return cls(int(os.environ.get("XMODAL_FAULT_KILL_AT_STEP", 0)), int(os.environ.get("XMODAL_FAULT_SIGNAL_AT_STEP", 0)))

    def after_step(self, step: int) -> None:
        if step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _resolve_resume(resume: str, ckpts: CheckpointManager):
    if resume == "auto":
        found = ckpts.latest_loadable()
        if found is None:
            log.info("--resume auto: no checkpoint in %s, starting fresh", ckpts.folder)
        return found
    path = Path(resume)
    return path, load_state_file(path)


def _check_same_run(state: dict, cfg: RunConfig, path: Path) -> None:
    old = state.get("config", {})
    for section in ("method", "data"):
        if old.get(section) != to_dict(getattr(cfg, section)):
            raise CheckpointError(f"{path}: checkpoint was written for a different `{section}` section; use a new out_dir")
