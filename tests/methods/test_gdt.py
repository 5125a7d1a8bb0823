from pathlib import Path

import pytest
import torch

from dist_helpers import run_distributed
from xmodal.config import config_from_data
from xmodal.data.bundle import DataInfo
from xmodal.errors import ConfigError
from xmodal.losses.gdt import gdt_loss
from xmodal.methods.gdt import GDT, VIEW_SUFFIX, GDTConfig
from xmodal.registry import METHODS

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

MEL = 8


def make_cfg(**over) -> GDTConfig:
    base = {
        "name": "gdt",
        "video": {"name": "tiny_video", "num_classes": 0, "widths": [4, 8]},
        "audio": {"name": "tiny_audio", "mel_bins": MEL, "widths": [8, 8]},
        "head": {"dim": 6, "hidden": 8, "dropout": 0.0},
        "temperature": 0.1,
    }
    return config_from_data({"method": {**base, **over}, "data": {"name": "gauss"}}).method


def build(seed=0, **over) -> GDT:
    torch.manual_seed(seed)
    return METHODS.build(make_cfg(**over), info=DataInfo(extra={"fps": 4.0}))


def prepared_batch(n=8, t=4, frames=20, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for suffix in VIEW_SUFFIX.values():
        batch["video" + suffix] = torch.randn(n, 3, t, 16, 16, generator=g)
        batch["fbank" + suffix] = torch.randn(n, frames, MEL, generator=g)
    batch["label"] = torch.arange(n) % 3
    return batch


def test_views_read_per_hypothesis():
    assert build(hypothesis=1).views_used == ["V"]
    assert build(hypothesis=2).views_used == ["V", "VR"]
    assert build(hypothesis=5).views_used == ["V", "V2"]
    assert build(hypothesis=9).views_used == ["V", "VR", "V2", "V2R"]
    m = build(hypothesis=2)
    batch = prepared_batch()
    del batch["video_rev"]
    with pytest.raises(ConfigError, match="video_rev"):
        m.training_step(batch)


@pytest.mark.parametrize("hypothesis", [1, 3, 8])
def test_training_step_is_gdt_loss_of_the_heads(hypothesis):
    m = build(hypothesis=hypothesis).eval()  # BN running stats: the same features in both calls
    batch = prepared_batch()
    out = m.training_step(batch)
    feats = {}
    for view in m.views_used:
        x, a = batch["video" + VIEW_SUFFIX[view]], batch["fbank" + VIEW_SUFFIX[view]]
        feats[view] = (m.mlp_v(m.video(x).feature), m.mlp_a(m.audio(a.transpose(1, 2)[:, None]).feature))
    ref = gdt_loss(hypothesis, feats, temperature=0.1)
    torch.testing.assert_close(out.total, ref.total)
    assert set(ref.terms) <= set(out.terms) and "acc_a2v" in out.terms


def _clip_batch(n=6, frames=8, fps=4.0):
    """Video frame t of clip b holds the value t (all pixels); fbank frame f holds f."""
    spec_frames = int(frames / fps * 100) - 2
    video = torch.arange(frames, dtype=torch.float32).view(1, 1, frames, 1, 1).expand(n, 3, frames, 16, 16).clone()
    fbank = torch.arange(spec_frames, dtype=torch.float32).view(1, spec_frames, 1).expand(n, spec_frames, MEL).clone()
    return {"video": video, "fbank": fbank}


def test_derived_views_windows_reversal_and_alignment():
    m = build(hypothesis=9, views={"enabled": True, "frames": 4, "crop": 0, "flip": False, "mean": 0.0, "std": 1.0})
    torch.manual_seed(3)
    views = m.derived_views(_clip_batch())
    starts = {}
    for clip in ("V", "V2"):
        v, a = views[clip]
        vr, ar = views[clip + "R"]
        s = v[:, 0, :, 0, 0]  # [B, 4] frame indices of the window
        assert torch.equal(s - s[:, :1], torch.arange(4.0).expand_as(s))  # consecutive frames
        assert torch.equal(vr, v.flip(2)) and torch.equal(ar, a.flip(-1))
        assert a.shape[-2:] == (MEL, 98)  # 1 s of 10 ms frames
        # audio window starts at the video window's time: frame s / fps s -> spectrogram frame 100 s / fps
        assert torch.equal(a[:, 0, 0, 0], (s[:, 0] / 4.0 * 100).round().clamp(max=198 - 98))
        starts[clip] = s[:, 0]
    assert not torch.equal(starts["V"], starts["V2"])  # independent windows (time shift)


def test_derived_views_spatial_augmentation_is_per_view():
    m = build(hypothesis=2, views={"enabled": True, "frames": 4, "crop": 12, "flip": True})
    batch = _clip_batch()
    batch["video"] = torch.rand(6, 3, 4, 16, 16)
    v, vr = (m.derived_views(batch)[k][0] for k in ("V", "VR"))
    assert v.shape == (6, 3, 4, 12, 12)
    assert not torch.allclose(v.flip(2), vr)  # own crop/flip for the reversed view (§2.2)


def test_embed_and_eval_metrics():
    m = build(views={"enabled": True, "frames": 4, "crop": 12})
    batch = _clip_batch()
    batch["label"] = torch.tensor([0, 1, 2, 0, 1, 2])
    emb = m.embed(batch)
    assert emb["video"].shape == (6, 8) and emb["audio_proj"].shape == (6, 6)
    out = m.eval_step(batch)
    assert set(out) == {"video_proj", "audio_proj", "label"}
    metrics = m.eval_metrics(out)
    assert {"a2v_R@1", "v2a_R@1", "clip_a2v_R@1"} <= set(metrics)
    assert m.video_encoder()(torch.randn(2, 3, 4, 12, 12)).shape == (2, 8)


def test_text_variant_reads_token_views_and_keeps_vectors_frozen():
    m = build(hypothesis=5, audio={"name": "text_gdt", "hidden": 16, "dim": 12, "buckets": 50}, audio_key="text")
    tok = m.audio.tokenizer
    batch = prepared_batch()
    caps = ["a digit moving left", "seven", "the number three", "zero zero", "one", "two", "nine", "eight"]
    batch["text"] = tok.encode(caps, 5)
    batch["text_shift"] = tok.encode(caps[1:] + caps[:1], 5)
    out = m.training_step(batch)
    out.total.backward()
    assert torch.isfinite(out.total) and m.audio.fc.weight.grad.abs().sum() > 0
    assert not any(k.startswith("audio.table") for k in m.state_dict())  # rebuilt, never saved
    # raw captions (the store's "text" key) are tokenised by the encoder's own tokenizer
    raw = {**batch, "text": caps, "text_shift": caps[1:] + caps[:1]}
    torch.testing.assert_close(m.eval().training_step(raw).total, m.training_step(batch).total)
    with pytest.raises(ConfigError, match="no tokenizer"):
        build(audio_key="fbank").training_step({**prepared_batch(), "fbank": caps})


# ---------------------------------------------------------------- 1 process == 2 gloo processes
def _grads(m):
    return {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}


def _worker(rank, world, batch, hypothesis):
    from torch.nn.parallel import DistributedDataParallel as DDP

    m = build(hypothesis=hypothesis).eval()
    n = batch["label"].shape[0] // world
    local = {k: v[rank * n : (rank + 1) * n] for k, v in batch.items()}
    ddp = DDP(m)
    out = ddp(local)
    out.total.backward()
    return {"loss": out.total.detach(), "grads": _grads(m)}


@pytest.mark.dist
@pytest.mark.parametrize("hypothesis", [1, 7])
def test_two_processes_match_one_process_through_ddp(hypothesis):
    # BatchNorm in eval mode: per-process batch statistics would differ by construction (SyncBN
    # is CUDA-only); what is checked is the gathered-negative loss and DDP's gradient averaging.
    batch = prepared_batch(8)
    single = build(hypothesis=hypothesis).eval()
    loss = single.training_step(batch).total
    loss.backward()
    results = run_distributed(_worker, 2, args=(batch, hypothesis))
    torch.testing.assert_close(sum(r["loss"] for r in results) / 2, loss.detach())
    for k, g in _grads(single).items():
        for r in results:
            torch.testing.assert_close(r["grads"][k], g, atol=1e-6, rtol=1e-5)


def test_recipes_parse():
    from xmodal.config import load_config
    from xmodal.eval.ssl_finetune import FinetuneRecipe

    root = RECIPES
    for path in sorted((root / "gdt").glob("*.yaml")) + sorted((root / "stica").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.method.name in ("gdt", "stica"), path
    assert load_config(root / "gdt" / "howto100m.yaml").method.audio.name == "text_gdt"
    k400 = load_config(root / "gdt" / "kinetics400.yaml")
    assert k400.method.temperature == 0.07 and k400.data.views == "gdt" and k400.optim.lr == 0.64
    for path in sorted((root / "eval").glob("*finetune.yaml")):
        recipe = load_config(path, cls=FinetuneRecipe)
        assert recipe.finetune.epochs == 12 and recipe.finetune.milestones == (6, 10), path
    assert len(load_config(root / "eval" / "hmdb51-finetune.yaml", cls=FinetuneRecipe).folds) == 3


# ------------------------------------------------------------------------- learning on avdigits
@pytest.mark.slow
def test_gdt_on_avdigits_beats_chance_and_a_random_encoder(tmp_path, avdigits_bundles):
    from xmodal.config import load_config
    from xmodal.engine.trainer import train
    from xmodal.eval.ssl import linear_eval

    pretrain, probe = avdigits_bundles
    cfg = load_config(RECIPES / "gdt" / "avdigits.yaml", ["train.progress=false", "train.tensorboard=false"])
    res = train(cfg, out_dir=tmp_path, data=pretrain)
    test = res.metrics["test"]  # 500 held-out clips (unseen handwriting and voices), 10 classes
    assert test["a2v_R@1"] > 40 and test["v2a_R@1"] > 30  # class-level R@1, chance 10 %
    torch.manual_seed(0)
    random = METHODS.build(cfg.method, info=probe.info)
    trained = linear_eval(res.method, probe.train, probe.test).top1
    baseline = linear_eval(random, probe.train, probe.test).top1
    assert trained > baseline + 15, (trained, baseline)
