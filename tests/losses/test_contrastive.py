import math

import pytest
import torch
from torch import nn

from dist_helpers import run_distributed, shard
from xmodal.losses.contrastive import diagonal_accuracy, info_nce


class TwoTower(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 4)
        self.b = nn.Linear(5, 4)

    def forward(self, xa, xb):
        return self.a(xa), self.b(xb)


def _setup():
    torch.manual_seed(0)
    model = TwoTower().double()
    g = torch.Generator().manual_seed(1)
    xa = torch.randn(8, 6, generator=g, dtype=torch.float64)
    xb = torch.randn(8, 5, generator=g, dtype=torch.float64)
    return model, xa, xb


def _step(model, xa, xb):
    out = info_nce(*model(xa, xb), temperature=0.1)
    out.total.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}


def _ddp_worker(rank, world, state, xa, xb):
    model = TwoTower().double()
    model.load_state_dict(state)
    ddp = nn.parallel.DistributedDataParallel(model)
    out, grads = _step(ddp, shard(xa, rank, world), shard(xb, rank, world))
    return {"loss": out.total.detach(), "acc": out.terms["acc_a2b"], "grads": {k.removeprefix("module."): v for k, v in grads.items()}}


def test_info_nce_matches_explicit_formula():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    out = info_nce(a, b, temperature=0.5)
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    s = (an @ bn.t() / 0.5).tolist()
    l_ab = -sum(s[i][i] - math.log(sum(math.exp(s[i][j]) for j in range(5))) for i in range(5)) / 5
    l_ba = -sum(s[i][i] - math.log(sum(math.exp(s[j][i]) for j in range(5))) for i in range(5)) / 5
    assert torch.allclose(out.terms["loss_a2b"], torch.tensor(l_ab, dtype=torch.float64))
    assert torch.allclose(out.total, torch.tensor(0.5 * (l_ab + l_ba), dtype=torch.float64))
    one = info_nce(a, b, temperature=0.5, symmetric=False)
    assert torch.allclose(one.total, torch.tensor(l_ab, dtype=torch.float64)) and "loss_b2a" not in one.terms


def test_diagonal_accuracy_and_perfect_pairs():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 0.0, 5.0]])
    assert diagonal_accuracy(logits).item() == pytest.approx(2 / 3)
    e = torch.eye(4)
    out = info_nce(e, e.clone(), temperature=0.05)
    assert out.terms["acc_a2b"] == 1.0 and out.terms["acc_b2a"] == 1.0 and out.total < 1e-6


@pytest.mark.dist
def test_two_process_gathered_info_nce_equals_one_process_full_batch():
    model, xa, xb = _setup()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    single, grads = _step(model, xa, xb)
    results = run_distributed(_ddp_worker, 2, args=(state, xa, xb))
    for res in results:
        assert torch.allclose(res["loss"], single.total.detach(), atol=1e-6, rtol=0)
        assert res["acc"] == single.terms["acc_a2b"]
        for name, g in grads.items():
            assert torch.allclose(res["grads"][name], g, atol=1e-6, rtol=0), name
    # not trivially equal: half-batch losses differ from the full-batch loss
    local = info_nce(*model(shard(xa, 0, 2), shard(xb, 0, 2)), temperature=0.1).total
    assert abs(local.item() - single.total.item()) > 1e-3
