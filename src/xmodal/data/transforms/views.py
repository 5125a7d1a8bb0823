"""What each method's dataset produces per sample: preset clip transforms and view builders.

Presets (`CLIP_PRESETS`, or `clip_preset(name, **overrides)`) are `ClipTransform`s filled in from
the specs; view builders combine samplers, clip transforms and audio augmentation:

- `GDTViews`: two clip windows -> V, VR, V2, V2R (independent spatial augmentation each) and A,
  AR, A2, A2R (AR is A's augmented spectrogram flipped in time).
- `STiCAViews`: one window -> two spatial views of the same frames + one spectrogram.
- `CavmaeAugment`: fbank pad/cut + SpecAugment + normalisation + noise, mixup, label smoothing,
  and the frame transform (frame choice: `sampling.cavmae_frame_index`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
from torch import Generator, Tensor

from xmodal.data.fbank import CAVMAE_FRAMES, CAVMAE_MEAN, CAVMAE_STD, pad_or_cut
from xmodal.errors import ConfigError, closest

from .audio import SpecAugment, gdt_specaugment, noise_roll, volume_gain
from .clip import IMAGENET_MEAN, IMAGENET_STD, ClipTransform
from .mix import Mixup
from .sampling import AudioWindow, ClipWindow, audio_window, gdt_windows, reverse_time

KINETICS_MEAN = (0.4345, 0.4051, 0.3775)  # CCL's normalisation (Kinetics statistics)
KINETICS_STD = (0.2768, 0.2713, 0.2737)
GDT_MEAN = (0.45, 0.45, 0.45)
GDT_STD = (0.225, 0.225, 0.225)


# ------------------------------------------------------------------------------------- presets
def ccl_train(size: int = 112) -> ClipTransform:
    """CCL training: RandomResizedCrop (scale 0.25-1, ratio 3/4-4/3), flip 0.5, Kinetics stats."""
    return ClipTransform(
        size=size, crop="resized", scale=(0.25, 1.0), flip=0.5, mean=KINETICS_MEAN, std=KINETICS_STD
    )


def ccl_eval(size: int = 112) -> ClipTransform:
    """CCL validation and test: short side to 112, centre crop 112."""
    return ClipTransform(size=size, crop="center", resize=size, mean=KINETICS_MEAN, std=KINETICS_STD)


def gdt_pretrain(size: int = 112) -> ClipTransform:
    """GDT pre-training: short side U{128..160}, random crop 112, flip, jitter 0.4 always on."""
    return ClipTransform(
        size=size, crop="random", resize=(128, 160), flip=0.5, jitter=1.0, mean=GDT_MEAN, std=GDT_STD
    )


def stica_pretrain(size: int = 112) -> ClipTransform:
    """STiCA pre-training: RandomResizedCrop scale (0.14, 1), flip, jitter p 0.8, gray p 0.2, blur p 0.5."""
    return ClipTransform(
        size=size, crop="resized", scale=(0.14, 1.0), flip=0.5, jitter=0.8, grayscale=0.2, blur=0.5,
        mean=GDT_MEAN, std=GDT_STD,
    )  # fmt: skip


def gdt_finetune(size: int = 128) -> ClipTransform:
    """GDT/STiCA fine-tuning: RandomResizedCrop 128 (scale (0.14, 1)), flip, jitter p 0.8."""
    return ClipTransform(
        size=size, crop="resized", scale=(0.14, 1.0), flip=0.5, jitter=0.8, mean=GDT_MEAN, std=GDT_STD
    )


def gdt_test(size: int = 128) -> ClipTransform:
    """GDT/STiCA test: short side 128, three crops (deterministic, no jitter)."""
    return ClipTransform(size=size, crop="three", resize=size, mean=GDT_MEAN, std=GDT_STD)


def avt_train(size: int = 224) -> ClipTransform:
    """AVT frames: short side U{248..280}, random crop 224, flip, mean = std = 0.5."""
    return ClipTransform(
        size=size, crop="random", resize=(248, 280), flip=0.5, mean=(0.5,) * 3, std=(0.5,) * 3
    )


def avt_eval(size: int = 224) -> ClipTransform:
    """AVT evaluation: short side 248, three crops and their mirror images (6 views)."""
    return ClipTransform(
        size=size, crop="three", resize=248, test_flips=True, mean=(0.5,) * 3, std=(0.5,) * 3
    )


def cavmae_image(size: int = 224) -> ClipTransform:
    """CAV-MAE frames (train = eval): short side 224 bicubic, centre crop 224, ImageNet stats."""
    return ClipTransform(
        size=size, crop="center", resize=size, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD
    )


CLIP_PRESETS: dict[str, Callable[..., ClipTransform]] = {
    "ccl_train": ccl_train,
    "ccl_eval": ccl_eval,
    "gdt_pretrain": gdt_pretrain,
    "stica_pretrain": stica_pretrain,
    "gdt_finetune": gdt_finetune,
    "gdt_test": gdt_test,
    "avt_train": avt_train,
    "avt_eval": avt_eval,
    "cavmae_image": cavmae_image,
}


def clip_preset(name: str, **overrides) -> ClipTransform:
    """A preset by name with fields replaced, e.g. ``clip_preset("ccl_train", size=32)``."""
    if name not in CLIP_PRESETS:
        raise ConfigError(
            f"clip transform preset: expected one of {sorted(CLIP_PRESETS)}, found {name!r}{closest(name, CLIP_PRESETS)}"
        )
    return replace(CLIP_PRESETS[name](), **overrides)


# --------------------------------------------------------------------------------- GDT / STiCA
@dataclass(frozen=True)
class AudioSpec:
    """GDT/STiCA spectrogram: wave x U(gain) -> to_spec -> [F, T] padded/cut -> z-norm -> masks.

    gain None = no volume jitter; spec_mean None = no z-normalisation (STiCA); specaugment None =
    no masking. Returns [1, F, T] (GDT's audio input layout).
    """

    gain: tuple[float, float] | None = (0.9, 1.1)
    spec_mean: float | None = 1.93
    spec_std: float = 17.89
    specaugment: SpecAugment | None = field(default_factory=gdt_specaugment)

    def __call__(
        self,
        wave: Tensor,
        to_spec: Callable[[Tensor], Tensor],
        gen: Generator | None,
        n_frames: int | None = None,
    ) -> Tensor:
        if (self.gain is not None or self.specaugment is not None) and gen is None:
            raise ValueError("AudioSpec: random audio augmentation needs a torch.Generator")
        if self.gain is not None:
            wave = volume_gain(wave, gen, *self.gain)
        spec = to_spec(wave)
        if n_frames is not None:
            spec = pad_or_cut(spec, n_frames, dim=-1)  # zeros in the log domain, as GDT pads
        if self.spec_mean is not None:
            spec = (spec - self.spec_mean) / self.spec_std
        spec = spec[None]
        if self.specaugment is not None:
            spec = self.specaugment(spec, gen, freq_dim=-2, time_dim=-1)
        return spec


class GDTSample(NamedTuple):
    """GDT's views of one video. Video [3, T, S, S]; audio [1, F, T'] (time last)."""

    v: Tensor
    vr: Tensor  # clip 1 reversed in time (own spatial augmentation)
    v2: Tensor  # clip 2: the time-shifted clip
    v2r: Tensor
    a: Tensor
    ar: Tensor  # a flipped in time (same augmentation as a)
    a2: Tensor
    a2r: Tensor


@dataclass(frozen=True)
class GDTViews:
    """GDT pre-training sample builder (clip of `frames` frames at `fps`, audio of the same span).

    Dataset usage:
        w1, w2 = views.windows(n_frames, gen)
        aw = [views.audio_window(w, sample_rate, n_samples) for w in (w1, w2)]
        sample = views(frames[w1.indices()], frames[w2.indices()], aw[0].take(wave), aw[1].take(wave), to_spec, gen)
    `to_spec` maps a waveform [S] to a log-mel [F, T] (frequency first), e.g.
    ``functools.partial(xmodal.data.fbank.logfbank, cfg=LogFbankConfig(nfilt=40))`` at 24 kHz.
    """

    frames: int = 30
    fps: float = 30.0
    stride: int = 1
    video: ClipTransform = field(default_factory=gdt_pretrain)
    audio: AudioSpec = field(default_factory=AudioSpec)

    @property
    def seconds(self) -> float:
        return self.frames * self.stride / self.fps

    @property
    def spec_frames(self) -> int:
        """Spectrogram length GDT pads to: 100 per second minus one (99 for 1 s)."""
        return round(100 * self.seconds) - 1

    def windows(self, n_frames: int, gen: Generator) -> list[ClipWindow]:
        return gdt_windows(n_frames, self.frames, gen=gen, count=2, stride=self.stride)

    def audio_window(self, window: ClipWindow, sample_rate: int, n_samples: int) -> AudioWindow:
        return audio_window(window, self.fps, sample_rate, total=n_samples)

    def __call__(
        self,
        clip1: Tensor,
        clip2: Tensor,
        wave1: Tensor,
        wave2: Tensor,
        to_spec: Callable[[Tensor], Tensor],
        gen: Generator,
    ) -> GDTSample:
        # Time reversal of frames commutes with the per-clip spatial ops, so VR = T(reversed clip 1).
        clips = [
            clip1,
            reverse_time(torch.as_tensor(clip1), 0),
            clip2,
            reverse_time(torch.as_tensor(clip2), 0),
        ]
        v, vr, v2, v2r = self.video.batch(clips, [gen] * 4).unbind(0)
        a = self.audio(wave1, to_spec, gen, self.spec_frames)
        a2 = self.audio(wave2, to_spec, gen, self.spec_frames)
        return GDTSample(v, vr, v2, v2r, a, reverse_time(a, -1), a2, reverse_time(a2, -1))


class STiCASample(NamedTuple):
    video: Tensor  # [2, 3, T, S, S]: two spatial views of the same frames
    audio: Tensor  # [1, F, T']


@dataclass(frozen=True)
class STiCAViews:
    """STiCA pre-training sample: one window (GDT's start rule), two spatial views, one spectrogram
    (F = 257 via `to_spec`, no z-normalisation, no masking)."""

    frames: int = 30
    fps: float = 30.0
    stride: int = 1
    video: ClipTransform = field(default_factory=stica_pretrain)
    audio: AudioSpec = field(default_factory=lambda: AudioSpec(spec_mean=None, specaugment=None))

    @property
    def spec_frames(self) -> int:
        return round(100 * self.frames * self.stride / self.fps) - 1

    def window(self, n_frames: int, gen: Generator) -> ClipWindow:
        return gdt_windows(n_frames, self.frames, gen=gen, count=1, stride=self.stride)[0]

    def audio_window(self, window: ClipWindow, sample_rate: int, n_samples: int) -> AudioWindow:
        return audio_window(window, self.fps, sample_rate, total=n_samples)

    def __call__(
        self, clip: Tensor, wave: Tensor, to_spec: Callable[[Tensor], Tensor], gen: Generator
    ) -> STiCASample:
        video = self.video.batch([clip, clip], [gen, gen])
        return STiCASample(video, self.audio(wave, to_spec, gen, self.spec_frames))


# -------------------------------------------------------------------------------------- CAV-MAE
@dataclass(frozen=True)
class CavmaeAugment:
    """CAV-MAE sample augmentation. Fine-tuning recipe defaults; pre-training: specaugment=None,
    mixup p=0 (noise stays on). Per-sample flow in a dataset:

        draw = aug.mixup.draw(len(dataset), gen)                   # partner index or None, λ
        wave = mix_waveforms(w, w_partner, draw.lam) if draw.partner is not None else center_waveform(w)
        fbank = aug.fbank(kaldi_fbank(wave), gen, train=True)     # [1024, 128] normalised
    (`kaldi_fbank`, `center_waveform` from `xmodal.data.fbank`; eval: train=False, gen None.)
        image = aug.image.image(frame)  (mixed: mix(img, img_partner, draw.lam))
        label = aug.mixup.labels(y, y_partner, draw.lam)          # multi-hot -> smoothed/mixed
    """

    target_frames: int = CAVMAE_FRAMES
    norm_mean: float = CAVMAE_MEAN
    norm_std: float = CAVMAE_STD
    specaugment: SpecAugment | None = field(default_factory=SpecAugment)
    noise: bool = True
    mixup: Mixup = field(default_factory=Mixup)
    image: ClipTransform = field(default_factory=cavmae_image)

    def fbank(self, fbank: Tensor, gen: Generator | None, *, train: bool) -> Tensor:
        """Log-mel [frames, mel] -> pad (zero rows) / cut to target_frames -> (train) SpecAugment
        in the log domain -> (x - mean) / std -> (train) noise + roll."""
        x = pad_or_cut(fbank, self.target_frames, dim=-2)
        if train and (self.specaugment is not None or self.noise):
            assert gen is not None, "training augmentation needs a torch.Generator"
        if train and self.specaugment is not None:
            x = self.specaugment(x, gen, freq_dim=-1, time_dim=-2)
        x = (x - self.norm_mean) / self.norm_std
        if train and self.noise:
            x = noise_roll(x, gen, time_dim=-2)
        return x
