"""Anticipation metrics: verb/noun marginals, many-shot recall, ensembles aligned by uid."""

import math

import pytest
import torch

from xmodal.errors import DataError
from xmodal.eval.anticipation import (
    ActionSpace,
    anticipation_metrics,
    ensemble_outputs,
    ensemble_scores,
    marginal_scores,
)

# 4 actions = (verb, noun): 0=(0,0) 1=(0,1) 2=(1,0) 3=(1,2)
VERB, NOUN = [0, 0, 1, 1], [0, 1, 0, 2]


def test_marginals_sum_action_probabilities_per_verb_and_noun():
    s = torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 0.0, 0.0, -1.0]])
    p = s.double().softmax(1)
    v = marginal_scores(s, VERB)
    n = marginal_scores(s, NOUN, 3)
    torch.testing.assert_close(v, torch.stack([p[:, 0] + p[:, 1], p[:, 2] + p[:, 3]], 1))
    torch.testing.assert_close(n, torch.stack([p[:, 0] + p[:, 2], p[:, 1], p[:, 3]], 1))
    torch.testing.assert_close(v.sum(1), torch.ones(2, dtype=torch.float64))
    with pytest.raises(DataError, match="3 entries for 4 action scores"):
        marginal_scores(s, VERB[:3])


def test_verb_can_be_right_when_the_action_is_wrong():
    # label action 0 = (verb 0, noun 0); the top action is 1 (verb 0): verb right, action wrong,
    # and the noun marginal (0.3 + 0.25 for noun 0 vs 0.45 for noun 1) picks noun 0
    probs = torch.tensor([[0.30, 0.45, 0.25, 0.0]]).clamp_min(1e-12).log()
    m = anticipation_metrics(probs, torch.tensor([0]), ActionSpace(VERB, NOUN), k=2)
    assert m["top1"] == 0.0 and m["top2"] == 100.0
    assert m["verb_top1"] == 100.0 and m["noun_top1"] == 100.0
    assert "verb_top2" not in m  # 2 verbs: top-2 is trivially 100 and not reported


def test_class_mean_recall_and_many_shot_subset():
    # 6 samples of classes [0,0,0,1,2,3]; top-1 hits: sample 0 and 3 and 4
    scores = torch.full((6, 4), -5.0)
    pred = [0, 1, 1, 1, 2, 0]
    scores[torch.arange(6), torch.tensor(pred)] = 5.0
    y = torch.tensor([0, 0, 0, 1, 2, 3])
    m = anticipation_metrics(scores, y, ActionSpace(many_shot_actions=[0, 3]), k=1 + 1)
    assert m["top1"] == pytest.approx(100 * 3 / 6)
    # per class top-1 recall: c0 1/3, c1 1, c2 1, c3 0
    assert m["mean_class_acc"] == pytest.approx(100 * (1 / 3 + 1 + 1 + 0) / 4)
    # top-2: the second-best class is index 3 for every row (ties at -5 go to the highest index)
    top2 = [{p, 3 if p != 3 else 2} for p in pred]
    per_class = {c: [y_ in t for y_, t in zip(y.tolist(), top2) if y_ == c] for c in range(4)}
    recall = {c: sum(v) / len(v) for c, v in per_class.items()}
    assert m["cm_recall2"] == pytest.approx(100 * sum(recall.values()) / 4)
    assert m["cm_recall2_many_shot"] == pytest.approx(100 * (recall[0] + recall[3]) / 2)
    none_present = anticipation_metrics(scores[:3], y[:3], ActionSpace(many_shot_actions=[3]), k=2)
    assert math.isnan(none_present["cm_recall2_many_shot"])


def test_space_from_files(tmp_path):
    import json

    (tmp_path / "actions.json").write_text(json.dumps([{"id": i, "verb": v, "noun": n, "name": "", "text": ""}
                                                       for i, (v, n) in reversed(list(enumerate(zip(VERB, NOUN))))]))
    (tmp_path / "many_shot.json").write_text(json.dumps({"actions": [1], "verbs": [0], "nouns": [1]}))
    sp = ActionSpace.from_files(str(tmp_path / "actions.json"), str(tmp_path / "many_shot.json"))
    assert sp.action_verb == VERB and sp.action_noun == NOUN
    assert (sp.many_shot_actions, sp.many_shot_verbs, sp.many_shot_nouns) == ([1], [0], [1])
    merged = ActionSpace.from_files(many_shot=str(tmp_path / "many_shot.json")).or_else(ActionSpace(VERB, NOUN, [0]))
    assert merged.action_verb == VERB and merged.many_shot_actions == [1]


def test_ensemble_averages_probabilities_after_uid_alignment():
    a = {"uid": ["u1", "u2", "u3"], "logits": torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), "label": torch.tensor([0, 1, 0])}
    perm = [2, 0, 1]  # the second model scored the same uids in another order
    b_logits = torch.tensor([[0.0, 3.0], [1.0, 0.0], [5.0, 0.0]])
    b = {"uid": [a["uid"][i] for i in perm], "logits": b_logits[perm], "label": a["label"][perm]}
    ens = ensemble_outputs([a, b])
    assert ens.uids == a["uid"]
    expected = (a["logits"].double().softmax(1) + b_logits.double().softmax(1)) / 2
    torch.testing.assert_close(ens.scores, expected)
    torch.testing.assert_close(ensemble_outputs([a, b], mode="logit", weights=[3, 1]).scores,
                               (3 * a["logits"].double() + b_logits.double()) / 4)
    # one model alone is itself (probabilities rank like its logits)
    torch.testing.assert_close(ensemble_scores([a["logits"]]), a["logits"].double().softmax(1))


def test_ensemble_refuses_mismatched_members():
    a = {"uid": ["u1", "u2"], "logits": torch.zeros(2, 3), "label": torch.tensor([0, 1])}
    with pytest.raises(DataError, match="missing 'u2'"):
        ensemble_outputs([a, {"uid": ["u1", "u9"], "logits": torch.zeros(2, 3), "label": torch.tensor([0, 1])}])
    with pytest.raises(DataError, match="other labels"):
        ensemble_outputs([a, {**a, "label": torch.tensor([1, 1])}])
    with pytest.raises(DataError, match="score shape"):
        ensemble_scores([torch.zeros(2, 3), torch.zeros(2, 4)])
    with pytest.raises(DataError, match="weights"):
        ensemble_scores([torch.zeros(2, 3)], weights=[-1.0])
