"""Algorithm 1 as a generic diagnostic (analysis/mfh.py)."""

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xmodal.analysis import mfh
from xmodal.data.embedded import gauss
from xmodal.errors import ConfigError, DataError


def loop_saliency(head, feats, target, perms, distance="mse"):
    """Reference: one forward per (channel, repeat), perms [D, M, B] given."""
    d, m, _ = perms.shape
    raw, dec = torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    f = (lambda a, b: (a - b).square().mean()) if distance == "mse" else (lambda a, b: (a - b).abs().mean())
    base = head(feats)
    for i in range(d):
        for r in range(m):
            x = feats.clone()
            x[:, i] = feats[perms[i, r], i]
            out = head(x)
            raw[i] += f(out, target).item() / m
            dec[i] += f(out, base).item() / m
    return raw, dec


def _mlp(d_in, hidden, c, seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, c))


@pytest.mark.parametrize("kind", ["linear", "mlp", "mlp-callable", "conv"])
def test_batched_permutations_equal_the_per_channel_loop(kind):
    g = torch.Generator().manual_seed(0)
    if kind == "conv":  # a place with spatial extent: channel i of [B, D, H, W] is permuted as a whole
        feats = torch.randn(12, 5, 3, 2, generator=g)
        head = nn.Sequential(nn.Conv2d(5, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(24, 3))
    else:
        feats = torch.randn(12, 6, generator=g)
        head = nn.Linear(6, 3) if kind == "linear" else _mlp(6, 16, 3, 0)
        if kind == "mlp-callable":  # not an nn.Sequential: the generic [P·B, D] stack path
            head = (lambda m: lambda h: m(h))(head)
    target = torch.randn(12, 3, generator=g)
    d, m = feats.shape[1], 4
    with torch.no_grad():
        for dist in ("mse", "mae"):
            res = mfh.modality_general_saliency(head, feats, target, repeats=m, permutations="independent", distance=dist, generator=torch.Generator().manual_seed(9))
            # the function's draws: one [D·M, B] block (a single chunk here), channel-major
            perms = torch.rand(d * m, 12, generator=torch.Generator().manual_seed(9)).argsort(1).view(d, m, 12)
            raw, dec = loop_saliency(head, feats, target, perms, dist)
            torch.testing.assert_close(res.raw, raw, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(res.decisive, dec, rtol=1e-5, atol=1e-6)
            assert res.baseline == pytest.approx(((head(feats) - target).square() if dist == "mse" else (head(feats) - target).abs()).mean().item(), rel=1e-5)


def test_chunking_does_not_change_composed_scores():
    # composed permutations are drawn once per batch, so chunk size only changes the batching
    g = torch.Generator().manual_seed(1)
    feats, target = torch.randn(20, 8, generator=g), torch.randn(20, 2, generator=g)
    head = _mlp(8, 8, 2, 1)
    kw = dict(repeats=5, permutations="composed")
    a = mfh.modality_general_saliency(head, feats, target, generator=torch.Generator().manual_seed(2), chunk_elems=1 << 24, **kw)
    b = mfh.modality_general_saliency(head, feats, target, generator=torch.Generator().manual_seed(2), chunk_elems=30, **kw)
    torch.testing.assert_close(a.raw, b.raw)


def test_composed_permutations_equal_their_loop_and_sum_over_batches():
    g = torch.Generator().manual_seed(3)
    feats, target = torch.randn(10, 4, generator=g), torch.randn(10, 2, generator=g)
    head, d, m = _mlp(4, 8, 2, 3), 4, 3
    res = mfh.modality_general_saliency(head, feats, target, repeats=m, batch_size=6, generator=torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)
    raw = torch.zeros(d, dtype=torch.float64)
    with torch.no_grad():
        for s in range(0, 10, 6):  # batches of 6 and 4, scores summed over batches
            b = min(6, 10 - s)
            sigma = torch.rand(m, b, generator=gen).argsort(1)
            tau = torch.rand(d, b, generator=gen).argsort(1)
            perms = torch.stack([torch.stack([sigma[r][tau[i]] for r in range(m)]) for i in range(d)])
            raw += loop_saliency(head, feats[s : s + b], target[s : s + b], perms)[0]
    torch.testing.assert_close(res.raw, raw, rtol=1e-5, atol=1e-6)
    assert res.batch_size == 6 and res.n_samples == 10


def test_scores_ranking_and_linear_theory():
    """Linear head w, f_b = x·v: E[gain_i] = 2·Σ_c w_ic v_ic / C, E[decisive_i] = 2·Σ_c w_ic² / C."""
    g = torch.Generator().manual_seed(5)
    n, d = 20000, 6
    x = torch.randn(n, d, generator=g)
    head = nn.Linear(d, 2, bias=False)
    w = torch.tensor([[2.0, 1.0, 0.5, 1.5, 0.0, 1.0], [-2.0, -1.0, -0.5, -1.5, 0.0, -1.0]])
    v = w.clone()
    v[:, 3:] = 0  # f_b sees channels 0..2 only
    with torch.no_grad():
        head.weight.copy_(w)
        res = mfh.modality_general_saliency(head, x, x @ v.T, repeats=20, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(res.gain.float(), (w * v).sum(0), rtol=0.05, atol=0.1)
    torch.testing.assert_close(res.decisive.float(), (w * w).sum(0), rtol=0.05, atol=0.1)
    assert res.ranking[:3].tolist() == [0, 1, 2] and res.scores.max() == 1 and res.scores.min() == 0
    share = (w[:, :3] ** 2).sum() / (w**2).sum()
    assert mfh.estimate_gamma(res) == pytest.approx(share.item(), abs=0.03)


def test_calibration_makes_gamma_hat_scale_free():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3000, 4, generator=g)
    head = nn.Linear(4, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]]))
        target = 5.0 * (x[:, :2] @ head.weight[:, :2].T)  # f_b carries half the signal, 5× louder
        raw = mfh.modality_general_saliency(head, x, target, repeats=10, generator=torch.Generator().manual_seed(1))
        cal = mfh.modality_general_saliency(head, x, target, repeats=10, calibrate=True, generator=torch.Generator().manual_seed(1))
    assert mfh.estimate_gamma(raw) == 1.0  # 5× overestimate, clipped
    assert mfh.estimate_gamma(cal) == pytest.approx(0.5, abs=0.05)
    assert cal.target_scale == pytest.approx(0.2, rel=0.05)


def test_verdicts_and_top_channels():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2000, 5, generator=g)
    head = nn.Linear(5, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0], [-1.0, -1.0, 0.0, 0.0, 0.0]]))
        general = mfh.modality_general_saliency(head, x, head(x), repeats=10)
        specific = mfh.modality_general_saliency(head, x, torch.zeros(2000, 2), repeats=10)
    yes, no = mfh.kd_verdict(general, teacher_acc=90.0, student_acc=60.0), mfh.kd_verdict(specific)
    assert yes.helps and yes.gamma_hat > 0.9 and sorted(yes.top_channels) == [0, 1]
    assert yes.text.startswith("KD expected to help") and "+30.0 points" in yes.text
    assert not no.helps and no.gamma_hat == 0.0 and no.text.startswith("KD expected not to help")


def test_nonlinear_mlp_teacher_on_setting_t_finds_general_channels():
    """Algorithm 1 end to end with generic torch models: MLP teacher and student, input place.

    Trained briefly: 32-unit MLPs on 200 samples can memorise the labels through the noise
    channels (CE → 0 on both sides), after which they also agree through noise and precision drops
    to ≈ 0.65 (chance: 0.2).
    """
    precs = []
    for run in range(2):
        d = gauss.table2_run(10, run)
        xa, xb, y = (torch.from_numpy(v) for v in (d.train_a.x1, d.train_a.x2, d.train_a.y))
        f_a, f_b = _mlp(50, 32, 2, run), _mlp(50, 32, 2, 100 + run)
        out = mfh.joint_pretrain(f_a, f_b, (xa, xb, y), steps=300, lr=0.003)
        assert out.last_terms["ce_a"] < 0.4 and out.losses[-1] < 0.5 * out.losses[0]
        with torch.no_grad():
            res = mfh.modality_general_saliency(f_a, xa, f_b(xb), repeats=20, generator=torch.Generator().manual_seed(run))
        precs.append(mfh.precision_at_k(res.ranking, d.layout.general_channels))
    assert sum(precs) / len(precs) >= 0.75, precs


def test_features_at_head_after_and_masking_on_a_hidden_place():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.Sequential(nn.ReLU(), nn.Linear(10, 8), nn.Tanh()), nn.Linear(8, 3))
    x = torch.randn(7, 6)
    feats = mfh.features_at(model, "1.1", x, batch_size=3)
    head = mfh.head_after(model, "1.1")
    assert feats.shape == (7, 8) and len(head) == 2  # Tanh, then the last Linear
    with torch.no_grad():
        torch.testing.assert_close(head(feats), model(x))
        with mfh.mask_channels(model, "1.1", [2, 5], fill="batch_mean"):
            masked = model(x)
        torch.testing.assert_close(masked, head(mfh.remove_channels(feats, [2, 5], "batch_mean")))
        torch.testing.assert_close(model(x), head(feats))  # hook removed on exit
    assert model.training  # features_at restores the mode


def test_feature_dict_inputs():
    class TwoKeys(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(3, 4)

        def forward(self, batch):
            return self.enc(batch["a"]) * batch["scale"]

    m = TwoKeys()
    batch = {"a": torch.randn(5, 3), "scale": 2.0, "uid": list("abcde")}
    with torch.no_grad():
        torch.testing.assert_close(mfh.features_at(m, "enc", batch, batch_size=2), m.enc(batch["a"]))


def test_remove_channels_fills():
    x = torch.arange(24.0).view(4, 3, 2)
    out = mfh.remove_channels(x, [1], "batch_mean")
    torch.testing.assert_close(out[:, 1], x[:, 1].mean(0, keepdim=True).expand(4, 2))
    torch.testing.assert_close(out[:, [0, 2]], x[:, [0, 2]])
    assert mfh.remove_channels(x, [0, 2], "zero")[:, [0, 2]].abs().sum() == 0
    assert mfh.remove_channels(x, [], "zero").equal(x)


def test_channels_to_remove_modes():
    ranking = torch.tensor([4, 0, 3, 1, 2, 7, 6, 5, 9, 8])  # most salient first
    assert mfh.channels_to_remove(ranking, 0.3, 1).tolist() == [5, 9, 8]  # least salient
    assert mfh.channels_to_remove(ranking, 0.3, mfh.RemovalMode.MOST_SALIENT).tolist() == [4, 0, 3]
    rnd = mfh.channels_to_remove(ranking, 0.7, 0, generator=torch.Generator().manual_seed(0))
    assert len(rnd) == 7 == len(set(rnd.tolist()))
    assert rnd.equal(mfh.channels_to_remove(ranking, 0.7, 0, generator=torch.Generator().manual_seed(0)))
    assert len(mfh.channels_to_remove(torch.arange(128), 0.75, 2)) == 96 == math.floor(0.75 * 128)
    assert len(mfh.channels_to_remove(torch.arange(10), 0.0, 1)) == 0
    with pytest.raises(ConfigError, match="mode"):
        mfh.channels_to_remove(ranking, 0.5, 3)
    with pytest.raises(ConfigError, match="ratio"):
        mfh.channels_to_remove(ranking, 1.5, 1)


def test_precision_at_k():
    assert mfh.precision_at_k([3, 1, 0, 2], [1, 3]) == 1.0
    assert mfh.precision_at_k([3, 0, 1, 2], [1, 3]) == 0.5
    assert mfh.precision_at_k([3, 0, 1, 2], [1, 3], k=3) == pytest.approx(2 / 3)
    assert math.isnan(mfh.precision_at_k([0, 1], []))


def test_joint_pretrain_cycles_a_loader_of_dicts():
    torch.manual_seed(0)
    xa, xb = torch.randn(40, 3), torch.randn(40, 2)
    y = (xa[:, 0] + xb[:, 0] > 0).long()
    loader = [{"a": xa[i : i + 16], "b": xb[i : i + 16], "label": y[i : i + 16]} for i in range(0, 40, 16)]
    f_a, f_b = nn.Linear(3, 2), nn.Linear(2, 2)
    out = mfh.joint_pretrain(f_a, f_b, loader, steps=50, optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
    assert len(out.losses) == 50 and sum(out.losses[-3:]) < sum(out.losses[:3])
    assert not f_a.training
    with torch.no_grad():  # the MSE term pulls the two nets' logits together
        assert F.mse_loss(f_a(xa), f_b(xb)) < out.losses[0]
    with pytest.raises(DataError, match="empty"):
        mfh.joint_pretrain(f_a, f_b, [], steps=1)


def test_user_errors():
    head = nn.Linear(3, 2)
    with pytest.raises(ConfigError, match="distance"):
        mfh.modality_general_saliency(head, torch.randn(4, 3), torch.randn(4, 2), distance="l2")
    with pytest.raises(ConfigError, match="permutations"):
        mfh.modality_general_saliency(head, torch.randn(4, 3), torch.randn(4, 2), permutations="some")
    with pytest.raises(DataError, match="equal N"):
        mfh.modality_general_saliency(head, torch.randn(4, 3), torch.randn(5, 2))
    named = nn.Sequential(OrderedDict(encoder=nn.Linear(3, 2), head=nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="did you mean 'encoder'"):
        mfh.features_at(named, "encodr", torch.randn(2, 3))

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(ConfigError, match="not nn.Sequential"):
        mfh.head_after(Custom(), "fc")
    with pytest.raises(ConfigError, match="fill"):
        mfh.remove_channels(torch.randn(2, 3), [0], "median")
