import math

import pytest
import torch

from xmodal.errors import ConfigError
from xmodal.losses.mae import (
    cavmae_contrastive,
    mae_loss,
    patchify,
    random_masking,
    structured_noise,
    unpatchify,
)


@pytest.mark.parametrize("length,kept", [(512, 128), (196, 49)])
def test_random_masking_counts_and_restore(length, kept):
    torch.manual_seed(0)
    x = torch.randn(3, length, 4)
    noise = torch.rand(3, length)
    out = random_masking(x, 0.75, noise)
    assert out.x_kept.shape == (3, kept, 4)
    assert out.mask.sum(1).tolist() == [length - kept] * 3
    # kept tokens = the smallest-noise ones, in ascending-noise order
    order = noise.argsort(1)[:, :kept]
    torch.testing.assert_close(out.x_kept, torch.gather(x, 1, order[..., None].expand(-1, -1, 4)))
    assert torch.equal(out.mask.bool(), ~torch.zeros_like(out.mask, dtype=torch.bool).scatter(1, order, True))
    # un-shuffling [kept; removed] with ids_restore gives back the original sequence
    removed = torch.gather(x, 1, noise.argsort(1)[:, kept:, None].expand(-1, -1, 4))
    restored = torch.gather(torch.cat([out.x_kept, removed], 1), 1, out.ids_restore[..., None].expand(-1, -1, 4))
    assert torch.equal(restored, x)


def test_random_masking_truncates_keep():
    assert random_masking(torch.zeros(1, 10, 1), 0.85).x_kept.shape[1] == int(10 * (1 - 0.85)) == 1


@pytest.mark.parametrize("mode", ["time", "freq", "tf", "unstructured"])
def test_structured_noise_removes_same_count_and_whole_lines(mode):
    torch.manual_seed(1)
    f, t = 8, 64
    noise = torch.rand(4, f * t)
    raised = structured_noise(noise.clone(), (f, t), 0.75, mode, torch.Generator().manual_seed(0))
    mask = random_masking(torch.zeros(4, f * t, 1), 0.75, raised).mask.view(4, f, t).bool()
    assert mask.sum((1, 2)).tolist() == [384] * 4
    hit = (raised == 1.1).view(4, f, t)
    if mode == "time":  # 48 whole columns = exactly the 384 removed
        assert torch.equal(mask, hit) and (mask.all(1).sum(1) == 48).all()
    elif mode == "freq":
        assert torch.equal(mask, hit) and (mask.all(2).sum(1) == 6).all()
    elif mode == "tf":  # 33 columns + 4 rows = 388 raised tokens, 384 of them removed
        assert (hit.sum((1, 2)) == 33 * 8 + 4 * 64 - 33 * 4).all() and not (mask & ~hit).any()
    else:
        assert torch.equal(raised, noise)


def test_structured_noise_rejects_unknown_mode():
    with pytest.raises(ConfigError, match="mask_mode"):
        structured_noise(torch.rand(1, 8), (2, 4), 0.5, "diagonal")


def test_patchify_round_trip_and_order():
    imgs = torch.randn(2, 3, 8, 12)
    p = patchify(imgs, 4)
    assert p.shape == (2, 6, 48)
    assert torch.equal(unpatchify(p, 4, 3, (2, 3)), imgs)
    # token 4 = patch row 1, col 1; element j = (pixel row, pixel col, channel), channel fastest
    assert p[1, 4, 2 * 12 + 3 * 3 + 1] == imgs[1, 1, 4 + 2, 4 + 3]


def test_mae_loss_matches_restatement():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    mask = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.float32)
    total, count = 0.0, 0
    for b in range(2):
        for i in range(5):
            if mask[b, i]:
                t = target[b, i].tolist()
                mu = sum(t) / 6
                var = sum((x - mu) ** 2 for x in t) / 5  # unbiased
                tn = [(x - mu) / math.sqrt(var + 1e-6) for x in t]
                total += sum((pv - tv) ** 2 for pv, tv in zip(pred[b, i].tolist(), tn)) / 6
                count += 1
    assert mae_loss(pred, target, mask).item() == pytest.approx(total / count, rel=1e-5)
    raw = ((pred - target) ** 2).mean(-1)
    assert mae_loss(pred, target, mask, norm_pix=False).item() == pytest.approx(((raw * mask).sum() / 4).item(), rel=1e-6)


def test_contrastive_direction_and_temperature_3x3():
    # unit rows after normalisation: a_i = e_i (scaled to test the L2 step), v_j as below
    a = torch.diag(torch.tensor([2.0, 3.0, 0.5]))
    v = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])
    # S = A Vᵀ / 0.05 = [[20, 16, 0], [0, 12, 0], [0, 0, 20]]
    lse = lambda *z: math.log(sum(math.exp(x) for x in z))
    dim0 = -(20 - lse(20, 0, 0) + 12 - lse(16, 12, 0) + 20 - lse(0, 0, 20)) / 3  # softmax over audios (columns)
    dim1 = -(20 - lse(20, 16, 0) + 12 - lse(0, 12, 0) + 20 - lse(0, 0, 20)) / 3  # softmax over visuals (rows)
    out = cavmae_contrastive(a, v)
    assert out.total.item() == pytest.approx(dim0, rel=1e-5)
    assert out.terms["c_acc"].item() == pytest.approx(2 / 3)  # column 1's best audio is audio 0
    sym = cavmae_contrastive(a, v, symmetric=True)
    assert sym.total.item() == pytest.approx((dim0 + dim1) / 2, rel=1e-5)
    assert sym.terms["c_acc"].item() == pytest.approx((2 / 3 + 1) / 2)
    assert cavmae_contrastive(a, v, temperature=0.1).total.item() == pytest.approx(
        -(10 - lse(10, 0, 0) + 6 - lse(8, 6, 0) + 10 - lse(0, 0, 10)) / 3, rel=1e-5)
