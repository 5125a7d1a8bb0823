import json

import numpy as np
import pytest
import torch

from xmodal.errors import DataError
from xmodal.models.text_gdt import (
    PAD,
    UNK,
    CaptionEncoder,
    WordTokenizer,
    load_word_vectors,
    text_gdt,
    word_hash,
)

VOCAB = ["cut", "the", "onion"]
VECS = np.arange(12, dtype=np.float32).reshape(3, 4) / 10


def _check(words):
    assert words.vocab == VOCAB
    torch.testing.assert_close(words.vectors, torch.from_numpy(VECS))


def test_word_vector_formats(tmp_path):
    txt = tmp_path / "w2v.txt"
    txt.write_text("3 4\n" + "".join(f"{w} {' '.join(map(str, v))}\n" for w, v in zip(VOCAB, VECS)))
    _check(load_word_vectors(txt))
    np.save(tmp_path / "w2v.npy", VECS)
    (tmp_path / "w2v.vocab.txt").write_text("\n".join(VOCAB) + "\n")
    _check(load_word_vectors(tmp_path / "w2v.npy"))
    from safetensors.torch import save_file

    save_file({"vectors": torch.from_numpy(VECS)}, str(tmp_path / "m.safetensors"), metadata={"vocab": json.dumps(VOCAB)})
    _check(load_word_vectors(tmp_path / "m.safetensors"))
    torch.save({"vectors": torch.from_numpy(VECS), "vocab": VOCAB}, tmp_path / "m.pth")
    _check(load_word_vectors(tmp_path / "m.pth"))


def test_word_vector_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("cut 0.1 0.2\nthe 0.1\n")
    with pytest.raises(DataError, match=r"bad.txt:2: expected 2 values, found 1"):
        load_word_vectors(bad)
    np.save(tmp_path / "novocab.npy", VECS)
    with pytest.raises(DataError, match="novocab.vocab.txt"):
        load_word_vectors(tmp_path / "novocab.npy")
    with pytest.raises(DataError, match="not found"):
        load_word_vectors(tmp_path / "missing.txt")


def test_tokenizers():
    tok = WordTokenizer(VOCAB)
    ids = tok.encode(["Cut the ONION, slowly", ""], max_words=5)
    assert ids.tolist() == [[2, 3, 4, UNK, PAD], [PAD] * 5]
    hashed = WordTokenizer(None, buckets=100)
    a = hashed.encode(["cut the onion"], 4)[0]
    assert a[:3].tolist() == [2 + word_hash(w, 100) for w in ("cut", "the", "onion")] and a[3] == PAD
    assert word_hash("onion", 100) == word_hash("onion", 100)  # stable, unlike hash()


def test_encoder_max_pools_real_tokens_only_and_ignores_order(tmp_path):
    torch.manual_seed(0)
    enc = CaptionEncoder(load_word_vectors_from(tmp_path), hidden=5)
    ids = enc.tokenizer.encode(["cut the onion", "onion the cut", "cut", ""], 4)
    out = enc(ids).feature
    torch.testing.assert_close(out[0], out[1])  # time-reversed caption: same embedding
    expect = torch.relu(enc.fc(torch.from_numpy(VECS))).amax(0)
    torch.testing.assert_close(out[0], expect)
    torch.testing.assert_close(out[2], torch.relu(enc.fc(torch.from_numpy(VECS[0]))))  # padding ignored
    assert torch.equal(out[3], torch.zeros(5))
    out.sum().backward()
    assert enc.fc.weight.grad is not None and "table" not in dict(enc.named_parameters())
    assert set(enc.state_dict()) == {"fc.weight", "fc.bias"}  # the frozen table is rebuilt, not saved
    with pytest.raises(DataError, match="out of range"):
        enc(torch.tensor([[99]]))


def load_word_vectors_from(tmp_path):
    p = tmp_path / "v.txt"
    p.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in zip(VOCAB, VECS)))
    return load_word_vectors(p)


def test_offline_default_is_deterministic():
    a, b = text_gdt(hidden=8, dim=6, buckets=32, seed=1), text_gdt(hidden=8, dim=6, buckets=32, seed=1)
    assert torch.equal(a.table, b.table) and a.table.shape == (34, 6) and a.feature_dim == 8
    assert not torch.equal(a.table, text_gdt(hidden=8, dim=6, buckets=32, seed=2).table)
