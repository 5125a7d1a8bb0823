import math

import pytest
import torch

from xmodal.errors import DataError
from xmodal.eval.probe import knn_classify, linear_probe, stratified_holdout

C, D = 10, 16


def blobs(n_per_class: int, noise_seed: int, sep: float = 4.0):
    """Gaussian blobs around fixed class centres (the same for every noise_seed)."""
    centres = torch.randn(C, D, generator=torch.Generator().manual_seed(123)) * sep / math.sqrt(D) * 2
    y = torch.arange(C).repeat_interleave(n_per_class)
    return centres[y] + torch.randn(len(y), D, generator=torch.Generator().manual_seed(noise_seed)), y


def random_task(seed: int):
    g = torch.Generator().manual_seed(seed)
    xtr, xte = torch.randn(400, D, generator=g), torch.randn(300, D, generator=g)
    return xtr, torch.randint(0, C, (400,), generator=g), xte, torch.randint(0, C, (300,), generator=g)


@pytest.fixture(scope="module")
def separable():
    return (*blobs(40, noise_seed=0), *blobs(20, noise_seed=1))


# ------------------------------------------------------------------------------ linear probe
def test_linear_probe_separable_blobs(separable):
    res = linear_probe(*separable)
    assert res.top1 >= 95.0 and res.mean_class_acc >= 95.0 and res.top5 >= res.top1
    assert (res.num_classes, res.num_train, res.num_test) == (10, 400, 200)
    assert res.scores.shape == (200, 10)
    assert set(res.val_top1) == {1e-5, 1e-4, 1e-3, 1e-2} and res.params["weight_decay"] in res.val_top1
    assert set(res.metrics()) == {"top1", "top5", "mean_class_acc"}


def test_linear_probe_random_labels_is_near_chance():
    res = linear_probe(*random_task(0), weight_decay=1e-3)
    assert res.top1 <= 20.0  # chance is 10 %; 300 test samples give a std of about 1.7 %
    assert res.val_top1 == {}


def test_linear_probe_selection_never_sees_test_labels_and_is_deterministic(separable):
    xtr, ytr, xte, yte = separable
    a = linear_probe(xtr, ytr, xte, yte)
    b = linear_probe(xtr, ytr, xte, yte[torch.randperm(len(yte), generator=torch.Generator().manual_seed(0))])
    assert a.params == b.params and a.val_top1 == b.val_top1
    assert torch.equal(a.scores, b.scores)


def test_linear_probe_standardises_with_train_statistics(separable):
    xtr, ytr, xte, yte = separable
    xtr, xte = xtr.double(), xte.double()  # float32 would lose digits to the shift
    scale, shift = (
        torch.logspace(-3, 3, D, dtype=torch.float64),
        torch.linspace(-50, 50, D, dtype=torch.float64),
    )
    a = linear_probe(xtr, ytr, xte, yte, weight_decay=1e-3)
    b = linear_probe(xtr * scale + shift, ytr, xte * scale + shift, yte, weight_decay=1e-3)
    assert a.top1 == b.top1
    assert torch.allclose(a.scores, b.scores, atol=1e-4)


def test_linear_probe_minibatch_adam(separable):
    res = linear_probe(*separable, weight_decay=1e-4, batch_size=64, epochs=20, lr=1e-2)
    assert res.top1 >= 95.0


def test_linear_probe_errors(separable):
    xtr, ytr, xte, yte = separable
    with pytest.raises(DataError, match="expected dim 16"):
        linear_probe(xtr, ytr, xte[:, :8], yte)
    with pytest.raises(DataError, match="finite"):
        linear_probe(xtr.clone().fill_(math.nan), ytr, xte, yte)
    with pytest.raises(DataError, match="below num_classes=5"):
        linear_probe(xtr, ytr, xte, yte, num_classes=5)
    with pytest.raises(DataError, match="single train sample"):
        linear_probe(xtr[:10:1], torch.arange(10), xte, yte)


def test_stratified_holdout():
    y = torch.tensor([0] * 10 + [1] * 3 + [2] + [3] * 2)
    fit, held = stratified_holdout(y, 0.2, seed=0)
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(len(y)))
    assert torch.bincount(y[held], minlength=4).tolist() == [2, 1, 0, 1]  # >= 1 per class with >= 2
    assert torch.equal(stratified_holdout(y, 0.2, seed=0)[1], held)
    assert not torch.equal(stratified_holdout(y, 0.2, seed=1)[1], held)


# ---------------------------------------------------------------------------------------- kNN
def test_knn_separable_and_random(separable):
    res = knn_classify(*separable, k=20)
    assert res.top1 >= 95.0 and res.params == {"k": 20.0, "temperature": 0.07}
    assert knn_classify(*random_task(1), k=20).top1 <= 20.0


def slow_knn_scores(xtr, ytr, xte, k, t, num_classes):
    xtr = xtr / xtr.norm(dim=1, keepdim=True)
    xte = xte / xte.norm(dim=1, keepdim=True)
    out = torch.zeros(len(xte), num_classes, dtype=torch.float64)
    for i in range(len(xte)):
        sims = [(float(xte[i] @ xtr[j]), j) for j in range(len(xtr))]
        top = sorted(sims, reverse=True)[:k]
        for s, j in top:
            out[i, ytr[j]] += math.exp((s - top[0][0]) / t)
    return out


def test_knn_matches_slow_reference_and_chunking():
    g = torch.Generator().manual_seed(2)
    xtr, ytr = torch.randn(50, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (50,), generator=g)
    xte, yte = torch.randn(13, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (13,), generator=g)
    ref = slow_knn_scores(xtr, ytr, xte, k=7, t=0.1, num_classes=4)
    for chunk in (None, 4):
        res = knn_classify(xtr, ytr, xte, yte, k=7, temperature=0.1, chunk_size=chunk)
        assert torch.allclose(res.scores, ref)
    assert res.top5 is None and "top5" not in res.metrics()  # 4 classes: top-5 would be trivial


def test_knn_hand_computed_and_tiny_temperature():
    xtr = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    ytr = torch.tensor([0, 1, 1])
    xte, yte = torch.tensor([[2.0, 0.1]]), torch.tensor([0])
    # k=2 neighbours of ~(1, .05): x0 (sim .9988) and x2 (.7424); weights exp((s - .9988)/T)
    res = knn_classify(xtr, ytr, xte, yte, k=2, temperature=0.5)
    s0, s2 = 2 / math.hypot(2, 0.1), 2.1 / (math.hypot(2, 0.1) * math.sqrt(2))
    assert torch.allclose(res.scores, torch.tensor([[1.0, math.exp((s2 - s0) / 0.5), 0.0]]).float()[:, :2])
    assert res.top1 == 100.0
    # k larger than the train set is clamped; T = 1e-3 would underflow exp(sim/T) without the shift
    res = knn_classify(xtr, ytr, xte, yte, k=50, temperature=1e-3)
    assert res.params["k"] == 3.0 and res.top1 == 100.0 and torch.isfinite(res.scores).all()
    with pytest.raises(DataError, match="temperature > 0"):
        knn_classify(xtr, ytr, xte, yte, temperature=0.0)
