import pytest

from xmodal.data.importers import run_importer
from xmodal.data.importers.ucf101 import import_ucf101
from xmodal.data.manifest import read_labels, read_manifest
from xmodal.errors import DataError


def _by_uid(imp):
    return {r.uid: r for r in imp.rows}


def test_fold1_counts_labels_groups_paths(fx):
    imp = import_ucf101(splits_dir=str(fx / "ucf101/ucfTrainTestlist"), root="/data/UCF-101")
    assert imp.split_counts() == {"test": 4, "train": 6}
    assert [lab.name for lab in imp.labels] == ["ApplyEyeMakeup", "ApplyLipstick", "Archery", "HandstandPushups"]
    rows = _by_uid(imp)
    r = rows["v_Archery_g25_c07"]
    assert (r.split, r.labels, r.group) == ("train", [2], "g25")
    assert r.video == "/data/UCF-101/Archery/v_Archery_g25_c07.avi"
    # test list has no label column: the class comes from the folder (file name case differs)
    t = rows["v_HandStandPushups_g02_c03"]
    assert (t.split, t.labels, t.group) == ("test", [3], "g02")


def test_fold2_swaps_lists(fx):
    imp = import_ucf101(splits_dir=str(fx / "ucf101/ucfTrainTestlist"), fold=2)
    rows = _by_uid(imp)
    assert imp.split_counts() == {"test": 5, "train": 5}
    assert rows["v_ApplyEyeMakeup_g08_c01"].split == "test"
    assert rows["v_ApplyEyeMakeup_g01_c01"].split == "train"
    assert rows["v_Archery_g01_c01"].video == "Archery/v_Archery_g01_c01.avi"  # no root: kept as given


def test_missing_fold_names_file(fx):
    with pytest.raises(DataError, match="trainlist03.txt: not found"):
        import_ucf101(splits_dir=str(fx / "ucf101/ucfTrainTestlist"), fold=3)


def test_class_subset_reindexes_and_drops(fx, tmp_path):
    imp = import_ucf101(splits_dir=str(fx / "ucf101/ucfTrainTestlist"), classes=str(fx / "ucf101/ucf_with_audio.txt"))
    assert [lab.name for lab in imp.labels] == ["ApplyEyeMakeup", "Archery"]
    assert imp.split_counts() == {"test": 2, "train": 4}
    assert {r.uid: r.labels[0] for r in imp.rows}["v_Archery_g10_c03"] == 1
    assert any("skipped" in n for n in imp.notes)
    # a folder of class folders (CCL: the audio-feature archive) gives the sorted names
    for name in ("Archery", "ApplyLipstick"):
        (tmp_path / "feats" / name).mkdir(parents=True)
    imp = import_ucf101(splits_dir=str(fx / "ucf101/ucfTrainTestlist"), classes=str(tmp_path / "feats"))
    assert [lab.name for lab in imp.labels] == ["ApplyLipstick", "Archery"]
    (tmp_path / "bad.txt").write_text("Archery\nJuggling\n")
    with pytest.raises(DataError, match="not in classInd.txt: Juggling"):
        import_ucf101(splits_dir=str(fx / "ucf101/ucfTrainTestlist"), classes=str(tmp_path / "bad.txt"))


def test_val_groups_and_video_ext(fx):
    imp = import_ucf101(splits_dir=str(fx / "ucf101/ucfTrainTestlist"), val_groups=["g08", "9"], video_ext=".mp4")
    assert imp.split_counts() == {"test": 4, "train": 2, "val": 4}
    rows = _by_uid(imp)
    assert rows["v_ApplyEyeMakeup_g09_c02"].split == "val"
    assert rows["v_ApplyEyeMakeup_g09_c02"].video == "ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c02.mp4"
    with pytest.raises(DataError, match="no train clip"):
        import_ucf101(splits_dir=str(fx / "ucf101/ucfTrainTestlist"), val_groups=["g01"])


def _copy_lists(fx, tmp_path):
    d = tmp_path / "lists"
    d.mkdir()
    for f in (fx / "ucf101/ucfTrainTestlist").iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    return d


@pytest.mark.parametrize(
    "fname, line, match",
    [
        ("trainlist01.txt", "Archery/v_Archery_g11_c01.avi\r\n", r"trainlist01.txt:7: expected '<Class>/<video> <label>'"),
        ("trainlist01.txt", "Archery/v_Archery_g11_c01.avi x\r\n", r"trainlist01.txt:7: label: expected an integer"),
        ("trainlist01.txt", "Archery/v_Archery_g11_c01.avi 1\r\n", r"trainlist01.txt:7: label 1 is 'ApplyEyeMakeup' but the folder is 'Archery'"),
        ("testlist01.txt", "Juggling/v_Juggling_g01_c01.avi\r\n", r"testlist01.txt:5: class folder 'Juggling' is not in classInd"),
        ("testlist01.txt", "Archery/v_Archery_g10_c03.avi\r\n", r"testlist01.txt:5: uid 'v_Archery_g10_c03' already defined at .*trainlist01.txt:4"),
        ("classInd.txt", "6 Basketball\r\n", r"classInd.txt:5: class indices must be 1..N in order; expected 5, found 6"),
    ],
)
def test_malformed_lines_name_file_and_line(fx, tmp_path, fname, line, match):
    d = _copy_lists(fx, tmp_path)
    with open(d / fname, "a", newline="") as f:
        f.write(line)
    with pytest.raises(DataError, match=match) as e:
        import_ucf101(splits_dir=str(d))
    assert "\n" not in str(e.value)


def test_case_insensitive_folder_match(fx, tmp_path):
    d = _copy_lists(fx, tmp_path)
    (d / "testlist01.txt").write_text("handstandPUSHUPS/v_HandStandPushups_g05_c01.avi\r\n")
    imp = import_ucf101(splits_dir=str(d))
    assert [r.labels for r in imp.rows if r.split == "test"] == [[3]]


def test_run_importer_writes_manifest_and_labels(fx, tmp_path):
    res = run_importer("ucf101", tmp_path / "out", splits_dir=str(fx / "ucf101/ucfTrainTestlist"))
    rows = read_manifest(res.manifest)
    assert len(rows) == 10 and rows[0].uid == "v_ApplyEyeMakeup_g08_c01"
    assert [lab.id for lab in read_labels(res.labels)][-1] == "HandstandPushups"
    assert any("relative" in n for n in res.imported.notes)
