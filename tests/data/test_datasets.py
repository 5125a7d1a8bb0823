"""StoreDataset: documented windows and alignment, determinism across workers/ranks, keys, errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

pytest.importorskip("av")

from xmodal.data.bundle import collate  # noqa: E402
from xmodal.data.datasets import (  # noqa: E402
    AudioConfig,
    ClipConfig,
    ImageConfig,
    SpecConfig,
    StoreDataset,
    StoreOptions,
)
from xmodal.data.features import FeatureStore  # noqa: E402
from xmodal.data.manifest import ManifestRow, write_labels, write_manifest  # noqa: E402
from xmodal.data.prep import PrepConfig, prepare  # noqa: E402
from xmodal.data.transforms import ClipTransform, Mixup, SpecAugment  # noqa: E402
from xmodal.engine.dist import ResumableSampler  # noqa: E402
from xmodal.errors import ConfigError, DataError  # noqa: E402

from .store_fixtures import FPS, SR, make_corpus, timecode_clip  # noqa: E402

LENGTHS = {"tc0": 24, "tc1": 13, "tc2": 5, "tc3": 20}  # frames; tc2 is shorter than a clip
PLAIN = ClipTransform(size=8, crop="center", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # pixels / 255


@pytest.fixture(scope="module")
def timecode_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("tc")
    rows = []
    for i, (uid, n) in enumerate(LENGTHS.items()):
        timecode_clip(root / f"{uid}.mkv", n, seed=i)
        rows.append(ManifestRow(uid, "train" if i % 2 == 0 else "test", [i % 2], video=f"{uid}.mkv"))
        rows.append(ManifestRow(uid + "_t", "test", [i % 2], video=f"{uid}.mkv"))
    write_manifest(rows, root / "manifest.jsonl")
    write_labels(["even", "odd"], root / "labels.csv")
    out = root / "store"
    prepare(root / "manifest.jsonl", out, PrepConfig(video="dense", short_side=0, shard_size=3, workers=1), progress=False)
    return out


def _frame_ids(video: torch.Tensor) -> np.ndarray:
    """Frame index of every frame of [B, 3, T, H, W] clips made with PLAIN (red = 10 k / 255)."""
    return np.rint(video[:, 0].mean((-1, -2)).numpy() * 255 / 10).astype(int)


def _audio_ids(audio: torch.Tensor, stride: int) -> np.ndarray:
    """Frame index at the start of each clip position (audio in frame k's period is 0.02 (k + 1))."""
    per = SR // FPS
    return np.rint(audio[:, :: per * stride].numpy() / 0.02).astype(int) - 1


def _opts(**kw) -> StoreOptions:
    base = StoreOptions(keys=["video", "audio", "label"], clip=ClipConfig(frames=6, stride=2),
                        video_train=PLAIN, video_eval=PLAIN)  # fmt: skip
    return replace(base, **kw)


def test_train_windows_are_strided_loop_padded_and_audio_aligned(timecode_store):
    ds = StoreDataset(timecode_store, "train", _opts(), train=True)
    seen_starts = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        b = ds.__getitems__(list(range(len(ds))))
        ids = _frame_ids(b["video"])
        for uid, row, a in zip(b["uid"], ids, _audio_ids(b["audio"], 2)):
            n = LENGTHS[uid]
            valid = min(6, -(-(n - row[0]) // 2))
            expect = row[0] + 2 * (np.arange(6) % valid)  # stride 2, loop-padded past the end
            np.testing.assert_array_equal(row, expect)
            assert 0 <= row[0] <= max(0, n - 11)  # span (6 - 1) * 2 + 1 = 11 fits in the video
            if n >= 11:
                np.testing.assert_array_equal(a, row)  # audio sample at each clip position = its frame
            seen_starts.add((uid, int(row[0])))
        assert b["audio"].shape == (len(ds), 6 * 2 * SR // FPS)  # clip span in samples
    assert len({s for u, s in seen_starts if u == "tc0"}) > 3  # the start is random


def test_eval_uniform_windows_counts_and_groups(timecode_store):
    ds = StoreDataset(timecode_store, "test", _opts(clip=ClipConfig(frames=6, stride=2, windows=3)), train=False)
    b = ds.__getitems__(list(range(len(ds))))
    assert len(ds) == 3 * 6 and b["group"] == b["uid"] == ds.groups()
    for uid in set(b["uid"]):
        rows = [i for i, u in enumerate(b["uid"]) if u == uid]
        n = LENGTHS[uid.removesuffix("_t")]
        m = max(0, n - 11)
        starts = _frame_ids(b["video"][rows])[:, 0].tolist()
        assert starts == [k * m // 3 for k in range(3)]  # floor(k (n - span) / N)
        assert b["window"][rows].tolist() == [0, 1, 2]
    for train in (True, False):  # the last window (anticipation: frames just before the segment ends)
        clip = ClipConfig(frames=6, stride=2, window_mode="last", train_mode="last")
        last = StoreDataset(timecode_store, "test", _opts(clip=clip), train=train)
        b = last.__getitems__(list(range(len(last))))
        assert len(last) == 6
        for uid, row in zip(b["uid"], _frame_ids(b["video"])):
            n = LENGTHS[uid.removesuffix("_t")]
            start = max(0, n - 11)
            np.testing.assert_array_equal(row, start + 2 * (np.arange(6) % min(6, -(-(n - start) // 2))))
    cover = StoreDataset(timecode_store, "test", _opts(clip=ClipConfig(frames=6, window_mode="cover")), train=False)
    per_video = {u: cover.groups().count(u) for u in set(cover.groups())}
    assert per_video == {u: -(-LENGTHS[u.removesuffix("_t")] // 6) for u in per_video}  # ceil(n / T)
    last = cover.__getitems__([cover.groups().index("tc1_t") + 2])  # 13 frames: window 12.. is 1 frame
    assert _frame_ids(last["video"])[0].tolist() == [12] * 6 and _audio_ids(last["audio"], 1)[0][0] == 12


def test_item_is_the_same_alone_in_any_batch_any_worker_count_or_rank(timecode_store):
    opts = _opts(keys=["video", "audio", "fbank", "label"], video_train="ccl_train", video_size=8,
                 fbank=SpecConfig(frames=64, mel=16, specaugment=SpecAugment(freq_width=4, time_width=8), noise=True),
                 audio=AudioConfig(gain=(0.8, 1.2)))  # fmt: skip
    ds = StoreDataset(timecode_store, "test", opts, train=True)  # a train role over 6 videos
    ds.set_epoch(3)
    together = ds.__getitems__([5, 0, 3])
    for j, i in enumerate([5, 0, 3]):
        alone = ds[i]
        for k in ("video", "audio", "fbank", "label"):
            assert torch.equal(alone[k], together[k][j]), k

    def run(workers: int, rank: int = 0, world: int = 1) -> dict[str, dict]:
        sampler = ResumableSampler(len(ds), seed=7, rank=rank, world_size=world)
        sampler.set_epoch(3)
        loader = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers, collate_fn=collate)
        out = {}
        for b in loader:
            for j, uid in enumerate(b["uid"]):
                out[uid] = {k: b[k][j] for k in ("video", "fbank", "audio")}
        return out

    single = run(0)
    assert len(single) == 6
    for name, other in [("2 workers", run(2)), ("2 ranks", {**run(0, 0, 2), **run(0, 1, 2)})]:
        assert other.keys() == single.keys(), name
        for uid in single:
            assert all(torch.equal(single[uid][k], other[uid][k]) for k in single[uid]), (name, uid)
    ds.set_epoch(4)
    assert not torch.equal(ds[0]["video"], together["video"][1])  # a new epoch draws new augmentation


@pytest.fixture(scope="module")
def select_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("sel")
    corpus = make_corpus(root, n_good=6, bad=False, frames=12)
    out = root / "store"
    prepare(corpus.manifest, out, PrepConfig(short_side=24, shard_size=4, workers=1, max_duration=1.5), progress=False)
    return out


def test_cavmae_style_image_fbank_mixup_and_ten_frame_eval(select_store):
    opts = StoreOptions(keys=["image", "fbank", "audio", "label"], image=ImageConfig(size=16),
                        fbank=SpecConfig(frames=128, specaugment=SpecAugment(), noise=True),
                        mixup=Mixup(p=1.0, smoothing=0.1))  # fmt: skip
    ds = StoreDataset(select_store, "train", opts, train=True)
    b = ds.__getitems__(list(range(len(ds))))
    assert b["image"].shape == (4, 3, 16, 16) and b["fbank"].shape == (4, 128, 128)
    assert b["audio"].shape == (4, int(1.5 * SR))  # select store: audio of max_duration from the start
    lab = b["label"]  # mixed with smoothing: eps / K + lam (1 - eps) y1 + (1 - lam)(1 - eps) y2
    assert lab.shape == (4, 3) and torch.allclose(lab.sum(1), torch.ones(4), atol=1e-5)
    ev = StoreDataset(select_store, "test", replace(opts, image=ImageConfig(size=16, eval_all=True)), train=False)
    assert len(ev) == 2 * 10 and ev.__getitems__([0, 1, 10])["window"].tolist() == [0, 1, 0]
    e = ev.__getitems__(list(range(len(ev))))
    assert e["label"].dtype == torch.long and not torch.equal(e["image"][0], e["image"][9])
    assert torch.equal(e["fbank"][0], e["fbank"][5])  # deterministic audio at eval, same for every frame


def test_gdt_views_and_features(timecode_store, tmp_path):
    uids = ["tc0", "tc2"]
    FeatureStore.write(tmp_path / "t.safetensors", uids, {"emb": torch.arange(8.0).view(2, 4)})
    opts = _opts(keys=["label"], views="gdt", video_train=replace(PLAIN, flip=0.5),
                 fbank=SpecConfig(kind="logfbank", mel=40, frames=0, mean=1.93, std=17.89),
                 features={"teacher_audio": str(tmp_path / "t.safetensors")})  # fmt: skip
    ds = StoreDataset(timecode_store, "train", opts, train=True)
    b = ds.__getitems__([0, 1])
    assert b["uid"] == ["tc0", "tc2"] and torch.equal(b["teacher_audio"], torch.arange(8.0).view(2, 4))
    assert {"video", "video_rev", "video_shift", "video_shift_rev", "fbank", "fbank_rev"} <= set(b)
    assert b["video"].shape == (2, 3, 6, 8, 8) and b["fbank"].shape[:2] == (2, 1)
    assert b["fbank"].shape[-1] == round(100 * 6 * 2 / FPS) - 1  # GDT pads to 100 s - 1 frames
    assert torch.equal(b["fbank_rev"], b["fbank"].flip(-1))
    v_ids, vr_ids = _frame_ids(b["video"]), _frame_ids(b["video_rev"])
    np.testing.assert_array_equal(vr_ids, v_ids[:, ::-1])  # reversal (flips do not change flat frames)
    with pytest.raises(DataError, match="no features for uid 'tc0_t'"):
        StoreDataset(timecode_store, "test", replace(opts, views="none"), train=False).__getitems__([0])


def test_store_data_source_from_yaml_and_errors(timecode_store, tmp_path):
    from xmodal.config import config_from_data
    from xmodal.registry import DATASETS

    cfg = config_from_data({
        "method": {"name": "supervised", "input_key": "video", "model": {"name": "mlp"}},
        "data": {"name": "store", "root": str(timecode_store), "keys": ["video", "label"], "test": "test",
                 "extra": {"pool": "train"}, "clip": {"frames": 4}, "video_size": 8,
                 "video_train": {"size": 8, "crop": "random", "flip": 0.5}},
    })  # fmt: skip
    bundle = DATASETS.build(cfg.data)
    assert bundle.info.num_classes == 2 and bundle.info.class_names == ["even", "odd"]
    assert bundle.train.train and not bundle.test.train and bundle.extra["pool"].train
    assert bundle.collate(bundle.train.__getitems__([0]))["video"].shape == (1, 3, 4, 8, 8)
    with pytest.raises(ConfigError, match=r"data\.keyz: unknown key \(did you mean 'keys'\?\)"):
        config_from_data({"method": {"name": "supervised", "model": {"name": "mlp"}},
                          "data": {"name": "store", "root": "x", "keyz": []}})  # fmt: skip
    with pytest.raises(DataError, match=r"no samples in split 'tset' \(did you mean 'test'\?\)"):
        StoreDataset(timecode_store, "tset")
    with pytest.raises(DataError, match="not a complete store"):
        StoreDataset(tmp_path, "train")
    with pytest.raises(ConfigError, match="keys: unknown"):
        StoreDataset(timecode_store, "train", StoreOptions(keys=["vidoe"]))
    with pytest.raises(ConfigError, match="must be deterministic"):
        StoreDataset(timecode_store, "test", _opts(video_eval="ccl_train"), train=False)


def test_bench_data_reports_loader_rate_and_data_wait(timecode_store, tmp_path, capsys):
    from xmodal.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: bench
method: {{name: supervised, input_key: video, model: {{name: tiny_video, num_classes: 2, widths: [4, 8]}}}}
data: {{name: store, root: {timecode_store}, keys: [video, label], clip: {{frames: 4}},
        video_train: {{size: 16, crop: random}}, video_eval: {{size: 16}}}}
optim: {{name: sgd, lr: 0.01}}
train: {{batch_size: 2, num_workers: 0}}
""")
    assert main(["bench", "data", str(recipe), "--batches", "2", "--steps", "2", "--out", str(tmp_path / "run")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "loader" in lines[0] and "samples/s (batch 2, 0 workers)" in lines[0]
    assert "data-wait share of a train step" in lines[1] and "windows:" in lines[1]
    rows = [r for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"train"' in r]
    assert len(rows) == 2  # two log windows: start-up and steady state
