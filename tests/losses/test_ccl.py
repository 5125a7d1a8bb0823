import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dist_helpers import run_distributed, shard
from xmodal.losses.ccl import ccl_objectives, multiclass_contrastive, nonzero_rows, pair_loss
from xmodal.losses.kd import symmetric_kl


def _rand(*shape, seed, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _n_t_loop(x, y, labels, T):
    """N_T written out per (i, j) pair in Python floats."""
    xs, ys, ls = x.tolist(), y.tolist(), labels.tolist()

    def unit(r):
        n = max(math.sqrt(sum(a * a for a in r)), 1e-12)
        return [a / n for a in r]

    xs, ys = [unit(r) for r in xs], [unit(r) for r in ys]
    b = len(xs)
    total = 0.0
    for i in range(b):
        s = [1 - 0.5 * sum((a - c) ** 2 for a, c in zip(xs[i], ys[j])) for j in range(b)]
        z = sum(math.exp(v / T) for v in s)
        p = [math.exp(v / T) / z for v in s]
        pos = [j for j in range(b) if ls[j] == ls[i]]
        neg = [j for j in range(b) if ls[j] != ls[i]]
        row = sum(-math.log(p[j] + 1e-10) for j in pos) / len(pos)
        if neg:
            row += sum(-math.log(1 - p[j] + 1e-10) for j in neg) / len(neg)
        total += row
    return total / b


LABELS = torch.tensor([0, 2, 1, 0, 2, 2, 1])


@pytest.mark.parametrize("T", [0.1, 0.5, 1.0])
def test_n_t_matches_direct_loop(T):
    x, y = _rand(7, 5, seed=0), _rand(7, 5, seed=1)
    got = multiclass_contrastive(x, y, LABELS, temperature=T)
    assert got.item() == pytest.approx(_n_t_loop(x, y, LABELS, T), abs=1e-12)
    got32 = multiclass_contrastive(x.float(), y.float(), LABELS, temperature=T)
    assert got32.item() == pytest.approx(_n_t_loop(x, y, LABELS, T), abs=1e-5)
    # asymmetric; the pair loss is the sum of both directions
    back = multiclass_contrastive(y, x, LABELS, temperature=T)
    assert abs(back.item() - got.item()) > 1e-6
    assert torch.allclose(pair_loss(x, y, LABELS, temperature=T), got + back)


def test_n_t_is_invariant_to_feature_scale():
    x, y = _rand(7, 5, seed=2), _rand(7, 5, seed=3)
    a = multiclass_contrastive(x, y, LABELS, temperature=0.5)
    b = multiclass_contrastive(40.0 * x, 0.01 * y, LABELS, temperature=0.5)
    assert torch.allclose(a, b, atol=1e-12)


def test_rows_without_negatives_drop_the_negative_term_and_warn():
    x, y = _rand(4, 3, seed=4), _rand(4, 3, seed=5)
    same = torch.zeros(4, dtype=torch.long)
    xr = x.clone().requires_grad_()
    with pytest.warns(RuntimeWarning, match="no negative"):
        got = multiclass_contrastive(xr, y, same, temperature=0.5)
    assert torch.isfinite(got) and got.item() == pytest.approx(_n_t_loop(x, y, same, 0.5), abs=1e-12)
    got.backward()
    assert torch.isfinite(xr.grad).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        multiclass_contrastive(x, y, torch.tensor([0, 0, 0, 1]), temperature=0.5)  # every row has one


def test_identical_features_have_finite_gradients():
    x = _rand(5, 4, seed=6).requires_grad_()
    loss = multiclass_contrastive(x, x, torch.tensor([0, 1, 0, 1, 2]), temperature=0.1)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_mask_and_nonzero_rows():
    x, y = _rand(7, 5, seed=7), _rand(7, 5, seed=8)
    t = _rand(7, 2, 3, seed=9)
    t[[1, 4]] = 0
    keep = nonzero_rows(t)
    assert keep.tolist() == [True, False, True, True, False, True, True]
    got = multiclass_contrastive(x, y, LABELS, temperature=0.5, mask=keep)
    assert got.item() == pytest.approx(_n_t_loop(x[keep], y[keep], LABELS[keep], 0.5), abs=1e-12)


# ------------------------------------------------------------------ per-teacher objectives


class Head(nn.Module):
    """CompositionHead of spec §3.3: m = t + W_r[t̂; v̂] + b_r, z_m = W_c m + b_c."""

    def __init__(self, d, c):
        super().__init__()
        self.r = nn.Linear(2 * d, d)
        self.c = nn.Linear(d, c)

    def forward(self, t, v):
        m = t + self.r(torch.cat([F.normalize(t, dim=1, eps=1e-12), F.normalize(v, dim=1, eps=1e-12)], 1))
        return self.c(m), m


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.student = nn.Linear(6, 4)
        self.cls = nn.Linear(4, 3)
        self.head = Head(4, 3)

    def objectives(self, x, t, labels, mask, *, routed):
        v = self.student(x)
        z_v = self.cls(v)
        z_m, m = self.head(t, v)
        extra = {}
        if routed:
            z_r, m_r = self.head(t, v.detach())
            extra = dict(m_routed=m_r, z_m_routed=z_r)
        obj = ccl_objectives(v, t, m, z_v, z_m, labels, temperature=0.5, weight=0.5, mask=mask, **extra)
        return F.cross_entropy(z_v, labels), obj

    def forward(self, x, t, labels, mask):
        ce, obj = self.objectives(x, t, labels, mask, routed=True)
        return ce + obj.student.total + obj.composition.total


def _toy_data(b=8):
    torch.manual_seed(0)
    model = Toy().double()
    x = _rand(b, 6, seed=10)
    t = _rand(b, 4, seed=11).abs()
    t[[1, 2, 6]] = 0  # missing audio: ranks of a 2-way split keep 2 and 3 rows
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])[:b]
    return model, x, t, labels, nonzero_rows(t)


def test_objectives_terms_by_hand():
    model, x, t, labels, keep = _toy_data()
    with torch.no_grad():
        v = model.student(x)
        z_v = model.cls(v)
        z_m, m = model.head(t, v)
    obj = ccl_objectives(v, t, m, z_v, z_m, labels, temperature=0.5, weight=0.5, mask=keep)
    k = dict(temperature=0.5, mask=keep)
    s = symmetric_kl(z_v[keep], z_m[keep])
    l_vm, l_vt, l_mt = pair_loss(v, m, labels, **k), pair_loss(v, t, labels, **k), pair_loss(m, t, labels, **k)
    assert torch.allclose(obj.student.total, 0.5 * (l_vm + l_vt + s), atol=1e-12)
    ce = F.cross_entropy(z_m[keep], labels[keep])
    assert torch.allclose(obj.composition.total, ce + l_vm + l_mt + s, atol=1e-12)
    assert set(obj.composition.terms) == {"ce", "vm", "mt", "S"}
    few = torch.zeros(8, dtype=torch.bool)
    few[3] = True
    none = ccl_objectives(v, t, m, z_v, z_m, labels, temperature=0.5, mask=few)
    assert none.student.total.item() == 0.0 and none.composition.total.item() == 0.0


def test_gradient_routing_one_step_sgd_matches_reference_two_backward_passes():
    lr = 0.1
    model, x, t, labels, keep = _toy_data()
    ref = Toy().double()
    ref.load_state_dict(model.state_dict())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    student_params = [p for n, p in ref.named_parameters() if not n.startswith("head.")]
    head_params = list(ref.head.parameters())

    # Reference §4.4: backprop J_X (retain), clear student grads, backprop J_v, step all.
    ce, obj = ref.objectives(x, t, labels, keep, routed=False)
    j_v, j_x = ce + obj.student.total, obj.composition.total
    g_student = torch.autograd.grad(j_v, student_params, retain_graph=True)
    g_head = torch.autograd.grad(j_v + j_x, head_params, retain_graph=True)
    opt_s, opt_h = torch.optim.SGD(student_params, lr=lr), torch.optim.SGD(head_params, lr=lr)
    opt_h.zero_grad()
    j_x.backward(retain_graph=True)
    opt_s.zero_grad()
    j_v.backward()
    opt_s.step()
    opt_h.step()

    # xmodal: one backward of J_v + J_X with the head re-run on the detached student feature.
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.zero_grad()
    model(x, t, labels, keep).backward()
    opt.step()

    ref_params = dict(ref.named_parameters())
    for n, p in model.named_parameters():
        assert torch.allclose(p - before[n], ref_params[n] - before[n], atol=1e-12, rtol=0), n
    for p, g, name in zip(student_params, g_student, ["student.w", "student.b", "cls.w", "cls.b"]):
        assert torch.allclose(p.detach() - before[_name(ref, p)], -lr * g, atol=1e-12), name
    for p, g in zip(head_params, g_head):
        assert torch.allclose(p.detach() - before[_name(ref, p)], -lr * g, atol=1e-12)
    # routing matters: the student's plain d(J_v + J_X) differs from dJ_v
    ce, obj = ref.objectives(x, t, labels, keep, routed=False)
    g_all = torch.autograd.grad(ce + obj.student.total + obj.composition.total, student_params[0], retain_graph=True)
    g_v = torch.autograd.grad(ce + obj.student.total, student_params[0])
    assert (g_all[0] - g_v[0]).abs().max() > 1e-4


def _name(module, param):
    return next(n for n, p in module.named_parameters() if p is param)


def _ddp_worker(rank, world, state, x, t, labels, keep):
    model = Toy().double()
    model.load_state_dict(state)
    ddp = nn.parallel.DistributedDataParallel(model)
    loss = ddp(*(shard(a, rank, world) for a in (x, t, labels, keep)))
    loss.backward()
    return {"loss": loss.detach(), "grads": {n: p.grad for n, p in model.named_parameters()}}


@pytest.mark.dist
def test_two_process_gather_with_unequal_masks_equals_one_process():
    model, x, t, labels, keep = _toy_data()
    assert keep[:4].sum() != keep[4:].sum()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loss = model(x, t, labels, keep)
    loss.backward()
    results = run_distributed(_ddp_worker, 2, args=(state, x, t, labels, keep))
    mean_loss = sum(r["loss"] for r in results) / 2
    assert torch.allclose(mean_loss, loss.detach(), atol=1e-10)
    for n, p in model.named_parameters():
        for r in results:
            assert torch.allclose(r["grads"][n], p.grad, atol=1e-10, rtol=0), n
