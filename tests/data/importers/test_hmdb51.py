import pytest

from xmodal.data.importers.hmdb51 import import_hmdb51
from xmodal.errors import DataError


def test_fold1_tags_classes_paths(fx):
    imp = import_hmdb51(splits_dir=str(fx / "hmdb51/testTrainMulti_7030_splits"), root="/data/hmdb51")
    # sorted class names ("climb" before "climb_stairs", although climb_s... < climb_t... as file names)
    assert [lab.name for lab in imp.labels] == ["brush_hair", "cartwheel", "climb", "climb_stairs", "wave"]
    assert imp.split_counts() == {"test": 5, "train": 6}  # tag 0 rows left out
    rows = {r.uid: r for r in imp.rows}
    assert "Brushing_my_waist_lenth_hair_brush_hair_u_nm_np1_ba_goo_0" not in rows
    r = rows["(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0"]
    assert (r.split, r.labels) == ("train", [1])
    assert r.video == "/data/hmdb51/cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi"
    assert rows["50_FIRST_DATES_wave_u_nm_np1_le_goo_33"].split == "test"
    assert rows["50_FIRST_DATES_wave_u_nm_np1_le_goo_33"].labels == [4]
    assert rows["American_Gangster_climb_stairs_f_cm_np1_fr_med_3"].labels == [3]
    assert rows["Climbing_the_wall_climb_f_cm_np1_ba_med_1"].labels == [2]
    assert "3 clips tagged 0" in imp.notes[0]


def test_fold2_differs(fx):
    imp = import_hmdb51(splits_dir=str(fx / "hmdb51/testTrainMulti_7030_splits"), fold=2, video_ext="mp4")
    rows = {r.uid: r for r in imp.rows}
    assert imp.split_counts() == {"test": 4, "train": 7}
    assert rows["April_09_brush_hair_u_nm_np1_ba_goo_0"].split == "test"
    assert rows["April_09_brush_hair_u_nm_np1_ba_goo_0"].video.endswith("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.mp4")


def test_no_files_for_fold(fx):
    with pytest.raises(DataError, match="no '<class>_test_split4.txt' files"):
        import_hmdb51(splits_dir=str(fx / "hmdb51/testTrainMulti_7030_splits"), fold=4)


@pytest.mark.parametrize("line, match", [("clip.avi 3 \n", r"wave_test_split1.txt:4: expected '<video>.avi <tag>' with tag 0, 1 or 2"),
                                         ("clip.avi\n", r"wave_test_split1.txt:4: expected"),
                                         ("50_FIRST_DATES_wave_u_cm_np1_fr_goo_30.avi 2\n", r"wave_test_split1.txt:4: uid .* already defined at .*wave_test_split1.txt:1")])
def test_malformed_line(fx, tmp_path, line, match):
    for f in (fx / "hmdb51/testTrainMulti_7030_splits").iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    with open(tmp_path / "wave_test_split1.txt", "a") as f:
        f.write(line)
    with pytest.raises(DataError, match=match):
        import_hmdb51(splits_dir=str(tmp_path))
