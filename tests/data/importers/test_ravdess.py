import pytest

from xmodal.data.importers.ravdess import EMOTIONS, import_ravdess, import_ravdess_csv
from xmodal.errors import DataError

# (actor folder, file name) of a RAVDESS-shaped tree; contents are never read
FILES = [
    ("Actor_01", "01-01-03-01-01-01-01.mp4"), ("Actor_01", "02-01-03-01-01-01-01.mp4"), ("Actor_01", "03-01-03-01-01-01-01.wav"),
    ("Actor_02", "01-01-08-02-02-02-02.mp4"),  # no audio-only file: audio from the AV file
    ("Actor_02", "03-02-05-01-01-01-02.wav"),  # song, audio only
    ("Actor_21", "01-01-02-01-02-01-21.mp4"), ("Actor_21", "03-01-02-01-02-01-21.wav"),
    ("Actor_24", "02-01-07-02-01-02-24.mp4"),  # video only
]


def _tree(tmp_path, files=FILES):
    for actor, name in files:
        (tmp_path / actor).mkdir(exist_ok=True)
        (tmp_path / actor / name).write_bytes(b"")
    (tmp_path / "README.txt").write_text("not media")
    return tmp_path


def test_pairs_modalities_labels_actor_splits(tmp_path):
    root = _tree(tmp_path)
    imp = import_ravdess(root=str(root))
    assert [lab.name for lab in imp.labels] == EMOTIONS
    rows = {r.uid: r for r in imp.rows}
    assert sorted(rows) == ["01-02-01-02-01-21", "01-03-01-01-01-01", "01-07-02-01-02-24", "01-08-02-02-02-02", "02-05-01-01-01-02"]
    r = rows["01-03-01-01-01-01"]
    assert (r.split, r.labels, r.group) == ("train", [2], "actor01")
    assert r.video == str(root / "Actor_01/01-01-03-01-01-01-01.mp4") and r.audio == str(root / "Actor_01/03-01-03-01-01-01-01.wav")
    assert r.meta == {"vocal_channel": "speech", "intensity": "normal", "statement": 1, "repetition": 1, "actor": 1, "sex": "male"}
    assert rows["01-08-02-02-02-02"].audio == str(root / "Actor_02/01-01-08-02-02-02-02.mp4")
    assert rows["01-08-02-02-02-02"].labels == [7] and rows["01-08-02-02-02-02"].meta["sex"] == "female"
    assert rows["02-05-01-01-01-02"].video is None and rows["02-05-01-01-01-02"].meta["vocal_channel"] == "song"
    assert rows["01-07-02-01-02-24"].video.endswith("02-01-07-02-01-02-24.mp4") and rows["01-07-02-01-02-24"].audio is None
    assert {u: r.split for u, r in rows.items()}["01-02-01-02-01-21"] == "val"
    assert rows["01-07-02-01-02-24"].split == "test"
    assert import_ravdess(root=str(root), vocal_channel="song").split_counts() == {"train": 1}
    custom = import_ravdess(root=str(root), val_actors=[1], test_actors=[2])
    assert custom.split_counts() == {"test": 2, "train": 2, "val": 1}


@pytest.mark.parametrize(
    "name, match",
    [
        ("01-01-09-01-01-01-01.mp4", "field 'emotion' = 09, expected 01-08"),
        ("01-01-03-01-01-01-25.mp4", "field 'actor' = 25, expected 01-24"),
        ("01-01-01-02-01-01-01.mp4", "no strong intensity"),
        ("01-01-03-01-01-01.mp4", "does not follow the RAVDESS name"),
    ],
)
def test_bad_names(tmp_path, name, match):
    root = _tree(tmp_path, FILES[:1] + [("Actor_01", name)])
    with pytest.raises(DataError, match=match) as e:
        import_ravdess(root=str(root))
    assert name in str(e.value)


def test_overlapping_actor_splits(tmp_path):
    with pytest.raises(DataError, match=r"actors \[21\]"):
        import_ravdess(root=str(_tree(tmp_path)), val_actors=[21], test_actors=[21, 22])


def test_mfh_csvs(fx):
    d = fx / "ravdess"
    imp = import_ravdess_csv(train_csv=str(d / "train.csv"), val_csv=str(d / "val.csv"), test_csv=str(d / "test.csv"), root="/data/ravdess")
    assert imp.split_counts() == {"test": 2, "train": 3, "val": 1}  # header row of train.csv skipped
    rows = {r.uid: r for r in imp.rows}
    r = rows["01-06-02-02-01-02"]  # same uid as import_ravdess gives the recording
    assert (r.split, r.labels, r.group) == ("train", [5], "actor02")
    assert r.audio is None
    assert r.meta == {"audio_feature": "/data/ravdess/audio/03-01-06-02-02-01-02.npy", "image": "/data/ravdess/images/01-01-06-02-02-01-02.jpg"}
    assert rows["02-04-01-02-02-24"].labels == [3]


def test_mfh_csv_labels_and_errors(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text("a/x1.wav,i/x1.jpg,1\na/x2.wav,i/x2.jpg,angry\n")
    imp = import_ravdess_csv(train_csv=str(p), label_base=1)
    assert [r.labels for r in imp.rows] == [[0], [4]]
    assert imp.rows[0].audio == "a/x1.wav" and imp.rows[0].uid == "x1" and imp.rows[0].group is None
    p.write_text("a/x1.wav,i/x1.jpg,8\n")
    with pytest.raises(DataError, match=r"train.csv:1: label 8 outside 0..7"):
        import_ravdess_csv(train_csv=str(p))
    p.write_text("a/x1.wav,i/x1.jpg,1\na/x1.wav,i/x2.jpg,2\n")
    with pytest.raises(DataError, match=r"train.csv:2: audio file 'a/x1.wav' already listed at .*train.csv:1"):
        import_ravdess_csv(train_csv=str(p))
    p.write_text("a/x1.wav,1\n")
    with pytest.raises(DataError, match=r"train.csv:1: expected 3 columns"):
        import_ravdess_csv(train_csv=str(p))
    p.write_text("a/x1.wav,i/1.jpg,1\nb/x1.wav,i/2.jpg,2\n")  # repeated stems: uid = path without extension
    assert [r.uid for r in import_ravdess_csv(train_csv=str(p)).rows] == ["a/x1", "b/x1"]
