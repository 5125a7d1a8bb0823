"""`xmodal prep`: rejects, round trips, idempotency, kill -9 resume, --part merges."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("soundfile")

from xmodal.data.media import decode_audio, decode_video  # noqa: E402
from xmodal.data.prep import PrepConfig, load_source, prepare  # noqa: E402
from xmodal.data.shards import ShardReader, decode_audio_bytes, decode_jpg, read_npy_frames  # noqa: E402
from xmodal.errors import ConfigError, DataError  # noqa: E402

from .store_fixtures import FPS, make_corpus, store_files  # noqa: E402

DENSE = PrepConfig(video="dense", short_side=0, min_duration=0.5, shard_size=3, workers=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), n_good=8, k4=True)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """An uninterrupted single-process run: what every other way of preparing must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "store"
    result = prepare(corpus.manifest, out, DENSE, progress=False)
    return out, result


def _sidecars(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "shards").glob("shard-*.json"))]


def test_bad_corpus_every_good_clip_prepared_every_bad_rejected(corpus, reference):
    out, result = reference
    assert result.complete and result.shards_built == result.shards_total == 5  # 15 rows / 3
    rejects = {r["uid"]: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    assert {u: r["reason"] for u, r in rejects.items()} == corpus.bad
    assert rejects["bad_missing"]["path"] == "missing.mp4" and "not found" in rejects["bad_missing"]["detail"]
    assert "min_duration" in rejects["bad_short"]["detail"]
    prepared = [json.loads(x)["uid"] for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(prepared) == sorted(corpus.good)
    index = json.loads((out / "index.json").read_text())
    assert index["num_samples"] == len(corpus.good) and index["num_rejects"] == len(corpus.bad)
    assert index["splits"] == {"test": 2, "train": 7} and index["num_classes"] == 3
    assert result.prepared == 9 and sum(result.rejected.values()) == 6
    assert "9 prepared, 6 rejected (corrupt 2, no_audio 1, no_video 1, too_short 1, unreadable 1)" in result.summary()
    k4 = next(s for side in _sidecars(out) for s in side["samples"] if s["uid"] == "k4")
    assert k4["video"]["frames"] == 2 and (k4["video"]["height"], k4["video"]["width"]) == (2160, 3840)
    assert (out / "labels.csv").read_text().splitlines()[1] == "0,red,red"
    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert row["video"] == row["audio"] == "shards/shard-000000.tar" and row["group"] == "g0"


def test_store_passes_xmodal_validate(reference):
    from xmodal.data.validate import validate

    v = validate(reference[0], deep=True)
    assert v.problems == [] and v.rows == 9 and v.shards == 5
    assert not any("no uids" in n for n in v.notes)  # uid coverage was checked


def test_stored_frames_and_audio_equal_direct_decoding(corpus, reference):
    out, _ = reference
    reader = ShardReader()
    entries = {s["uid"]: (side["shard"], s) for side in _sidecars(out) for s in side["samples"]}
    for uid in ("clip00", "clip05"):
        shard, s = entries[uid]
        path = out / "shards" / shard
        v = s["video"]
        frames = read_npy_frames(reader, path, v["data_offset"], (v["frames"], v["height"], v["width"], 3),
                                 np.arange(v["frames"]))  # fmt: skip
        src = corpus.manifest.parent / f"{uid}.mp4"
        np.testing.assert_array_equal(frames, decode_video(src, end=10.0).frames)
        assert v["fps"] == FPS and "times" not in v
        off, size = s["members"]["flac"]
        wave, sr = decode_audio_bytes(reader.read(path, off, size))
        ref = decode_audio(src, end=10.0)
        assert sr == 16000 and s["audio"]["samples"] == len(wave) == len(ref)
        np.testing.assert_allclose(wave, ref, atol=1.0 / 32767)
        head = json.loads(reader.read(path, *s["members"]["json"]))
        assert head["uid"] == uid and head["meta"]["i"] == int(uid[-2:]) and head["streams"]["video"]["frames"] == 8
    reader.close()


def test_select_mode_jpg_short_side(corpus, tmp_path):
    cfg = PrepConfig(video="select", num_frames=10, short_side=16, frame_format="jpg", audio_format="wav",
                     shard_size=4, workers=1)  # fmt: skip
    src = load_source(corpus.manifest)
    src.rows = [r for r in src.rows if r.uid in ("clip01", "clip02")]
    prepare(src, tmp_path / "s", cfg, progress=False)
    (side,) = _sidecars(tmp_path / "s")
    s = side["samples"][0]
    # 8 frames at 8 fps: total = min(8, 10 * 8) = 8 -> int(i * 8 / 10) = 0,0,1,2,3,4,4,5,6,7
    assert s["video"]["times"] == [i / 8 for i in (0, 0, 1, 2, 3, 4, 4, 5, 6, 7)]
    assert (s["video"]["height"], s["video"]["width"]) == (16, 16) and s["video"]["frames"] == 10
    names = [k for k in s["members"] if k.endswith(".jpg")]
    assert names == [f"{i:03d}.jpg" for i in range(10)] and "wav" in s["members"]
    ref = decode_video(corpus.manifest.parent / "clip01.mp4", size=16).frames
    path = tmp_path / "s" / "shards" / side["shard"]
    got = decode_jpg(ShardReader().read(path, *s["members"]["003.jpg"]))
    err = np.abs(got[None].astype(int) - ref).mean((1, 2, 3))
    assert err.argmin() == 2 and err[2] < 6  # stored frame 3 is source frame 2 (JPEG error aside)


def test_idempotent_second_run_does_nothing(corpus, reference, tmp_path):
    out = tmp_path / "s"
    prepare(corpus.manifest, out, DENSE, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = prepare(corpus.manifest, out, DENSE, progress=False)
    assert again.complete and again.shards_built == 0 and again.processed == 0
    assert again.shards_skipped == again.shards_total
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps  # nothing rewritten
    assert store_files(out) == store_files(reference[0])


def test_parts_then_merge_equals_single_run_and_workers_do_not_matter(corpus, reference, tmp_path):
    out = tmp_path / "s"
    cfg = replace(DENSE, workers=2)
    first = prepare(corpus.manifest, out, cfg, part=(1, 2), progress=False)
    assert not first.complete and not (out / "index.json").exists()
    assert first.shards_built == 2 and "store incomplete" in first.summary()
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == ["shard-000001.tar", "shard-000003.tar"]
    second = prepare(corpus.manifest, out, cfg, part=(0, 2), progress=False)
    assert second.complete and second.shards_built == 3
    assert store_files(out) == store_files(reference[0])


def _src_path() -> str:
    import xmodal

    return str(Path(xmodal.__file__).parents[1])


def test_kill9_mid_prep_then_rerun_gives_the_same_store(corpus, reference, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": _src_path(), "XMODAL_PREP_THROTTLE_S": "0.05", "XMODAL_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "xmodal.cli", "prep", str(corpus.manifest), "--out", str(out),
           "--video", "dense", "--short-side", "0", "--min-duration", "0.5", "--shard-size", "3",
           "--workers", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sh = out / "shards"

    def mid_shard() -> bool:  # one shard finished and the next one half-written
        if not list(sh.glob("shard-*.json")):
            return False
        for p in sh.glob(".shard-*.tar.tmp-*"):
            try:
                if p.stat().st_size:
                    return True
            except FileNotFoundError:  # renamed to its final name meanwhile
                pass
        return False

    deadline = time.monotonic() + 120
    try:
        while not (sh.is_dir() and mid_shard()):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "prep made no shard in 120 s"
            time.sleep(0.002)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the prep process and its decoding workers
        except ProcessLookupError:  # already gone (the assertion above reports why)
            pass
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert 1 <= len(list(sh.glob("shard-*.json"))) < 5 and not (out / "index.json").exists()
    assert list(sh.glob(".shard-*.tar.tmp-*"))  # the half-written shard is still there
    resumed = prepare(corpus.manifest, out, DENSE, progress=False)
    assert resumed.complete and resumed.shards_skipped >= 1
    assert store_files(out) == store_files(reference[0])  # no duplicate, no half-written shard


def test_rerun_repairs_every_crash_state(corpus, reference, tmp_path):
    out = tmp_path / "s"
    prepare(corpus.manifest, out, DENSE, progress=False)
    sh = out / "shards"
    (sh / "shard-000001.json").unlink()  # killed between the tar rename and its sidecar
    (sh / ".shard-000002.tar.tmp-otherhost-123").write_bytes(b"half a shard")  # killed mid-write
    (sh / "shard-000002.tar").unlink()
    side = json.loads((sh / "shard-000003.json").read_text())
    side["fingerprint"] = "0" * 32  # made from another manifest
    (sh / "shard-000003.json").write_text(json.dumps(side))
    (sh / "shard-000004.tar").write_bytes(b"truncated")  # size no longer matches its sidecar
    (sh / "shard-000009.tar").write_bytes(b"")  # from an earlier, longer manifest
    (sh / "shard-000009.json").write_text("{}")
    result = prepare(corpus.manifest, out, DENSE, progress=False)
    assert result.shards_built == 4 and result.shards_skipped == 1
    assert store_files(out) == store_files(reference[0])


def test_other_settings_refused_unless_overwrite(corpus, tmp_path):
    src = load_source(corpus.manifest)
    src.rows = src.rows[:2]
    out = tmp_path / "s"
    prepare(src, out, DENSE, progress=False)
    with pytest.raises(DataError, match=r"other settings \(differs in \['short_side'\]\)"):
        prepare(src, out, replace(DENSE, short_side=16), progress=False)
    assert prepare(src, out, replace(DENSE, workers=2), progress=False).shards_built == 0  # workers: not a setting
    r = prepare(src, out, replace(DENSE, short_side=16), overwrite=True, progress=False)
    assert r.complete and r.shards_built == 1
    with pytest.raises(ConfigError, match="require lists audio"):
        prepare(src, tmp_path / "x", replace(DENSE, audio=False), progress=False)
    with pytest.raises(ConfigError, match="part"):
        prepare(src, tmp_path / "x", DENSE, part=(2, 2), progress=False)


def test_media_file_inputs_and_optional_audio(corpus, tmp_path):
    root = corpus.manifest.parent
    src = load_source([root / "clip00.mp4", root / "silent.mp4"], split="pool")
    assert [r.uid for r in src.rows] == ["clip00", "silent"] and src.rows[0].split == "pool"
    cfg = replace(DENSE, require=["video"], min_duration=0.0)
    r = prepare(src, tmp_path / "s", cfg, progress=False)
    assert r.prepared == 2 and not r.rejected  # audio optional: the silent clip is kept without it
    s = {x["uid"]: x for side in _sidecars(tmp_path / "s") for x in side["samples"]}
    assert s["silent"]["audio"] is None and "flac" not in s["silent"]["members"]
    assert s["clip00"]["audio"]["samples"] == 16000


@pytest.mark.skipif(mp.get_start_method() != "fork", reason="patching the worker needs fork")
def test_a_decoder_that_kills_its_process_rejects_only_that_file(corpus, tmp_path, monkeypatch):
    from xmodal.data import _prep_worker

    real = _prep_worker._prepare

    def crashing(row, base, cfg):
        if row.uid == "clip02":
            os._exit(11)  # what a segfaulting decoder looks like from outside
        return real(row, base, cfg)

    monkeypatch.setattr(_prep_worker, "_prepare", crashing)
    src = load_source(corpus.manifest)
    src.rows = [r for r in src.rows if r.uid.startswith("clip")]
    r = prepare(src, tmp_path / "s", replace(DENSE, workers=2), progress=False)
    assert r.complete and r.prepared == 7 and r.rejected == {"corrupt": 1}
    (rej,) = map(json.loads, (tmp_path / "s" / "rejects.jsonl").read_text().splitlines())
    assert rej["uid"] == "clip02" and "exit code 11" in rej["detail"]


def test_cli_prep_prints_summary(corpus, tmp_path, capsys):
    from xmodal.cli import main

    src = tmp_path / "m.jsonl"
    lines = corpus.manifest.read_text().splitlines()
    src.write_text("\n".join(ln.replace('"video": "', f'"video": "{corpus.manifest.parent}/')
                             .replace('"audio": "', f'"audio": "{corpus.manifest.parent}/') for ln in lines[:3]))  # fmt: skip
    (tmp_path / "labels.csv").write_text((corpus.manifest.parent / "labels.csv").read_text())
    rc = main(["prep", str(src), "--out", str(tmp_path / "s"), "--video", "dense", "--no-progress",
               "--shard-size", "2", "--workers", "1"])  # fmt: skip
    assert rc == 0
    assert capsys.readouterr().out.startswith("prep: 3 prepared, 0 rejected, 2 shards (2 built, 0 skipped)")
    with pytest.raises(SystemExit):
        main(["prep", str(src), "--out", str(tmp_path / "s"), "--part", "3/2"])
    assert "expected i/N with 0 <= i < N" in capsys.readouterr().err


def test_videos_stored_as_images(tmp_path):
    from PIL import Image

    from xmodal.data.manifest import ManifestRow, write_labels, write_manifest
    from xmodal.data.media import write_av

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (10, 12, 20, 3), dtype=np.uint8)
    (tmp_path / "folder").mkdir()
    for k in range(6):  # frame_2 < frame_10 by number, not by text
        Image.fromarray(imgs[k]).save(tmp_path / "folder" / f"frame_{k * 4}.png")
    cav = []
    for k in range(10):
        (tmp_path / f"frame_{k}").mkdir()
        if k != 3:  # CAV-MAE rule: a missing frame takes the nearest earlier one
            Image.fromarray(imgs[k]).save(tmp_path / f"frame_{k}" / "clip.png")
        cav.append(f"frame_{k}/clip.png")
    write_av(tmp_path / "clip.wav", None, 1, np.zeros(16000 * 3, np.float32), 16000)
    (tmp_path / "nothing").mkdir()
    rows = [
        ManifestRow("cav", "train", [0], audio="clip.wav", meta={"frames": cav}),
        ManifestRow("folder", "train", [0], video="folder", audio="clip.wav", meta={"fps": 4}),
        ManifestRow("empty", "train", [0], video="nothing", audio="clip.wav"),
    ]
    write_manifest(rows, tmp_path / "manifest.jsonl")
    write_labels(["a"], tmp_path / "labels.csv")
    r = prepare(tmp_path / "manifest.jsonl", tmp_path / "s", PrepConfig(short_side=0, frame_format="npy", workers=1),
                progress=False)  # fmt: skip
    assert r.prepared == 2 and r.rejected == {"no_video": 1}
    (side,) = _sidecars(tmp_path / "s")
    reader, shard = ShardReader(), tmp_path / "s" / "shards" / side["shard"]
    got = {}
    for s in side["samples"]:
        v = s["video"]
        got[s["uid"]] = (v, read_npy_frames(reader, shard, v["data_offset"], (v["frames"], 12, 20, 3), np.arange(v["frames"])))
    v, frames = got["cav"]
    assert v["times"] == [float(k) for k in range(10)] and v["fps"] == 1.0  # 1 fps without meta.fps
    np.testing.assert_array_equal(frames, imgs[[0, 1, 2, 2, 4, 5, 6, 7, 8, 9]])
    v, frames = got["folder"]  # select: 6 frames at 4 fps -> int(i * 6 / 10)
    np.testing.assert_array_equal(frames, imgs[[0, 0, 1, 1, 2, 3, 3, 4, 4, 5]])
    dense = prepare(tmp_path / "manifest.jsonl", tmp_path / "d", PrepConfig(video="dense", short_side=6, workers=1),
                    progress=False)  # fmt: skip
    (side,) = _sidecars(tmp_path / "d")
    v = next(s["video"] for s in side["samples"] if s["uid"] == "folder")
    assert (v["frames"], v["height"], v["width"], v["fps"]) == (6, 6, 10, 4.0)
    assert dense.prepared == 1 and "need a frame rate" in side["rejects"][0]["detail"]  # dense: no 1 fps guess


def test_ccl_hdf5_frame_archive_is_prepared(tmp_path):
    """CCL's reference video storage: one HDF5 per video, dataset "video" of JPEG bytes per frame."""
    h5py = pytest.importorskip("h5py")
    from PIL import Image

    from xmodal.data.manifest import ManifestRow, write_manifest

    frames = np.stack([np.full((24, 32, 3), 20 * i, np.uint8) for i in range(6)])
    blobs = []
    for f in frames:
        buf = __import__("io").BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=95)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    path = tmp_path / "v_Test_g01_c01.hdf5"
    with h5py.File(path, "w") as h:
        ds = h.create_dataset("video", (len(blobs),), dtype=h5py.vlen_dtype(np.uint8))
        for i, b in enumerate(blobs):
            ds[i] = b
    (tmp_path / "broken.hdf5").write_bytes(b"not an hdf5 file")
    rows = [ManifestRow(uid="v1", split="train", labels=[0], video=path.name, meta={"fps": 25.0}),
            ManifestRow(uid="v2", split="train", labels=[0], video="broken.hdf5", meta={"fps": 25.0})]
    write_manifest(rows, tmp_path / "manifest.jsonl")
    cfg = PrepConfig(video="dense", short_side=0, audio=False, require=["video"], shard_size=4, workers=1)
    res = prepare(load_source(tmp_path / "manifest.jsonl"), tmp_path / "store", cfg, progress=False)
    (side,) = _sidecars(tmp_path / "store")
    (s,) = side["samples"]
    assert s["uid"] == "v1" and s["video"]["frames"] == 6
    v = s["video"]
    got = read_npy_frames(ShardReader(), tmp_path / "store" / "shards" / side["shard"], v["data_offset"],
                          (v["frames"], v["height"], v["width"], 3), np.arange(v["frames"]))
    assert got.shape == (6, 24, 32, 3) and np.abs(got.astype(int) - frames).max() <= 3
    rejects = [json.loads(ln) for ln in (tmp_path / "store" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["uid"], r["reason"]) for r in rejects] == [("v2", "corrupt")]
    assert res.prepared == 1
