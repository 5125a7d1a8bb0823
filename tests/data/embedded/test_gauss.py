"""The MFH gauss generator (specs/mfh.md §2, §9)."""

import numpy as np
import pytest

from xmodal.data.embedded import gauss
from xmodal.errors import ConfigError


@pytest.mark.parametrize(("setting", "param", "d1", "d2", "m"), [("G", 4, 25, 50, 20), ("A", 20, 50, 50, 50), ("T", 10, 50, 50, 20)])
def test_shapes_and_dtypes(setting, param, d1, d2, m):
    train, test, lay = gauss.make_run(setting, param, seed=3)
    assert train.x1.shape == (200, d1) and train.x2.shape == (200, d2) and train.y.shape == (200,)
    assert test.x1.shape == (1000, d1) and test.x2.shape == (1000, d2)
    assert train.x1.dtype == np.float32 and train.y.dtype == np.int64
    assert set(np.unique(train.y)) <= {0, 1} and lay.m == m


@pytest.mark.parametrize("o", [0, 3, 10])
def test_setting_g_channels_copy_the_right_latents(o):
    train, _, lay = gauss.make_run("G", o, seed=1)
    # x1 channel j carries latent j for j in 10-o..19-o; x2 channel j carries latent j for j < 10
    assert lay.src1.tolist() == [-1] * (10 - o) + list(range(10 - o, 20 - o)) + [-1] * (5 + o)
    assert lay.src2.tolist() == list(range(10)) + [-1] * 40
    shared = list(range(10 - o, 10))
    assert lay.general_channels.tolist() == shared
    assert lay.specific_channels.tolist() == list(range(10, 20 - o))
    for j in shared:  # the same latent draw in both modalities
        np.testing.assert_array_equal(train.x1[:, j], train.x2[:, j])
    # no other x1 channel duplicates any x2 channel
    eq = (train.x1[:, :, None] == train.x2[:, None, :]).all(0)
    assert eq.sum() == len(shared)


def test_labels_are_the_hyperplane_of_the_latents():
    seed = 5
    train, test, _ = gauss.make_run("G", 0, seed)
    a = np.random.default_rng(seed).standard_normal(500)  # seed -> a first (spec §2)
    for split in (train, test):  # test drawn after reseeding with seed+1 but with the same a (§9)
        z = np.concatenate([split.x2[:, :10], split.x1[:, 10:20]], 1).astype(np.float64)
        agree = ((z @ a[:20] > 0).astype(np.int64) == split.y).mean()
        assert agree > 0.995  # float32 storage can flip a label on the boundary
    # T: a = ones over m = 10 + k latents, all copied into x1 channels 0..9+k
    for split in (gauss.make_run("T", 7, 0)[0], gauss.table2_run(7, 2).train_b):
        np.testing.assert_array_equal((split.x1[:, :17].astype(np.float64).sum(1) > 0).astype(np.int64), split.y)


@pytest.mark.parametrize(("setting", "param"), [("G", 6), ("A", 30), ("T", 20)])
def test_label_balance(setting, param):
    share = np.mean([gauss.make_run(setting, param, s)[1].y.mean() for s in range(10)])
    assert 0.46 < share < 0.54


def test_gamma_and_alpha_formulas():
    for o in range(11):
        assert gauss.layout("G", o).gamma == pytest.approx(o / (20 - o))
    for d in (0, 10, 20, 30, 40):
        lay = gauss.layout("A", d)
        assert lay.gamma == pytest.approx(10 / (d + 10)) and 1 - lay.gamma == pytest.approx(d / (d + 10))
        assert len(lay.general_channels) == 10 and len(lay.specific_channels) == d
    for k, g in zip((5, 10, 15, 20, 25, 30), (0.33, 0.50, 0.60, 0.67, 0.71, 0.75)):
        lay = gauss.layout("T", k)
        assert lay.gamma == pytest.approx(k / (10 + k)) and round(lay.gamma, 2) == g
        assert lay.general_channels.tolist() == list(range(k)) and lay.specific_channels.tolist() == list(range(k, k + 10))


@pytest.mark.parametrize(("setting", "params"), [("G", range(11)), ("A", (0, 10, 20, 30, 40))])
def test_student_side_does_not_depend_on_the_sweep_parameter(setting, params):
    runs = [gauss.make_run(setting, p, seed=7) for p in params]
    for tr, te, _ in runs[1:]:
        np.testing.assert_array_equal(tr.x2, runs[0][0].x2)
        np.testing.assert_array_equal(tr.y, runs[0][0].y)
        np.testing.assert_array_equal(te.x2, runs[0][1].x2)
        np.testing.assert_array_equal(te.y, runs[0][1].y)
    assert not np.array_equal(runs[0][0].x1, runs[-1][0].x1)


def test_table2_run_draws_three_distinct_splits_deterministically():
    a, b = gauss.table2_run(10, 3), gauss.table2_run(10, 3)
    np.testing.assert_array_equal(a.train_b.x1, b.train_b.x1)
    assert a.train_a.x1.shape == a.train_b.x1.shape == (200, 50) and a.test.x1.shape == (1000, 50)
    assert not np.array_equal(a.train_a.x1, a.train_b.x1)
    assert not np.array_equal(a.train_a.x1, gauss.table2_run(10, 4).train_a.x1)
    assert a.layout.gamma == pytest.approx(0.5)


def test_errors():
    with pytest.raises(ValueError, match="overlap"):
        gauss.layout("G", 11)
    with pytest.raises(ValueError, match="unknown gauss setting"):
        gauss.layout("B", 1)
    with pytest.raises(ConfigError, match="data.setting"):
        gauss.gauss_data(setting="X")


def test_registered_bundle():
    bundle = gauss.gauss_data(setting="T", param=10, seed=0, n_train=20, n_test=30)
    assert len(bundle.train) == 20 and len(bundle.test) == 30
    row = bundle.train[0]
    assert set(row) == {"x1", "x2", "label"} and row["x1"].shape == (50,)
    assert bundle.info.extra["gamma"] == pytest.approx(0.5)
