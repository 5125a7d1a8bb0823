"""The text-teacher method: tokenizer, candidate expansion, mean-over-candidates predictions,
balanced class weights, and the multi-task loss it trains with."""

import pytest
import torch

from xmodal.config import from_dict
from xmodal.data.bundle import DataInfo
from xmodal.data.embedded.avdigits_seq import SeqConfig, grammar
from xmodal.errors import ConfigError
from xmodal.methods.text_teacher import TextTeacherConfig, TextTeacherMethod

pytest.importorskip("transformers")
G = grammar(SeqConfig())
COUNTS = {"action": [i % 3 + 1 for i in range(24)], "verb": [5, 0, 3, 2], "noun": [1] * 10}


def info(**extra):
    return DataInfo(num_classes=24, extra={"action_texts": G.texts, "num_verbs": 4, "num_nouns": 10,
                                           "action_verb": [a.verb for a in G.actions],
                                           "action_noun": [a.noun for a in G.actions], "train_counts": COUNTS, **extra})


def make(**kw) -> TextTeacherMethod:
    torch.manual_seed(0)
    return TextTeacherMethod(from_dict(TextTeacherConfig, {"hist_len": 3, "max_len": 32, **kw}), info())


def batch():
    hist = [[[0, 5, 7, 2]], [[3], [3, 9, 1]], [[]]]  # sample 1: two candidates ("gappy" past)
    return {"history": hist, "label": torch.tensor([4, 1, 2]), "verb": torch.tensor([G.actions[a].verb for a in (4, 1, 2)]),
            "noun": torch.tensor([G.actions[a].noun for a in (4, 1, 2)]), "uid": ["a", "b", "c"]}


def test_tokenizer_is_rebuilt_identically_and_knows_every_piece():
    a, b = make(), make()
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    text = a.encoder.text([0, 5, 7, 2])
    assert text == " <a> ".join(G.texts[i] for i in (5, 7, 2))  # the last hist_len = 3 actions
    ids = a.tokenizer(text)["input_ids"]
    assert a.tokenizer.unk_token_id not in ids


def test_training_rows_are_distinct_candidates_with_the_multitask_loss():
    from xmodal.models.text import teacher_loss

    m = make().eval()  # no dropout: both forward passes must agree
    b = batch()
    rows = m._rows(b)
    assert rows["uid"] == ["a", "b", "b", "c"] and rows["label"].tolist() == [4, 1, 1, 2]
    out = m.training_step(b)
    ref = teacher_loss(m.teacher(rows["text"], rows["text_mask"]), rows["label"], rows["verb"], rows["noun"])
    assert out.total.item() == pytest.approx(ref.total.item(), rel=1e-6)
    assert set(out.terms) == {"ce_action", "ce_verb", "ce_noun"}
    single = make(multi_task=False).training_step(b)
    assert set(single.terms) == {"ce_action"}


def test_balanced_weights_from_training_counts():
    m = make(class_weights="balanced")
    n, k = sum(COUNTS["verb"]), 3  # verb 1 never occurs: weight 1, the others N / (K n_c)
    torch.testing.assert_close(m.verb_weight, torch.tensor([n / (k * 5), 1.0, n / (k * 3), n / (k * 2)]))
    assert m.action_weight.shape == (24,) and make().action_weight is None
    assert "verb_weight" not in m.state_dict()  # a function of the data, rebuilt with the method


def test_eval_averages_logits_and_features_over_candidates():
    m = make().eval()
    b = batch()
    out = m.eval_step(b)
    with torch.no_grad():
        enc = m.encoder([[3], [3, 9, 1]])
        both = m.teacher(enc.input_ids, enc.attention_mask)
    torch.testing.assert_close(out["logits"][1], both.action.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["feature"][1], both.feature.mean(0), atol=1e-5, rtol=1e-5)
    assert out["uid"] == ["a", "b", "c"] and out["feature"].shape == (3, 64)
    metrics = m.eval_metrics({**out, "label": b["label"]})
    assert {"top1", "top5", "cm_recall5", "verb_top1", "noun_top1"} <= set(metrics)


def test_errors_name_what_is_missing():
    with pytest.raises(ConfigError, match="history"):
        make().training_step({"label": torch.tensor([0]), "uid": ["x"]})
    with pytest.raises(ConfigError, match="action texts"):
        TextTeacherMethod(TextTeacherConfig(), DataInfo(num_classes=3))
    with pytest.raises(ConfigError, match="verb/noun"):
        TextTeacherMethod(TextTeacherConfig(), DataInfo(num_classes=24, extra={"action_texts": G.texts}))
