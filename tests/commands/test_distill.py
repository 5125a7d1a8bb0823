"""`xmodal teacher-cache`: a frozen teacher's outputs stored once per uid, equal to the live
teacher, and read back by a student that then never runs the teacher."""

from __future__ import annotations

import pytest
import torch

from xmodal.cli import main
from xmodal.config import config_from_data
from xmodal.data.features import FeatureStore

DATA = {"name": "avdigits", "num_classes": 3, "n_train_per_class": 2, "n_pool": 12, "n_test_per_class": 2,
        "frames": 4, "size": 16, "fbank_bins": 16, "seed": 0}


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    from xmodal.engine.trainer import train

    out = tmp_path_factory.mktemp("teacher")
    cfg = config_from_data({
        "name": "t", "method": {"name": "supervised", "input_key": "fbank", "label_key": "audio_label",
                                "model": {"name": "tiny_audio", "mel_bins": 16, "widths": [8, 8], "num_classes": 0}},
        "data": {**DATA, "train_split": "pool"}, "optim": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 1, "batch_size": 4, "progress": False, "tensorboard": False, "ckpt_every_epochs": 0},
    })
    train(cfg, out_dir=out)
    return out


def test_teacher_cache_cli_matches_the_live_teacher(teacher_run, tmp_path, capsys):
    from xmodal.methods._distill import TeacherConfig, load_teacher
    from xmodal.registry import DATASETS

    out = tmp_path / "cache.safetensors"
    assert main(["teacher-cache", str(teacher_run), "--out", str(out)]) == 0
    assert '"count": 24' in capsys.readouterr().out  # 6 labelled + 12 pool + 6 test clips, once each
    store = FeatureStore(out)
    assert store.meta["input_key"] == "fbank" and set(store.names) == {"logits", "feature"}
    bundle = DATASETS.build(config_from_data({"data": DATA, "method": {"name": "supervised", "model": {"name": "mlp"}}}).data)
    model, key = load_teacher(TeacherConfig(run=str(teacher_run)), bundle.info)
    batch = bundle.extra["pool"].__getitems__([0, 5, 11])
    live = model(batch[key])
    cached = store.get_many(batch["uid"])
    torch.testing.assert_close(cached["logits"], live.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached["feature"], live.feature, rtol=1e-5, atol=1e-5)


def test_cached_student_training_never_runs_the_teacher(teacher_run, tmp_path, monkeypatch):
    from xmodal.commands.distill import write_teacher_cache
    from xmodal.engine.trainer import train
    from xmodal.models.tiny_audio import TinyAudio

    cache = tmp_path / "cache.safetensors"
    write_teacher_cache(teacher_run, cache)
    calls = []
    original = TinyAudio.forward
    monkeypatch.setattr(TinyAudio, "forward", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    recipe = {
        "name": "s", "method": {"name": "kd", "student": {"name": "tiny_video", "num_classes": 0, "widths": [4, 8]},
                                "teacher": {"run": str(teacher_run)}, "kd": {"weight": 1.0}},
        "data": {**DATA, "train_split": "train+pool"}, "optim": {"name": "adam", "lr": 0.01},
        "train": {"max_steps": 3, "batch_size": 4, "progress": False, "tensorboard": False, "ckpt_every_epochs": 0},
    }
    live = train(config_from_data(recipe), out_dir=tmp_path / "live")
    assert live.method.teacher_forwards == 3 and len(calls) == 3  # without a cache: one pass per step
    calls.clear()
    recipe["data"]["features"] = {"teacher": str(cache)}
    cached = train(config_from_data(recipe), out_dir=tmp_path / "cached")
    assert cached.method.teacher_forwards == 0 and calls == []


def test_teacher_npy_collects_precomputed_features_with_zero_rows_for_missing(tmp_path):
    import numpy as np

    from xmodal.data.manifest import ManifestRow, write_manifest

    np.save(tmp_path / "a.npy", np.arange(4, dtype=np.float32))
    np.save(tmp_path / "b.npy", np.ones((3, 4), np.float32) * 2)  # (T, D): averaged over T
    rows = [ManifestRow(uid=u, split="train", labels=[0], video=f"{u}.mp4", meta={"audio_feature": str(tmp_path / f"{u}.npy")})
            for u in ("a", "b", "c")]
    manifest = write_manifest(rows, tmp_path / "manifest.jsonl")
    out = tmp_path / "panns.safetensors"
    assert main(["teacher-npy", str(manifest), "--out", str(out)]) == 0
    store = FeatureStore(out)
    f = store.get_many(["a", "b", "c"])["feature"]
    torch.testing.assert_close(f, torch.tensor([[0.0, 1, 2, 3], [2, 2, 2, 2], [0, 0, 0, 0]]))
