from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from xmodal.data.bundle import DataBundle, DataInfo, DictDataset
from xmodal.errors import ConfigError
from xmodal.eval.protocols import protocols
from xmodal.eval.ssl import ProbeOptions, extract_features, protocol_options
from xmodal.eval.ssl_finetune import EvalViews, FinetuneConfig, clip_source, finetune, finetune_lr_factor


class ToyMethod(nn.Module):
    """embed: video = the input's first 4 dims; audio_proj = video_proj = a noisy copy."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def embed(self, batch):
        x = batch["x"] * self.scale
        return {"video": x, "video_proj": x, "audio_proj": x + 0.01 * batch["noise"]}


def _data(n_per_class=10, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    label = torch.arange(classes).repeat_interleave(n_per_class)
    centres = 5 * torch.eye(classes, 4)
    x = centres[label] + torch.randn(len(label), 4, generator=g)
    return DictDataset(x=x, noise=torch.randn(len(label), 4, generator=g), label=label,
                       uid=[f"u{i}" for i in range(len(label))])


def _run(method=None):
    data = DataBundle(train=_data(seed=0), test=_data(seed=1), info=DataInfo(num_classes=3))
    return SimpleNamespace(method=method or ToyMethod(), data=data)


def _args(*options, split="test"):
    return SimpleNamespace(options=list(options), split=split, batch_size=7)


def test_options_are_typed_and_checked():
    assert protocol_options(_args("k=5", "feature=audio"), ProbeOptions) == ProbeOptions(k=5, feature="audio")
    with pytest.raises(ConfigError, match="opt.feture: unknown key.*feature"):
        protocol_options(_args("feture=x"), ProbeOptions)
    with pytest.raises(ConfigError, match="key=value"):
        protocol_options(_args("k"), ProbeOptions)


def test_extract_features_in_order_and_restores_mode():
    m = ToyMethod().train()
    ds = _data()
    f = extract_features(m, ds, batch_size=4)
    assert torch.equal(f.emb["video"], ds.columns["x"]) and torch.equal(f.label, ds.columns["label"])
    assert f.uid == ds.columns["uid"] and m.training
    with pytest.raises(ConfigError, match="audio"):
        extract_features(m, ds, keys=["audio"])


def test_linear_knn_retrieval_protocols():
    known = protocols()
    assert {"linear", "knn", "retrieval", "finetune"} <= set(known)
    run = _run()
    assert known["linear"](_args(), run)["linear_top1"] == 100.0
    assert known["knn"](_args("k=5"), run)["knn_top1"] == 100.0
    out = known["retrieval"](_args("ks=[1, 5]"), run)
    assert out["clip_a2v_R@1"] == 100.0 and out["a2v_R@1"] == 100.0  # near-identical paired embeddings
    assert out["video_R@1"] == 100.0  # test clips retrieve train clips of their class
    with pytest.raises(ConfigError, match="no split 'pool'"):
        known["linear"](_args("train_split=pool"), run)


def test_finetune_schedule():
    cfg = FinetuneConfig()
    assert [finetune_lr_factor(e, cfg) for e in range(12)] == pytest.approx(
        [1.0, 4.5, 8, 8, 8, 8, 0.4, 0.4, 0.4, 0.4, 0.02, 0.02])


class Videos(Dataset):
    """Whole videos [3, N, H, W]; frame t of video v has value (t + 1) / 100; class = brightness."""

    def __init__(self, n=6, frames=10, size=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.label = torch.arange(n) % 2
        t = (torch.arange(frames) + 1).float().view(1, frames, 1, 1) / 100
        self.video = [(t + 0.5 * self.label[i] + 0.05 * torch.rand(3, frames, size, size, generator=g)).clamp(0, 1)
                      for i in range(n)]

    def __len__(self):
        return len(self.label)

    def __getitem__(self, i):
        return {"video": self.video[i], "label": self.label[i]}


def test_eval_views_are_uniform_windows_times_three_crops():
    cfg = FinetuneConfig(clip_frames=4, test_clips=3, crop=8, mean=0.0, std=1.0)
    views = EvalViews(Videos(n=2, size=16), cfg)
    assert len(views) == 6 and clip_source(Videos()) == "sample"
    item = views[1 * 3 + 2]  # video 1, clip k = 2: start floor(2 (10 - 4) / 3) = 4
    assert item["video"].shape == (3, 3, 4, 8, 8) and item["group"] == "1"
    first = item["video"][:, :, 0].mean(dim=(1, 2, 3)) - 0.5 * 1  # remove the class offset
    assert torch.allclose(first, torch.full((3,), 0.05 + 0.025), atol=0.02)  # (4 + 1) / 100 + noise mean


class Encoder(nn.Module):
    feature_dim = 3

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 3, 1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3, 4))


def test_finetune_learns_an_easy_task_and_freeze_keeps_the_trunk():
    cfg = FinetuneConfig(epochs=3, batch_size=4, clip_frames=4, train_clips=2, test_clips=2, crop=8, head_lr=0.05,
                         trunk_lr=0.05, warmup_epochs=1, milestones=(), jitter=0.0)
    torch.manual_seed(0)
    enc = Encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    res = finetune(enc, Videos(n=8), Videos(n=6, seed=1), 2, cfg)
    assert res.video_top1 == 100.0 and res.video_top5 is None and len(res.train_loss) == 3
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())  # worked on a copy
    frozen = finetune(enc, Videos(n=8), Videos(n=6, seed=1), 2, FinetuneConfig(**{**cfg.__dict__, "freeze_trunk": True}))
    assert frozen.train_loss[-1] < frozen.train_loss[0]


class StoreLike(Dataset):
    """What the store source gives: train clips (one per video per epoch) / eval views with group."""

    def __init__(self, train: bool):
        self.train, self.epochs = train, []
        self.base = Videos(n=4, frames=4, size=8)

    def set_epoch(self, e):
        self.epochs.append(e)

    def __len__(self):
        return 4 if self.train else 8  # eval: 2 windows per video

    def __getitem__(self, i):
        v = i if self.train else i // 2
        item = {"video": self.base.video[v], "label": self.base.label[v]}
        return item if self.train else {**item, "group": f"vid{v}"}


def test_finetune_on_a_dataset_that_yields_clips():
    train, test = StoreLike(True), StoreLike(False)
    cfg = FinetuneConfig(epochs=2, batch_size=4, train_clips=3, head_lr=0.05, trunk_lr=0.05, milestones=())
    res = finetune(Encoder(), train, test, 2, cfg)
    assert clip_source(test) == "dataset" and train.epochs == [0, 1, 2, 3, 4, 5]
    assert 0 <= res.video_top1 <= 100 and len(res.train_loss) == 2


def test_cli_protocols_on_a_trained_gdt_run(tmp_path, capsys):
    import json
    from pathlib import Path

    from xmodal.cli import main
    from xmodal.engine.runs import load_run
    from xmodal.eval.ssl_finetune import finetune_from_run

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    run = tmp_path / "run"
    small = ["data.n_pool=64", "data.n_test_per_class=3", "data.n_train_per_class=2", "train.max_steps=2",
             "train.batch_size=16", "train.progress=false", "train.tensorboard=false"]
    assert main(["train", str(recipes / "gdt" / "avdigits.yaml"), "--out", str(run),
                 *[a for o in small for a in ("--set", o)]]) == 0
    capsys.readouterr()
    assert main(["eval", "linear", str(run), "--set", "data.train_split=train"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["linear_top1"] <= 100
    assert main(["eval", "retrieval", str(run), "--set", "data.train_split=train"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"a2v_R@1", "clip_v2a_R@1", "video_R@20"} <= set(out)
    assert main(["eval", "knn", str(run)]) == 0  # the run's own train split: avdigits' pool has labels
    assert "knn_top1" in json.loads(capsys.readouterr().out)
    args = SimpleNamespace(options=[f"recipe={recipes / 'eval' / 'avdigits-finetune.yaml'}", "epochs=1",
                                    "train_clips=1", "test_clips=1"], split="test")
    res = finetune_from_run(args, load_run(run))
    assert 0 <= res["video_top1"] <= 100 and "clip_top1" in res
