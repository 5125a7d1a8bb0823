import json

import pytest

from xmodal.data.importers.ccl import import_ccl
from xmodal.errors import DataError


def test_rows_labels_subsets_segments(fx):
    imp = import_ccl(annotation=str(fx / "ccl/ucf101_01.json"), root="/data/hdf5")
    assert [lab.name for lab in imp.labels] == ["ApplyEyeMakeup", "Archery", "Basketball"]
    assert imp.split_counts() == {"test": 2, "train": 3}  # "validation" = the UCF test list -> test
    rows = {r.uid: r for r in imp.rows}
    r = rows["v_Archery_g10_c03"]
    assert (r.split, r.labels, r.video) == ("train", [1], "/data/hdf5/Archery/v_Archery_g10_c03.hdf5")
    assert r.meta == {"segment": [1, 301], "n_frames": 300}


def test_label_read_from_entry_with_explicit_video_path(fx):
    # entry with its own video_path follows an Archery entry: its label must stay ApplyEyeMakeup
    # (the reference reused the stale label here - CCL defect 5)
    imp = import_ccl(annotation=str(fx / "ccl/ucf101_01.json"), root="/elsewhere")
    r = {r.uid: r for r in imp.rows}["v_ApplyEyeMakeup_g01_c02"]
    assert r.labels == [0]
    assert r.video == "/mnt/ucf/hdf5/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c02.hdf5"


def test_audio_root_restricts_classes(fx, tmp_path):
    for name in ("ApplyEyeMakeup", "Basketball"):
        (tmp_path / "audio" / name).mkdir(parents=True)
    imp = import_ccl(annotation=str(fx / "ccl/ucf101_01.json"), audio_root=str(tmp_path / "audio"), video_ext=".mp4",
                     subset_map=["validation=val"])
    assert [lab.name for lab in imp.labels] == ["ApplyEyeMakeup", "Basketball"]
    rows = {r.uid: r for r in imp.rows}
    assert set(rows) == {"v_ApplyEyeMakeup_g08_c01", "v_Basketball_g12_c02", "v_ApplyEyeMakeup_g01_c02"}
    assert rows["v_Basketball_g12_c02"].labels == [1]
    assert rows["v_Basketball_g12_c02"].video == "Basketball/v_Basketball_g12_c02.mp4"
    assert rows["v_ApplyEyeMakeup_g01_c02"].split == "val"
    assert rows["v_Basketball_g12_c02"].meta["audio_feature"] == str(tmp_path / "audio/Basketball/v_Basketball_g12_c02.npy")


@pytest.mark.parametrize(
    "entry, match",
    [
        ({"subset": "training", "annotations": {"label": "Juggling", "segment": [1, 5]}}, "entry 'v_x': label 'Juggling' is not in 'labels'"),
        ({"subset": "holdout", "annotations": {"label": "Archery"}}, "entry 'v_x': subset 'holdout' not in --subset-map"),
        ({"subset": "testing", "annotations": {}}, "entry 'v_x': no label and no 'video_path'"),
        ({"subset": "training", "annotations": {"label": "Archery", "segment": [5, 5]}}, "entry 'v_x': segment: expected"),
    ],
)
def test_bad_entries(tmp_path, entry, match):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"labels": ["Archery"], "database": {"v_x": entry}}))
    with pytest.raises(DataError, match=match):
        import_ccl(annotation=str(path))


def test_duplicate_key_and_bad_json(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"labels": ["A"], "database": {"v": {"subset": "training"}, "v": {"subset": "training"}}}')
    with pytest.raises(DataError, match="key 'v' appears twice"):
        import_ccl(annotation=str(path))
    path.write_text('{"labels": ["A"],\n "database": {"v": }}')
    with pytest.raises(DataError, match=r"a.json:2: invalid JSON"):
        import_ccl(annotation=str(path))
