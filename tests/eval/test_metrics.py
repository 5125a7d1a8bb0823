import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, balanced_accuracy_score, top_k_accuracy_score

from xmodal.errors import DataError
from xmodal.eval import metrics as M


def sklearn_top1(scores: np.ndarray) -> np.ndarray:
    # sklearn orders tied scores by decreasing class index (stable ascending sort, reversed)
    return np.argsort(scores, axis=1, kind="mergesort")[:, -1]


# ---------------------------------------------------------------------------------- top-k
def test_topk_hand_computed_with_ties():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [1.0, 1.0, 1.0]])
    labels = torch.tensor([2, 0, 1])
    # ranks: row0 -> 1 (0.5 beats it); row1 -> 2 (0.4 beats, tied class 1 has larger index);
    # row2 -> 1 (tied class 2 has larger index, tied class 0 does not)
    assert M.label_rank(scores, labels).tolist() == [1, 2, 1]
    acc = M.topk_accuracy(scores, labels, ks=(1, 2, 3, 10))
    assert acc == pytest.approx({"top1": 0.0, "top2": 200 / 3, "top3": 100.0, "top10": 100.0})


@pytest.mark.parametrize("integer_scores", [False, True])
def test_topk_matches_sklearn(integer_scores):
    rng = np.random.default_rng(0)
    n, c = 300, 7
    scores = rng.integers(0, 4, size=(n, c)).astype(float) if integer_scores else rng.normal(size=(n, c))
    labels = rng.integers(0, c, size=n)
    labels[labels == 3] = 4  # an empty class must not matter
    ours = M.topk_accuracy(torch.as_tensor(scores), torch.as_tensor(labels), ks=(1, 2, 3, 5, 9))
    for k in (1, 2, 3, 5):
        ref = 100 * top_k_accuracy_score(labels, scores, k=k, labels=np.arange(c))
        assert ours[f"top{k}"] == pytest.approx(ref, abs=1e-9)
    assert ours["top9"] == 100.0  # k > C clamps to C
    assert ours["top1"] <= ours["top2"] <= ours["top3"] <= ours["top5"]


def test_top1_class_tie_rule_agrees_with_rank():
    scores = torch.randint(0, 3, (200, 5)).double()
    top = M.top1_class(scores)
    assert torch.equal(top, torch.as_tensor(sklearn_top1(scores.numpy())))
    assert torch.equal(M.label_rank(scores, top), torch.zeros(200, dtype=torch.long))


# ------------------------------------------------------------------------- class means
def test_mean_class_accuracy_hand_and_empty_class():
    # 4 columns, class 2 never appears: mean over classes 0, 1, 3 of (1/2, 1/1, 0/1)
    scores = torch.tensor([[5.0, 0, 0, 0], [0, 0, 0, 5.0], [0, 5.0, 0, 0], [0, 0, 5.0, 0]])
    labels = torch.tensor([0, 0, 1, 3])
    assert M.mean_class_accuracy(scores, labels) == pytest.approx(100 * (0.5 + 1 + 0) / 3)
    with pytest.raises(DataError, match="5 class columns"):
        M.mean_class_accuracy(scores, labels, num_classes=5)


@pytest.mark.parametrize("integer_scores", [False, True])
def test_mean_class_accuracy_matches_sklearn(integer_scores):
    rng = np.random.default_rng(1)
    n, c = 250, 6
    scores = rng.integers(0, 3, size=(n, c)).astype(float) if integer_scores else rng.normal(size=(n, c))
    labels = rng.choice([0, 1, 2, 4, 5], size=n)  # class 3 empty
    ours = M.mean_class_accuracy(scores, labels)
    with pytest.warns(UserWarning):  # sklearn warns about predicted classes absent from y_true
        ref = 100 * balanced_accuracy_score(labels, sklearn_top1(scores))
    assert ours == pytest.approx(ref, abs=1e-9)


def slow_class_mean_recall(scores, labels, k, classes=None):
    order = np.argsort(scores, axis=1, kind="mergesort")[:, ::-1][:, :k]
    recalls = []
    for c in sorted(set(labels.tolist())):
        if classes is not None and c not in classes:
            continue
        rows = labels == c
        recalls.append(np.mean([c in order[i] for i in np.flatnonzero(rows)]))
    return 100 * float(np.mean(recalls))


def test_class_mean_topk_recall_against_slow_reference():
    rng = np.random.default_rng(2)
    n, c = 200, 12
    scores = rng.integers(0, 5, size=(n, c)).astype(float)
    labels = rng.choice(np.arange(c - 2), size=n)  # the last two classes are empty
    for k in (1, 3, 5):
        assert M.class_mean_topk_recall(scores, labels, k=k) == pytest.approx(
            slow_class_mean_recall(scores, labels, k)
        )
    subset = [0, 3, 7, 11]  # 11 is absent from the labels and must be ignored
    assert M.class_mean_topk_recall(scores, labels, k=5, classes=subset) == pytest.approx(
        slow_class_mean_recall(scores, labels, 5, classes={0, 3, 7})
    )
    assert M.class_mean_topk_recall(scores, labels, k=1) == pytest.approx(
        M.mean_class_accuracy(scores, labels)
    )
    assert M.class_mean_topk_recall(scores, labels, k=40) == 100.0


def test_class_mean_topk_recall_hand_and_empty_subset():
    scores = torch.tensor([[3.0, 2, 1], [1.0, 2, 3], [1.0, 3, 2]])
    labels = torch.tensor([2, 2, 0])
    # k=2: class 2 -> row0 top2 {0,1} miss, row1 top2 {2,1} hit: 1/2; class 0 -> row2 top2 {1,2} miss
    assert M.class_mean_topk_recall(scores, labels, k=2) == pytest.approx(25.0)
    assert M.class_mean_topk_recall(scores, labels, k=2, classes=[2]) == pytest.approx(50.0)
    with pytest.raises(DataError, match="none of the 1 requested classes"):
        M.class_mean_topk_recall(scores, labels, k=2, classes=[1])


# ---------------------------------------------------------------------------------- AP
def test_average_precision_hand_computed():
    assert M.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(100 * (1 + 2 / 3) / 2)
    # tie at the top: threshold 1 -> P 1/2, R 1/2; threshold 0 -> P 2/3, R 1
    assert M.average_precision([1.0, 1.0, 0.0], [1, 0, 1]) == pytest.approx(100 * (0.5 * 0.5 + 0.5 * 2 / 3))
    assert M.average_precision([0.2, 0.1], [1, 1]) == pytest.approx(100.0)
    with pytest.raises(DataError, match="no positive"):
        M.average_precision([0.2, 0.1], [0, 0])


@pytest.mark.parametrize("integer_scores", [False, True])
def test_average_precision_matches_sklearn(integer_scores):
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(2, 60))
        s = rng.integers(0, 4, size=n).astype(float) if integer_scores else rng.normal(size=n)
        t = rng.random(n) < rng.uniform(0.05, 0.9)
        if not t.any():
            t[0] = True
        assert M.average_precision(s, t) == pytest.approx(100 * average_precision_score(t, s), abs=1e-9)


def test_mean_average_precision_matches_sklearn_and_skips_classes_without_positives(monkeypatch):
    rng = np.random.default_rng(4)
    n, k = 120, 9
    scores = np.round(rng.normal(size=(n, k)), 1)  # rounding makes plenty of ties
    targets = (rng.random((n, k)) < 0.2).astype(int)
    targets[:, 4] = 0  # no positives: skipped, not counted as 0 and not NaN
    targets[:, 7] = 1  # all positives: AP = 100
    keep = targets.sum(0) > 0
    ref = 100 * average_precision_score(targets[:, keep], scores[:, keep], average="macro")
    ours = M.mean_average_precision(scores, targets)
    assert ours == pytest.approx(ref, abs=1e-9)
    monkeypatch.setattr(M, "_CHUNK_ELEMENTS", n * 2)  # two classes per chunk
    assert M.mean_average_precision(scores, targets) == pytest.approx(ref, abs=1e-9)
    with pytest.raises(DataError, match="no class has a positive"):
        M.mean_average_precision(scores, np.zeros_like(targets))


# -------------------------------------------------------------------------- classification
def test_classification_report_single_label_keys():
    rng = np.random.default_rng(5)
    small = M.classification_report(rng.normal(size=(30, 3)), rng.integers(0, 3, 30))
    assert set(small) == {"top1", "mean_class_acc"}  # top-5 of 3 classes would be trivially 100
    scores, labels = rng.normal(size=(40, 10)), rng.integers(0, 10, 40)
    big = M.classification_report(torch.as_tensor(scores).half(), labels)
    assert set(big) == {"top1", "top5", "mean_class_acc"}
    assert big["top1"] <= big["top5"]


def test_classification_report_multilabel_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3], [0.4, 0.3, 0.6]])
    labels = torch.tensor([[1, 0, 0], [0, 0, 1], [1, 0, 1]])
    rep = M.classification_report(scores, labels, multilabel=True)
    # argmax per row: 0 (pos), 1 (neg), 2 (pos) -> 2/3 hits
    assert rep["top1_hit"] == pytest.approx(200 / 3)
    # class 0 AP: order .9(+) .4(+) .2 -> 1; class 2 AP: .6(+) .5(-) .3(+) -> (1 + 2/3)/2; class 1 skipped
    assert rep["mAP"] == pytest.approx(100 * (1 + (1 + 2 / 3) / 2) / 2)


def test_input_errors_are_one_line_data_errors():
    with pytest.raises(DataError, match="finite"):
        M.topk_accuracy(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))
    with pytest.raises(DataError, match=r"class indices in \[0, 1\]"):
        M.topk_accuracy(torch.zeros(2, 2), torch.tensor([0, 2]))
    with pytest.raises(DataError, match="expected shape"):
        M.classification_report(torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(DataError, match="binary"):
        M.mean_average_precision(torch.zeros(2, 2), torch.full((2, 2), 0.5))


# ------------------------------------------------------------------------------ retrieval
def slow_ranks(q, g, ql=None, gl=None, ties="optimistic"):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    sims = q @ g.T
    ranks = []
    for i in range(len(q)):
        correct = [j for j in range(len(g)) if (j == i if ql is None else ql[i] == gl[j])]
        best = max(sims[i, j] for j in correct)
        wrong = [sims[i, j] for j in range(len(g)) if j not in correct]
        # equal up to rounding counts as a tie, as in retrieval_ranks
        ranks.append(1 + sum(w > best + 1e-9 if ties == "optimistic" else w >= best - 1e-9 for w in wrong))
    return np.array(ranks)


def test_identical_query_and_gallery():
    x = torch.randn(50, 16)
    m = M.retrieval_metrics(x, x.clone())
    assert m == {"R@1": 100.0, "R@5": 100.0, "R@10": 100.0, "median_rank": 1.0, "mean_rank": 1.0}


def test_retrieval_hand_computed():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    g = torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.0, 1.0]])
    # q0 -> g0 sim ~.995, beaten by g1 (1.0): rank 2; q1 -> g1 sim 0, beaten by g0, g2: rank 3;
    # q2 -> g2 sim .707, tied with g1, beaten by g0 (.77): optimistic 2, pessimistic 3
    assert M.retrieval_ranks(q, g).tolist() == [2, 3, 2]
    assert M.retrieval_ranks(q, g, ties="pessimistic").tolist() == [2, 3, 3]
    m = M.retrieval_metrics(q, g, ks=(1, 2))
    assert m == pytest.approx({"R@1": 0.0, "R@2": 200 / 3, "median_rank": 2.0, "mean_rank": 7 / 3})
    # unnormalised dot products: q0·g0 = 1 = q0·g1 (tie); q2·g0 = 1.1 > q2·g2 = 1 = q2·g1
    assert M.retrieval_ranks(q, g, normalize=False).tolist() == [1, 3, 2]


def test_optimistic_vs_pessimistic_all_tied():
    x = torch.ones(6, 4)
    assert M.retrieval_metrics(x, x)["R@1"] == 100.0
    pess = M.retrieval_metrics(x, x, ties="pessimistic")
    assert pess["median_rank"] == 6.0 and pess["mean_rank"] == 6.0 and pess["R@5"] == 0.0


@pytest.mark.parametrize("ties", ["optimistic", "pessimistic"])
def test_retrieval_matches_slow_reference(ties):
    rng = np.random.default_rng(6)
    q = rng.integers(-2, 3, size=(40, 3)).astype(float)  # few distinct directions: many tied sims
    g = q + rng.integers(-1, 2, size=(40, 3))
    q[(q == 0).all(1)] = 1.0
    g[(g == 0).all(1)] = 1.0
    ref = slow_ranks(q, g, ties=ties)
    assert M.retrieval_ranks(q, g, ties=ties).numpy().tolist() == ref.tolist()
    assert M.retrieval_ranks(q, g, ties=ties, chunk_size=7).numpy().tolist() == ref.tolist()
    ql, gl = rng.integers(0, 4, 40), rng.integers(0, 4, 55)
    g2 = rng.integers(-2, 3, size=(55, 3)).astype(float) + 0.5
    ref = slow_ranks(q, g2, ql, gl, ties=ties)
    got = M.retrieval_ranks(q, g2, query_labels=ql, gallery_labels=gl, ties=ties, chunk_size=9)
    assert got.numpy().tolist() == ref.tolist()


def test_recall_is_monotone_and_median_convention():
    rng = np.random.default_rng(7)
    for _ in range(5):
        m = M.retrieval_metrics(rng.normal(size=(60, 8)), rng.normal(size=(60, 8)), ks=(1, 5, 10))
        assert m["R@1"] <= m["R@5"] <= m["R@10"]
        assert 1 <= m["median_rank"] <= 60
    # even count: floor of the mean of the two middle ranks (VSE++ / CAV-MAE convention)
    assert M.rank_summary(torch.tensor([1, 2, 3, 4]))["median_rank"] == 2.0
    assert M.rank_summary(torch.tensor([1, 3, 4, 9]))["median_rank"] == 3.0
    assert M.rank_summary(torch.tensor([5, 1, 7]), ks=(1,)) == pytest.approx(
        {"R@1": 100 / 3, "median_rank": 5.0, "mean_rank": 13 / 3}
    )


def test_label_retrieval_multi_hot_and_missing_class():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.7, 0.7]])
    ql = torch.tensor([[1, 0, 1], [0, 1, 0]])
    gl = torch.tensor([[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    # q0 shares classes with g0 and g1; best correct is g1 (sim 1): rank 1.
    # q1 shares only with g2 (sim .707), beaten by wrong g0 (1): rank 2
    assert M.retrieval_ranks(q, g, query_labels=ql, gallery_labels=gl).tolist() == [1, 2]
    with pytest.raises(DataError, match="query 1 .* has no gallery item of its class"):
        M.retrieval_ranks(q, g, query_labels=torch.tensor([0, 5]), gallery_labels=torch.tensor([0, 1, 0]))
    with pytest.raises(DataError, match="pairs query i with gallery i"):
        M.retrieval_ranks(q, g)
    with pytest.raises(DataError, match="both query_labels and gallery_labels"):
        M.retrieval_ranks(q, g, query_labels=torch.tensor([0, 1]))


def test_retrieval_report_directions():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.0, 1.0]])
    rep = M.retrieval_report(a, b, names=("video", "audio"), ks=(1,))
    a2b, b2a = M.retrieval_metrics(a, b, ks=(1,)), M.retrieval_metrics(b, a, ks=(1,))
    assert rep == {
        **{f"video2audio_{k}": v for k, v in a2b.items()},
        **{f"audio2video_{k}": v for k, v in b2a.items()},
    }
    assert rep["video2audio_mean_rank"] != rep["audio2video_mean_rank"]
    labels = torch.tensor([0, 1, 0])
    lab = M.retrieval_report(a, b, labels=labels, ks=(1,))
    assert (
        lab["a2b_R@1"]
        == M.retrieval_metrics(a, b, query_labels=labels, gallery_labels=labels, ks=(1,))["R@1"]
    )
    assert not math.isnan(lab["b2a_mean_rank"])


def test_duplicates_tie_regardless_of_chunking():
    # exact-arithmetic ties that matmul kernels round differently depending on the chunk shape
    rng = np.random.default_rng(8)
    x = torch.as_tensor(rng.integers(-2, 3, size=(64, 3)).astype(np.float32)) + 0.25
    g = x[rng.integers(0, 64, 64)]  # many duplicate gallery rows
    for ties in ("optimistic", "pessimistic"):
        ref = M.retrieval_ranks(x, g, ties=ties)
        for chunk in (1, 5, 64):
            assert torch.equal(M.retrieval_ranks(x, g, ties=ties, chunk_size=chunk), ref)
    opt, pes = M.retrieval_ranks(x, g), M.retrieval_ranks(x, g, ties="pessimistic")
    assert (opt <= pes).all() and (opt < pes).any()
