import math

import pytest
import torch

from xmodal.config import OptimConfig, SchedConfig
from xmodal.engine.optim import Schedule, build_optimizer, default_param_groups, lr_factor


def test_warmup_then_cosine():
    cfg = SchedConfig(name="cosine", warmup_steps=10, warmup_start=0.0, min_ratio=0.1)
    assert lr_factor(cfg, 0, 100, 110) == 0.0
    assert lr_factor(cfg, 5, 100, 110) == pytest.approx(0.5)
    assert lr_factor(cfg, 10, 100, 110) == pytest.approx(1.0)
    assert lr_factor(cfg, 60, 100, 110) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(cfg, 110, 100, 110) == pytest.approx(0.1)


def test_multistep_and_cavmae_epoch_step():
    ms = SchedConfig(name="multistep", milestones=[2, 4], gamma=0.1)
    assert [lr_factor(ms, s, 10, 100) for s in (0, 19, 20, 39, 40)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    # CAV-MAE AS-20K: decay 0.5 after epoch 5 (1-based), then every epoch.
    es = SchedConfig(name="epoch_step", start=5, every=1, gamma=0.5)
    assert [lr_factor(es, e * 10, 10, 1000) for e in range(8)] == pytest.approx([1, 1, 1, 1, 1, 0.5, 0.25, 0.125])
    es2 = SchedConfig(name="epoch_step", start=10, every=5, gamma=0.5)
    assert [lr_factor(es2, e, 1, 1000) for e in (9, 10, 14, 15, 20)] == pytest.approx([1, 0.5, 0.5, 0.25, 0.125])


def test_param_groups_scale_no_decay_and_unscheduled():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    groups = default_param_groups(net, OptimConfig(no_decay=["bias", "1."]))
    assert [len(g["params"]) for g in groups] == [1, 3] and groups[1]["weight_decay"] == 0.0
    head = torch.nn.Linear(2, 2)
    opt = build_optimizer(
        groups + [{"params": head.parameters(), "lr_scale": 10.0, "scheduled": False}],
        OptimConfig(name="adamw", lr=0.01, weight_decay=0.05),
    )
    sched = Schedule(opt, SchedConfig(name="multistep", milestones=[1]), steps_per_epoch=1, total_steps=5)
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, 0.001, 0.1])
    assert opt.param_groups[0]["weight_decay"] == 0.05


def test_balanced_weights_and_weighted_sampler():
    from xmodal.data.bundle import balanced_weights
    from xmodal.engine.dist import ResumableSampler

    w = balanced_weights([[0], [0], [0], [1], [0, 1], []], 3)
    cw0, cw1 = 1000 / 4.01, 1000 / 2.01
    assert w.tolist() == pytest.approx([cw0, cw0, cw0, cw1, cw0 + cw1, cw0])
    # draws follow the weights, are reproducible per (seed, epoch) and shard by rank
    weights = torch.tensor([1.0, 0.0, 3.0, 0.0])
    s = ResumableSampler(4000, seed=1, weights=weights.repeat(1000))
    idx = torch.tensor(s.indices()) % 4
    assert (idx == 1).sum() == 0 and (idx == 3).sum() == 0
    assert 0.70 < (idx == 2).float().mean() < 0.80
    assert s.indices() == ResumableSampler(4000, seed=1, weights=weights.repeat(1000)).indices()
    r0 = ResumableSampler(4000, seed=1, rank=0, world_size=2, weights=weights.repeat(1000)).indices()
    r1 = ResumableSampler(4000, seed=1, rank=1, world_size=2, weights=weights.repeat(1000)).indices()
    assert sorted(r0 + r1) == sorted(s.indices())
