"""FeatureStore: uid -> rows from one safetensors file."""

from __future__ import annotations

import pickle

import pytest
import torch

from xmodal.data.features import FeatureStore, feature_keys
from xmodal.errors import DataError

pytest.importorskip("safetensors")


@pytest.fixture
def store(tmp_path):
    uids = ["v_b", "v_a", "ümlaut/clip.1"]
    feats = torch.arange(3 * 4, dtype=torch.float32).view(3, 4)
    logits = torch.tensor([[1, 0], [0, 1], [1, 1]], dtype=torch.int64)
    path = FeatureStore.write(tmp_path / "t.safetensors", uids, {"emb": feats, "cls": logits}, {"teacher": "panns"})
    return path, uids, feats, logits


def test_rows_by_uid(store):
    path, uids, feats, logits = store
    fs = FeatureStore(path)
    assert len(fs) == 3 and fs.names == ["cls", "emb"] and fs.meta == {"teacher": "panns"}
    assert fs.row_shapes == {"cls": (2,), "emb": (4,)}
    for i, u in enumerate(uids):
        row = fs.get(u)
        assert torch.equal(row["emb"], feats[i]) and torch.equal(row["cls"], logits[i])
    many = fs.get_many(["ümlaut/clip.1", "v_b"])
    assert torch.equal(many["emb"], feats[[2, 0]]) and many["cls"].dtype == torch.int64
    assert feature_keys("teacher", fs) == {"cls": "teacher.cls", "emb": "teacher.emb"}


def test_missing_uid_is_an_error_naming_it_or_zeros(store):
    path, *_ = store
    with pytest.raises(DataError, match=r"no features for uid 'v_zzz'"):
        FeatureStore(path).get("v_zzz")
    zero = FeatureStore(path, missing="zeros").get("v_zzz")
    assert torch.equal(zero["emb"], torch.zeros(4)) and zero["cls"].dtype == torch.int64


def test_survives_pickling_for_loader_workers(store):
    path, uids, feats, _ = store
    fs = FeatureStore(path)
    fs.get(uids[0])  # opens the file
    clone = pickle.loads(pickle.dumps(fs))
    assert clone._handle is None and torch.equal(clone.get(uids[1])["emb"], feats[1])


def test_write_checks(tmp_path):
    with pytest.raises(DataError, match="appears twice"):
        FeatureStore.write(tmp_path / "a.safetensors", ["x", "x"], {"e": torch.zeros(2, 1)})
    with pytest.raises(DataError, match="one row per uid"):
        FeatureStore.write(tmp_path / "a.safetensors", ["x", "y"], {"e": torch.zeros(3, 1)})
    with pytest.raises(DataError, match="reserved"):
        FeatureStore.write(tmp_path / "a.safetensors", ["x"], {"e": torch.zeros(1)}, {"uids": "[]"})
    from xmodal.engine.checkpoint import save_safetensors_atomic

    save_safetensors_atomic({"w": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(DataError, match="not an xmodal feature store"):
        FeatureStore(tmp_path / "plain.safetensors")
    with pytest.raises(DataError, match="not found"):
        FeatureStore(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(DataError, match="unreadable"):
        FeatureStore(tmp_path / "junk.safetensors")
