"""KD method: labelled + pool batches, cached teachers, and the embedded result of
EMBEDDED-DATA.md ("Distillation"): with few labels and an unlabelled paired pool, KD from an
audio teacher beats the no-KD baseline by a clear margin at gap 0, and stops helping when 80 % of
the clips speak a fixed wrong class."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xmodal.data.embedded.avdigits import AVDigitsDataConfig, avdigits_data
from xmodal.data.kd_pool import LabelledPoolDataset
from xmodal.errors import ConfigError

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SEEDS = (0, 1)


def _tiny_bundle(**kw):
    cfg = AVDigitsDataConfig(num_classes=3, n_train_per_class=2, n_pool=10, n_test_per_class=2, frames=4,
                             size=16, fbank_bins=16, **kw)
    return avdigits_data(cfg)


def test_labelled_pool_batches_pair_hidden_pool_labels_with_labelled_clips():
    b = _tiny_bundle(train_split="train+pool")
    ds = b.train
    assert isinstance(ds, LabelledPoolDataset) and len(ds) == 10
    batch = ds.__getitems__([0, 1, 2, 3])
    assert batch["video"].shape[0] == 8 and len(batch["uid"]) == 8
    assert batch["labelled"].tolist() == [False] * 4 + [True] * 4
    assert (batch["label"][:4] == -1).all() and (batch["audio_label"][:4] == -1).all()
    assert (batch["label"][4:] >= 0).all()
    assert all(u.startswith("pool-") for u in batch["uid"][:4]) and all(u.startswith("train-") for u in batch["uid"][4:])
    # one epoch visits every labelled clip before repeating one (6 labelled clips, 10 pool clips)
    lab = ds.__getitems__(list(range(10)))["uid"][10:]
    assert len(set(lab[:6])) == 6
    ds.set_epoch(1)
    assert ds.__getitems__(list(range(10)))["uid"][10:] != lab


def _kd_method(**kw):
    from xmodal.methods.kd import KD, KDConfig
    from xmodal.registry import MODELS

    b = _tiny_bundle(train_split="train+pool")
    student = MODELS.entry("tiny_video").config(num_classes=0, widths=(4, 8))
    return KD(KDConfig(student=student, **kw), b.info), b


def test_kd_reads_cached_teacher_keys_and_masks_ce_to_labelled_rows():
    from xmodal.methods._distill import TeacherConfig

    torch.manual_seed(0)
    method, b = _kd_method(teacher=TeacherConfig(key="teacher"))
    batch = b.train.__getitems__([0, 1, 2])
    with pytest.raises(ConfigError, match="teacher"):
        method.training_step(batch)
    batch["teacher.logits"] = torch.randn(6, 3)
    out = method.training_step(batch)
    assert {"ce", "kd"} <= set(out.terms) and torch.isfinite(out.total)
    assert method.teacher_forwards == 0
    # CE sees only labelled rows (the pool rows' -1 labels never reach it)
    logits = method.student(batch["video"]).logits  # train-mode BN: the same batch gives the same logits
    ce = torch.nn.functional.cross_entropy(logits[3:], batch["label"][3:])
    assert torch.allclose(out.terms["ce"], ce, atol=1e-5)


def test_kd_student_weights_exclude_the_teacher(tmp_path):
    method, _ = _kd_method()
    assert all(k.startswith("student.") for k in method.state_dict())


# ------------------------------------------------------------------------- embedded learning
# `distill_runs` (tests/methods/conftest.py): one teacher and one cache per gap for the session.


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_baseline_with_five_labels_per_class_is_weak(distill_runs, seed):
    # runs (and memoises) the baseline first, so no later test pays for two student runs
    assert distill_runs("kd/avdigits-baseline.yaml", 0.0, seed) < 30  # chance 10 %


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_kd_beats_baseline_at_gap_0(distill_runs, seed):
    base = distill_runs("kd/avdigits-baseline.yaml", 0.0, seed)
    kd = distill_runs("kd/avdigits-audio.yaml", 0.0, seed)
    assert kd > base + 15, (kd, base)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_kd_no_longer_helps_with_fixed_wrong_class_gap(distill_runs, seed):
    base = distill_runs("kd/avdigits-baseline.yaml", 0.0, seed)  # the videos are the same at every gap
    kd_gap = distill_runs("kd/avdigits-audio.yaml", 0.8, seed)
    assert kd_gap < base + 5, (kd_gap, base)
    assert kd_gap < distill_runs("kd/avdigits-audio.yaml", 0.0, seed) - 15
