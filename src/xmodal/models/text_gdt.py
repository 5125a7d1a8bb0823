"""Caption encoder of video-text GDT (HowTo100M variant, specs/gdt-stica.md §3.4).

Frozen word vectors per token -> Linear(300, 2048) -> ReLU -> max over the caption's tokens
(padding excluded) = the 2048-d feature; the method's projection head (MLP 2048 -> 512 -> 256, L2)
follows, as for audio. Max pooling ignores token order, so a time-"reversed" caption (tokens
flipped) embeds exactly like the original: under reversal hypotheses text is invariant by
construction.

Word vectors (never downloaded at run time):
* a local file given as ``vectors`` — word2vec text format (``.txt``/``.vec``: optional
  "count dim" header, then "word v1 … vd" per line), or a matrix in ``.npy`` / ``.safetensors``
  (tensor ``vectors``) / ``.pt``/``.pth`` (a tensor, or ``{"vectors", "vocab"}``) with the vocabulary
  one word per line in ``<file stem>.vocab.txt`` next to it (or a ``vocab`` entry);
* offline default (``vectors: ""``): a hashed random table — word w has id 1 + (BLAKE2b(w) mod
  ``buckets``) and vector N(0, 1/d) drawn from ``seed`` (the hashing trick: no vocabulary, fixed
  and reproducible, but without word2vec's semantics; captions are still distinguishable).
The table is not saved in checkpoints (non-persistent buffer): it is rebuilt from the file or the
seed. Id 0 is padding, id 1 an unknown word for file vocabularies.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xmodal.errors import DataError
from xmodal.models.heads import EncoderOut
from xmodal.registry import register_model

_WORD = re.compile(r"[a-z0-9']+")
PAD, UNK = 0, 1


class WordVectors(NamedTuple):
    vocab: list[str]
    vectors: Tensor  # [V, D] float32, row i = vocab[i]


def _vocab_next_to(path: Path, n: int) -> list[str]:
    vocab_path = path.with_name(path.stem + ".vocab.txt")
    if not vocab_path.is_file():
        raise DataError(f"{path}: a vector matrix needs its vocabulary in {vocab_path.name} (one word per line)")
    vocab = vocab_path.read_text(encoding="utf-8").splitlines()
    if len(vocab) != n:
        raise DataError(f"{vocab_path}: expected {n} words (one per matrix row), found {len(vocab)}")
    return vocab


def _read_text_vectors(path: Path) -> WordVectors:
    words, rows = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for ln, line in enumerate(f, 1):
            parts = line.rstrip().split(" ")
            if ln == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec header: count dim
            if len(parts) < 2:
                continue
            try:
                rows.append(np.asarray(parts[1:], dtype=np.float32))
            except ValueError:
                raise DataError(f"{path}:{ln}: expected 'word v1 ... vd', found non-numeric values") from None
            if rows[-1].shape != rows[0].shape:
                raise DataError(f"{path}:{ln}: expected {rows[0].shape[0]} values, found {rows[-1].shape[0]}")
            words.append(parts[0])
    if not rows:
        raise DataError(f"{path}: no word vectors found")
    return WordVectors(words, torch.from_numpy(np.stack(rows)))


def load_word_vectors(path: str | Path) -> WordVectors:
    """Word vectors from a local file (formats in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: word-vector file not found")
    suffix = path.suffix.lower()
    if suffix in (".txt", ".vec"):
        return _read_text_vectors(path)
    vocab = None
    if suffix == ".npy":
        mat = torch.from_numpy(np.load(path, allow_pickle=False))
    elif suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            if "vectors" not in f.keys():
                raise DataError(f"{path}: expected a tensor named 'vectors', found {list(f.keys())}")
            mat = f.get_tensor("vectors")
            meta = f.metadata() or {}
            vocab = json.loads(meta["vocab"]) if "vocab" in meta else None
    elif suffix in (".pt", ".pth"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict):
            mat, vocab = obj.get("vectors"), obj.get("vocab")
        else:
            mat = obj
        if not isinstance(mat, Tensor):
            raise DataError(f"{path}: expected a [V, D] tensor (or {{'vectors', 'vocab'}}), found {type(mat).__name__}")
    else:
        raise DataError(f"{path}: unknown word-vector format '{suffix}' (txt, vec, npy, safetensors, pt, pth)")
    if mat.dim() != 2:
        raise DataError(f"{path}: expected a [V, D] matrix, found shape {tuple(mat.shape)}")
    vocab = list(vocab) if vocab is not None else _vocab_next_to(path, mat.shape[0])
    if len(vocab) != mat.shape[0]:
        raise DataError(f"{path}: {len(vocab)} vocabulary words for {mat.shape[0]} vectors")
    return WordVectors(vocab, mat.float())


def word_hash(word: str, buckets: int) -> int:
    """Stable across processes and runs (unlike Python's hash())."""
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little") % buckets


class WordTokenizer:
    """Caption -> ids [L] (lower-cased words [a-z0-9']+): a vocabulary lookup (unknown -> 1), or
    hashing into ``buckets`` ids (2..buckets+1) when there is no vocabulary."""

    def __init__(self, vocab: list[str] | None = None, buckets: int = 65536):
        self.buckets = buckets
        self.index = None if vocab is None else {w: i + 2 for i, w in enumerate(vocab)}

    def word_id(self, word: str) -> int:
        if self.index is None:
            return 2 + word_hash(word, self.buckets)
        return self.index.get(word, UNK)

    def encode(self, captions: list[str], max_words: int = 20) -> Tensor:
        """[B, max_words] long ids, padded with 0 (longer captions are cut)."""
        out = torch.zeros(len(captions), max_words, dtype=torch.long)
        for i, cap in enumerate(captions):
            ids = [self.word_id(w) for w in _WORD.findall(cap.lower())][:max_words]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def hashed_table(buckets: int, dim: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(buckets, dim, generator=g) / dim**0.5


class CaptionEncoder(nn.Module):
    """Frozen word vectors -> Linear(D, hidden) -> ReLU -> max over tokens -> feature [B, hidden]."""

    def __init__(self, words: WordVectors | None = None, hidden: int = 2048, dim: int = 300, buckets: int = 65536,
                 seed: int = 0):
        super().__init__()
        vocab, vectors = (None, hashed_table(buckets, dim, seed)) if words is None else words
        self.tokenizer = WordTokenizer(vocab, buckets)
        # rows: 0 padding, 1 unknown word, then the vectors; rebuilt at construction, not saved
        table = torch.cat([torch.zeros(2, vectors.shape[1]), vectors.float()])
        self.register_buffer("table", table, persistent=False)
        self.fc = nn.Linear(vectors.shape[1], hidden)
        self.feature_dim = hidden

    def forward(self, ids: Tensor, return_map: bool = False) -> EncoderOut:
        if ids.dim() != 2 or ids.is_floating_point():
            raise DataError(f"text_gdt: expected token ids [B, L] (long), got {tuple(ids.shape)} {ids.dtype}")
        if int(ids.max()) >= self.table.shape[0] or int(ids.min()) < 0:
            raise DataError(f"text_gdt: token id out of range 0..{self.table.shape[0] - 1} (other vocabulary?)")
        x = F.relu(self.fc(self.table[ids]))  # [B, L, H]
        valid = (ids != PAD).unsqueeze(-1)
        feature = x.masked_fill(~valid, float("-inf")).amax(dim=1)
        feature = torch.where(valid.any(1), feature, torch.zeros_like(feature))  # empty caption -> 0
        return EncoderOut(None, feature, x if return_map else None)


@register_model("text_gdt")
def text_gdt(vectors: str = "", hidden: int = 2048, dim: int = 300, buckets: int = 65536, seed: int = 0) -> CaptionEncoder:
    """Video-text GDT caption encoder. ``vectors``: local word-vector file (e.g. HowTo100M's
    word2vec matrix converted to .npy + .vocab.txt); "" = offline hashed table of ``buckets`` ×
    ``dim`` from ``seed``."""
    if vectors:  # the file fixes the vocabulary and the vector size (dim, buckets, seed unused)
        return CaptionEncoder(load_word_vectors(vectors), hidden)
    return CaptionEncoder(None, hidden, dim, buckets, seed)
