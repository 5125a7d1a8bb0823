import pytest
import torch

from xmodal.convert.cavmae import expected_shapes, imagenet_mae_to_cavmae, official_to_ours, state_diff
from xmodal.errors import CheckpointError
from xmodal.models.cavmae import CAVMAE, CAVMAEFT, cavmae_config, load_cavmae_checkpoint
from xmodal.models.vit import sincos_2d

TINY = cavmae_config("tiny")  # d 64, 2+1 blocks, decoder 32 x 1, patch 8
BLOCK = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


def synthetic_mae(d=64, depth=3, dd=32, ddepth=1, p=8, tokens=16) -> dict:
    """A timm-layout MAE ViT state dict (facebookresearch/mae names) with random values."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)

    def block(prefix, w):
        out = {}
        for n, (o, i) in {"norm1": (w, None), "attn.qkv": (3 * w, w), "attn.proj": (w, w), "norm2": (w, None),
                          "mlp.fc1": (4 * w, w), "mlp.fc2": (w, 4 * w)}.items():
            out[f"{prefix}.{n}.weight"] = r(o) if i is None else r(o, i)
            out[f"{prefix}.{n}.bias"] = r(o)
        return out

    s = {"cls_token": r(1, 1, d), "pos_embed": r(1, tokens + 1, d), "patch_embed.proj.weight": r(d, 3, p, p),
         "patch_embed.proj.bias": r(d), "norm.weight": r(d), "norm.bias": r(d), "mask_token": r(1, 1, dd),
         "decoder_embed.weight": r(dd, d), "decoder_embed.bias": r(dd), "decoder_pos_embed": r(1, tokens + 1, dd),
         "decoder_norm.weight": r(dd), "decoder_norm.bias": r(dd), "decoder_pred.weight": r(p * p * 3, dd),
         "decoder_pred.bias": r(p * p * 3)}
    for i in range(depth):
        s.update(block(f"blocks.{i}", d))
    for i in range(ddepth):
        s.update(block(f"decoder_blocks.{i}", dd))
    return s


def test_imagenet_mae_mapping():
    mae = synthetic_mae()
    out = imagenet_mae_to_cavmae({"model": mae}, TINY)
    assert state_diff(out, expected_shapes(TINY)) == ""
    for i in range(2):
        for n in BLOCK:
            for stream in ("blocks_a", "blocks_v"):
                assert torch.equal(out[f"{stream}.{i}.{n}.weight"], mae[f"blocks.{i}.{n}.weight"])
    for n in BLOCK:
        assert torch.equal(out[f"blocks_u.0.{n}.bias"], mae[f"blocks.2.{n}.bias"])
        assert torch.equal(out[f"decoder_blocks.0.{n}.weight"], mae[f"decoder_blocks.0.{n}.weight"])
    for n in ("norm1_a", "norm1_v", "norm2_a", "norm2_v"):
        assert torch.equal(out[f"blocks_u.0.{n}.weight"], mae[f"blocks.2.{n[:5]}.weight"])
        assert torch.equal(out[f"blocks_a.0.{n}.weight"], torch.ones(64))  # unused there: fresh init
    for n in ("norm", "norm_a", "norm_v"):
        assert torch.equal(out[f"{n}.bias"], mae["norm.bias"])
    assert torch.equal(out["patch_embed_v.proj.weight"], mae["patch_embed.proj.weight"])
    assert torch.equal(out["decoder_pred_v.weight"], mae["decoder_pred.weight"])
    assert torch.equal(out["decoder_pred_a.weight"], mae["decoder_pred.weight"][:64])
    assert torch.equal(out["decoder_pred_a.bias"], mae["decoder_pred.bias"][:64])
    assert torch.equal(out["mask_token"], mae["mask_token"])
    assert torch.equal(out["pos_embed_a"][0], sincos_2d(64, 4, 8))
    assert torch.equal(out["decoder_pos_embed_v"][0], sincos_2d(32, 4, 4))
    # the audio patch embedding sees a 1-channel input as the image one sees a grey (R=G=B) input
    model = CAVMAE(TINY)
    load_cavmae_checkpoint(model, out)
    grey = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(model.patch_embed_a.proj(grey), model.patch_embed_v.proj(grey.expand(-1, 3, -1, -1)),
                               rtol=1e-4, atol=1e-4)
    # deterministic (seeded) for the parts MAE does not provide
    assert torch.equal(imagenet_mae_to_cavmae(mae, TINY)["modality_a"], out["modality_a"])


def test_imagenet_mae_errors():
    mae = synthetic_mae()
    with pytest.raises(CheckpointError, match="missing: decoder_pred.weight"):
        imagenet_mae_to_cavmae({k: v for k, v in mae.items() if k != "decoder_pred.weight"}, TINY)
    with pytest.raises(CheckpointError, match="4 encoder blocks, expected 2\\+1"):
        imagenet_mae_to_cavmae({**mae, **{k.replace("blocks.2", "blocks.3"): v for k, v in mae.items() if k.startswith("blocks.2.")}}, TINY)
    with pytest.raises(CheckpointError, match="patch_embed_v.proj.weight: shape"):
        imagenet_mae_to_cavmae({**mae, "patch_embed.proj.weight": torch.zeros(64, 3, 4, 4)}, TINY)


def test_official_to_ours_base_layouts():
    with torch.device("meta"):
        pre, ft = CAVMAE(), CAVMAEFT(label_dim=309)
    for model in (pre, ft):
        state = {f"module.{k}": v for k, v in model.state_dict().items()}
        out = official_to_ours(state)
        assert list(out) == list(model.state_dict())
    broken = {f"module.{k}": v for k, v in pre.state_dict().items() if k != "decoder_norm.bias"}
    with pytest.raises(CheckpointError, match="pretrain checkpoint does not match our layout: 1 missing: decoder_norm.bias"):
        official_to_ours(broken)
    with pytest.raises(CheckpointError, match="not a CAV-MAE checkpoint"):
        official_to_ours({"module.fc.weight": torch.zeros(2)})
