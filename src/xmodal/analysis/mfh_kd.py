"""The observed side of the MFH diagnostic: train a KD student and measure its test accuracy.

A minimal cross-modal KD run (EMBEDDED-DATA.md, "Distillation"): per step, a batch of the
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


def kd_student_accuracy(cfg: Any, data: Any, teacher: Any, out: Path | None = None) -> float:
    """Test accuracy (%) of a KD student trained as `cfg.kd` says (cfg: a DiagnoseConfig)."""
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
