import json
import tarfile

from xmodal.data.manifest import ManifestRow, write_labels, write_manifest
from xmodal.data.validate import Problem, validate, validate_manifest, validate_store


def _good(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "b.wav").write_bytes(b"")
    rows = [
        ManifestRow("a", "train", [0], video="a.mp4", start=0.0, end=1.0),
        ManifestRow("b", "test", [1, 2], audio=str(tmp_path / "b.wav")),
        ManifestRow("t", "train", [], text="take <v> pan"),
    ]
    write_manifest(rows, tmp_path / "manifest.jsonl")
    write_labels(["x", "y", "z"], tmp_path / "labels.csv")
    return tmp_path / "manifest.jsonl"


def test_clean_manifest_has_no_problems(tmp_path):
    m = _good(tmp_path)
    assert validate_manifest(m) == []
    v = validate(m, expect_splits=["train", "test"])
    assert (v.rows, v.splits, v.labels) == (3, {"test": 1, "train": 2}, 3)
    assert v.summary(m) == f"OK {m}: 3 rows; test 1, train 2; 3 labels"


def test_each_problem_is_one_line(tmp_path):
    m = _good(tmp_path)
    (tmp_path / "f0.jpg").write_bytes(b"")
    bad = [
        {"uid": "a", "split": "train", "labels": [0], "video": "a.mp4"},  # line 4: duplicate uid
        {"uid": "c", "split": "train", "labels": [3], "video": "a.mp4"},  # 5: label out of range
        {"uid": "d", "split": "train", "labels": [0], "video": "missing.mp4"},  # 6: missing media
        {"uid": "e", "split": "train", "labels": [0], "video": "a.mp4", "start": 2.0, "end": 2.0},  # 7: start >= end
        {"uid": "f", "split": "train", "labels": [0]},  # 8: no media
        {"uid": "g", "split": "train", "labels": [0], "meta": {"frames": ["f0.jpg", "f1.jpg", "f2.jpg"]}},  # 9: frames
        {"uid": "h", "split": "train", "labels": "0", "video": "a.mp4"},  # 10: bad field
    ]
    with open(m, "a") as f:
        f.write("".join(json.dumps(d) + "\n" for d in bad) + "{not json\n")  # 11: invalid JSON
    problems = validate_manifest(m)
    assert all("\n" not in str(p) for p in problems)
    expected = [
        (f"{m}:4", "duplicate uid 'a' (first at line 1)"),
        (f"{m}:5", "uid 'c': label index [3] outside 0..2 of labels.csv"),
        (f"{m}:6", f"uid 'd': media file not found: {tmp_path / 'missing.mp4'}"),
        (f"{m}:7", "uid 'e': start 2.0 >= end 2.0"),
        (f"{m}:8", "uid 'f': no media (video, audio, text or meta frames/frame_dir/image/audio_feature)"),
        (f"{m}:9", f"uid 'g': media file not found: {tmp_path / 'f1.jpg'} (+1 more)"),
        (f"{m}:10", "field `labels`: expected a list of label indices, found '0'"),
    ]
    assert [(p.where, p.message) for p in problems[:7]] == expected
    assert problems[7].where == f"{m}:11" and problems[7].message.startswith("invalid JSON")
    assert len(problems) == 8
    # without media checks only the media-file lines go away
    assert len(validate_manifest(m, check_media=False)) == 6


def test_labels_file_and_splits(tmp_path):
    m = _good(tmp_path)
    (tmp_path / "labels.csv").unlink()
    assert [p.message for p in validate_manifest(m)] == ["uid 'a' has labels [0] but there is no labels.csv",
                                                          "uid 'b' has labels [1, 2] but there is no labels.csv"]
    (tmp_path / "labels.csv").write_text("index,id,name\n0,x,x\n1,x,y\n3,z,z\n")
    msgs = [str(p) for p in validate_manifest(m)]
    assert len(msgs) == 1 and "label indices must be 0..K-1" in msgs[0]
    (tmp_path / "labels.csv").write_text("index,id,name\n0,x,x\n1,x,y\n2,z,z\n")
    assert [p.message for p in validate_manifest(m)] == ["label id 'x' appears 2 times"]
    assert [p.message for p in validate(m, expect_splits=["val"]).problems][-1] == "split 'val' has no rows (found: test, train)"
    write_labels(["x", "y", "z"], tmp_path / "labels.csv")
    (tmp_path / "empty.jsonl").write_text("\n")
    assert [p.message for p in validate_manifest(tmp_path / "empty.jsonl", tmp_path / "labels.csv")] == ["no rows"]
    assert validate_manifest(tmp_path / "nope.jsonl") == [Problem(str(tmp_path / "nope.jsonl"), "manifest not found")]


def _store(tmp_path):
    store = tmp_path / "store"
    (store / "shards").mkdir(parents=True)
    write_manifest([ManifestRow("a", "train", [0], video="raw/a.mp4"), ManifestRow("b", "train", [1], video="raw/b.mp4")],
                   store / "manifest.jsonl")
    write_labels(["x", "y"], store / "labels.csv")
    members = {"a": ["a.000.jpg", "a.wav"], "b": ["b.000.jpg", "b.wav"]}
    shard = store / "shards/000000.tar"
    with tarfile.open(shard, "w") as tar:
        for names in members.values():
            for n in names:
                (tmp_path / n).write_bytes(b"x")
                tar.add(tmp_path / n, arcname=n)
    index = {"shards": [{"path": "shards/000000.tar", "size": shard.stat().st_size, "count": 2, "uids": ["a", "b"]}],
             "members": {u: {"shard": "shards/000000.tar", "files": f} for u, f in members.items()}}
    (store / "index.json").write_text(json.dumps(index))
    return store, index


def test_store_checks(tmp_path):
    store, index = _store(tmp_path)
    v = validate(store, deep=True)
    assert v.problems == [] and v.shards == 1
    assert any("media-file checks replaced" in n for n in v.notes)  # raw/*.mp4 do not exist, and need not
    index["shards"][0]["size"] += 1
    index["shards"].append("shards/000001.tar")
    index["members"]["c"] = {"shard": "shards/000009.tar"}
    index["members"]["a"]["files"].append("a.001.jpg")
    (store / "index.json").write_text(json.dumps(index))
    with open(store / "manifest.jsonl", "a") as f:
        f.write(json.dumps({"uid": "d", "split": "train", "labels": [0], "video": "raw/d.mp4"}) + "\n")
    msgs = [str(p) for p in validate_store(store, deep=True)]
    idx, man = store / "index.json", store / "manifest.jsonl"
    assert msgs == [
        f"{idx}: shard shards/000000.tar: size {index['shards'][0]['size'] - 1} bytes, index records {index['shards'][0]['size']}",
        f"{idx}: shard shards/000001.tar not found",
        f"{idx}: member 'c': shard 'shards/000009.tar' is not in 'shards'",
        f"{man}: uid 'd' is not in index.json",
        f"{idx}: uid 'c' is indexed but not in manifest.jsonl",
        f"{idx}: member 'a': a.001.jpg not in shards/000000.tar",
    ]


def test_store_without_index_is_tolerated(tmp_path):
    store, _ = _store(tmp_path)
    (store / "index.json").unlink()
    v = validate(store, check_media=False)
    assert v.problems == [] and any("shard checks skipped" in n for n in v.notes)
