"""The observed side of the MFH diagnostic: train a KD student and measure its test accuracy.

Two runners (`KDConfig.runner` of the diagnose recipe):

* ``method`` (default where it applies): the `kd` method (methods/kd.py) through the engine, via
  its `run_kd` API: the teacher is the diagnostic's teacher run folder, the data the recipe's
  avdigits with ``train_split: train+pool`` (labelled and pool rows in every batch).
* ``minimal``: the loop below, for any data with a labelled split and a paired split (gauss,
  paired_arrays, a teacher given as a bare weights file).

``minimal``: a minimal cross-modal KD run (EMBEDDED-DATA.md, "Distillation"): per step, a batch of the
student's labelled split (cross-entropy on its own labels, weight `w_gt`) plus a batch of the
paired split the saliency ran on, where the frozen teacher, seeing its own modality, gives soft
targets to the student seeing the other one (`losses.kd.kd_kl`, weight `w_kd`). The student is
initialised exactly like the no-KD student of the diagnostic (same seed, same builder), so
KD − no-KD is a paired comparison.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from xmodal.losses.kd import kd_kl


def _cycle(loader: Any) -> Any:
    while True:
        yield from loader


def uses_kd_method(cfg: Any, teacher_run: Path | None) -> bool:
    """Whether the `kd` method can run this setting: avdigits data, the KD on its pool, the
    labelled split = train, and the teacher as a run folder."""
    kc = cfg.kd
    if kc.runner == "minimal":
        return False
    ok = (getattr(cfg.data, "name", "") == "avdigits" and cfg.saliency.split == "pool" and cfg.student.split == "train"
          and teacher_run is not None and (teacher_run / "config.yaml").is_file())
    if kc.runner == "method" and not ok:
        from xmodal.errors import ConfigError

        raise ConfigError("kd.runner: 'method' needs avdigits data, saliency.split pool, student.split train and a teacher run folder; use 'auto' or 'minimal'")
    return ok


def kd_method_accuracy(cfg: Any, teacher_run: Path, out: Path) -> tuple[float, float]:
    """Test accuracy (%) of the `kd` method's student (methods/kd.py, `run_kd`) and of its no-KD
    baseline on the same batches (kd weight 0: pool rows contribute nothing), same init."""
    import dataclasses

    from xmodal.config import OptimConfig, RunConfig, TrainConfig
    from xmodal.methods._distill import TeacherConfig
    from xmodal.methods.kd import KDConfig, KDTermConfig, run_kd

    kc, side = cfg.kd, cfg.student
    method = KDConfig(student=side.model, input_key=side.modality, label_key=side.label_key,
                      teacher=TeacherConfig(run=str(teacher_run), input_key=cfg.teacher.modality),
                      kd=KDTermConfig(weight=kc.w_kd, temperature=kc.temperature), ce_weight=kc.w_gt)
    train = TrainConfig(max_steps=kc.steps or side.steps, batch_size=kc.batch_size, eval_every=0, ckpt_every_epochs=0,
                        progress=False, tensorboard=False, seed=cfg.seed, threads=cfg.threads, log_every=50)
    optim = OptimConfig(name=side.optimizer, lr=side.lr, momentum=side.momentum, weight_decay=side.weight_decay)
    run = RunConfig(name=f"{cfg.name}-kd", method=method, data=dataclasses.replace(cfg.data, train_split="train+pool"),
                    optim=optim, train=train)
    kd = run_kd(run, out_dir=out / "kd").acc
    base = dataclasses.replace(run, name=f"{cfg.name}-kd-baseline", method=dataclasses.replace(method, kd=KDTermConfig(weight=0.0)))
    return kd, run_kd(base, out_dir=out / "kd-baseline").acc


def kd_student_accuracy(cfg: Any, data: Any, teacher: Any, out: Path | None = None) -> float:
    """Test accuracy (%) of a KD student trained as `cfg.kd` says (cfg: a DiagnoseConfig), minimal runner."""
    from xmodal.analysis.mfh_diagnose import _acc, _outputs
    from xmodal.data.bundle import collate as default_collate
    from xmodal.engine.trainer import seed_everything
    from xmodal.methods.supervised import fill_model_dims
    from xmodal.registry import MODELS

    kc, side = cfg.kd, cfg.student
    collate = data.collate or default_collate
    pool = data.split(cfg.saliency.split)
    labelled = data.split(side.split)
    t_logits = _outputs(teacher.model, pool, cfg.teacher.modality, data.collate)["logits"]
    seed_everything(cfg.seed)
    student = MODELS.build(fill_model_dims(side.model, data.info, side.modality))
    opt_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[side.optimizer]
    kw = {"momentum": side.momentum} if side.optimizer == "sgd" else {}
    opt = opt_cls(student.parameters(), lr=side.lr, weight_decay=side.weight_decay, **kw)
    g = torch.Generator().manual_seed(cfg.seed)
    lab_loader = torch.utils.data.DataLoader(labelled, batch_size=min(side.batch_size, len(labelled)), shuffle=True,
                                             generator=g, collate_fn=collate, drop_last=True)
    idx = torch.utils.data.TensorDataset(torch.arange(len(pool)))
    pool_loader = torch.utils.data.DataLoader(idx, batch_size=min(kc.batch_size, len(pool)), shuffle=True, generator=g, drop_last=True)
    student.train()
    for lab, (pi,) in itertools.islice(zip(_cycle(lab_loader), _cycle(pool_loader)), kc.steps or side.steps):
        pb = collate(pool.__getitems__(pi.tolist())) if hasattr(pool, "__getitems__") else collate([pool[i] for i in pi.tolist()])
        x = torch.cat([lab[side.modality], pb[side.modality]])
        out = student(x)
        logits = out[0] if isinstance(out, tuple) else out
        n = len(lab[side.modality])
        loss = kc.w_gt * F.cross_entropy(logits[:n], lab[side.label_key])
        loss = loss + kc.w_kd * kd_kl(logits[n:], t_logits[pi], temperature=kc.temperature, reduction=kc.reduction)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    st = _outputs(student, data.test, side.modality, data.collate, label_keys=(side.label_key,))
    return _acc(st["logits"], st[side.label_key])
