import json

import pytest

from xmodal.data.importers.cavmae import import_cavmae, read_label_csv
from xmodal.errors import DataError


def _import(fx, **kw):
    d = fx / "cavmae"
    args = dict(datafiles=[str(d / "audioset_20k_cleaned.json"), str(d / "audioset_eval_cleaned.json")], splits=["train", "test"],
                label_csv=str(d / "class_labels_indices.csv"))
    return import_cavmae(**{**args, **kw})


def test_label_csv_quoted_names(fx):
    labels = read_label_csv(fx / "cavmae/class_labels_indices.csv")
    assert [(lab.index, lab.id) for lab in labels][:2] == [(0, "/m/09x0r"), (1, "/m/05zppz")]
    assert labels[1].name == "Male speech, man speaking"


def test_rows_labels_frames_weights(fx):
    d = fx / "cavmae"
    imp = _import(fx, root="/data/as", weights=[str(d / "audioset_20k_cleaned_weight.csv"), "-"])
    assert imp.split_counts() == {"test": 2, "train": 3}
    rows = {r.uid: r for r in imp.rows}
    a = rows["--4gqARaEJE"]
    assert a.labels == [0, 1] and a.split == "train"
    assert a.audio == "/data/sls/audioset/sample_audio/--4gqARaEJE.flac"  # absolute: kept
    assert a.meta["frames"] == [f"/data/sls/audioset/sample_frames/frame_{i}/--4gqARaEJE.jpg" for i in range(10)]
    assert a.meta["weight"] == pytest.approx(1.02563)
    b = rows["-1pRmoJIGQc"]
    assert b.labels == [0, 2, 3]  # "/m/02zsn,/m/0ytgt,/m/09x0r" -> indices, sorted
    assert b.audio == "/data/as/sample_audio/-1pRmoJIGQc.flac"
    assert b.meta["frames"][9] == "/data/as/sample_frames/frame_9/-1pRmoJIGQc.jpg"
    assert b.meta["weight"] == 2.0
    assert "weight" not in rows["-5zJNBzuF5o"].meta and rows["-5zJNBzuF5o"].split == "test"
    assert _import(fx, splits=["retrieval"]).split_counts() == {"retrieval": 5}
    lean = {r.uid: r for r in _import(fx, root="/data/as", frame_list=False).rows}["-1pRmoJIGQc"]
    assert lean.meta == {"frame_dir": "/data/as/sample_frames", "n_frames": 10}


def test_unknown_mid_names_file_entry_and_mid(fx):
    d = fx / "cavmae"
    with pytest.raises(DataError, match=r"unknown_mid.json: entry 1 \(video_id -5zJNBzuF5o\): unknown label mid '/m/0dgbq'"):
        import_cavmae(datafiles=[str(d / "unknown_mid.json")], label_csv=str(d / "class_labels_indices.csv"))


def test_weight_count_mismatch(fx):
    d = fx / "cavmae"
    with pytest.raises(DataError, match="3 weights for 2 samples"):
        _import(fx, weights=["-", str(d / "audioset_20k_cleaned_weight.csv")])


def test_duplicates(fx, tmp_path):
    d = fx / "cavmae"
    entries = json.loads((d / "audioset_eval_cleaned.json").read_text())["data"]
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps({"data": entries + entries[:1]}))
    with pytest.raises(DataError, match=r"dup.json: entry 2: video_id '-2PDE7hUArE' already listed at .*dup.json: entry 0"):
        import_cavmae(datafiles=[str(dup)], label_csv=str(d / "class_labels_indices.csv"))
    imp = import_cavmae(datafiles=[str(dup)], label_csv=str(d / "class_labels_indices.csv"), duplicates="first")
    assert len(imp.rows) == 2 and "1 repeated" in imp.notes[-1]


@pytest.mark.parametrize(
    "text, match",
    [
        ("index,mid,name\n0,/m/a,A\n", r"labels.csv:1: expected header 'index,mid,display_name'"),
        ("index,mid,display_name\n0,/m/a,A\n2,/m/b,B\n", r"labels.csv:3: indices must be 0..K-1 in order; expected 1, found 2"),
        ("index,mid,display_name\n0,/m/a,A\n1,/m/a,B\n", r"labels.csv:3: mid '/m/a' already used by index 0"),
        ("index,mid,display_name\n0,/m/a,A, b\n", r"labels.csv:2: expected 3 fields 'index,mid,display_name', found 4"),
    ],
)
def test_bad_label_csv(tmp_path, text, match):
    p = tmp_path / "labels.csv"
    p.write_text(text)
    with pytest.raises(DataError, match=match):
        read_label_csv(p)
