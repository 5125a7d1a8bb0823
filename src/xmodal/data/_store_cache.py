"""In-memory cache of a `StoreDataset`'s decoded samples (recipe key ``cache: auto | memory | off``).

Each stored sample of the split is decoded once:
- frames, uint8 [T, H, W, 3]: all frames of one size live in one tensor, so a batch of clips is
  one gather;
- the waveform, as int16 when the stored 16-bit PCM round-trips exactly (always for FLAC/WAV
  PCM_16: libsndfile scales by 2^-15), else float32; a window reads back the float32 samples
  `decode_audio_bytes` gives, bit for bit;
- the deterministic part of the CAV-MAE audio front end: the Kaldi log-mel of every audio window
  the split can ask for (train: each clip start; eval: its windows), computed exactly as the
  uncached pipeline computes it. Samples whose waveform changes before the log-mel (mixup, gain)
  are computed live.

`plan` estimates the decoded size from the index (no decoding): with ``auto`` a split is cached
when its estimate fits in what is left of ``cache_limit_gb`` for the store (roles are built train
first, so training gets the memory), otherwise it is read from the shards and a log line says why.
The log-mel part is dropped alone when only it does not fit. ``memory`` caches whatever the size.

Workers: the cache is decoded in the main process, on the first `set_epoch` (the engine calls it
before starting the loader), `warm_cache` or batch. Forked workers read the parent's pages (never
written, so never copied); spawned workers get the tensors through torch's shared-memory pickling.
A worker that finds the cache not yet decoded (a loader started before any of those calls, e.g.
evaluation with workers) reads the shards rather than decoding a copy of its own.

Memory: while decoding, the decoded samples and the packed tensors coexist (about twice the
cache for a moment).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

_GIB = 1 << 30
_CHUNK = 128  # samples per decoding task
_PCM16 = 32768.0


@dataclass(frozen=True)
class CachePlan:
    """Estimated decoded bytes of a split (frames, audio as int16, log-mel windows)."""

    frames: int
    audio: int
    fbank: int  # 0 when the log-mel is not cached (other front end, mixup/gain, or no audio key)

    @property
    def total(self) -> int:
        return self.frames + self.audio + self.fbank


def _gib(n: int) -> str:
    return f"{n / _GIB:.2f} GiB" if n >= _GIB // 10 else f"{n / (1 << 20):.1f} MiB"


class StoreCache:
    """Decoded frames, waveforms and log-mel windows of the entries of one split (see module doc)."""

    def __init__(self, entries: list[dict], pipe, fbank: bool):
        self.entries, self.pipe, self.with_fbank = entries, pipe, fbank
        self.built = False

    # ------------------------------------------------------------------------------- planning
    @staticmethod
    def plan(ds) -> StoreCache | None:
        """The cache `ds` should use (not yet built), or None; logs the decision."""
        opt, store, pipe = ds.opt, ds.store, ds.pipe
        mode = opt.cache_mode
        if mode == "off":
            return None
        want_fbank = pipe.fbank_cacheable
        est = estimate(ds.entries, pipe, want_fbank)
        limit = int(opt.cache_limit_gb * _GIB)
        left = limit - store.cache_reserved
        what = f"store cache ({store.root.name}, split {ds.split})"
        if mode == "auto" and est.total > left and est.fbank and est.total - est.fbank <= left:
            log.info("%s: log-mel windows (%s) do not fit in cache_limit_gb %.2f; computing them live",
                     what, _gib(est.fbank), opt.cache_limit_gb)  # fmt: skip
            want_fbank, est = False, CachePlan(est.frames, est.audio, 0)
        if mode == "auto" and est.total > left:
            log.info("%s: off - decoded size ~%s exceeds the %s left of cache_limit_gb %.2f; reading shards "
                     "(set cache: memory to force, or raise cache_limit_gb)", what, _gib(est.total),
                     _gib(max(0, left)), opt.cache_limit_gb)  # fmt: skip
            return None
        store.cache_reserved += est.total
        log.info("%s: %d samples, ~%s decoded in memory (frames %s, audio %s, log-mel %s)", what,
                 len(ds.entries), _gib(est.total), _gib(est.frames), _gib(est.audio), _gib(est.fbank))  # fmt: skip
        return StoreCache(ds.entries, pipe, want_fbank)

    # -------------------------------------------------------------------------------- building
    def build(self, reader) -> None:
        """Decode every entry once (frames, audio, log-mel windows), in a few threads (the decoders
        and torch release the GIL)."""
        from xmodal.data.datasets import StoredSample

        t0 = time.perf_counter()
        n = len(self.entries)
        decoded = _parallel(self._decode, [self.entries[lo : lo + _CHUNK] for lo in range(0, n, _CHUNK)])
        self.block = np.full(n, -1, dtype=np.int64)  # which frame tensor holds entry i
        self.row = np.zeros(n, dtype=np.int64)  # its first row there
        blocks: dict[tuple[int, int], list[np.ndarray]] = {}  # frame size -> frames of its entries
        ids: dict[tuple[int, int], int] = {}  # frame size -> block index
        used: dict[tuple[int, int], int] = {}  # frame size -> rows so far
        self.wave_start = np.zeros(n + 1, dtype=np.int64)
        for i, (f, w) in enumerate(decoded):
            if f is not None:
                key = f.shape[1:3]
                blocks.setdefault(key, []).append(f)
                self.block[i], self.row[i] = ids.setdefault(key, len(ids)), used.get(key, 0)
                used[key] = self.row[i] + len(f)
            self.wave_start[i + 1] = self.wave_start[i] + len(w)
        self.frames = [torch.from_numpy(np.concatenate(b)) for b in blocks.values()]
        waves = [w for _, w in decoded]
        exact = all(w.dtype == np.int16 for w in waves)  # else keep float32 for every sample
        self.wave = torch.from_numpy(np.concatenate([w if exact or w.dtype != np.int16 else w / np.float32(_PCM16)
                                                     for w in waves] or [np.zeros(0, np.int16)]))  # fmt: skip
        if self.with_fbank:
            self._build_fbank([StoredSample(e, None, self, i) for i, e in enumerate(self.entries)])
        self.built = True
        log.info("store cache: %d samples decoded in %.1f s (%s)", n, time.perf_counter() - t0, _gib(self.nbytes))

    def _decode(self, entries: list[dict]) -> list[tuple[np.ndarray | None, np.ndarray]]:
        """(frames or None, int16 PCM when exact else float32 wave) of each entry, own file handles."""
        from xmodal.data.datasets import StoredSample
        from xmodal.data.shards import ShardReader

        reader, out = ShardReader(), []
        try:
            for e in entries:
                s = StoredSample(e, reader)
                f = s.frames(np.arange(s.num_frames)) if s.num_frames and self.pipe.has_video else None
                w = s.wave().numpy() if self.pipe.has_audio else np.zeros(0, np.float32)
                pcm = np.rint(w * _PCM16)
                fits = pcm.max(initial=0) < _PCM16 and pcm.min(initial=0) >= -_PCM16
                out.append((f, pcm.astype(np.int16) if fits and np.array_equal(pcm / _PCM16, w) else w))
        finally:
            reader.close()
        return out

    @property
    def nbytes(self) -> int:
        spec = self.fbank.nbytes if self.with_fbank else 0
        return sum(t.nbytes for t in self.frames) + self.wave.nbytes + spec

    def _build_fbank(self, samples) -> None:
        """Kaldi log-mel [frames, mel] of every (entry, audio start, length) the split can ask for."""
        keys, waves = [], []
        for i, s in enumerate(samples):
            for span in sorted({self.pipe.audio_span(s, w) for w in self.pipe.possible_windows(s)}):
                keys.append((i, *span))
                waves.append(self.pipe.audio(s, span))
        raw = _parallel(self.pipe.kaldi, [waves[lo : lo + _CHUNK] for lo in range(0, len(waves), _CHUNK)])
        offsets = np.cumsum([0] + [len(r) for r in raw])
        self.fbank = torch.cat(raw) if raw else torch.zeros(0, 0)
        self.fbank_rows = {k: int(o) for k, o in zip(keys, offsets[:-1])}
        self.fbank_len = {k: len(r) for k, r in zip(keys, raw)}

    # --------------------------------------------------------------------------------- reading
    def frames_of(self, i: int, indices) -> Tensor:
        """uint8 [len(indices), H, W, 3] frames of entry i."""
        idx = torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64))
        return self.frames[self.block[i]][self.row[i] + idx]

    def clips(self, entry_ids: list[int], indices: Tensor) -> Tensor | None:
        """uint8 [B, T, H, W, 3] clips (indices [B, T]) in one gather; None if frame sizes differ."""
        blocks = self.block[entry_ids]
        if len(set(blocks.tolist())) != 1 or blocks[0] < 0:
            return None
        rows = torch.from_numpy(self.row[entry_ids])[:, None] + indices
        block = self.frames[blocks[0]]
        return block.index_select(0, rows.view(-1)).view(*rows.shape, *block.shape[1:])

    def num_samples(self, i: int) -> int:
        return int(self.wave_start[i + 1] - self.wave_start[i])

    def wave_window(self, i: int, start: int, length: int) -> Tensor:
        """float32 samples start .. start + length - 1 of entry i's waveform (fewer at its end)."""
        lo = int(self.wave_start[i])
        n = self.num_samples(i)
        a, b = lo + min(start, n), lo + min(start + length, n)
        x = self.wave[a:b]
        return x.float().div_(_PCM16) if x.dtype == torch.int16 else x.clone()

    def fbank_of(self, i: int, start: int, length: int) -> Tensor | None:
        """The cached raw log-mel [frames, mel] of entry i's audio window, if it is cached."""
        row = self.fbank_rows.get((i, start, length))
        if row is None:
            return None
        return self.fbank[row : row + self.fbank_len[(i, start, length)]]


def _parallel(fn, chunks: list) -> list:
    """fn over chunks in up to 4 threads (one per CPU), results concatenated in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1, len(chunks)))) as ex:
        return [r for part in ex.map(fn, chunks) for r in part]


def estimate(entries: list[dict], pipe, fbank: bool) -> CachePlan:
    """Decoded bytes of `entries` from their index facts (nothing is read)."""
    from xmodal.data.datasets import StoredSample

    frames = audio = spec = 0
    for e in entries:
        v, a = e.get("video") or {}, e.get("audio") or {}
        if pipe.has_video:
            frames += v.get("frames", 0) * v.get("height", 0) * v.get("width", 0) * 3
        if pipe.has_audio:
            audio += 2 * a.get("samples", 0)
        if fbank:
            spec += pipe.fbank_bytes(StoredSample(e, None))
    return CachePlan(frames, audio, spec)
