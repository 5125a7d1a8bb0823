"""Batched forms of the per-sample transforms, for `StoreDataset`: the same results bit for bit.

Each sample keeps its own generator and every draw it makes, in the same order; only the work
is done for the whole batch:

    transform_clips(t, clips, gens)   = t.batch(clips, gens)            (ClipTransform)
    sample_params(t, h, w, gen)       = t.sample(h, w, gen)             (~10x fewer tensor ops)
    apply_clips(t, clips, params)     = t.apply(clips, params)
    mask_params(sa, F, T, gens)       = [sa.sample(F, T, g) for g in gens], stacked (SpecAugment)
    cavmae_fbank_batch(aug, raw, gens) = [aug.fbank(r, g) ...], stacked  (CavmaeAugment)
    logfbank_batch(spec, waves, gens)  = [spec(w, logfbank, g) ...], stacked (AudioSpec, no gain)

tests/data/test_store_transforms.py checks each equality (values and generator states) against
the transforms in `xmodal.data.transforms`; a change there must be mirrored here.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from xmodal.data import transforms as T
from xmodal.data.fbank import LogFbankConfig, logfbank
from xmodal.data.transforms._rng import randint
from xmodal.data.transforms.video import RRC_ATTEMPTS, resized_size

_DETERMINISTIC = torch.Generator()  # draws of a deterministic transform cannot change its output
_NOISE_SCALE = 0.1  # `noise_roll`'s default, the one CavmaeAugment uses


def transform_clips(t: T.ClipTransform, clips, gens) -> torch.Tensor:
    """`t.batch(clips, gens)` bit for bit: parameters drawn clip by clip, applied by `apply_clips`."""
    if t.random and any(g is None for g in gens):
        raise ValueError("ClipTransform: this transform is random; pass a torch.Generator")
    params = []
    for c, g in zip(clips, gens):
        h, w = c.shape[-3:-1]
        params.append(sample_params(t, h, w, _DETERMINISTIC if g is None else g))
    return apply_clips(t, clips, params)


def _draws(gen, n: int) -> list[float]:
    # A CPU generator fills a float64 tensor element by element, so n draws at once are the
    # n single U[0, 1) draws that `_rng.uniform`/`bernoulli` make one call each (tests check it).
    return torch.rand(n, generator=gen, dtype=torch.float64).tolist()


def _between(low: float, high: float, u: float) -> float:
    return low + (high - low) * u  # `_rng.uniform`'s float64 arithmetic


def sample_params(t: T.ClipTransform, h: int, w: int, gen) -> T.ClipParams:
    """`t.sample(h, w, gen)` exactly (same params, same draws in the same order), with consecutive
    float64 draws made in one call and their arithmetic in Python floats: ~10x fewer tensor ops.
    RandomResizedCrop's rare fallback (no box fits in 10 attempts) replays `resized_crop_box`."""
    size = None
    if t.resize_range is not None:
        size = resized_size(h, w, randint(gen, *t.resize_range))
        h, w = size
    if t.crop == "center":
        box = T.center_box(h, w, t.size)
    elif t.crop == "random":
        box = T.random_box(h, w, t.size, gen)
    elif t.crop == "resized":
        box = _resized_crop_box(h, w, t.scale, t.ratio, gen)
    else:
        return t.sample(h, w, gen)  # three crops: its error
    flip, on, *u = _draws(gen, 5)  # flip, jitter on/off, brightness, contrast, saturation
    strengths = (t.brightness, t.contrast, t.saturation)
    factors = [_between(max(0.0, 1.0 - s), 1.0 + s, v) if on < t.jitter else 1.0 for s, v in zip(strengths, u)]
    order = torch.randperm(3, generator=gen)[None]
    gray, blur, sigma = _draws(gen, 3)
    sigma = _between(*t.blur_sigma, sigma) if blur < t.blur else 0.0
    photo = T.PhotoParams(torch.tensor([factors], dtype=torch.float64).float(), order,
                          torch.tensor([gray < t.grayscale]), torch.tensor([sigma], dtype=torch.float64))  # fmt: skip
    return T.ClipParams(size, box, flip < t.flip, photo)


def _resized_crop_box(h: int, w: int, scale, ratio, gen) -> T.CropBox:
    """`video.resized_crop_box` with each attempt's two draws made at once."""
    state = gen.get_state()
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(RRC_ATTEMPTS):
        u_scale, u_ratio = _draws(gen, 2)
        target = h * w * _between(*scale, u_scale)
        aspect = math.exp(_between(*log_ratio, u_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return T.CropBox(randint(gen, 0, h - ch), randint(gen, 0, w - cw), ch, cw)
    gen.set_state(state)
    return T.resized_crop_box(h, w, scale, ratio, gen)


def apply_clips(t: T.ClipTransform, clips, params: list[T.ClipParams]) -> torch.Tensor:
    """`t.apply(clips, params)` bit for bit for uint8 clips [T, H, W, 3] (a list, or stacked [B, T, H, W, 3]).

    Crops that need no resampling (box of the output size, no pre-resize) are cut for the whole
    batch with one gather; the others go clip by clip through the same uint8 resize as
    `ClipTransform.geometry` (on the same channels-last frames). Flips act on the uint8 frames (a
    flip commutes with the float conversion); photometric ops, when a clip has any, run on
    contiguous frames (their per-frame results do not depend on the memory layout; the tests
    compare); otherwise the uint8 frames go into the output layout with one converting copy and
    are scaled and normalised in place.
    """
    stacked = isinstance(clips, torch.Tensor)
    clips = clips if stacked else [torch.as_tensor(c) for c in clips]
    if any(c.dtype != torch.uint8 for c in clips) or len({c.shape[0] for c in clips}) > 1:
        return t.apply(clips, params)  # float frames or clips of different lengths (which it rejects)
    b, n, s = len(params), clips[0].shape[0], t.size
    frames = torch.empty(b, n, 3, s, s, dtype=torch.uint8)
    direct = [i for i, p in enumerate(params) if p.resize is None and p.box.height == s and p.box.width == s]
    direct = direct if stacked else []
    if direct:  # flipped clips read their columns backwards
        top, left, flip = torch.tensor([[params[i].box.top, params[i].box.left, params[i].flip] for i in direct]).T
        rows, cols = top[:, None] + torch.arange(s), left[:, None] + torch.arange(s)
        cols = torch.where(flip[:, None].bool(), cols.flip(1), cols)
        idx = torch.tensor(direct)
        cut = clips[idx[:, None, None, None], torch.arange(n)[:, None, None], rows[:, None, :, None], cols[:, None, None, :]]
        frames[idx] = cut.permute(0, 1, 4, 2, 3)
    for i in sorted(set(range(b)) - set(direct)):
        p = params[i]
        x = T.to_frames(clips[i])
        if p.resize is not None:
            x = T.resize(x, p.resize, t.interpolation, t.antialias)
        x = T.resize(T.crop(x, p.box), (s, s), t.interpolation, t.antialias)
        frames[i] = T.hflip(x) if p.flip else x
    out = torch.empty(b, 3, n, s, s)
    photo = T.PhotoParams.cat([p.photo for p in params])
    if bool((photo.factors != 1).any() or photo.gray.any() or (photo.sigma > 0).any()):
        x = T.photometric(frames.float().div_(255.0), photo, t.blur_kernel, inplace=True)
        out.copy_(x.permute(0, 2, 1, 3, 4))
    else:
        out.copy_(frames.permute(0, 2, 1, 3, 4)).div_(255.0)
    mean = torch.as_tensor(t.mean, dtype=out.dtype).view(-1, 1, 1, 1)
    std = torch.as_tensor(t.std, dtype=out.dtype).view(-1, 1, 1, 1)
    return out.sub_(mean).div_(std)


def _pad_cut(specs: list[torch.Tensor], frames: int, dim: int) -> torch.Tensor:
    """`pad_or_cut` of each spectrogram along `dim` (-1 or -2), stacked: zeros after the end."""
    shape = list(specs[0].shape)
    shape[dim] = frames
    out = specs[0].new_zeros(len(specs), *shape)
    for i, x in enumerate(specs):
        n = min(frames, x.shape[dim])
        out[i].narrow(dim, 0, n).copy_(x.narrow(dim, 0, n))
    return out


def mask_params(sa: T.SpecAugment, n_freq: int, n_time: int, gens) -> T.MaskParams:
    """`SpecAugment.sample(n_freq, n_time, g)` of each generator, stacked (same draws, same spans)."""
    uf, ut = [], []
    for g in gens:  # per sample: the frequency draws, then the time draws (U[0, 1): `uniform` is exact)
        uf.append(torch.rand(2 * sa.freq_masks, generator=g, dtype=torch.float64))
        ut.append(torch.rand(2 * sa.time_masks, generator=g, dtype=torch.float64))

    def spans(u: torch.Tensor, size: int, width: int, masks: int) -> torch.Tensor:
        u = u.view(len(gens), 2, masks)
        v = u[:, 0] * width
        w = v.floor().clamp(max=size)
        if sa.style == "torchaudio":
            start = (u[:, 1] * (size - v)).floor().clamp(min=0)
        else:
            start = (u[:, 1] * (size - w + 1)).floor()
        w = torch.minimum(w, size - start)
        return torch.stack([start, w], -1).long()

    return T.MaskParams(spans(torch.stack(uf), n_freq, sa.freq_width, sa.freq_masks),
                        spans(torch.stack(ut), n_time, sa.time_width, sa.time_masks))  # fmt: skip


def cavmae_fbank_batch(aug: T.CavmaeAugment, raw: list[torch.Tensor], gens, *, train: bool) -> torch.Tensor:
    """`aug.fbank(raw[i], gens[i], train=train)` for every i, stacked [B, target_frames, mel]."""
    x = _pad_cut(raw, aug.target_frames, -2)
    if train and aug.specaugment is not None:
        x = aug.specaugment.apply(x, mask_params(aug.specaugment, x.shape[-1], x.shape[-2], gens), freq_dim=-1, time_dim=-2)
    x = (x - aug.norm_mean) / aug.norm_std
    if train and aug.noise:
        n_time = x.shape[-2]
        lam, noise, shifts = [], [], []
        for g in gens:  # noise_roll's draws: the clip's weight, the noise, the roll
            lam.append(torch.rand(1, generator=g, dtype=torch.float64))
            noise.append(torch.rand((1, *x.shape[1:]), generator=g, dtype=x.dtype))
            shifts.append(torch.randint(-n_time, n_time, (1,), generator=g))
        lam = torch.cat(lam).to(x.dtype)
        x = x + torch.cat(noise) * (lam * _NOISE_SCALE).view(-1, 1, 1)
        x = T.roll_time(x, torch.cat(shifts), -2)
    return x


def logfbank_batch(spec: T.AudioSpec, waves: list[torch.Tensor], gens, cfg: LogFbankConfig, frames: int | None) -> torch.Tensor:
    """`spec(waves[i], logfbank, gens[i], frames)` for every i (no gain), stacked [B, 1, F, T]."""
    assert spec.gain is None, "logfbank_batch: the pipeline applies the gain to the waveform"
    by_len = defaultdict(list)
    for i, w in enumerate(waves):
        by_len[len(w)].append(i)
    out: list = [None] * len(waves)
    for idx in by_len.values():
        for i, f in zip(idx, logfbank(torch.stack([waves[i] for i in idx]), cfg)):
            out[i] = f
    x = _pad_cut(out, frames, -1) if frames is not None else torch.stack(out)
    if spec.spec_mean is not None:
        x = (x - spec.spec_mean) / spec.spec_std
    x = x[:, None]
    if spec.specaugment is not None:
        x = spec.specaugment.apply(x, mask_params(spec.specaugment, x.shape[-2], x.shape[-1], gens), freq_dim=1, time_dim=2)
    return x
