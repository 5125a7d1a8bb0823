"""CAV-MAE methods: inputs, initialisation, loss composition, optimiser groups; end-to-end learning tests."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from xmodal.config import OptimConfig, config_from_data
from xmodal.data.bundle import DataInfo
from xmodal.engine.checkpoint import save_atomic, save_safetensors_atomic
from xmodal.errors import CheckpointError, ConfigError, DataError
from xmodal.losses.mae import cavmae_contrastive, mae_loss
from xmodal.methods.cavmae import (
    CavmaeFinetune,
    CavmaeFinetuneConfig,
    CavmaeInputs,
    CavmaeNet,
    CavmaePretrain,
    CavmaePretrainConfig,
    frame_indices,
    read_cavmae_state,
    take_audio,
    take_image,
)
from xmodal.models.cavmae import CAVMAE

NET = CavmaeNet(size="tiny", audio_length=16, audio_bins=16, image_size=16, patch_size=8, modality_specific_depth=1)
INFO = DataInfo(num_classes=3)


def batch(n=4, frames=20, t=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"fbank": torch.randn(n, frames, 16, generator=g), "video": torch.rand(n, 3, t, 16, 16, generator=g),
            "label": torch.arange(n) % 3, "uid": [f"u{i}" for i in range(n)]}


# ----------------------------------------------------------------------------------------- inputs
def test_take_audio_cuts_and_pads_and_checks_bins():
    arch = NET.arch()
    fb = torch.randn(2, 20, 16)
    assert torch.equal(take_audio({"fbank": fb}, CavmaeInputs(), arch), fb[:, :16])
    short = take_audio({"fbank": fb[:, :10]}, CavmaeInputs(), arch)
    assert short.shape == (2, 16, 16) and torch.equal(short[:, :10], fb[:, :10]) and not short[:, 10:].any()
    with pytest.raises(DataError, match="audio_bins"):
        take_audio({"fbank": torch.randn(2, 16, 8)}, CavmaeInputs(), arch)
    with pytest.raises(DataError, match="no audio key"):
        take_audio({"x": fb}, CavmaeInputs(), arch)


def test_take_image_picks_frames_normalises_and_resizes():
    arch = NET.arch()
    video = torch.rand(2, 3, 5, 16, 16)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    mid = take_image({"video": video}, CavmaeInputs(), arch, None)
    assert torch.allclose(mid, (video[:, :, 2] - mean) / std)
    per_sample = take_image({"video": video}, CavmaeInputs(), arch, torch.tensor([0, 4]))
    assert torch.allclose(per_sample[1], ((video[1:, :, 4] - mean) / std)[0])
    # an image key wins and is used as delivered (already normalised by the data)
    img = torch.randn(2, 3, 16, 16)
    assert torch.equal(take_image({"image": img, "video": video}, CavmaeInputs(), arch, None), img)
    # short side to 16 (bicubic), centre crop: a 16x24 frame keeps its middle 16 columns
    wide = take_image({"image": torch.arange(24.0).repeat(2, 3, 16, 1)}, CavmaeInputs(), arch, None)
    assert wide.shape == (2, 3, 16, 16) and torch.allclose(wide[0, 0, 0], torch.arange(4.0, 20.0))
    up = take_image({"image": torch.ones(1, 3, 8, 8)}, CavmaeInputs(), arch, None)
    assert up.shape == (1, 3, 16, 16) and torch.allclose(up, torch.ones_like(up))
    with pytest.raises(DataError, match="neither"):
        take_image({"fbank": 0}, CavmaeInputs(), arch, None)
    assert frame_indices(10, 10) == list(range(10)) and frame_indices(8, 4) == [0, 2, 4, 6] and frame_indices(25, 10)[-1] == 22


def test_take_image_grayscale_is_luma_in_every_channel():
    arch = NET.arch()
    video = torch.rand(2, 3, 5, 16, 16)
    grey = take_image({"video": video}, CavmaeInputs(grayscale=True, normalize_video=False), arch, None)
    luma = 0.299 * video[:, 0, 2] + 0.587 * video[:, 1, 2] + 0.114 * video[:, 2, 2]
    assert all(torch.allclose(grey[:, c], luma, atol=1e-6) for c in range(3))


# ----------------------------------------------------------------------------------- init / files
def _mae_from(model: CAVMAE) -> dict:
    """An ImageNet-MAE-layout state built from a tiny CAVMAE: blocks_a -> blocks.i, blocks_u.0 -> last."""
    s = model.state_dict()
    out = {k.replace("patch_embed_v", "patch_embed").replace("decoder_pred_v", "decoder_pred"): v for k, v in s.items()
           if k.startswith(("patch_embed_v", "decoder_pred_v", "decoder_embed", "decoder_norm", "mask_token", "norm."))
           or (k.startswith("decoder_blocks") and not re.search(r"norm\d_[av]\.", k))}
    depth = model.cfg.modality_specific_depth
    for k, v in s.items():
        if re.search(r"norm\d_[av]\.", k):  # CAV-MAE's modality norms have no MAE counterpart
            continue
        if k.startswith("blocks_a."):
            out["blocks." + k[len("blocks_a."):]] = v
        elif k.startswith("blocks_u.0."):
            out[f"blocks.{depth}." + k[len("blocks_u.0."):]] = v
    return out


def test_read_cavmae_state_accepts_ours_official_and_imagenet(tmp_path):
    torch.manual_seed(0)
    method = CavmaePretrain(CavmaePretrainConfig(net=NET), INFO)
    own = method.model.state_dict()
    save_safetensors_atomic(method.state_dict(), tmp_path / "run" / "weights.safetensors")
    for src in (tmp_path / "run", tmp_path / "run" / "weights.safetensors"):
        got = read_cavmae_state(src)
        assert got.keys() == own.keys() and all(torch.equal(got[k], own[k]) for k in own)
    save_atomic({f"module.{k}": v for k, v in own.items()}, tmp_path / "official.pth")
    assert torch.equal(read_cavmae_state(tmp_path / "official.pth")["norm_a.weight"], own["norm_a.weight"])
    save_atomic({"model": _mae_from(method.model)}, tmp_path / "mae.pth")
    conv = read_cavmae_state(tmp_path / "mae.pth", method.arch)
    assert torch.equal(conv["blocks_v.0.attn.qkv.weight"], own["blocks_a.0.attn.qkv.weight"])
    assert torch.equal(conv["blocks_u.0.norm1_v.weight"], own["blocks_u.0.norm1.weight"])
    save_atomic({"w": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a CAV-MAE"):
        read_cavmae_state(tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="no weights"):
        read_cavmae_state(tmp_path)


def test_finetune_initialises_from_pretraining_and_keeps_a_new_head(tmp_path):
    torch.manual_seed(0)
    pre = CavmaePretrain(CavmaePretrainConfig(net=NET), INFO)
    with torch.no_grad():
        pre.model.norm.weight.add_(1.5)
    save_safetensors_atomic(pre.state_dict(), tmp_path / "w.safetensors")
    ft = CavmaeFinetune(CavmaeFinetuneConfig(net=NET, init_from=str(tmp_path / "w.safetensors")), INFO)
    assert torch.equal(ft.model.norm.weight, pre.model.norm.weight)
    assert ft.model.pos_embed_a.requires_grad  # trainable in finetuning, as in the reference
    cont = CavmaePretrain(CavmaePretrainConfig(net=NET, init_from=str(tmp_path / "w.safetensors")), INFO)
    assert all(torch.equal(a, b) for a, b in zip(cont.state_dict().values(), pre.state_dict().values()))


# --------------------------------------------------------------------------------------- pretrain
def test_pretrain_loss_is_the_weighted_sum_with_grouped_negatives():
    torch.manual_seed(0)
    cfg = CavmaePretrainConfig(net=NET, w_mae=0.7, w_c=0.3, negative_groups=2, loss_scale=4.0)
    m = CavmaePretrain(cfg, INFO)
    b = batch()
    audio, image = take_audio(b, cfg.inputs, m.arch), take_image(b, cfg.inputs, m.arch, None)
    noise = (torch.rand(4, 4), torch.rand(4, 4))
    t = m.losses(audio, image, noise)
    enc = m.model.forward_encoder(audio, image, 0.75, 0.75, "unstructured", noise)
    pa, pv = m.model.forward_decoder(enc)
    la = mae_loss(pa, m.model.patchify_audio(audio), enc.mask_a)
    lv = mae_loss(pv, m.model.patchify_image(image), enc.mask_v)
    a, v = enc.c_a.mean(1), enc.c_v.mean(1)
    nce = (cavmae_contrastive(a[:2], v[:2]).total + cavmae_contrastive(a[2:], v[2:]).total) / 2
    assert torch.allclose(t["loss_mae_a"], la) and torch.allclose(t["loss_mae_v"], lv) and torch.allclose(t["nce"], nce)
    assert torch.allclose(t["loss"], 0.7 * (la + lv) + 0.3 * nce)
    # the reference summed its DataParallel replicas' losses: loss_scale multiplies the total
    assert m.loss_scale() == 4.0
    with pytest.raises(ConfigError, match="divisible"):
        m.losses(audio[:3], image[:3])


def test_pretrain_contrastive_on_unmasked_centred_features():
    """`contrast_tokens: unmasked` pools a second, unmasked pass (forward_feat); `center` removes
    each side's batch mean before the cosine; the MAE terms are unchanged by either."""
    torch.manual_seed(0)
    cfg = CavmaePretrainConfig(net=NET, w_c=0.5, contrast_tokens="unmasked", center=True, temperature=0.1, symmetric=True)
    m = CavmaePretrain(cfg, INFO)
    b = batch()
    audio, image = take_audio(b, cfg.inputs, m.arch), take_image(b, cfg.inputs, m.arch, None)
    noise = (torch.rand(4, 4), torch.rand(4, 4))
    t = m.losses(audio, image, noise)
    feats = m.model.forward_feat(audio, image)
    a, v = feats.audio.mean(1), feats.image.mean(1)
    nce = cavmae_contrastive(a - a.mean(0), v - v.mean(0), 0.1, symmetric=True).total
    assert torch.allclose(t["nce"], nce)
    m.cfg.contrast_tokens, m.cfg.center = "visible", False
    ref = m.losses(audio, image, noise)
    assert torch.equal(ref["loss_mae_a"], t["loss_mae_a"]) and not torch.allclose(ref["nce"], t["nce"])
    # retrieval of a centred model ranks centred features: a common offset changes nothing
    from xmodal.eval.cavmae import retrieval_metrics

    fa, fv = torch.randn(6, 8), torch.randn(6, 8)
    centred = retrieval_metrics(fa, fv, center=True)
    assert centred == retrieval_metrics(fa + 10.0, fv - 7.0, center=True)
    assert retrieval_metrics(fa + 10.0, fv - 7.0) != centred


def test_pretrain_config_validation_and_eval_is_deterministic():
    with pytest.raises(ConfigError, match="negative_groups"):
        config_from_data({"method": {"name": "cavmae_pretrain", "gather": True, "negative_groups": 2}, "data": {"name": "gauss"}})
    with pytest.raises(ConfigError, match="mask_ratio_a"):
        config_from_data({"method": {"name": "cavmae_pretrain", "mask_ratio_a": 1.0}, "data": {"name": "gauss"}})
    torch.manual_seed(0)
    m = CavmaePretrain(CavmaePretrainConfig(net=NET, w_c=0.5), INFO).eval()
    b = batch()
    one, two = m.eval_step(b), m.eval_step(b)
    assert torch.equal(one["loss"], two["loss"]) and one["audio"].shape == (4, 64)
    metrics = m.eval_metrics(one)
    assert {"loss_mae_a", "loss_mae_v", "c_acc", "v2a_R@1", "a2v_R@10", "class_a2v_R@1"} <= set(metrics)


# --------------------------------------------------------------------------------------- finetune
def test_param_groups_head_lr_and_linear_probe():
    m = CavmaeFinetune(CavmaeFinetuneConfig(net=NET, head_lr=50.0), INFO)
    groups = {g["name"]: g for g in m.param_groups(OptimConfig(no_decay=["norm", "bias"]))}
    assert set(groups) == {"base", "base_no_decay", "head", "head_no_decay"}
    assert groups["head"]["lr_scale"] == 50.0 and groups["base"]["lr_scale"] == 1.0
    assert groups["head_no_decay"]["weight_decay"] == 0.0
    n_head = sum(p.numel() for p in m.model.mlp_head.parameters())
    assert sum(p.numel() for g in ("head", "head_no_decay") for p in groups[g]["params"]) == n_head
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == sum(p.numel() for p in m.model.parameters())
    probe = CavmaeFinetune(CavmaeFinetuneConfig(net=NET, freeze_base=True, head_lr=10.0), INFO)
    (only,) = probe.param_groups(OptimConfig())
    assert only["name"] == "head" and sum(p.numel() for p in only["params"]) == n_head
    before = probe.model.blocks_a[0].attn.qkv.weight.clone()
    probe.training_step(batch()).total.backward()
    assert probe.model.blocks_a[0].attn.qkv.weight.grad is None and torch.equal(before, probe.model.blocks_a[0].attn.qkv.weight)


def test_finetune_losses_and_label_smoothing():
    torch.manual_seed(0)
    m = CavmaeFinetune(CavmaeFinetuneConfig(net=NET, label_smoothing=0.3, inputs=CavmaeInputs(train_frame="middle")), INFO)
    y = m.targets(torch.tensor([0, 2]))
    assert torch.allclose(y, torch.tensor([[0.7, 0.1, 0.1], [0.1, 0.1, 0.7]]))
    soft = torch.tensor([[0.5, 0.5, 0.0]])
    assert torch.equal(m.targets(soft), soft)  # soft labels from the data are kept
    b = batch()
    out = m.training_step(b)
    logits = m.model(*m._streams(b, "multimodal", None), "multimodal")
    ref = -(m.targets(b["label"]) * F.log_softmax(logits, -1)).sum(-1).mean()
    assert torch.allclose(out.total, ref) and set(out.terms) == {"ce"}
    bce = CavmaeFinetune(CavmaeFinetuneConfig(net=NET, inputs=CavmaeInputs(train_frame="middle")), DataInfo(num_classes=3, multilabel=True))
    bce.load_state_dict(m.state_dict())
    multi = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 1], [1, 1, 0]]).float()
    got = bce.training_step({**b, "label": multi}).total
    assert torch.allclose(got, F.binary_cross_entropy_with_logits(logits, multi))
    with pytest.raises(ConfigError, match="inference mode"):
        config_from_data({"method": {"name": "cavmae_finetune", "mode": "missingaudioonly"}, "data": {"name": "gauss"}})


def test_eval_averages_probabilities_over_frames_and_missing_modality_runs():
    torch.manual_seed(0)
    m = CavmaeFinetune(CavmaeFinetuneConfig(net=NET, inputs=CavmaeInputs(eval_frames=2)), INFO).eval()
    b = batch(t=4)
    probs = m.predict_probs(b)
    per = [m.model(*m._streams(b, "multimodal", i), "multimodal").softmax(-1) for i in (0, 2)]
    assert torch.allclose(probs, (per[0] + per[1]) / 2, atol=1e-6)
    assert torch.allclose(probs.sum(-1), torch.ones(4))
    # a multimodally finetuned model tested with one modality: the other key may be absent
    for mode, drop in (("missingaudioonly", "video"), ("missingvideoonly", "fbank")):
        m.cfg.eval_mode = mode
        out = m.eval_step({k: v for k, v in b.items() if k != drop})
        assert out["probs"].shape == (4, 3) and torch.isfinite(out["probs"]).all()
    assert math.isfinite(m.eval_metrics(out)["top1"])


# End-to-end learning on avdigits (pretrain -> retrieval -> finetune vs scratch -> inpainting,
# missing-modality inference): tests/eval/test_cavmae_demo.py.
