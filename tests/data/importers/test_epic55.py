import json

import pytest

from xmodal.data.importers import run_importer
from xmodal.data.importers.epic55 import import_epic55
from xmodal.errors import DataError


def _args(fx, **kw):
    d = fx / "epic55"
    return {"train_csv": str(d / "training.csv"), "actions": str(d / "actions.csv"), **kw}


def test_train_minus_val_and_rows(fx):
    d = fx / "epic55"
    imp = import_epic55(**_args(fx, val_csv=str(d / "validation.csv"), root="/data/EPIC_KITCHENS_2018/videos/train"))
    assert imp.split_counts() == {"train": 5, "val": 3}  # the 3 P01_01 rows of training.csv are validation rows
    assert len(imp.labels) == 8 and imp.labels[3].id == "pick-up_chilli"
    rows = {r.uid: r for r in imp.rows}
    r = rows["00332"]  # uids keep their zero padding
    assert (r.split, r.labels, r.group) == ("train", [7], "P01_02")
    assert (r.start, r.end) == (pytest.approx(303 / 30), pytest.approx(543 / 30))
    assert r.video == "/data/EPIC_KITCHENS_2018/videos/train/P01/P01_02.MP4"
    assert r.meta["action_text"] == "take_lid"
    assert rows["00001"].split == "val"
    # tau_a = 1 s: 00331 starts at 258 (8.6 s); 00330 ends at 205 <= 228 -> in the history
    assert rows["00331"].meta["histories"] == [[0]]
    assert rows["00334"].meta["histories"] == [[0, 4, 7, 5]]


def test_val_videos_only_gives_same_split(fx):
    d = fx / "epic55"
    a = import_epic55(**_args(fx, val_csv=str(d / "validation.csv")))
    b = import_epic55(**_args(fx, val_videos=str(d / "validation_videos.csv")))
    assert {r.uid: r.split for r in a.rows} == {r.uid: r.split for r in b.rows}


def test_many_shot(fx, tmp_path):
    d = fx / "epic55"
    res = run_importer("epic55", tmp_path, **_args(fx, val_csv=str(d / "validation.csv"),
                                                   many_shot_verbs=str(d / "EPIC_many_shot_verbs.csv"),
                                                   many_shot_nouns=str(d / "EPIC_many_shot_nouns.csv")))
    # verbs {0 take, 1 put} x nouns {1 pan, 10 fridge}: take_pan, take_fridge, put_pan
    assert json.loads((tmp_path / "many_shot.json").read_text()) == {"actions": [0, 1, 4], "verbs": [0, 1], "nouns": [1, 10]}
    assert json.loads((tmp_path / "actions.json").read_text())[3]["text"] == "pick-up <v> chilli"
    flags = {r.uid: r.meta["many_shot"] for r in res.imported.rows}
    assert flags["00331"] is True and flags["00332"] is False


def test_errors(fx, tmp_path):
    with pytest.raises(DataError, match="--val-csv and/or --val-videos"):
        import_epic55(**_args(fx))
    d = fx / "epic55"
    with pytest.raises(DataError, match="go together"):
        import_epic55(**_args(fx, val_csv=str(d / "validation.csv"), many_shot_verbs=str(d / "EPIC_many_shot_verbs.csv")))
    bad = tmp_path / "actions.csv"
    bad.write_text("id,verb,noun\n0,0,1\n")
    with pytest.raises(DataError, match=r"actions.csv:1: expected header 'id,action,verb,noun'"):
        import_epic55(**_args(fx, actions=str(bad), val_csv=str(d / "validation.csv")))
    train = tmp_path / "training.csv"
    train.write_text((d / "training.csv").read_text() + "00335, P01_02, 0000000700, 00000007x0, 000, 001, 0000\n")
    with pytest.raises(DataError, match=r"training.csv:9: start/end: expected numbers"):
        import_epic55(**_args(fx, train_csv=str(train), val_csv=str(d / "validation.csv")))
