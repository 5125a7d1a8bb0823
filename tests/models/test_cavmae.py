import importlib.util
from pathlib import Path

import pytest
import torch

from xmodal.errors import CheckpointError, ConfigError, DataError
from xmodal.models.cavmae import CAVMAE, CAVMAEFT, FINETUNE_MODES, cavmae_config, load_cavmae_checkpoint
from xmodal.models.vit import sincos_2d
from xmodal.registry import MODELS

from .test_vit import perturb_norms

TINY = cavmae_config("tiny")  # audio grid 4 freq x 8 time (patch 8), image grid 4x4

# ---- spec §7 key/shape table, written out as data (d = 768 encoder, 512 decoder, K = 527)
BLOCK = [("norm1", "d"), ("norm1_a", "d"), ("norm1_v", "d"), ("norm2", "d"), ("norm2_a", "d"), ("norm2_v", "d")]
BLOCK_W = [("attn.qkv.weight", ("3d", "d")), ("attn.qkv.bias", ("3d",)), ("attn.proj.weight", ("d", "d")),
           ("attn.proj.bias", ("d",)), ("mlp.fc1.weight", ("4d", "d")), ("mlp.fc1.bias", ("4d",)),
           ("mlp.fc2.weight", ("d", "4d")), ("mlp.fc2.bias", ("d",))]
ENCODER_TABLE = {
    "modality_a": (1, 1, 768), "modality_v": (1, 1, 768),
    "pos_embed_a": (1, 512, 768), "pos_embed_v": (1, 196, 768),
    "patch_embed_a.proj.weight": (768, 1, 16, 16), "patch_embed_a.proj.bias": (768,),
    "patch_embed_v.proj.weight": (768, 3, 16, 16), "patch_embed_v.proj.bias": (768,),
    "norm_a.weight": (768,), "norm_a.bias": (768,), "norm_v.weight": (768,), "norm_v.bias": (768,),
    "norm.weight": (768,), "norm.bias": (768,),
}
PRETRAIN_TABLE = {
    "mask_token": (1, 1, 512), "decoder_modality_a": (1, 1, 512), "decoder_modality_v": (1, 1, 512),
    "decoder_pos_embed_a": (1, 512, 512), "decoder_pos_embed_v": (1, 196, 512),
    "decoder_embed.weight": (512, 768), "decoder_embed.bias": (512,),
    "decoder_norm.weight": (512,), "decoder_norm.bias": (512,),
    "decoder_pred_a.weight": (256, 512), "decoder_pred_a.bias": (256,),
    "decoder_pred_v.weight": (768, 512), "decoder_pred_v.bias": (768,),
}
FINETUNE_TABLE = {"mlp_head.0.weight": (768,), "mlp_head.0.bias": (768,), "mlp_head.1.weight": (527, 768), "mlp_head.1.bias": (527,)}


def block_rows(prefix: str, d: int) -> dict:
    size = {"d": d, "3d": 3 * d, "4d": 4 * d}
    rows = {f"{prefix}.{n}.{wb}": (d,) for n, _ in BLOCK for wb in ("weight", "bias")}
    rows.update({f"{prefix}.{n}": tuple(size[s] for s in shape) for n, shape in BLOCK_W})
    return rows


def spec_table(finetune: bool) -> dict:
    table = dict(ENCODER_TABLE)
    for stream in ("blocks_a", "blocks_v"):
        for i in range(11):
            table.update(block_rows(f"{stream}.{i}", 768))
    table.update(block_rows("blocks_u.0", 768))
    if finetune:
        return {**table, **FINETUNE_TABLE}
    for i in range(8):
        table.update(block_rows(f"decoder_blocks.{i}", 512))
    return {**table, **PRETRAIN_TABLE}


@pytest.fixture(scope="module")
def base_meta():
    with torch.device("meta"):
        return CAVMAE(), CAVMAEFT(label_dim=527)


def test_state_dict_matches_spec_table(base_meta):
    # parameter counts as quoted in the spec (191.04 M, 164.9 M), to their precision
    for model, finetune, n_keys, n_params, tol in ((base_meta[0], False, 647, 191.04e6, 0.005e6), (base_meta[1], True, 478, 164.9e6, 0.05e6)):
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        table = spec_table(finetune)
        diff = {k: (ours.get(k), table.get(k)) for k in ours.keys() | table.keys() if ours.get(k) != table.get(k)}
        assert diff == {}
        assert len(ours) == n_keys
        assert sum(v.numel() for v in model.state_dict().values()) == pytest.approx(n_params, abs=tol)


def test_positional_tables_fixed_in_pretrain_trainable_in_finetune(base_meta):
    pre, ft = base_meta
    assert not pre.pos_embed_a.requires_grad and not pre.decoder_pos_embed_v.requires_grad
    assert ft.pos_embed_a.requires_grad and ft.pos_embed_v.requires_grad
    m = CAVMAE(TINY)
    assert torch.equal(m.pos_embed_a[0], sincos_2d(64, 4, 8)) and torch.equal(m.decoder_pos_embed_v[0], sincos_2d(32, 4, 4))


def test_pretrain_to_finetune_load_reports_ignored_keys(base_meta):
    pre, ft = base_meta
    state = {f"module.{k}": v for k, v in pre.state_dict().items()}
    report = load_cavmae_checkpoint(ft, state, strict=False)
    assert sorted(report.missing) == sorted(FINETUNE_TABLE)
    assert len(report.ignored) == 173 == len(PRETRAIN_TABLE) + 8 * 20
    assert all(k.startswith("decoder") or k == "mask_token" for k in report.ignored)
    with pytest.raises(CheckpointError, match="missing"):
        load_cavmae_checkpoint(ft, state, strict=True)


def test_module_prefixed_file_loads_strictly(tmp_path):
    torch.manual_seed(0)
    src, dst = CAVMAE(TINY), CAVMAE(TINY)
    path = tmp_path / "audio_model.pth"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, path)
    report = load_cavmae_checkpoint(dst, path)
    assert report.missing == [] and report.ignored == []
    a, v = torch.randn(2, 64, 32), torch.randn(2, 3, 32, 32)
    noise = (torch.rand(2, 32), torch.rand(2, 16))
    with torch.no_grad():
        assert torch.equal(src(a, v, noise=noise).loss, dst(a, v, noise=noise).loss)
    bad = {k: v for k, v in src.state_dict().items() if k != "norm.bias"}
    with pytest.raises(CheckpointError, match="1 missing: norm.bias"):
        load_cavmae_checkpoint(dst, bad)
    with pytest.raises(CheckpointError, match="no key fits"):
        load_cavmae_checkpoint(dst, {"module.fc.weight": torch.zeros(1)}, strict=False)


def _reference():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "cavmae.py"
    spec = importlib.util.spec_from_file_location("cavmae_benchmark", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_matches_reference_restatement_loss_and_grads():
    ref = _reference()
    torch.manual_seed(0)
    m = CAVMAE(TINY)
    perturb_norms(m)
    a, v = torch.randn(3, 64, 32), torch.randn(3, 3, 32, 32)
    noise = (torch.rand(3, 32), torch.rand(3, 16))
    ours = m(a, v, noise=noise).loss
    params = [p for p in m.parameters() if p.requires_grad]
    g_ours = torch.autograd.grad(ours, params, allow_unused=True)
    theirs = ref.reference_loss(m, a, v, noise)
    g_ref = torch.autograd.grad(theirs, params, allow_unused=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    # only the _a/_v norms of the modality-specific and decoder blocks are unused (4 tensors x 2 norms each)
    assert sum(g is None for g in g_ours) == 8 * (2 * TINY.modality_specific_depth + TINY.decoder_depth)
    for x, y in zip(g_ours, g_ref):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_masking_follows_injected_noise_and_modes_keep_counts():
    torch.manual_seed(0)
    m = CAVMAE(TINY)
    a, v = torch.randn(2, 64, 32), torch.randn(2, 3, 32, 32)
    na, nv = torch.rand(2, 32), torch.rand(2, 16)
    out = m(a, v, noise=(na, nv))
    assert torch.equal(out.mask_a.bool(), na.argsort(1).argsort(1) >= 8)
    assert torch.equal(out.mask_v.bool(), nv.argsort(1).argsort(1) >= 4)
    for mode in ("unstructured", "time", "freq", "tf"):
        o = m(a, v, mask_mode=mode)
        assert o.mask_a.sum(1).tolist() == [24, 24] and o.mask_v.sum(1).tolist() == [12, 12]
    time_mask = m(a, v, mask_mode="time").mask_a.view(2, 4, 8)
    assert (time_mask.all(1).sum(1) == 6).all()  # int(8 * 0.75) whole time columns


def test_audio_patch_order_and_round_trip():
    m = CAVMAE(TINY)
    f = torch.arange(32.0)[None, None, :]
    t = torch.arange(64.0)[None, :, None]
    a = (1000 * f + t).expand(2, 64, 32)  # a[b, time, freq]
    p = m.patchify_audio(a)
    assert p.shape == (2, 32, 64)
    # token 1 = freq row 0, time column 1; within the patch (freq, time), time fastest
    assert p[0, 1].tolist() == [1000 * fi + 8 + ti for fi in range(8) for ti in range(8)]
    assert p[0, 8, 0].item() == 1000 * 8  # token 8 = freq row 1, time column 0
    assert torch.equal(m.unpatchify_audio(p), a)
    img = torch.randn(2, 3, 32, 32)
    assert torch.equal(m.unpatchify_image(m.patchify_image(img)), img)


def test_zero_weight_branches_are_skipped():
    torch.manual_seed(0)
    m = CAVMAE(TINY)
    a, v = torch.randn(2, 64, 32), torch.randn(2, 3, 32, 32)
    noise = (torch.rand(2, 32), torch.rand(2, 16))
    full = m(a, v, noise=noise)
    no_mae = m(a, v, noise=noise, mae_loss_weight=0)
    no_c = m(a, v, noise=noise, contrast_loss_weight=0)
    assert no_mae.loss_mae == 0 and no_mae.loss_mae_a == 0 and torch.allclose(no_mae.loss, full.loss_c)
    assert no_c.loss_c == 0 and no_c.c_acc == 0 and torch.allclose(no_c.loss, full.loss_mae)
    assert torch.allclose(full.loss, full.loss_mae + full.loss_c)
    assert torch.allclose(full.loss_mae, full.loss_mae_a + full.loss_mae_v)
    inp = m.forward_inpaint(a, v, noise=noise)
    assert inp.pred_a.shape == (2, 32, 64) and inp.pred_v.shape == (2, 16, 192)
    torch.testing.assert_close(inp.loss_a, full.loss_mae_a)


def test_features_match_unmasked_pass_and_finetune_audioonly():
    torch.manual_seed(0)
    m = CAVMAE(TINY)
    perturb_norms(m)
    a, v = torch.randn(2, 64, 32), torch.randn(2, 3, 32, 32)
    feat = m.forward_feat(a, v)
    assert feat.audio.shape == (2, 32, 64) and feat.image.shape == (2, 16, 64)
    # ratio 0 keeps every token (shuffled): pooled features are permutation invariant
    enc = m.forward_encoder(a, v, 0.0, 0.0)
    torch.testing.assert_close(enc.c_a.mean(1), feat.audio.mean(1), rtol=1e-4, atol=1e-5)
    ft = CAVMAEFT(TINY, label_dim=3)
    load_cavmae_checkpoint(ft, m.state_dict(), strict=False)
    torch.testing.assert_close(ft.forward_features(a, None, "audioonly"), feat.audio.mean(1))
    torch.testing.assert_close(ft.forward_features(None, v, "videoonly"), feat.image.mean(1))


def test_finetune_modes():
    torch.manual_seed(0)
    ft = CAVMAEFT(TINY, label_dim=5)
    a, v = torch.randn(2, 64, 32), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        init = {mode: ft(a, v, mode) for mode in FINETUNE_MODES}
        # identical default and modality norms at init: the "missing" modes equal the single ones
        torch.testing.assert_close(init["missingaudioonly"], init["audioonly"])
        torch.testing.assert_close(init["missingvideoonly"], init["videoonly"])
        perturb_norms(ft)
        out = {mode: ft(a, v, mode) for mode in FINETUNE_MODES}
    assert all(o.shape == (2, 5) for o in out.values())
    for i, m1 in enumerate(FINETUNE_MODES):
        for m2 in FINETUNE_MODES[i + 1 :]:
            assert not torch.allclose(out[m1], out[m2], atol=1e-4), (m1, m2)
    torch.testing.assert_close(ft(a, torch.zeros(2, 3, 32, 32), "audioonly"), ft(a, None, "audioonly"))
    with pytest.raises(ConfigError, match="did you mean 'audioonly'"):
        ft(a, v, "audio_only")
    with pytest.raises(DataError, match="needs image"):
        ft(a, None, "multimodal")


def test_pretraining_lowers_loss():
    torch.manual_seed(0)
    m = CAVMAE(TINY)
    a, v = torch.randn(4, 64, 32), torch.randn(4, 3, 32, 32)
    noise = (torch.rand(4, 32), torch.rand(4, 16))
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(8):
        out = m(a, v, noise=noise, contrast_loss_weight=0.1)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_builders_and_input_errors():
    m = MODELS.build_named("cavmae", size="tiny", norm_pix_loss=False)
    assert isinstance(m, CAVMAE) and not m.cfg.norm_pix_loss and m.cfg.embed_dim == 64
    ft = MODELS.build_named("cavmae_ft", size="tiny", label_dim=7)
    assert ft.mlp_head[1].out_features == 7
    with pytest.raises(ConfigError, match="size"):
        cavmae_config("huge")
    with pytest.raises(ConfigError, match="audio_length=1000"):
        cavmae_config("base", audio_length=1000)
    with pytest.raises(DataError, match=r"expected \[B, 64, 32\]"):
        m(torch.randn(1, 32, 64), torch.randn(1, 3, 32, 32))
