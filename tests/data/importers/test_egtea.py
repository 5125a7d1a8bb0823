import pytest

from xmodal.data.importers.egtea import import_egtea
from xmodal.errors import DataError


def _import(fx, **kw):
    d = fx / "egtea"
    return import_egtea(**{"train_csv": str(d / "training1.csv"), "val_csv": str(d / "validation1.csv"),
                           "actions": str(d / "actions.csv"), **kw})


def test_rows_times_groups_meta(fx):
    imp = _import(fx, root="/data/egtea")
    assert imp.split_counts() == {"train": 6, "val": 3}
    assert [lab.id for lab in imp.labels] == ["Inspect/Read_recipe", "Open_fridge", "Take_eating:utensil", "Cut_tomato",
                                              "Turn on_faucet", "Put_eating:utensil"]
    r = {r.uid: r for r in imp.rows}["9"]
    assert (r.split, r.labels, r.group) == ("train", [3], "P05-R01-PastaSalad")
    assert r.start == pytest.approx(1300 / 30) and r.end == pytest.approx(1420 / 30)
    assert r.video == "/data/egtea/P05-R01-PastaSalad.mp4"
    assert (r.meta["verb"], r.meta["noun"], r.meta["action_text"]) == (3, 3, "Cut_tomato")
    assert imp.extras["actions"][5] == {"id": 5, "verb": 5, "noun": 2, "name": "Put_eating:utensil", "text": "put <v> eating utensil"}


def test_histories_use_both_splits_and_tau_a(fx):
    # P05 targets (30 fps): 7 [1000,1060] 8 [1100,1150] 9 [1300,1420] 10v [1430,1490] 11 [1500,1530] 12v [1545,1600];
    # a past segment must end <= start - 0.5 s (15 frames); history = action ids by start
    hist = {r.uid: r.meta["histories"] for r in _import(fx).rows}
    assert hist["7"] == [[]]
    assert hist["8"] == [[1]]
    assert hist["10"] == [[1, 2]]  # 9 ends at 1420 > 1430 - 15
    assert hist["11"] == [[1, 2, 3]]  # val segment 10 ends at 1490 > 1500 - 15
    assert hist["12"] == [[1, 2, 3, 2, 5]]  # 11 ends exactly at 1545 - 15: included
    assert hist["32"] == [[0, 4]]
    assert {r.uid: r.meta["histories"] for r in _import(fx, history_len=2).rows}["12"] == [[2, 5]]
    assert "histories" not in _import(fx, history_len=0).rows[0].meta


def test_textkd_header_variants(fx):
    d = fx / "egtea"
    imp = import_egtea(train_csv=str(d / "train_split1_textkd.csv"), val_csv=str(d / "val_split1_textkd.csv"),
                       actions=str(d / "actions.csv"))
    rows = {r.uid: r for r in imp.rows}
    assert imp.split_counts() == {"train": 2, "val": 1}
    assert rows["10"].start == pytest.approx(1430 / 30) and rows["10"].labels == [2]
    assert rows["8"].end == pytest.approx(1150 / 30)


def test_errors(fx, tmp_path):
    d = fx / "egtea"
    bad = tmp_path / "val.csv"
    bad.write_text("10,P05-R01-PastaSalad,1430,1490,2,3,2\n")
    with pytest.raises(DataError, match=r"val.csv: uid 10: verb/noun 2/3 disagree with action 2"):
        _import(fx, val_csv=str(bad))
    bad.write_text("10,P05-R01-PastaSalad,1430,1490,2,2,9\n")
    with pytest.raises(DataError, match=r"val.csv: uid 10 \(video P05-R01-PastaSalad\): action 9 not in"):
        _import(fx, val_csv=str(bad))
    bad.write_text("10,P05-R01-PastaSalad,1430,1490,2,2\n")
    with pytest.raises(DataError, match=r"val.csv:1: expected at least 7 columns"):
        _import(fx, val_csv=str(bad))
    bad.write_text("7,P05-R01-PastaSalad,1430,1490,2,2,2\n")
    with pytest.raises(DataError, match=r"val.csv: uid 7 already defined in .*training1.csv"):
        _import(fx, val_csv=str(bad))
    acts = tmp_path / "actions.csv"
    acts.write_text((d / "actions.csv").read_text().replace("4, 4_4", "7, 4_4"))
    with pytest.raises(DataError, match=r"actions.csv: action ids must be 0..K-1; missing \[4\]"):
        _import(fx, actions=str(acts))
