import json
from pathlib import Path

import pytest

from xmodal.cli import main
from xmodal.data.manifest import read_manifest

FIX = Path(__file__).parents[1] / "data/importers/fixtures"


def test_import_then_validate(tmp_path, capsys):
    out = tmp_path / "ucf"
    rc = main(["import", "ucf101", "--splits-dir", str(FIX / "ucf101/ucfTrainTestlist"), "--fold", "2",
               "--val-groups", "g07", "--root", str(tmp_path / "videos"), "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert text.splitlines()[0] == f"ucf101: 10 rows (test 5, train 4, val 1), 4 labels -> {out / 'manifest.jsonl'}"
    assert read_manifest(out / "manifest.jsonl")[0].video.startswith(str(tmp_path / "videos"))
    # the videos do not exist: one line per row, exit status 1
    rc = main(["validate", str(out / "manifest.jsonl")])
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert rc == 1
    assert len(lines) == 10 and all(line.startswith(f"{out / 'manifest.jsonl'}:") and "media file not found" in line for line in lines)
    assert captured.err == f"10 problem(s) in {out / 'manifest.jsonl'}\n"
    rc = main(["validate", str(out), "--no-media", "--splits", "train", "test"])
    captured = capsys.readouterr()
    assert rc == 0
    assert captured.out == f"OK {out}: 10 rows; test 5, train 4, val 1; 4 labels\n"
    assert "index.json" in captured.err  # not a prepared store: shard checks skipped, with a note
    assert main(["validate", str(out), "--no-media", "--splits", "val", "pool"]) == 1
    assert capsys.readouterr().out == f"{out / 'manifest.jsonl'}: split 'pool' has no rows (found: test, train, val)\n"


def test_list_and_bool_options(tmp_path, capsys):
    d = FIX / "cavmae"
    rc = main(["import", "cavmae", "--datafiles", str(d / "audioset_20k_cleaned.json"), str(d / "audioset_eval_cleaned.json"),
               "--splits", "train", "test", "--label-csv", str(d / "class_labels_indices.csv"), "--n-frames", "3", "--out", str(tmp_path)])
    assert rc == 0
    rows = read_manifest(tmp_path / "manifest.jsonl")
    assert [len(r.meta["frames"]) for r in rows] == [3] * 5
    assert "cavmae: 5 rows (test 2, train 3), 5 labels" in capsys.readouterr().out


def test_user_error_is_one_line(tmp_path, capsys):
    bad = tmp_path / "lists"
    bad.mkdir()
    (bad / "classInd.txt").write_text("1 A\nB\n")
    rc = main(["import", "ucf101", "--splits-dir", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == f"xmodal: error: {bad / 'classInd.txt'}:2: expected '<index> <class>', found 'B'\n"
    assert not (tmp_path / "o").exists()


def test_help_lists_formats_and_options(capsys):
    with pytest.raises(SystemExit):
        main(["import", "egtea", "--help"])
    text = capsys.readouterr().out
    assert "--tau-a TAU_A" in text and "anticipation time" in text and "(default: 0.5)" in text
    with pytest.raises(SystemExit):
        main(["import", "--help"])
    text = capsys.readouterr().out
    for name in ("cavmae", "ccl", "egtea", "epic55", "folder", "hmdb51", "ravdess", "ravdess_csv", "ucf101"):
        assert name in text


def test_extras_written(tmp_path, capsys):
    d = FIX / "egtea"
    assert main(["import", "egtea", "--train-csv", str(d / "training1.csv"), "--val-csv", str(d / "validation1.csv"),
                 "--actions", str(d / "actions.csv"), "--out", str(tmp_path)]) == 0
    assert len(json.loads((tmp_path / "actions.json").read_text())) == 6
    assert main(["validate", str(tmp_path), "--no-media"]) == 0
