"""AVT: causality, shapes, GPT-2 equivalence of the predictor, ViT key layout, losses, overfitting."""

import math

import pytest
import torch
import torch.nn.functional as F

from xmodal.errors import CheckpointError, ConfigError
from xmodal.models.avt import (
    AVT,
    Attention,
    AVTLossWeights,
    ViT,
    avt_losses,
    build_avt,
    load_vit_weights,
    vit_b16,
)
from xmodal.registry import MODELS


def tiny_features_avt(num_classes=5, d=16, **kw):
    torch.manual_seed(0)
    return AVT(num_classes, d, width=32, layers=2, heads=2, max_positions=16, **kw)


def test_causal_outputs_do_not_see_future_frames():
    m = tiny_features_avt().eval()
    x = torch.randn(2, 6, 16)
    y = x.clone()
    y[:, 3:] = torch.randn(2, 3, 16)
    a, b = m(x), m(y)
    torch.testing.assert_close(a.predicted[:, :3], b.predicted[:, :3])
    torch.testing.assert_close(a.past_logits[:, :4], b.past_logits[:, :4])  # past[t] uses output t-1
    assert not torch.allclose(a.predicted[:, 3:], b.predicted[:, 3:])
    assert not torch.allclose(a.logits, b.logits)


def test_video_path_shapes_and_causality():
    m = MODELS.build_named("avt", num_classes=7, preset="tiny").eval()
    video = torch.randn(2, 3, 5, 32, 32)
    out = m(video)
    assert out.features.shape == (2, 5, 32) and out.predicted.shape == (2, 5, 32)
    assert out.future_feature.shape == (2, 32) and out.logits.shape == (2, 7) and out.past_logits.shape == (2, 5, 7)
    torch.testing.assert_close(out.future_feature, out.predicted[:, -1])
    torch.testing.assert_close(out.logits, m.classifier(out.predicted[:, -1]))
    torch.testing.assert_close(out.past_logits[:, 0], m.classifier(out.features[:, 0]))
    torch.testing.assert_close(out.past_logits[:, 1:], m.classifier(out.predicted[:, :-1]))
    # frames are encoded independently: frame t's feature equals the backbone on that frame alone
    torch.testing.assert_close(out.features[:, 2], m.backbone(video[:, :, 2]))
    v2 = video.clone()
    v2[:, :, 4] = 0
    torch.testing.assert_close(m(v2).predicted[:, :4], out.predicted[:, :4])
    with pytest.raises(ConfigError, match="B, C, T, H, W"):
        m(torch.randn(2, 5, 32))


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_naive_softmax(causal):
    torch.manual_seed(0)
    att = Attention(12, 3, causal=causal).eval()
    x = torch.randn(2, 5, 12)
    q, k, v = att.qkv(x).view(2, 5, 3, 3, 4).permute(2, 0, 3, 1, 4)
    s = q @ k.transpose(-1, -2) / 2.0
    if causal:
        s = s.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    ref = att.proj((s.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 12))
    torch.testing.assert_close(att(x), ref, atol=1e-5, rtol=1e-5)


def test_predictor_equals_hf_gpt2_with_the_same_weights():
    transformers = pytest.importorskip("transformers")
    m = tiny_features_avt().eval()
    p = m.predictor
    gpt = transformers.GPT2Model(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=16,
                                                         vocab_size=1)).eval()
    sd = {"wpe.weight": p.wpe.weight, "ln_f.weight": p.ln_f.weight, "ln_f.bias": p.ln_f.bias}
    ours = {"ln_1": "norm1", "ln_2": "norm2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj",
            "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for i, blk in enumerate(p.blocks):
        for hf, name in ours.items():
            mod = blk.get_submodule(name)
            # GPT-2's Conv1D stores weights as [in, out]
            sd[f"h.{i}.{hf}.weight"] = mod.weight.T if "ln" not in hf else mod.weight
            sd[f"h.{i}.{hf}.bias"] = mod.bias
    gpt.load_state_dict(sd, strict=False)
    x = torch.randn(3, 6, 16)
    with torch.no_grad():
        ref = p.decoder(gpt(inputs_embeds=p.encoder(x)).last_hidden_state)
        torch.testing.assert_close(p(x), ref, atol=1e-5, rtol=1e-5)


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    m = AVT(5, 64, width=256, layers=8, heads=4, max_positions=16)
    std = m.predictor.blocks[0].mlp.fc2.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.001
    assert abs(m.predictor.blocks[0].mlp.fc1.weight.std().item() - 0.02) < 0.002


def test_vit_b16_size_and_timm_key_layout():
    vit = vit_b16()
    assert sum(p.numel() for p in vit.parameters()) == 85_798_656
    sd = vit.state_dict()
    shapes = {"cls_token": (1, 1, 768), "pos_embed": (1, 197, 768), "patch_embed.proj.weight": (768, 3, 16, 16),
              "blocks.0.attn.qkv.weight": (2304, 768), "blocks.11.attn.proj.bias": (768,),
              "blocks.5.mlp.fc1.weight": (3072, 768), "blocks.5.mlp.fc2.weight": (768, 3072),
              "blocks.3.norm1.weight": (768,), "norm.bias": (768,)}
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes
    assert len(sd) == 4 + 12 * 12 + 2


def test_load_vit_weights_drops_head_and_resizes_positions(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = ViT(32, 8, 16, 1, 2)
    state = {f"module.{k}": v.clone() for k, v in src.state_dict().items()}
    state["module.head.weight"], state["module.head.bias"] = torch.randn(10, 16), torch.randn(10)
    save_file(state, str(tmp_path / "vit.safetensors"))
    dst = ViT(32, 8, 16, 1, 2)
    load_vit_weights(dst, str(tmp_path / "vit.safetensors"))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dst(x), src(x))
    big = ViT(48, 8, 16, 1, 2)
    load_vit_weights(big, str(tmp_path / "vit.safetensors"))
    assert big.pos_embed.shape == (1, 37, 16)
    torch.testing.assert_close(big.pos_embed[:, 0], src.pos_embed[:, 0])
    with pytest.raises(CheckpointError, match="do not fit"):
        load_vit_weights(ViT(32, 8, 24, 1, 2), str(tmp_path / "vit.safetensors"))


def test_losses_match_their_formula():
    m = tiny_features_avt(num_classes=4, dropout=0.0, gpt_dropout=0.0)
    x = torch.randn(3, 5, 16)
    out = m(x)
    label = torch.tensor([0, 3, 1])
    past = torch.tensor([[0, 1, -1, 2, 3], [-1, -1, -1, -1, 1], [2, 2, 2, 2, 2]])
    loss = avt_losses(out, {"label": label, "past_labels": past}, AVTLossWeights(1.0, 2.0, 0.5))
    valid = past >= 0
    ce_past = F.cross_entropy(out.past_logits[valid], past[valid])
    mse = ((out.predicted[:, :4] - x[:, 1:]) ** 2).mean()
    ref = F.cross_entropy(out.logits, label) + 2.0 * mse + 0.5 * ce_past
    torch.testing.assert_close(loss.total, ref)
    assert set(loss.terms) == {"cls", "feat", "past_cls"} and all(torch.isfinite(v) for v in loss.terms.values())
    none = avt_losses(out, {"label": label, "past_labels": torch.full((3, 5), -1)})
    assert none.terms["past_cls"] == 0 and torch.isfinite(none.total)
    loss.total.backward()
    assert all(p.grad is not None for p in m.parameters())
    with pytest.raises(ConfigError, match="past_labels"):
        avt_losses(out, {"label": label})
    assert "past_cls" not in avt_losses(out, {"label": label}, AVTLossWeights(past_cls=0.0)).terms


def test_tiny_model_overfits_a_tiny_batch():
    m = tiny_features_avt(num_classes=5, dropout=0.0, gpt_dropout=0.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 4, 16, generator=g)
    batch = {"label": torch.arange(10) % 5, "past_labels": torch.randint(5, (10, 4), generator=g)}
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(150):
        loss = avt_losses(m(x), batch)
        opt.zero_grad()
        loss.total.backward()
        opt.step()
    out = m.eval()(x)
    assert (out.logits.argmax(1) == batch["label"]).all()
    assert loss.terms["cls"] < 0.05 and loss.terms["feat"] < 0.5


def test_builder_presets_and_errors():
    with pytest.raises(ConfigError, match="preset"):
        build_avt(5, preset="nope")
    with pytest.raises(ConfigError, match="768"):
        build_avt(5, backbone="vit_b16", feat_dim=512)
    with pytest.raises(ConfigError, match="backbone"):
        build_avt(5, backbone="resnet")
    with pytest.raises(ConfigError, match="divisible"):
        build_avt(5, backbone="none", feat_dim=16, width=30, heads=4)
    m = build_avt(5, backbone="vit_tiny", feat_dim=16, width=32, heads=2, image_size=32, max_positions=8)
    assert m(torch.randn(1, 3, 3, 32, 32)).logits.shape == (1, 5)
    with pytest.raises(ConfigError, match="max_positions"):
        m(torch.randn(1, 3, 9, 32, 32))
    f = build_avt(5, backbone="none", feat_dim=24, width=32, heads=2)
    with pytest.raises(ConfigError, match="24"):
        f(torch.randn(2, 4, 16))


def test_published_sizes_on_the_meta_device():
    with torch.device("meta"):
        egtea = build_avt(106, preset="egtea_avt_b")
        feats = build_avt(2513, preset="ek55_features")
    # ViT-B/16 85,798,656 + encoder 768·2048 + positions 1024·2048 + 2 GPT-2 blocks of 12·w² + 13·w
    # (w = 2048) + ln_f 2·2048 + decoder 2048·768 + classifier 768·106 + 106
    w = 2048
    expected = 85_798_656 + 768 * w + 1024 * w + 2 * (12 * w * w + 13 * w) + 2 * w + w * 768 + 768 * 106 + 106
    assert sum(p.numel() for p in egtea.parameters()) == expected == 191_843_690
    assert egtea.classifier[0].p == 0.2 and feats.classifier[0].p == 0.8 and feats.backbone is None
    assert len(feats.predictor.blocks) == 12 and feats.predictor.blocks[0].attn.heads == 8 and feats.feat_dim == 2048
