"""Shared distillation pieces: windows, video-level metrics, retrieval, frame selection."""

from __future__ import annotations

import torch

from xmodal.methods._distill import random_window, select_frame, video_level_metrics, window_starts, windowed


def test_window_starts_cover_the_clip_uniformly():
    assert window_starts(16, 16, 3) == [0]
    assert window_starts(8, 4, 1) == [2]
    assert window_starts(8, 4, 3) == [0, 2, 4]
    assert window_starts(10, 4, 2) == [0, 6]


def test_windowed_and_random_window_keep_consecutive_frames():
    x = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(2, 3, 8, 2, 2).contiguous()
    w = windowed(x, 4, 3)
    assert w.shape == (6, 3, 4, 2, 2)
    assert w[:3, 0, :, 0, 0].tolist() == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]]
    torch.manual_seed(0)
    r = random_window(x, 3)[:, 0, :, 0, 0]
    assert r.shape == (2, 3) and ((r[:, 1:] - r[:, :-1]) == 1).all()
    assert random_window(x, 0) is x


def test_select_frame_one_index_per_batch_and_middle_at_eval():
    x = torch.arange(4.0).view(1, 1, 4, 1, 1).expand(3, 1, 4, 1, 1)
    assert select_frame(x, "random", training=False).flatten().tolist() == [2, 2, 2]
    torch.manual_seed(0)
    f = select_frame(x, "random", training=True).flatten()
    assert f.shape == (3,) and (f == f[0]).all()


def test_video_level_accuracy_averages_window_softmaxes():
    # video 0: windows vote 1, 1, 0 but window 3 is very sure of 0 -> video-level 0 (mean softmax)
    logits = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [10.0, 0.0]], [[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]]])
    m = video_level_metrics(logits, torch.tensor([0, 1]))
    assert m["acc"] == 100.0
    assert abs(m["clip_acc"] - 100 * 4 / 6) < 1e-9 and m["windows"] == 3


def test_video_retrieval_on_a_tiny_student():
    from xmodal.data.embedded.avdigits import AVDigitsDataConfig, avdigits_data
    from xmodal.methods._distill import video_retrieval
    from xmodal.methods.kd import KD, KDConfig
    from xmodal.registry import MODELS

    b = avdigits_data(AVDigitsDataConfig(num_classes=3, n_train_per_class=4, n_pool=0, n_test_per_class=3,
                                         frames=4, size=16, fbank_bins=0))
    torch.manual_seed(0)
    method = KD(KDConfig(student=MODELS.entry("tiny_video").config(num_classes=0, widths=(4, 8)), eval_windows=2,
                         clip_frames=2), b.info)
    r = video_retrieval(method, b.test, b.train)
    assert r["retrieval_R@1"] <= r["retrieval_R@5"] <= r["retrieval_R@10"] == 100.0  # 12 gallery items, 3 classes


def test_store_windows_are_pooled_per_video_group():
    from xmodal.methods._distill import WindowedStudent

    # 3 items (windows) of video "a" and 1 of "b"; each item is one window of its own
    logits = torch.tensor([[[0.0, 1.0]], [[0.0, 1.0]], [[10.0, 0.0]], [[0.0, 3.0]]])
    out = WindowedStudent().eval_metrics({"logits": logits, "label": torch.tensor([0, 0, 0, 1]), "group": ["a", "a", "a", "b"]})
    assert out["videos"] == 2 and out["acc"] == 100.0 and out["clip_acc"] == 50.0
