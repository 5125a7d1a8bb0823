"""The per-sample pipeline of `StoreDataset` (see xmodal/data/datasets.py for what it produces).

A batch is built phase by phase (windows, frame choices, mixup draws, video, image, audio, labels)
with one generator per sample consumed in a fixed order, so item i is identical whether it is
fetched alone or in any batch. Only the random draws run per sample; the work runs batched
(`_store_transforms`: the per-sample transforms' results bit for bit), Kaldi log-mels batched by
window length. Frames, waveforms and the raw Kaldi log-mel come from the dataset's in-memory cache
when it has one (`_store_cache`), else from the shards.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from xmodal.data import transforms as T
from xmodal.data._store_transforms import cavmae_fbank_batch, logfbank_batch, transform_clips
from xmodal.data.fbank import FbankConfig, LogFbankConfig, kaldi_fbank, logfbank
from xmodal.errors import ConfigError, DataError

_INT16 = 32768.0  # GDT feeds the log-mel int16-range samples


def _clip_transform(spec, size: int, what: str) -> T.ClipTransform:
    if isinstance(spec, T.ClipTransform):
        return spec
    if spec not in T.CLIP_PRESETS:
        raise ConfigError(f"{what}: unknown transforms preset '{spec}'; known: {', '.join(sorted(T.CLIP_PRESETS))}")
    return T.CLIP_PRESETS[spec](size) if size else T.CLIP_PRESETS[spec]()


class Pipeline:
    def __init__(self, opt, store, train: bool):
        self.opt, self.store, self.train = opt, store, train
        keys = set(opt.keys)
        self.dense = store.config.get("video") == "dense"
        self.has_video = store.config.get("video", "none") != "none"
        self.has_audio = bool(store.config.get("audio", False))
        if keys & {"video", "image"} and not self.has_video:
            raise DataError(f"{store.root}: keys {sorted(keys & {'video', 'image'})} need video, but the store has none")
        if keys & {"audio", "fbank"} and not self.has_audio:
            raise DataError(f"{store.root}: keys {sorted(keys & {'audio', 'fbank'})} need audio, but the store has none")
        self.video_t = _clip_transform(opt.video_train if train else opt.video_eval, opt.video_size,
                                       "video_train" if train else "video_eval")  # fmt: skip
        if not train and self.video_t.random:
            raise ConfigError("video_eval: an evaluation transform must be deterministic (no random crop/flip/jitter)")
        self.image_t = _clip_transform(opt.image.transform, opt.image.size, "image.transform")
        self.sample_rate = int(store.config.get("sample_rate", 16000))
        sp = opt.fbank
        self.specaug = sp.specaugment if train else None
        self.mixup = opt.mixup if train and opt.mixup is not None and opt.mixup.p > 0 else None
        if sp.kind == "cavmae":
            if sp.frames < 1:
                raise ConfigError("fbank.frames: the Kaldi front end pads/cuts to a fixed length; give it (1024 for CAV-MAE)")
            self.kaldi_cfg = FbankConfig(sample_rate=self.sample_rate, num_mel_bins=sp.mel)
            self.cav = T.CavmaeAugment(target_frames=sp.frames, norm_mean=0.0 if sp.mean is None else sp.mean,
                                       norm_std=1.0 if sp.mean is None else sp.std, specaugment=self.specaug,
                                       noise=sp.noise and train)  # fmt: skip
        else:
            self.psf = LogFbankConfig(sample_rate=self.sample_rate, nfilt=sp.mel)
            self.spec = T.AudioSpec(gain=None, spec_mean=sp.mean, spec_std=sp.std, specaugment=self.specaug)
        # the raw log-mel of a window is fixed unless the waveform changes first (gain; mixup per sample)
        self.fbank_cacheable = ("fbank" in keys and sp.kind == "cavmae" and opt.views == "none"
                                and not (train and opt.audio.gain is not None))  # fmt: skip
        if opt.views != "none" and sp.kind != "logfbank":
            raise ConfigError(f"views: {opt.views} views use the logfbank front end; set fbank.kind: logfbank")
        from xmodal.data.features import FeatureStore, feature_keys

        self.features = {k: FeatureStore(Path(p), missing=opt.missing_features) for k, p in opt.features.items()}
        self.feature_keys = {k: feature_keys(k, fs) for k, fs in self.features.items()}

    # -------------------------------------------------------------------------------- windows
    @property
    def n_eval_views(self) -> int:
        return self.video_t.n_views

    def _last(self, n_frames: int) -> T.ClipWindow:
        c = self.opt.clip
        return T.ClipWindow(max(0, n_frames - (c.frames - 1) * c.stride - 1), c.frames, c.stride, n_frames)

    def eval_windows(self, n_frames: int) -> list[T.ClipWindow]:
        c = self.opt.clip
        if c.window_mode == "last":
            return [self._last(n_frames)]
        count = None if c.window_mode == "cover" else c.windows
        return T.uniform_windows(n_frames, c.frames, c.stride, count=count, mode=c.window_mode)

    def _window(self, s, item, gen) -> T.ClipWindow | None:
        if not s.num_frames:
            return None
        c = self.opt.clip
        if self.train:
            if c.train_mode == "last":
                return self._last(s.num_frames)
            return T.train_window(s.num_frames, c.frames, c.stride, gen=gen)
        return self.eval_windows(s.num_frames)[item.window]

    def _image_frame(self, s, item, win, gen) -> int:
        n = s.num_frames
        if item.frame is not None:
            return item.frame
        rule = self.opt.image.frame
        if rule == "cavmae":
            return T.cavmae_frame_index([True] * n, train=self.train, gen=gen)
        if rule == "middle" or not self.train:
            return n // 2
        return int(torch.randint(0, n, (), generator=gen))

    # ---------------------------------------------------------------------------------- audio
    def audio_span(self, s, win) -> tuple[int, int]:
        """(first sample, length in samples) of the audio window of clip window `win` (None: from 0)."""
        sr = self.sample_rate
        secs = self.opt.audio.seconds
        if self.dense and win is not None:
            aw = T.audio_window(win, s.fps, sr, seconds=secs or None)
            return aw.start, aw.length
        default = float(self.store.config.get("max_duration") or 0.0)
        return 0, round((secs or default) * sr) or s.num_samples

    def audio(self, s, span: tuple[int, int]) -> torch.Tensor:
        """The real samples of the audio window (fewer at the stream's end; silence without audio)."""
        wave = s.wave_window(*span)
        return torch.zeros(span[1]) if wave is None else wave

    def kaldi(self, waves: list[torch.Tensor]) -> list[torch.Tensor]:
        """Raw Kaldi log-mel [frames, mel] of each waveform (mean removed), batched by length."""
        raw: list = [None] * len(waves)
        # a window that ends within one frame of the stream's end: zeros up to one frame
        ws = self.kaldi_cfg.window_size
        waves = [T.AudioWindow(0, ws).take(w) if len(w) < ws else w for w in waves]
        by_len = defaultdict(list)
        for i, w in enumerate(waves):
            by_len[len(w)].append(i)
        for idx in by_len.values():
            fb = kaldi_fbank(torch.stack([waves[i] - waves[i].mean() for i in idx]), self.kaldi_cfg)
            for j, i in enumerate(idx):
                raw[i] = fb[j]
        return raw

    def possible_windows(self, s) -> list:
        """Every clip window this role can take for sample `s` (None when it has no frames)."""
        if not s.num_frames:
            return [None]
        c = self.opt.clip
        if not self.train:
            return self.eval_windows(s.num_frames)
        if c.train_mode == "last":
            return [self._last(s.num_frames)]
        last = max(0, s.num_frames - (c.frames - 1) * c.stride - 1)
        return [T.ClipWindow(st, c.frames, c.stride, s.num_frames) for st in range(last + 1)]

    def fbank_bytes(self, s) -> int:
        """Upper bound of the bytes of the raw log-mel windows of `s` (for the cache budget)."""
        c, n = self.opt.clip, s.num_frames
        if self.dense and n and self.train and c.train_mode == "random":  # counted, not listed
            count, win = max(0, n - (c.frames - 1) * c.stride - 1) + 1, T.ClipWindow(0, c.frames, c.stride, n)
        else:
            wins = self.possible_windows(s)
            count, win = (len(wins) if self.dense else 1), wins[0]
        length = min(self.audio_span(s, win)[1], s.num_samples)
        kc = self.kaldi_cfg
        return count * kc.num_frames(max(length, kc.window_size)) * kc.num_mel_bins * 4

    # ---------------------------------------------------------------------------------- views
    def view_builder(self):
        return {"none": None, "gdt": self._gdt, "stica": self._stica}[self.opt.views]

    def _gdt(self, s, gen) -> dict:
        c = self.opt.clip
        views = T.GDTViews(frames=c.frames, fps=s.fps, stride=c.stride, video=self.video_t,
                           audio=T.AudioSpec(gain=self.opt.audio.gain, spec_mean=self.opt.fbank.mean,
                                             spec_std=self.opt.fbank.std, specaugment=self.specaug))  # fmt: skip
        w1, w2 = views.windows(s.num_frames, gen)
        wave = s.wave() * _INT16
        a1, a2 = (views.audio_window(w, self.sample_rate, len(wave)).take(wave) for w in (w1, w2))
        g = views(s.frames(w1.indices()), s.frames(w2.indices()), a1, a2, lambda x: logfbank(x, self.psf), gen)
        return {"video": g.v, "video_rev": g.vr, "video_shift": g.v2, "video_shift_rev": g.v2r,
                "fbank": g.a, "fbank_rev": g.ar, "fbank_shift": g.a2, "fbank_shift_rev": g.a2r}  # fmt: skip

    def _stica(self, s, gen) -> dict:
        c = self.opt.clip
        views = T.STiCAViews(frames=c.frames, fps=s.fps, stride=c.stride, video=self.video_t,
                             audio=T.AudioSpec(gain=self.opt.audio.gain, spec_mean=self.opt.fbank.mean,
                                               spec_std=self.opt.fbank.std, specaugment=self.specaug))  # fmt: skip
        w = views.window(s.num_frames, gen)
        wave = s.wave() * _INT16
        a = views.audio_window(w, self.sample_rate, len(wave)).take(wave)
        out = views(torch.as_tensor(s.frames(w.indices())), a, lambda x: logfbank(x, self.psf), gen)
        return {"video": out.video, "fbank": out.audio}

    # ---------------------------------------------------------------------------------- batch
    def batch(self, ds, indices: list[int]) -> dict:
        keys = set(self.opt.keys)
        items = [ds.items[i] for i in indices]
        samples = [ds.sample_of(it.entry) for it in items]
        gens = [T.sample_generator(self.opt.seed, ds.epoch, i) for i in indices] if self.train else [None] * len(items)
        out: dict = {"uid": [s.uid for s in samples], "group": [s.uid for s in samples]}
        if not self.train:
            out["window"] = torch.tensor([it.window if it.frame is None else it.frame for it in items])
        partners: list = [None] * len(items)
        if ds.view_builder is not None:
            views = [ds.view_builder(s, g) for s, g in zip(samples, gens)]
            out.update({k: torch.stack([v[k] for v in views]) for k in views[0]})
        else:
            wins = [self._window(s, it, g) for s, it, g in zip(samples, items, gens)]
            frames = [self._image_frame(s, it, w, g) if "image" in keys else None
                      for s, it, w, g in zip(samples, items, wins, gens)]  # fmt: skip
            if self.mixup is not None:
                partners = self._partners(ds, gens, "image" in keys)
            if "video" in keys:
                out["video"] = self._video(ds, samples, items, wins, gens)
            if "image" in keys:
                out["image"] = self._images(samples, frames, partners, gens)
            if keys & {"audio", "fbank"}:
                out.update(self._audio_keys(ds, samples, wins, partners, gens, keys))
        if "label" in keys:
            out["label"] = self._labels(samples, partners)
        if "text" in keys:
            out["text"] = [s.entry.get("text", "") for s in samples]
        for key, fs in self.features.items():
            rows = fs.get_many(out["uid"])
            out.update({self.feature_keys[key][n]: t for n, t in rows.items()})
        return out

    def _partners(self, ds, gens, image: bool) -> list:
        """Mixup partner per sample: (StoredSample, λ, partner image frame) or None."""
        out = []
        for g in gens:
            d = self.mixup.draw(len(ds), g)
            if d.partner is None:
                out.append(None)
                continue
            p = ds.sample_of(ds.items[d.partner].entry)
            frame = T.cavmae_frame_index([True] * p.num_frames, train=True, gen=g) if image else None
            out.append((p, d.lam, frame))
        return out

    def _video(self, ds, samples, items, wins, gens) -> torch.Tensor:
        if self.train:
            clips = ds.cache.clips([s.index for s in samples], torch.stack([w.indices() for w in wins])) if ds.cache else None
            if clips is None:
                clips = [s.frames(w.indices()) for s, w in zip(samples, wins)]
                if len({c.shape for c in clips}) == 1:  # one tensor: crops without resampling are one gather
                    clips = torch.from_numpy(np.stack(clips))
            return transform_clips(self.video_t, clips, gens)
        cache: dict = {}
        out = []
        for s, it, w in zip(samples, items, wins):
            key = (s.uid, it.window)
            if key not in cache:
                cache[key] = self.video_t.views(s.frames(w.indices()))
            out.append(cache[key][it.view])
        return torch.stack(out)

    def _images(self, samples, frames, partners, gens) -> torch.Tensor:
        imgs = [s.frames([f]) for s, f in zip(samples, frames)]
        x = transform_clips(self.image_t, imgs, gens)[:, :, 0]
        for i, (p, g) in enumerate(zip(partners, gens)):
            if p is not None:
                other = transform_clips(self.image_t, [p[0].frames([p[2]])], [g])[0, :, 0]
                x[i] = T.mix(x[i], other, p[1])
        return x

    def _audio_keys(self, ds, samples, wins, partners, gens, keys) -> dict:
        spans = [self.audio_span(s, w) for s, w in zip(samples, wins)]
        raw: list = [None] * len(samples)
        if "fbank" in keys and self.fbank_cacheable and ds.cache is not None and ds.cache.with_fbank:
            raw = [ds.cache.fbank_of(s.index, *sp) if p is None else None for s, sp, p in zip(samples, spans, partners)]
        need = range(len(samples)) if "audio" in keys or self.opt.fbank.kind != "cavmae" else [
            i for i, r in enumerate(raw) if r is None]  # fmt: skip
        waves: dict[int, torch.Tensor] = {}
        for i in need:
            wave, p = self.audio(samples[i], spans[i]), partners[i]
            if p is not None:
                wave = T.mix_waveforms(wave, self.audio(p[0], self.audio_span(p[0], None)), p[1])
            if self.train and self.opt.audio.gain is not None:
                wave = T.volume_gain(wave, gens[i], *self.opt.audio.gain)
            waves[i] = wave.float()
        out = {}
        if "audio" in keys:
            lengths = {length for _, length in spans}
            if len(lengths) > 1:
                raise DataError("audio: clips give windows of different lengths; set audio.seconds")
            out["audio"] = torch.stack([T.AudioWindow(0, n).take(waves[i]) for i, (_, n) in enumerate(spans)])
        if "fbank" in keys and self.opt.fbank.kind == "logfbank":
            out["fbank"] = logfbank_batch(self.spec, [waves[i] * _INT16 for i in range(len(samples))], gens,
                                          self.psf, self.opt.fbank.frames or None)  # fmt: skip
        elif "fbank" in keys:
            todo = [i for i, r in enumerate(raw) if r is None]
            for i, r in zip(todo, self.kaldi([waves[i] for i in todo])):
                raw[i] = r
            out["fbank"] = cavmae_fbank_batch(self.cav, raw, gens, train=self.train)
        return out

    def _labels(self, samples, partners) -> torch.Tensor:
        k = self.store.num_classes
        if self.mixup is not None:
            ys = []
            for s, p in zip(samples, partners):
                y = T.multi_hot(s.entry["labels"], k)
                ys.append(self.mixup.labels(y) if p is None else self.mixup.labels(y, T.multi_hot(p[0].entry["labels"], k), p[1]))
            return torch.stack(ys)
        if self.store.multilabel:
            return torch.stack([T.multi_hot(s.entry["labels"], k) for s in samples])
        return torch.tensor([s.entry["labels"][0] if s.entry["labels"] else -1 for s in samples], dtype=torch.long)
