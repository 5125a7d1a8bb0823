import pytest
import torch

from xmodal.errors import DataError
from xmodal.eval.aggregate import aggregate_labels, aggregate_outputs, aggregate_scores
from xmodal.eval.metrics import classification_report

GROUPS = ["b", "a", "b", "a", "c"]
LOGITS = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 4.0], [3.0, 0.0], [1.0, 1.0]])


def test_mean_logits_hand_computed_first_appearance_order():
    groups, agg = aggregate_scores(GROUPS, LOGITS, how="mean_logits")
    assert groups == ["b", "a", "c"]
    assert torch.allclose(agg, torch.tensor([[1.0, 2.0], [1.5, 0.5], [1.0, 1.0]]))


def test_mean_softmax_and_sigmoid_average_probabilities_not_logits():
    _, soft = aggregate_scores(GROUPS, LOGITS, how="mean_softmax")
    p = LOGITS.softmax(1)
    assert torch.allclose(soft[0], (p[0] + p[2]) / 2)
    assert torch.allclose(soft.sum(1), torch.ones(3))
    _, sig = aggregate_scores(GROUPS, LOGITS, how="mean_sigmoid")
    assert torch.allclose(sig[1], (LOGITS[1].sigmoid() + LOGITS[3].sigmoid()) / 2)


def test_softmax_and_logit_averaging_can_disagree():
    # one confident window for class 0 vs two mild ones for class 1:
    # mean logits (1, 2/3) -> class 0; mean softmax (.497, .503) -> class 1
    logits = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert aggregate_scores(["v"] * 3, logits, how="mean_logits").scores.argmax(1).item() == 0
    assert aggregate_scores(["v"] * 3, logits, how="mean_softmax").scores.argmax(1).item() == 1


def test_aggregate_labels_single_and_multi_hot():
    groups, labels = aggregate_labels(GROUPS, torch.tensor([1, 0, 1, 0, 1]))
    assert groups == ["b", "a", "c"] and labels.tolist() == [1, 0, 1]
    multi = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1], [0, 1, 0], [0, 0, 1]])
    assert aggregate_labels(GROUPS, multi).labels.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 1]]


def test_inconsistent_labels_name_the_group():
    with pytest.raises(DataError, match=r"group 'a' .*\(0 at row 1 vs 2 at row 3\)"):
        aggregate_labels(GROUPS, torch.tensor([1, 0, 1, 2, 1]))
    multi = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 1], [0, 0]])
    with pytest.raises(DataError, match="group 'b'"):
        aggregate_labels(GROUPS, multi)


def test_bad_arguments():
    with pytest.raises(DataError, match="mean_softmax"):
        aggregate_scores(GROUPS, LOGITS, how="max")
    with pytest.raises(DataError, match=r"expected shape \(4, C\)"):
        aggregate_scores(GROUPS[:4], LOGITS)


def test_video_level_accuracy_end_to_end():
    # 3 videos with 4/2/3 windows; video-level argmax is right for v0 and v2 although most of v2's
    # windows are wrong (one confident right window dominates the probability average)
    groups = ["v0"] * 4 + ["v1"] * 2 + ["v2"] * 3
    logits = torch.tensor(
        [[2.0, 0, 0], [2, 0, 0], [0, 1, 0], [2, 0, 0], [0, 0, 3], [0, 0, 3], [0, 0, 9], [1, 0, 0], [1, 0, 0]]
    )
    labels = torch.tensor([0] * 4 + [1] * 2 + [2] * 3)
    video = aggregate_outputs(groups, logits, labels, how="mean_softmax")
    assert video.groups == ["v0", "v1", "v2"] and video.labels.tolist() == [0, 1, 2]
    rep = classification_report(video.scores, video.labels)
    assert rep["top1"] == pytest.approx(200 / 3)
    clip = classification_report(logits, labels)
    assert clip["top1"] == pytest.approx(400 / 9)
