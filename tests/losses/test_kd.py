import math

import pytest
import torch

from xmodal.errors import ConfigError, DataError
from xmodal.losses.kd import (
    add_feature_terms,
    feature_cosine,
    feature_mse,
    kd_kl,
    missing_teacher,
    symmetric_kl,
    top_mid_bottom_indices,
    top_mid_bottom_kl,
    topk_kl,
)


def _logits(b, c, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g, dtype=torch.float64) * scale


def _kl_by_hand(s, t, T):
    """Σ_c p_t (log p_t − log p_s) per sample, written out in float64 loops."""
    out = []
    for sb, tb in zip(s.tolist(), t.tolist()):
        zs = sum(math.exp(x / T) for x in sb)
        zt = sum(math.exp(x / T) for x in tb)
        kl = 0.0
        for xs, xt in zip(sb, tb):
            pt, ps = math.exp(xt / T) / zt, math.exp(xs / T) / zs
            kl += pt * (math.log(pt) - math.log(ps))
        out.append(kl)
    return torch.tensor(out, dtype=torch.float64)


def test_full_kl_matches_hand_formula_egtea_shape():
    s, t = _logits(4, 106, 0), _logits(4, 106, 1)
    per = _kl_by_hand(s, t, 10.0) * 100.0
    assert torch.allclose(kd_kl(s, t, temperature=10.0, reduction="none"), per, atol=1e-12)
    assert torch.allclose(kd_kl(s, t, temperature=10.0), per.mean(), atol=1e-12)
    me = kd_kl(s, t, temperature=10.0, reduction="mean_elements")
    assert torch.allclose(me, per.sum() / (4 * 106), atol=1e-12)
    # textkd recipes spell it elements_mean; MFH binary case: mean_elements = batchmean / 2
    assert kd_kl(s, t, temperature=10.0, reduction="elements_mean") == me
    s2, t2 = _logits(5, 2, 2), _logits(5, 2, 3)
    assert torch.allclose(kd_kl(s2, t2, reduction="mean_elements"), kd_kl(s2, t2) / 2)
    assert torch.allclose(kd_kl(s, t, temperature=10.0, t2_scale=False), per.mean() / 100.0)


def test_topk_kl_matches_hand_formula_ek55_shape():
    s, t = _logits(4, 2513, 4), _logits(4, 2513, 5)
    got = topk_kl(s, t, k=50, temperature=5.0, reduction="mean_elements")
    rows = []
    for b in range(4):
        idx = sorted(range(2513), key=lambda c: -t[b, c].item())[:50]
        rows.append(_kl_by_hand(s[b : b + 1, idx], t[b : b + 1, idx], 5.0)[0])
    expect = torch.stack(rows).sum() * 25.0 / (4 * 50)
    assert torch.allclose(got, expect, atol=1e-12)


def test_topk_reduces_to_full_kl_when_k_covers_all_classes():
    s, t = _logits(3, 7, 6).float(), _logits(3, 7, 7).float()
    for k in (7, 100):
        for red in ("batchmean", "mean_elements", "none"):
            assert torch.equal(topk_kl(s, t, k=k, temperature=2.0, reduction=red),
                               kd_kl(s, t, temperature=2.0, reduction=red))
    with pytest.raises(ConfigError):
        topk_kl(s, t, k=0)


def test_topk_selects_teacher_classes_not_student_classes():
    t = torch.tensor([[5.0, 4.0, -3.0, -4.0]])
    s = torch.tensor([[0.0, 0.0, 9.0, 9.0]])  # the student's top classes are the teacher's bottom ones
    got = topk_kl(s, t, k=2, temperature=1.0)
    # student is uniform over the teacher's top-2 -> KL(p_t||uniform) over {0, 1}
    p = torch.softmax(torch.tensor([5.0, 4.0]), 0)
    assert torch.allclose(got, (p * (p / 0.5).log()).sum(), atol=1e-6)


def test_top_mid_bottom_positions_and_duplicates():
    t = torch.tensor([[0.0, 9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0, 5.0]])  # ascending order: 0,2,4,6,8,9,7,5,3,1
    idx = top_mid_bottom_indices(t, 2)
    # sorted positions [0,2), [4,6), [8,10)
    assert idx.tolist() == [[0, 2, 8, 9, 3, 1]]
    idx = top_mid_bottom_indices(t, 4)  # 3K = 12 > C = 10: [0,4), [3,7), [6,10) -> duplicates kept
    order = [0, 2, 4, 6, 8, 9, 7, 5, 3, 1]
    assert idx.tolist() == [order[0:4] + order[3:7] + order[6:10]]
    s = _logits(1, 10, 8).float()
    got = top_mid_bottom_kl(s, t, k=4, temperature=2.0, reduction="mean_elements")
    sel = idx[0]
    expect = _kl_by_hand(s[:, sel].double(), t[:, sel].double(), 2.0)[0] * 4.0 / 12
    assert torch.allclose(got.double(), expect, atol=1e-6)


def test_gradient_flows_only_to_student():
    s = _logits(4, 6, 9).requires_grad_()
    t = _logits(4, 6, 10).requires_grad_()
    for fn in (lambda: kd_kl(s, t, temperature=3.0), lambda: topk_kl(s, t, k=3, temperature=3.0),
               lambda: top_mid_bottom_kl(s, t, k=1), lambda: feature_cosine(s, t), lambda: feature_mse(s, t)):
        s.grad = None
        fn().backward()
        assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0


def test_kd_kl_is_zero_at_teacher_and_gradient_matches_softmax_difference():
    t = _logits(3, 5, 11)
    assert kd_kl(t.clone(), t, temperature=4.0).abs() < 1e-12
    s = _logits(3, 5, 12).requires_grad_()
    kd_kl(s, t, temperature=4.0, reduction="batchmean").backward()
    # d/ds of T²·KL / B = T·(p_s − p_t) / B
    expect = 4.0 * (torch.softmax(s.detach() / 4, -1) - torch.softmax(t / 4, -1)) / 3
    assert torch.allclose(s.grad, expect, atol=1e-12)


def test_missing_teacher_skip_and_uniform():
    s, t = _logits(4, 5, 13), _logits(4, 5, 14)
    present = torch.tensor([True, False, True, False])
    t_bad = t.clone()
    t_bad[~present] = float("nan")

    skip = missing_teacher(t_bad, present, "skip")
    s_req = s.clone().requires_grad_()
    loss = kd_kl(s_req, skip.logits, temperature=2.0, reduction="mean_elements", mask=skip.mask)
    kept = kd_kl(s[present], t[present], temperature=2.0, reduction="none")
    assert torch.allclose(loss, kept.sum() / (2 * 5))  # divided by kept·C
    loss.backward()
    assert torch.isfinite(s_req.grad).all() and s_req.grad[~present].abs().sum() == 0
    none = kd_kl(s, skip.logits, reduction="none", mask=skip.mask)
    assert torch.equal(none[~present], torch.zeros(2, dtype=none.dtype))
    bm = kd_kl(s, skip.logits, temperature=2.0, mask=skip.mask)
    assert torch.allclose(bm, kept.mean())

    nobody = torch.zeros(4, dtype=torch.bool)
    s_req.grad = None
    zero = kd_kl(s_req, t_bad, mask=nobody, reduction="mean_elements")
    assert zero.item() == 0.0
    zero.backward()
    assert torch.equal(s_req.grad, torch.zeros_like(s))

    uni = missing_teacher(t_bad, present, "uniform")
    assert uni.mask is None and torch.equal(uni.logits[~present], torch.full((2, 5), -1.0, dtype=t.dtype))
    per = kd_kl(s, uni.logits, reduction="none")
    p_s = torch.log_softmax(s[~present], -1)
    assert torch.allclose(per[~present], (-math.log(5) - p_s).mean(-1))  # KL(uniform || p_s)
    with pytest.raises(ConfigError):
        missing_teacher(t, present, "drop")


def test_symmetric_kl_formula_and_symmetry():
    p, q = _logits(5, 7, 15), _logits(5, 7, 16)
    sp, sq = torch.softmax(p, -1), torch.softmax(q, -1)
    literal = 0.5 * ((sp * torch.log(sp / sq + 1e-10)).sum(-1) + (sq * torch.log(sq / sp + 1e-10)).sum(-1)).mean()
    assert torch.allclose(symmetric_kl(p, q), literal, atol=1e-12)
    assert torch.allclose(symmetric_kl(p, q), symmetric_kl(q, p), atol=1e-15)
    assert symmetric_kl(p, p).abs() < 1e-9
    # both sides are trained
    pr, qr = p.clone().requires_grad_(), q.clone().requires_grad_()
    symmetric_kl(pr, qr).backward()
    assert pr.grad.abs().sum() > 0 and qr.grad.abs().sum() > 0
    # an underflowing probability stays finite (the literal formula gives inf here)
    far = torch.tensor([[0.0, -200.0]], dtype=torch.float32)
    assert torch.isfinite(symmetric_kl(far, torch.zeros(1, 2)))
    assert symmetric_kl(p, q, reduction="none").shape == (5,)


def test_feature_losses_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    assert torch.allclose(feature_cosine(s, t), torch.tensor((1 - 1 / math.sqrt(2) + 0.0) / 2))
    # normalised: rows [1,0] vs [.707,.707] and [0,1] vs [0,1]; mean over B·D = 4 elements
    expect = ((1 - 1 / math.sqrt(2)) ** 2 + 0.5) / 4
    assert torch.allclose(feature_mse(s, t), torch.tensor(expect))
    assert torch.allclose(feature_mse(s, t, normalize=False), torch.tensor((0 + 1 + 0 + 1) / 4))


def test_bad_inputs_are_reported():
    with pytest.raises(DataError, match="same shape"):
        kd_kl(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="reduction"):
        kd_kl(torch.zeros(2, 3), torch.zeros(2, 3), reduction="sum")


def test_kd_configs_reject_bad_settings():
    from xmodal.methods.kd import KDTermConfig
    from xmodal.methods.textkd import KDConfig

    for cls in (KDTermConfig, KDConfig):
        cls().validate()
        for bad in ({"temperature": 0.0}, {"k": 0}, {"weight": -1.0}, {"feature_mse": -0.1}):
            with pytest.raises(ValueError):
                cls(**bad).validate()


def test_feature_terms_add_only_the_weighted_ones_and_log_them():
    s, t = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    start = torch.tensor(0.5)
    total, logged = add_feature_terms(start, s, t, cosine=2.0, mse=0.0)
    assert set(logged) == {"feat_cos"} and torch.allclose(total, 0.5 + 2.0 * feature_cosine(s, t))
    total, logged = add_feature_terms(start, s, t, cosine=0.5, mse=3.0)
    assert set(logged) == {"feat_cos", "feat_mse"} and not logged["feat_mse"].requires_grad
    assert torch.allclose(total, 0.5 + 0.5 * feature_cosine(s, t) + 3.0 * feature_mse(s, t))
    total, logged = add_feature_terms(start, s, t)
    assert total is start and logged == {}
