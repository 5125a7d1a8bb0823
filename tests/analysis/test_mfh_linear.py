"""Batched linear banks of the MFH gauss study against autograd / torch.optim references."""

import pytest
import torch
import torch.nn.functional as F

from xmodal.analysis import mfh
from xmodal.analysis.mfh_linear import LinearBank, fit, fit_joint, init_bank, kd_kl_per_model


def slow_kl(student, teacher, temperature, reduction):
    """Σ_n Σ_c p_t (log p_t − log p_s) · T² / Z, written out element by element."""
    n, c = student.shape
    total = 0.0
    for i in range(n):
        ps = torch.softmax(student[i] / temperature, 0)
        pt = torch.softmax(teacher[i] / temperature, 0)
        for j in range(c):
            total += pt[j] * (torch.log(pt[j]) - torch.log(ps[j]))
    return total * temperature**2 / (n * c if reduction == "mean_elements" else n)


@pytest.mark.parametrize("reduction", ["batchmean", "mean_elements"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kd_kl_matches_hand_formula(reduction, temperature):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    got = kd_kl_per_model(s, t, temperature, reduction)
    want = torch.stack([slow_kl(s[r], t[r], temperature, reduction) for r in range(3)])
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6)
    # mean_elements is batchmean / C (trap 1 of the spec)
    if reduction == "mean_elements":
        torch.testing.assert_close(got * 4, kd_kl_per_model(s, t, temperature, "batchmean"))
    assert kd_kl_per_model(t, t).abs().max() < 1e-6


def test_kd_kl_two_class_hand_value():
    # p_t = (0.5, 0.5), p_s = softmax(0, ln 3) = (0.25, 0.75): KL = 0.5 ln 2 + 0.5 ln(2/3)
    s = torch.tensor([[[0.0, torch.log(torch.tensor(3.0))]]])
    t = torch.zeros(1, 1, 2)
    kl = 0.5 * torch.log(torch.tensor(2.0)) + 0.5 * torch.log(torch.tensor(2 / 3))
    torch.testing.assert_close(kd_kl_per_model(s, t, 1.0, "batchmean"), kl[None])
    torch.testing.assert_close(kd_kl_per_model(s, t, 1.0, "mean_elements"), kl[None] / 2)


def _autograd_step_reference(x, y, bank, teacher_logits, w_gt, w_kd, temperature, reduction, lr):
    """One SGD step per model written with autograd on the spec's loss."""
    w = bank.weight.clone().requires_grad_(True)
    b = bank.bias.clone().requires_grad_(True)
    share = len(w) // len(x)
    xr, yr = x.repeat(share, 1, 1), y.repeat(share, 1)
    logits = torch.baddbmm(b[:, None], xr, w)
    ce = torch.stack([F.cross_entropy(logits[r], yr[r]) for r in range(len(w))])
    loss = (w_gt * ce + w_kd * kd_kl_per_model(logits, teacher_logits, temperature, reduction)).sum()
    loss.backward()
    return w.detach() - lr * w.grad, b.detach() - lr * b.grad


@pytest.mark.parametrize("reduction", ["batchmean", "mean_elements"])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_fit_one_step_matches_autograd(reduction, temperature):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 30, 6, generator=g), torch.randint(0, 3, (2, 30), generator=g)
    bank = init_bank(range(4), 6, n_classes=3)  # 2 models share each input (S = 2)
    tl = torch.randn(4, 30, 3, generator=g)
    w_kd = torch.tensor([0.0, 0.0, 1.0, 0.5])
    out = fit(x, y, bank, steps=1, lr=0.3, teacher_logits=tl, w_gt=0.7, w_kd=w_kd, temperature=temperature, reduction=reduction)
    want_w, want_b = _autograd_step_reference(x, y, bank, tl, 0.7, w_kd, temperature, reduction, 0.3)
    torch.testing.assert_close(out.weight, want_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.bias, want_b, rtol=1e-5, atol=1e-6)


def test_fit_many_steps_matches_torch_sgd_on_nn_linear():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(3, 40, 5, generator=g), torch.randint(0, 2, (3, 40), generator=g)
    tl = torch.randn(3, 40, 2, generator=g)
    bank = init_bank([10, 11, 12], 5)
    out = fit(x, y, bank, steps=60, lr=0.1, teacher_logits=tl, momentum=0.9)
    for r in range(3):
        lin = bank.module(r)
        opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
        for _ in range(60):
            lo = lin(x[r])
            loss = F.cross_entropy(lo, y[r]) + kd_kl_per_model(lo[None], tl[r][None])[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.testing.assert_close(out.weight[r], lin.weight.detach().T, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.bias[r], lin.bias.detach(), rtol=1e-4, atol=1e-5)


def test_fit_joint_matches_generic_joint_pretrain():
    g = torch.Generator().manual_seed(3)
    xa, xb = torch.randn(2, 50, 7, generator=g), torch.randn(2, 50, 4, generator=g)
    y = torch.randint(0, 2, (2, 50), generator=g)
    ia, ib = init_bank([1, 2], 7), init_bank([3, 4], 4)
    fa, fb = fit_joint(xa, xb, y, ia, ib, steps=40, lr=0.01, momentum=0.9, mse_weight=0.5)
    for r in range(2):
        la, lb = ia.module(r), ib.module(r)
        out = mfh.joint_pretrain(la, lb, (xa[r], xb[r], y[r]), steps=40, mse_weight=0.5)
        assert len(out.losses) == 40 and out.losses[-1] < out.losses[0]
        torch.testing.assert_close(fa.weight[r], la.weight.detach().T, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fb.bias[r], lb.bias.detach(), rtol=1e-4, atol=1e-5)


def test_init_bank_is_per_model_and_bounded():
    a, b = init_bank([5, 6, 7], 16), init_bank([7], 16)
    torch.testing.assert_close(a.weight[2], b.weight[0])  # independent of the batch it is drawn in
    assert a.weight.abs().max() <= 0.25 and not torch.equal(a.weight[0], a.weight[1])
    padded = init_bank([5], 40, fan_in=[4])
    assert padded.weight.abs().max() > 0.25 >= init_bank([5], 40).weight.abs().max()


def test_bank_logits_accuracy_and_split():
    bank = LinearBank(torch.tensor([[[1.0, -1.0]], [[-1.0, 1.0]]]), torch.zeros(2, 2))
    x = torch.tensor([[[2.0], [-3.0]]])  # one input shared by both models
    y = torch.tensor([[0, 0]])
    torch.testing.assert_close(bank.logits(x)[1], torch.tensor([[-2.0, 2.0], [3.0, -3.0]]))
    torch.testing.assert_close(bank.accuracy(x, y), torch.tensor([50.0, 50.0], dtype=torch.float64))
    assert [len(p.weight) for p in bank.split(1)] == [1, 1]
    lin = bank.module(1)
    torch.testing.assert_close(lin(x[0]), bank.logits(x)[1])


def test_fit_leaves_its_init_untouched():
    bank = init_bank([1, 2], 3)
    before = LinearBank(bank.weight.clone(), bank.bias.clone())
    fit(torch.randn(2, 10, 3), torch.randint(0, 2, (2, 10)), bank, steps=3, momentum=0.9)
    assert torch.equal(bank.weight, before.weight) and torch.equal(bank.bias, before.bias)
