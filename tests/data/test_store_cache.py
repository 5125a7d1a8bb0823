"""The in-memory store cache: samples identical to reading the shards, any workers/ranks, size limits."""

from __future__ import annotations

import logging
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
    Store,
    StoreDataset,
    StoreOptions,
)
from xmodal.data.manifest import ManifestRow, write_labels, write_manifest  # noqa: E402
from xmodal.data.prep import PrepConfig, prepare  # noqa: E402
from xmodal.data.transforms import Mixup, SpecAugment  # noqa: E402
from xmodal.engine.dist import ResumableSampler  # noqa: E402

from .store_fixtures import FPS, SR, clip_audio, clip_frames  # noqa: E402

# (uid, frames, height, width): two frame sizes, one video shorter than a clip
CLIPS = [("a0", 12, 32, 32), ("a1", 10, 32, 32), ("a2", 12, 24, 40), ("a3", 4, 32, 32), ("a4", 12, 32, 32),
         ("a5", 9, 24, 40), ("a6", 11, 32, 32), ("a7", 12, 32, 32)]  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from xmodal.data.media import write_av

    root = tmp_path_factory.mktemp("cache")
    rows = []
    for i, (uid, n, h, w) in enumerate(CLIPS):
        write_av(root / f"{uid}.mp4", clip_frames(n, i, h, w), FPS, clip_audio(n / FPS, i), SR, gop=n)
        rows.append(ManifestRow(uid, "test" if i % 4 == 0 else "train", [i % 3], video=f"{uid}.mp4", audio=f"{uid}.mp4"))
    write_manifest(rows, root / "manifest.jsonl")
    write_labels(["x", "y", "z"], root / "labels.csv")
    out = root / "store"
    prepare(root / "manifest.jsonl", out, PrepConfig(video="dense", short_side=0, shard_size=3, workers=1), progress=False)
    return out


AV = StoreOptions(keys=["video", "audio", "fbank", "label"], clip=ClipConfig(frames=6, stride=1, windows=2),
                  video_train="ccl_train", video_eval="ccl_eval", video_size=16,
                  fbank=SpecConfig(mel=24, frames=60, specaugment=SpecAugment(freq_width=5, time_width=10), noise=True))  # fmt: skip
IMAGE_MIX = StoreOptions(keys=["image", "audio", "fbank", "label"], image=ImageConfig(size=16, frame="random"),
                         clip=ClipConfig(frames=6), audio=AudioConfig(gain=(0.8, 1.2)), mixup=Mixup(p=0.6),
                         fbank=SpecConfig(mel=24, frames=60, noise=True))  # fmt: skip


def _all(ds: StoreDataset) -> dict:
    return ds.__getitems__(list(range(len(ds))))


def _assert_same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        same = torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
        assert same, (what, k)


@pytest.mark.parametrize("opts", [AV, IMAGE_MIX], ids=["video-audio-fbank", "image-mixup-gain"])
def test_cached_samples_equal_samples_read_from_the_shards(store, opts):
    for split, train in [("train", True), ("test", False), ("train", False)]:
        cached = StoreDataset(store, split, replace(opts, cache="memory"), train=train)
        plain = StoreDataset(store, split, replace(opts, cache="off"), train=train)
        assert cached.cache is not None and plain.cache is None
        for epoch in (0, 1):
            cached.set_epoch(epoch)
            plain.set_epoch(epoch)
            _assert_same(_all(cached), _all(plain), f"{split} train={train} epoch {epoch}")
        alone = cached[len(cached) - 1]  # one item alone = the same item in the full batch
        full = _all(cached)
        assert all(torch.equal(alone[k], full[k][-1]) for k in alone if isinstance(alone[k], torch.Tensor))


def test_cache_holds_decoded_frames_exact_pcm_and_log_mel(store):
    ds = StoreDataset(store, "train", replace(AV, cache="memory"))
    plain = StoreDataset(store, "train", replace(AV, cache="off"))
    c = ds.cache
    assert c.wave.dtype == torch.int16 and c.with_fbank and len(c.frames) == 2  # 16-bit PCM; two frame sizes
    for i in range(len(ds.entries)):
        s, p = ds.sample_of(i), plain.sample_of(i)
        idx = np.arange(s.num_frames)[::-1]
        np.testing.assert_array_equal(s.frames(idx), p.frames(idx))
        assert torch.equal(s.wave(), p.wave()) and torch.equal(s.wave_window(100, 900), p.wave_window(100, 900))
    # a batch of one frame size is one gather; mixed sizes fall back to per-sample frames
    same = [i for i, e in enumerate(ds.entries) if e["video"]["height"] == 32]
    idx = torch.zeros(len(same), 6, dtype=torch.long) + torch.arange(6) % 4
    got = c.clips(same, idx)
    assert got.shape == (len(same), 6, 32, 32, 3)
    assert all(np.array_equal(got[j].numpy(), ds.sample_of(i).frames(idx[j])) for j, i in enumerate(same))
    assert c.clips(list(range(len(ds.entries))), torch.zeros(len(ds.entries), 6, dtype=torch.long)) is None
    # the log-mel of every clip start (train) is stored, computed as the pipeline would
    n_windows = sum(max(0, e["video"]["frames"] - 6) + 1 for e in ds.entries)
    assert len(c.fbank_rows) == n_windows
    s = ds.sample_of(0)
    span = ds.pipe.audio_span(s, ds.pipe.possible_windows(s)[1])
    assert torch.equal(c.fbank_of(0, *span), ds.pipe.kaldi([plain.pipe.audio(plain.sample_of(0), span)])[0])


def test_workers_and_ranks_give_the_same_samples_as_uncached_reading(store, monkeypatch):
    from xmodal.data._store_cache import StoreCache
    from xmodal.data.shards import ShardReader

    ref = StoreDataset(store, "train", replace(AV, cache="off"))
    ref.set_epoch(2)
    expect = _all(ref)

    def run(ds: StoreDataset, workers: int, rank: int = 0, world: int = 1, warm: bool = True) -> dict:
        sampler = ResumableSampler(len(ds), seed=3, rank=rank, world_size=world)
        sampler.set_epoch(2)
        if warm:
            ds.set_epoch(2)  # decodes the cache in this process before the workers start
        else:
            ds.epoch = 2
        out = {}
        for b in DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers, collate_fn=collate):
            out.update({uid: {k: b[k][j] for k in ("video", "audio", "fbank")} for j, uid in enumerate(b["uid"])})
        return out

    ds = StoreDataset(store, "train", replace(AV, cache="memory"))
    ds.warm_cache()

    def no_reads(*_):
        raise AssertionError("read a shard although the cache holds the sample")

    with monkeypatch.context() as m:  # forked workers inherit the patch: any shard read fails
        m.setattr(ShardReader, "read", no_reads)
        runs = [("0 workers", run(ds, 0)), ("2 workers", run(ds, 2)), ("2 ranks", {**run(ds, 0, 0, 2), **run(ds, 0, 1, 2)})]
    with monkeypatch.context() as m:  # not decoded before the workers start: they read the shards
        m.setattr(StoreCache, "build", no_reads)
        cold = StoreDataset(store, "train", replace(AV, cache="memory"))
        runs.append(("2 cold workers", run(cold, 2, warm=False)))
    for name, got in runs:
        assert sorted(got) == sorted(expect["uid"]), name
        for j, uid in enumerate(expect["uid"]):
            assert all(torch.equal(got[uid][k], expect[k][j]) for k in got[uid]), (name, uid)


def test_auto_caches_within_the_store_budget_and_logs_why_not(store, caplog):
    from xmodal.data._store_cache import estimate

    shared = Store(store)
    ds = StoreDataset(shared, "train", replace(AV, cache="off"))
    est = estimate(ds.entries, ds.pipe, True)
    assert est.frames == sum(e["video"]["frames"] * e["video"]["height"] * e["video"]["width"] * 3 for e in ds.entries)
    assert est.audio == 2 * sum(e["audio"]["samples"] for e in ds.entries) and est.fbank > 0
    gib = 1 << 30
    with caplog.at_level(logging.INFO, logger="xmodal.data._store_cache"):
        small = StoreDataset(Store(store), "train", replace(AV, cache_limit_gb=(est.total - est.fbank) / gib))
        assert small.cache is not None and not small.cache.with_fbank and "log-mel windows" in caplog.text
        assert torch.equal(_all(small)["fbank"], _all(StoreDataset(store, "train", replace(AV, cache="off")))["fbank"])
        caplog.clear()
        tiny = StoreDataset(Store(store), "train", replace(AV, cache_limit_gb=est.frames / gib))
        assert tiny.cache is None and "exceeds" in caplog.text and "set cache: memory" in caplog.text
        forced = StoreDataset(Store(store), "train", replace(AV, cache="memory", cache_limit_gb=0.0))
        assert forced.cache is not None and forced.cache.with_fbank
        # roles of one store share the budget: the first takes it, the next one reads the shards
        first = StoreDataset(shared, "train", replace(AV, cache_limit_gb=1.2 * est.total / gib))
        second = StoreDataset(shared, "train", replace(AV, cache_limit_gb=1.2 * est.total / gib))
        assert first.cache is not None and second.cache is None


def test_store_data_source_cache_key(store):
    import yaml

    from xmodal.config import config_from_data
    from xmodal.errors import ConfigError

    for text, mode in [("off", "off"), ("false", "off"), ("memory", "memory"), ("auto", "auto")]:
        data = yaml.safe_load(f"{{name: store, root: {store}, cache: {text}}}")
        cfg = config_from_data({"method": {"name": "supervised", "model": {"name": "mlp"}}, "data": data})
        assert cfg.data.cache_mode == mode
    with pytest.raises(ConfigError, match="cache"):
        config_from_data({"method": {"name": "supervised", "model": {"name": "mlp"}},
                          "data": {"name": "store", "root": str(store), "cache": "disk"}})  # fmt: skip
