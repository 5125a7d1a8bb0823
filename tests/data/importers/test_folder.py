import pytest

from xmodal.data.importers.folder import import_folder
from xmodal.errors import DataError


def _touch(root, *paths):
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(b"")
    return root


def test_class_folders(tmp_path):
    root = _touch(tmp_path, "dog/b.mp4", "dog/b.wav", "cat/a.mp4", "cat/notes.txt", "bird/x.jpg", ".hidden/y.mp4",
                  "cat/clip7/frame_0001.jpg", "cat/clip7/frame_0002.jpg", "cat/empty_dir/readme.md")
    imp = import_folder(root=str(root), split="pool")
    assert [lab.name for lab in imp.labels] == ["bird", "cat", "dog"]
    rows = {r.uid: r for r in imp.rows}
    assert sorted(rows) == ["bird/x", "cat/a", "cat/clip7", "dog/b"]
    assert rows["dog/b"].labels == [2] and rows["dog/b"].split == "pool"
    assert rows["dog/b"].video == str(root / "dog/b.mp4") and rows["dog/b"].audio == str(root / "dog/b.wav")
    assert rows["cat/clip7"].video == str(root / "cat/clip7")  # a frame folder is a video
    assert rows["bird/x"].meta == {"image": str(root / "bird/x.jpg")} and rows["bird/x"].video is None
    only_video = import_folder(root=str(root), extensions=["mp4"])
    assert sorted(r.uid for r in only_video.rows) == ["cat/a", "cat/clip7", "dog/b"]
    assert all(r.audio is None for r in only_video.rows)


def test_split_folders(tmp_path):
    root = _touch(tmp_path, "train/cat/a.mp4", "train/dog/b.mp4", "val/cat/c.mp4", "test/zebra/d.mp4")
    imp = import_folder(root=str(root))
    assert [lab.name for lab in imp.labels] == ["cat", "dog", "zebra"]  # union over splits, sorted
    assert imp.split_counts() == {"test": 1, "train": 2, "val": 1}
    assert {r.uid: r.labels[0] for r in imp.rows} == {"train/cat/a": 0, "train/dog/b": 1, "val/cat/c": 0, "test/zebra/d": 2}
    # custom split names; without them "seen"/"unseen" are classes holding no media directly
    root2 = _touch(tmp_path / "two", "seen/cat/a.mp4", "unseen/cat/b.mp4")
    assert import_folder(root=str(root2), split_dirs=["seen", "unseen"]).split_counts() == {"seen": 1, "unseen": 1}
    with pytest.raises(DataError, match="no media files"):
        import_folder(root=str(root2))


def test_errors(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        import_folder(root=str(tmp_path / "nope"))
    _touch(tmp_path, "cat/a.mp4", "cat/a.avi")
    with pytest.raises(DataError, match="a second video for sample 'a'"):
        import_folder(root=str(tmp_path))
    empty = _touch(tmp_path / "e", "cat/a.txt")
    with pytest.raises(DataError, match="no media files"):
        import_folder(root=str(empty))
