"""`paired_arrays`: one array file per modality, rows paired; mismatched counts are one line."""

import numpy as np
import pytest

from xmodal.errors import DataError
from xmodal.registry import DATASETS


def _write(tmp_path, n_a=30, n_b=30):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.standard_normal((n_a, 4)).astype(np.float32))
    np.save(tmp_path / "b.npy", rng.standard_normal((n_b, 2, 3)).astype(np.float32))
    np.save(tmp_path / "y.npy", np.arange(n_a) % 3)
    np.save(tmp_path / "s.npy", np.array(["train"] * 10 + ["pool"] * 10 + ["test"] * 10))
    return {"files": {"a": str(tmp_path / "a.npy"), "b": str(tmp_path / "b.npy")},
            "labels": {"label": str(tmp_path / "y.npy")}, "split": str(tmp_path / "s.npy")}


def test_splits_keys_and_dims(tmp_path):
    data = DATASETS.build_named("paired_arrays", **_write(tmp_path))
    assert len(data.train) == len(data.split("pool")) == len(data.test) == 10
    assert data.info.num_classes == 3 and data.info.extra["dims"] == {"a": 4, "b": 6}
    row = data.test[0]
    assert row["b"].shape == (2, 3) and int(row["label"]) == 20 % 3


def test_mismatched_counts_name_the_file(tmp_path):
    with pytest.raises(DataError) as e:
        DATASETS.build_named("paired_arrays", **_write(tmp_path, n_b=29))
    assert "b.npy" in str(e.value) and "29" in str(e.value) and "\n" not in str(e.value)
