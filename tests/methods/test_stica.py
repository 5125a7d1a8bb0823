from pathlib import Path

import pytest
import torch

from dist_helpers import run_distributed
from xmodal.config import config_from_data
from xmodal.data.bundle import DataInfo
from xmodal.errors import ConfigError
from xmodal.losses.gdt import CropFeats, StiCAFeats, stica_loss
from xmodal.methods.stica import STiCA
from xmodal.models.stica import sample_crops
from xmodal.registry import METHODS

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

MEL = 8


def build(seed=0, **over) -> STiCA:
    base = {
        "name": "stica",
        "video": {"name": "tiny_video", "num_classes": 0, "widths": [4, 8], "temporal_kernel": 0},
        "audio": {"name": "tiny_audio", "mel_bins": MEL, "widths": [8, 8]},
        "head": {"dim": 6, "hidden": 8, "dropout": 0.0},
        "frames": 4,
    }
    cfg = config_from_data({"method": {**base, **over}, "data": {"name": "gauss"}}).method
    torch.manual_seed(seed)
    return METHODS.build(cfg, info=DataInfo(extra={"fps": 4.0}))


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.randn(n, 2, 3, 4, 16, 16, generator=g), "fbank": torch.randn(n, 20, MEL, generator=g)}


def test_each_crop_is_pooled_and_projected_once():
    m = build()
    calls = []
    m.mlp_v.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    m.training_step(batch())
    # per view: the global embedding + (2 + 4) spatial + (2 + 1) temporal crops (§8.10: no re-encoding)
    assert len(calls) == 2 * (1 + 2 + 4 + 2 + 1)


@pytest.mark.parametrize("layers", [0, 1])
def test_training_step_equals_stica_loss_of_its_crops(layers):
    m = build(pool={"layers": layers, "heads": 2}).eval()
    b = batch()
    torch.manual_seed(5)
    out = m.training_step(b)
    torch.manual_seed(5)  # the crop boxes are the only random draws: replay them
    fa = m.audio(b["fbank"].transpose(1, 2)[:, None]).feature
    per_view = []
    for k in (0, 1):
        fmap = m.video(b["video"][:, k], return_map=True).fmap
        boxes = sample_crops(m.cfg.crops, tuple(fmap.shape[2:]))
        crops = CropFeats(*([m.mlp_v(m.pool(bx.take(fmap), full=False)) for bx in group] for group in boxes))
        per_view.append((m.mlp_v(m.pool(fmap)), m.mlp_a(fa), crops))
    (v1, a1, c1), (v2, a2, c2) = per_view
    ref = stica_loss(StiCAFeats(v1, a1, v2, a2, c1, c2), alpha=0.5)
    torch.testing.assert_close(out.total, ref.total)
    assert {"crops", "av", "crop_spatial_large", "crop_spatial_small", "crop_temporal_small"} <= set(out.terms)
    assert m.pool.t_tok == (4 if layers else 1)


def test_trunk_parameters_outside_the_map_are_refused():
    # tiny_video's temporal conv acts after the per-frame map: STiCA could never train it (and
    # DDP would wait for its gradient forever)
    with pytest.raises(ConfigError, match="temporal_kernel: 0"):
        build(video={"name": "tiny_video", "num_classes": 0, "widths": [4, 8]})


def test_transformer_pooling_refuses_a_clip_of_another_length():
    m = build(pool={"layers": 1, "heads": 2})
    with pytest.raises(ConfigError, match="t_tok"):
        m.training_step({"video": torch.randn(4, 2, 3, 8, 16, 16), "fbank": torch.randn(4, 20, MEL)})
    with pytest.raises(ConfigError, match="two views"):
        m.training_step({"video": torch.randn(4, 3, 4, 16, 16), "fbank": torch.randn(4, 20, MEL)})


def test_whole_clip_views_and_embeddings():
    m = build(views={"enabled": True, "frames": 4, "crop": 12, "scale": [0.5, 1.0]})
    b = {"video": torch.rand(6, 3, 6, 16, 16), "fbank": torch.randn(6, 148, MEL), "label": torch.arange(6) % 2}
    x1, x2, spec = m.train_views(b)
    assert x1.shape == x2.shape == (6, 3, 4, 12, 12) and not torch.allclose(x1, x2)
    assert spec.shape == (6, 1, MEL, 98)
    out = m.training_step(b)
    assert torch.isfinite(out.total)
    emb = m.embed(b)
    assert emb["video"].shape == (6, 8) and m.video_encoder()(torch.randn(2, 3, 4, 12, 12)).shape == (2, 8)
    assert "a2v_R@1" in m.eval_metrics(m.eval_step(b))


def _worker(rank, world, b):
    from torch.nn.parallel import DistributedDataParallel as DDP

    m = build().eval()
    n = b["video"].shape[0] // world
    ddp = DDP(m)  # keep a reference: its hooks average the gradients during backward
    torch.manual_seed(7)  # crop boxes: the same draws on every rank (shared across the global batch)
    out = ddp({k: v[rank * n : (rank + 1) * n] for k, v in b.items()})
    out.total.backward()
    return {"loss": out.total.detach(), "grads": {k: p.grad for k, p in m.named_parameters() if p.grad is not None}}


@pytest.mark.dist
def test_crop_and_cross_modal_losses_gather_across_processes():
    b = batch(8)
    single = build().eval()
    torch.manual_seed(7)
    loss = single.training_step(b).total
    loss.backward()
    results = run_distributed(_worker, 2, args=(b,))
    torch.testing.assert_close(sum(r["loss"] for r in results) / 2, loss.detach())
    for k, p in single.named_parameters():
        if p.grad is not None:
            for r in results:
                torch.testing.assert_close(r["grads"][k], p.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_stica_on_avdigits_trains_and_evaluates(tmp_path, avdigits_bundles):
    from xmodal.config import load_config
    from xmodal.engine.logging import read_metrics
    from xmodal.engine.trainer import train

    pretrain, _ = avdigits_bundles
    cfg = load_config(RECIPES / "stica" / "avdigits.yaml",
                      ["train.max_steps=200", "train.progress=false", "train.tensorboard=false"])
    res = train(cfg, out_dir=tmp_path, data=pretrain)
    rows = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert rows[0]["crops"] - rows[-1]["crops"] > 0.5  # within-modal crop NCE learns
    assert rows[-1]["av"] < rows[0]["av"]
    assert res.metrics["test"]["a2v_R@1"] > 20  # class-level, chance 10 %
