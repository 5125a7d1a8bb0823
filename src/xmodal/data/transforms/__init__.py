"""Clip, frame, spectrogram and label transforms for every method; deterministic given a generator.

Randomness: every random function takes an explicit ``torch.Generator`` (``gen``) and never touches
global RNG. Datasets make one per sample with ``sample_generator(seed, epoch, index)`` and pass it
to every call for that sample, so a sample's augmentation depends only on (seed, epoch, index):
training is reproducible and resumes bit-identically. Deterministic (eval) transforms accept
``gen=None``.

Layouts: decoded video [T, H, W, 3] uint8 (or float in [0, 1]) -> clip [3, T, H, W] float,
normalised (batch: [B, 3, T, H, W]); image [H, W, 3] -> [3, H, W]; fbank [frames, mel]; GDT
log-mel [1, F, T]; labels multi-hot [K].

Index logic (`sampling`):
    train_window(n_frames, length, stride, gen=g)        -> ClipWindow  (random start, loop-padded)
    uniform_windows(n, L, stride, count=10, mode="spread") -> GDT test: start_k = floor(k (n - L) / count)
    uniform_windows(n, L, count=3, mode="even")           -> CCL validation (3 evenly spaced clips)
    uniform_windows(n, L, mode="cover")                   -> CCL test (non-overlapping, last loop-padded)
    gdt_starts / gdt_windows(n, L, gen=g, count=2)        -> GDT starts floor((n - L) idx / 1000)
    window.indices()                                      -> [L] frame indices to read
    audio_window(window, fps, rate, total=n_samples)      -> AudioWindow(start, length); .take(wave)
    cavmae_frame_index(present, train=..., gen=g)         -> which of the 10 stored frames to read
    reverse_time(x, dim), roll_time(x, shifts, dim)

Clips and images (`clip.ClipTransform`, presets in `views`):
    t = clip_preset("ccl_train")          # or ccl_eval, gdt_pretrain, stica_pretrain, gdt_finetune,
                                          # gdt_test, avt_train, avt_eval, cavmae_image
    t(frames, gen) -> [3, T, S, S];  t.batch(clips, gens) -> [B, 3, T, S, S]
    t.views(frames) -> [V, 3, T, S, S] (eval: centre crop, or three crops, x2 with test_flips)
    t.image(img, gen) -> [3, S, S]
  Building blocks (`video`): resize/resize_short, center_box, random_box, resized_crop_box
  (RandomResizedCrop), three_boxes, crop, hflip, color_jitter, random_grayscale, gaussian_blur,
  photometric (batched, per-sample parameters), normalize.

Audio (`audio`): SpecAugment (torchaudio style; `gdt_specaugment("mild"|"medium"|"heavy")`),
noise_roll (CAV-MAE), volume_gain (GDT).  Mixing (`mix`): Mixup.draw/labels, mix, mix_waveforms,
mixup_lambda, smooth_labels, mixup_labels, multi_hot.

View builders (`views`): GDTViews -> GDTSample(v, vr, v2, v2r, a, ar, a2, a2r); STiCAViews ->
STiCASample(video [2, ...], audio); AudioSpec (GDT/STiCA spectrogram pipeline); CavmaeAugment
(fbank pad/cut + SpecAugment + normalise + noise, mixup, label smoothing, frame transform).
"""

from ._rng import sample_generator
from .audio import GDT_SPECAUGMENT, MaskParams, SpecAugment, gdt_specaugment, noise_roll, volume_gain
from .clip import IMAGENET_MEAN, IMAGENET_STD, ClipParams, ClipTransform
from .mix import MixDraw, Mixup, mix, mix_waveforms, mixup_labels, mixup_lambda, multi_hot, smooth_labels
from .sampling import (
    AudioWindow,
    ClipWindow,
    audio_window,
    cavmae_frame_index,
    cavmae_stored_frames,
    gdt_starts,
    gdt_windows,
    reverse_time,
    roll_time,
    train_window,
    uniform_windows,
)
from .video import (
    CropBox,
    PhotoParams,
    center_box,
    color_jitter,
    crop,
    gaussian_blur,
    hflip,
    normalize,
    photometric,
    random_box,
    random_grayscale,
    resize,
    resize_short,
    resized_crop_box,
    rgb_to_gray,
    three_boxes,
    to_float,
    to_frames,
)
from .views import (
    CLIP_PRESETS,
    GDT_MEAN,
    GDT_STD,
    KINETICS_MEAN,
    KINETICS_STD,
    AudioSpec,
    CavmaeAugment,
    GDTSample,
    GDTViews,
    STiCASample,
    STiCAViews,
    clip_preset,
)

__all__ = [
    "AudioSpec", "AudioWindow", "CLIP_PRESETS", "CavmaeAugment", "ClipParams", "ClipTransform", "ClipWindow",
    "CropBox", "GDTSample", "GDTViews", "GDT_MEAN", "GDT_SPECAUGMENT", "GDT_STD", "IMAGENET_MEAN",
    "IMAGENET_STD", "KINETICS_MEAN", "KINETICS_STD", "MaskParams", "MixDraw", "Mixup", "PhotoParams",
    "STiCASample", "STiCAViews", "SpecAugment", "audio_window", "cavmae_frame_index", "cavmae_stored_frames",
    "center_box", "clip_preset", "color_jitter", "crop", "gaussian_blur", "gdt_specaugment", "gdt_starts",
    "gdt_windows", "hflip", "mix", "mix_waveforms", "mixup_labels", "mixup_lambda", "multi_hot", "noise_roll",
    "normalize", "photometric", "random_box", "random_grayscale", "resize", "resize_short", "resized_crop_box",
    "reverse_time", "rgb_to_gray", "roll_time", "sample_generator", "smooth_labels", "three_boxes", "to_float",
    "to_frames", "train_window", "uniform_windows", "volume_gain",
]  # fmt: skip
