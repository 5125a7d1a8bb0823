"""Datasets over prepared stores (`xmodal prep`): random access by rank and worker, clips, transforms.

`StoreDataset(root, split, options, train=...)` is map-style: item i reads only its own frames
and audio from the shards (one ``pread`` per member, handles opened lazily per worker process)
and is augmented with a generator seeded by (seed, epoch, i). So a sample is the same whatever
the number of DataLoader workers or ranks, and a resumed run sees the same data.
`__getitems__` builds a whole batch: random draws per sample, the work batched.

Cache (`cache: auto | memory | off`, `cache_limit_gb`, see `xmodal.data._store_cache`): a split
whose decoded size fits is decoded once into memory (frames, 16-bit PCM, the raw Kaldi log-mel
of every window it can ask for) when `set_epoch` (or `warm_cache`) is first called in the main
process; forked loader workers share it. Cached and uncached samples are identical bit for bit.

Per sample (train roles):
  1. clip window: T frames every `stride` from a uniform start (`transforms.train_window`), or
     the last such window (`clip.train_mode: last`); loop-padded when the video is shorter;
  2. image frame: CAV-MAE rule (`transforms.cavmae_frame_index`: uniform at train, middle at
     eval), the middle, or a uniform stored frame;
  3. mixup draw (partner index and λ) when `mixup` is set;
  4. video/image transforms (`transforms.ClipTransform`), audio gain, log-mel + SpecAugment/noise.
Eval roles are deterministic and expand every video into items: N uniform windows (x the spatial
views of the eval transform, e.g. three crops), or every stored frame (`image.eval_all`, CAV-MAE's
10-frame protocol); "group" is the video uid, so `xmodal.eval.aggregate` pools them.

Audio alignment: in a "dense" store stored frame k is at k / fps, so the waveform window starts
at window.start / fps and lasts `audio.seconds` (default: the clip's span, T·stride / fps);
samples past the end of the stream are zeros. In a "select" store (10 frames over 10 s) audio is
the clip's from its start, `audio.seconds` long (default: the store's max_duration). The
log-mel is computed on the real samples only and padded with zero rows to `fbank.frames`, as
CAV-MAE's loader does.

Batch keys: "video" [3,T,S,S], "image" [3,S,S], "audio" [S], "fbank" [frames, mel] (CAV-MAE
Kaldi) or [1, F, T] (GDT/STiCA logfbank), "label" (int64, -1 when unlabelled; multi-hot float
[K] for multi-label stores or with mixup), "text", "uid", "group", "window" (eval item index
within its video), plus one key per feature store. GDT views (`views: gdt`) give "video",
"video_rev", "video_shift", "video_shift_rev" and "fbank", "fbank_rev", "fbank_shift",
"fbank_shift_rev"; STiCA (`views: stica`) "video" [2,3,T,S,S] and "fbank". Any callable
``view_builder(sample: StoredSample, gen) -> dict`` can replace the per-sample pipeline.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from xmodal.data._store_cache import StoreCache
from xmodal.data.shards import ShardReader, decode_audio_bytes, decode_jpg, read_npy_frames
from xmodal.data.transforms import ClipTransform, Mixup, SpecAugment
from xmodal.errors import ConfigError, DataError, closest
from xmodal.registry import register_dataset

KEYS = ("video", "image", "audio", "fbank", "label", "text")
log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- config
@dataclass
class ClipConfig:
    frames: int = 16  # T
    stride: int = 1
    windows: int = 1  # eval: windows per video (mode "cover" derives the count from the length)
    # eval windows: spread / even / cover (see transforms.uniform_windows), or "last": the final
    # window only (anticipation: the frames just before the observed segment ends)
    window_mode: Literal["spread", "even", "cover", "last"] = "spread"
    train_mode: Literal["random", "last"] = "random"  # train window: uniform start, or the last one


@dataclass
class AudioConfig:
    seconds: float = 0.0  # 0: the clip span (dense stores) / the store's max_duration (select)
    gain: tuple[float, float] | None = None  # train volume jitter, e.g. GDT's (0.9, 1.1)


@dataclass
class SpecConfig:
    """Log-mel front end of the "fbank" key (and of GDT/STiCA views)."""

    kind: Literal["cavmae", "logfbank"] = "cavmae"  # Kaldi fbank [frames, mel] | psf logfbank [1, F, T]
    mel: int = 128
    frames: int = 1024  # pad (zero rows) / cut to this many frames; 0 = keep (logfbank: 100 s - 1)
    mean: float | None = -5.081  # (x - mean) / std; None = no normalisation
    std: float = 4.4849
    specaugment: SpecAugment | None = None  # train roles only, e.g. {freq_width: 48, time_width: 192}
    noise: bool = False  # CAV-MAE noise + time roll (train roles only)


@dataclass
class ImageConfig:
    frame: Literal["cavmae", "middle", "random"] = "cavmae"
    transform: str | ClipTransform = "cavmae_image"  # a transforms preset name or ClipTransform fields
    size: int = 0  # preset size override (0 = the preset's)
    eval_all: bool = False  # eval roles: one item per stored frame (CAV-MAE's 10-frame protocol)


@dataclass
class StoreOptions:
    """What a StoreDataset produces; `StoreDataConfig` adds where the store is and its roles."""

    keys: list[str] = field(default_factory=lambda: ["video", "label"])
    seed: int = 0
    clip: ClipConfig = field(default_factory=ClipConfig)
    video_train: str | ClipTransform = "ccl_train"  # a transforms preset name or ClipTransform fields
    video_eval: str | ClipTransform = "ccl_eval"
    video_size: int = 0  # preset size override (0 = the preset's)
    image: ImageConfig = field(default_factory=ImageConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    fbank: SpecConfig = field(default_factory=SpecConfig)
    mixup: Mixup | None = None  # {p, alpha, smoothing}; train roles only
    views: Literal["none", "gdt", "stica"] = "none"
    features: dict[str, str] = field(default_factory=dict)  # batch key -> FeatureStore file
    missing_features: Literal["error", "zeros"] = "error"
    # decoded samples in memory (xmodal.data._store_cache): auto = when the split fits in what is
    # left of cache_limit_gb for the store (train role first), memory = always, off = read shards;
    # YAML reads a bare `off` as false, so false means off too (and true memory)
    cache: Literal["auto", "memory", "off"] | bool = "auto"
    cache_limit_gb: float = 1.0

    @property
    def cache_mode(self) -> str:
        if isinstance(self.cache, bool):
            return "memory" if self.cache else "off"
        return self.cache

    def validate(self) -> None:
        bad = [k for k in self.keys if k not in KEYS]
        if bad:
            raise ValueError(f"keys: unknown {bad}{closest(bad[0], KEYS)}; known: {', '.join(KEYS)}")
        if self.clip.frames < 1 or self.clip.stride < 1 or self.clip.windows < 1:
            raise ValueError("clip.frames, clip.stride and clip.windows must be >= 1")
        if self.cache_mode not in ("auto", "memory", "off"):
            raise ValueError(f"cache: expected auto, memory or off, found {self.cache!r}")
        if self.cache_limit_gb < 0:
            raise ValueError(f"cache_limit_gb: expected >= 0, found {self.cache_limit_gb}")


@dataclass
class StoreDataConfig(StoreOptions):
    """The `store` data source: a prepared store and which of its splits plays which role."""

    name: str = "store"
    root: str = ""
    train: str | None = "train"
    val: str | None = None
    test: str | None = "test"
    extra: dict[str, str] = field(default_factory=dict)  # more roles, e.g. {pool: pool}
    eval_roles: list[str] = field(default_factory=lambda: ["val", "test"])

    def validate(self) -> None:
        super().validate()
        if not self.root:
            raise ValueError("root: path of a prepared store (xmodal prep --out) is required")


# ------------------------------------------------------------------------------------- store
class Store:
    """index.json + shard sidecars + labels.csv of a prepared store, loaded once and shared."""

    def __init__(self, root: str | Path):
        from xmodal.data.manifest import read_labels

        self.root = Path(root)
        path = self.root / "index.json"
        if not path.is_file():
            raise DataError(f"{self.root}: no index.json - not a complete store (run `xmodal prep ... --out {self.root}`)")
        self.index = json.loads(path.read_text())
        if self.index.get("format") != "xmodal-store":
            raise DataError(f"{path}: not an xmodal store index")
        self.config = self.index["config"]
        self.cache_reserved = 0  # bytes the in-memory caches of this store's datasets will take
        self.labels = read_labels(self.root / "labels.csv")
        self.entries: list[dict] = []
        for sh in self.index["shards"]:
            side = json.loads((self.root / sh["index"]).read_text())
            for s in side["samples"]:
                s["shard"] = str(self.root / sh["name"])
                self.entries.append(s)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def multilabel(self) -> bool:
        return bool(self.index.get("multilabel"))

    def split(self, name: str) -> list[dict]:
        rows = [e for e in self.entries if e["split"] == name]
        if not rows:
            known = sorted(self.index["splits"])
            raise DataError(f"{self.root}: no samples in split '{name}'{closest(name, known)}; splits: {', '.join(known)}")
        return rows


class StoredSample:
    """Lazy access to one stored sample's frames and audio (what a view builder receives).

    With a built `StoreCache` (and `index`, the entry's position in the cache) frames and audio
    come from memory, otherwise from the shards through `reader`.
    """

    def __init__(self, entry: dict, reader: ShardReader | None, cache: StoreCache | None = None, index: int = -1):
        self.entry, self._reader, self._cache, self.index = entry, reader, cache, index
        v = entry.get("video") or {}
        self.num_frames: int = v.get("frames", 0)
        self.fps: float = v.get("fps", 0.0)
        self.times: list[float] | None = v.get("times")
        a = entry.get("audio") or {}
        self.num_samples: int = a.get("samples", 0)
        self.sample_rate: int = a.get("sample_rate", 0)
        self._wave: torch.Tensor | None = None

    @property
    def uid(self) -> str:
        return self.entry["uid"]

    def frames(self, indices) -> np.ndarray:
        """uint8 [len(indices), H, W, 3] of the stored frames at `indices`."""
        v = self.entry.get("video")
        if not v:
            raise DataError(f"{self.entry['shard']}: sample '{self.uid}' has no video")
        idx = np.asarray(indices, dtype=np.int64)
        if self._cache is not None:
            if idx.size and (idx.min() < 0 or idx.max() >= v["frames"]):
                raise DataError(f"{self.entry['shard']}: frame index out of range 0..{v['frames'] - 1}: {idx.tolist()}")
            return self._cache.frames_of(self.index, idx).numpy()
        if "data_offset" in v:
            return read_npy_frames(self._reader, self.entry["shard"], v["data_offset"],
                                   (v["frames"], v["height"], v["width"], 3), idx)  # fmt: skip
        names = sorted(k for k in self.entry["members"] if k.endswith(".jpg"))
        return np.stack([decode_jpg(self._reader.read(self.entry["shard"], *self.entry["members"][names[i]])) for i in idx])

    def wave(self) -> torch.Tensor:
        """The whole stored waveform, float32 [S] (zeros of length 0 when the sample has none)."""
        if self._wave is None and self._cache is not None:
            self._wave = self._cache.wave_window(self.index, 0, self._cache.num_samples(self.index))
        if self._wave is None:
            key = next((k for k in ("flac", "wav") if k in self.entry["members"]), None)
            if key is None:
                self._wave = torch.zeros(0)
            else:
                x, _ = decode_audio_bytes(self._reader.read(self.entry["shard"], *self.entry["members"][key]))
                self._wave = torch.from_numpy(x)
        return self._wave

    def wave_window(self, start: int, length: int) -> torch.Tensor | None:
        """float32 samples start .. start + length - 1 (fewer at the end); None without audio."""
        if self._cache is not None and self._wave is None:
            n = self._cache.num_samples(self.index)
            return self._cache.wave_window(self.index, start, length) if n else None
        wave = self.wave()
        return wave[start : start + length] if len(wave) else None


# ------------------------------------------------------------------------------------ dataset
@dataclass(frozen=True)
class _Item:
    entry: int  # index into the split's entries
    window: int = 0  # eval: which uniform window
    view: int = 0  # eval: which spatial view of the eval transform
    frame: int | None = None  # eval with image.eval_all: which stored frame


class StoreDataset(Dataset):
    """Samples of one split of a prepared store; see the module docstring."""

    def __init__(self, root: str | Path | Store, split: str, options: StoreOptions | None = None, *,
                 train: bool = True, view_builder: Callable | None = None):  # fmt: skip
        from xmodal.data import _store_pipeline as pipe

        self.store = root if isinstance(root, Store) else Store(root)
        self.opt = options or StoreOptions()
        try:
            self.opt.validate()
        except ValueError as e:
            raise ConfigError(f"store data: {e}") from None
        self.split, self.train, self.epoch = split, train, 0
        self.entries = self.store.split(split)
        self.reader = ShardReader()
        self.pipe = pipe.Pipeline(self.opt, self.store, train)
        self.view_builder = view_builder or (self.pipe.view_builder() if train else None)
        self.items = self._expand()
        self._cache = StoreCache.plan(self)

    @property
    def cache(self) -> StoreCache | None:
        """The in-memory cache, decoded on first use in the main process (None when caching is off).

        A loader worker that finds it not yet decoded reads the shards instead: workers building
        caches of their own would multiply the memory and the start-up time."""
        if self._cache is not None and not self._cache.built:
            if torch.utils.data.get_worker_info() is not None:
                log.info("store cache: split %s was not decoded before the loader started its workers "
                         "(call set_epoch or warm_cache first); this worker reads the shards", self.split)  # fmt: skip
                self._cache = None
            else:
                self._cache.build(self.reader)
        return self._cache

    def warm_cache(self) -> None:
        """Decode the cache now (in the main process, before DataLoader workers start)."""
        _ = self.cache

    def _expand(self) -> list[_Item]:
        if self.train:
            return [_Item(i) for i in range(len(self.entries))]
        out = []
        for i, e in enumerate(self.entries):
            n = (e.get("video") or {}).get("frames", 0)
            if "image" in self.opt.keys and self.opt.image.eval_all and "video" not in self.opt.keys:
                out.extend(_Item(i, frame=f) for f in range(max(1, n)))
                continue
            windows = len(self.pipe.eval_windows(n)) if n else 1
            views = self.pipe.n_eval_views if "video" in self.opt.keys else 1
            out.extend(_Item(i, w, v) for w in range(windows) for v in range(views))
        return out

    def set_epoch(self, epoch: int) -> None:
        """The engine calls this before each epoch: augmentation is drawn per (seed, epoch, index).

        It also builds the in-memory cache here, in the main process, before loader workers fork."""
        self.epoch = epoch
        self.warm_cache()

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, i: int) -> StoredSample:
        return self.sample_of(self.items[i].entry)

    def sample_of(self, entry: int) -> StoredSample:
        """The stored sample of entry `entry` of the split (from the cache when there is one)."""
        return StoredSample(self.entries[entry], self.reader, self.cache, entry)

    def sample_weights(self) -> torch.Tensor:
        """Per-item weights for `train.sampler: balanced`: a weight recorded at prep (the
        importer's `meta.weight`, e.g. AS-2M's weight csv) for every entry, else CAV-MAE's
        class-balanced weights computed from this split's labels."""
        from xmodal.data.bundle import balanced_weights

        entries = [self.entries[it.entry] for it in self.items]
        if entries and all("weight" in e for e in entries):
            return torch.tensor([float(e["weight"]) for e in entries], dtype=torch.double)
        return balanced_weights([e["labels"] for e in entries], self.store.num_classes)

    def groups(self) -> list[str]:
        """The video uid of every item (what eval aggregates over)."""
        return [self.entries[it.entry]["uid"] for it in self.items]

    def __getitem__(self, i: int) -> dict:
        batch = self.__getitems__([i])
        return {k: v[0] for k, v in batch.items()}

    def __getitems__(self, indices: list[int]) -> dict:
        """A collated batch; item i is the same whether fetched alone or with others."""
        return self.pipe.batch(self, [int(i) for i in indices])


# ---------------------------------------------------------------------------- data source
@register_dataset("store", config=StoreDataConfig)
def store_bundle(cfg: StoreDataConfig, *, view_builder: Callable | None = None):
    """DataBundle with one StoreDataset per role (train, val, test and `extra`)."""
    from xmodal.data.bundle import DataBundle, DataInfo, collate

    try:
        cfg.validate()
    except ValueError as e:
        raise ConfigError(f"data (store): {e}") from None
    store = Store(cfg.root)
    roles = {"train": cfg.train, "val": cfg.val, "test": cfg.test, **cfg.extra}

    def make(role: str) -> StoreDataset | None:
        split = roles[role]
        if split is None:
            return None
        train = role not in cfg.eval_roles
        return StoreDataset(store, split, cfg, train=train, view_builder=view_builder if train else None)

    if cfg.train is None:
        raise ConfigError("data (store): train: a split to train on is required")
    first = store.split(cfg.train)[0]
    info = DataInfo(
        num_classes=store.num_classes,
        multilabel=store.multilabel,
        class_names=[lab.name for lab in store.labels],
        extra={"store": str(store.root), "prep": store.config, "fps": (first.get("video") or {}).get("fps"),
               "sample_rate": store.config.get("sample_rate"), "group_key": "group"},  # fmt: skip
    )
    return DataBundle(train=make("train"), val=make("val"), test=make("test"), info=info, collate=collate,
                      extra={r: make(r) for r in cfg.extra})  # fmt: skip

