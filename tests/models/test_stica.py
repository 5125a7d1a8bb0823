import math

import pytest
import torch
import torch.nn.functional as F

from xmodal.errors import ConfigError
from xmodal.models.heads import count_params
from xmodal.models.stica import (
    CropConfig,
    PoolConfig,
    PooledTrunk,
    PostLNLayer,
    TemporalPooling,
    build_pooling,
    crop_offset,
    crop_sizes,
    map_steps,
    sample_crops,
    stica_pooling,
)
from xmodal.models.video import r2plus1d_18, tiny_video


def _reference_layer(layer: PostLNLayer, x: torch.Tensor) -> torch.Tensor:
    """Post-LN layer written out per head with explicit softmax (value/output identities)."""
    b, n, d = x.shape
    h = layer.heads
    dh = d // h
    q, k = layer.q(x), layer.k(x)
    v = layer.v(x) if layer.v is not None else x
    heads = []
    for i in range(h):
        sl = slice(i * dh, (i + 1) * dh)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(dh)
        heads.append(torch.softmax(scores, -1) @ v[..., sl])
    att = torch.cat(heads, -1)
    if layer.out is not None:
        att = layer.out(att)
    x = F.layer_norm(x + att, (d,), layer.norm1.weight, layer.norm1.bias, 1e-12)
    ffn = layer.ffn[2](0.5 * layer.ffn[0](x) * (1 + torch.erf(layer.ffn[0](x) / math.sqrt(2))))
    return F.layer_norm(x + ffn, (d,), layer.norm2.weight, layer.norm2.bias, 1e-12)


@pytest.mark.parametrize("qkv", [False, True])
def test_post_ln_layer_matches_written_out_attention(qkv):
    torch.manual_seed(0)
    layer = PostLNLayer(dim=16, heads=4, ffn=32, qkv_mha=qkv).double()
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        layer.norm1.weight.uniform_(0.5, 1.5)
        layer.norm2.bias.uniform_(-0.2, 0.2)
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _reference_layer(layer, x))
    assert (layer.v is None) == (not qkv) and (layer.out is None) == (not qkv)


def test_layer_init_and_published_size():
    layer = PostLNLayer()
    assert layer.q.bias.abs().max() == 0 and abs(layer.q.weight.std().item() - 0.02) < 1e-3
    with torch.device("meta"):
        pool = stica_pooling(layers=2)
    # 2 layers x (q, k: 2 (512² + 512); FFN 512·2048 + 2048 + 2048·512 + 512; two LNs 4·512)
    assert count_params(pool) == 2 * (2 * (512 * 512 + 512) + 2 * 512 * 2048 + 2048 + 512 + 4 * 512) == 5_254_144


def test_gap_pooling_and_transformer_token_zero():
    x = torch.randn(2, 8, 4, 3, 3)
    torch.testing.assert_close(TemporalPooling(8, layers=0)(x), x.mean(dim=(2, 3, 4)))
    torch.manual_seed(0)
    pool = TemporalPooling(8, layers=1, t_tok=4, heads=2, ffn=16).eval()
    tokens = x.mean(dim=(3, 4)).transpose(1, 2)  # adaptive pool to (4, 1, 1) of a T'=4 map
    torch.testing.assert_close(pool(x), pool.layers[0](tokens)[:, 0])


def test_token_count_must_match_the_full_map_but_crops_are_resampled():
    pool = TemporalPooling(8, layers=1, t_tok=4, heads=2, ffn=16).eval()
    with pytest.raises(ConfigError, match="t_tok"):
        pool(torch.randn(2, 8, 8, 3, 3))  # 60-frame map into a 30-frame pooling (§8.7)
    crop = torch.randn(2, 8, 2, 3, 3)  # a 2-step temporal crop -> 4 tokens with repeated bins
    tokens = F.adaptive_avg_pool3d(crop, (4, 1, 1)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens[:, 0], tokens[:, 1])
    torch.testing.assert_close(pool(crop, full=False), pool.layers[0](tokens)[:, 0])


def test_t_tok_derived_from_the_trunk():
    trunk = r2plus1d_18(widths=(4, 4, 4, 8), stem_mid=3)
    assert map_steps(trunk, 30) == 4 and map_steps(trunk, 60) == 8
    assert trunk.training  # mode restored
    pool = build_pooling(PoolConfig(layers=1, heads=2), trunk, 60)
    assert pool.t_tok == 8 and pool.layers[0].ffn[0].out_features == 32
    assert map_steps(tiny_video(num_classes=0, widths=(4, 8)), 8) == 8  # no temporal striding
    out = PooledTrunk(trunk, pool).eval()(torch.randn(2, 3, 60, 32, 32))
    assert out.shape == (2, 8)
    with pytest.raises(ConfigError, match="t_tok"):
        PooledTrunk(trunk, pool).eval()(torch.randn(2, 3, 30, 32, 32))


def test_crop_offsets_cover_every_position_inclusive():
    g = torch.Generator().manual_seed(0)
    for size, window in ((7, 6), (7, 4), (4, 3), (4, 2), (8, 6)):
        seen = {crop_offset(size, window, g) for _ in range(400)}
        assert seen == set(range(size - window + 1))
        parity = {crop_offset(size, window, g, offbyone=True) for _ in range(400)}
        assert parity == set(range(max(size - window, 1)))  # the reference: last offset never drawn
    assert {crop_offset(7, 7, g) for _ in range(20)} == {0}


def test_crop_sizes_and_boxes():
    cfg = CropConfig()
    assert crop_sizes(cfg, 4, 7, 7) == {"spatial_large": 6, "spatial_small": 4, "temporal_large": 3, "temporal_small": 2}
    assert crop_sizes(cfg, 8, 7, 7)["temporal_large"] == 6 and crop_sizes(cfg, 8, 7, 7)["temporal_small"] == 4
    crops = sample_crops(cfg, (4, 7, 7), torch.Generator().manual_seed(1))
    assert [len(c) for c in crops] == [2, 4, 2, 1]
    for box in crops.spatial_large + crops.spatial_small:
        assert (box.t0, box.t1) == (0, 4) and box.y1 - box.y0 == box.x1 - box.x0 in (6, 4)
    for box in crops.temporal_large + crops.temporal_small:
        assert (box.y0, box.y1, box.x0, box.x1) == (0, 7, 0, 7) and box.t1 - box.t0 in (3, 2)
    fmap = torch.randn(2, 5, 4, 7, 7)
    assert crops.spatial_small[0].take(fmap).shape == (2, 5, 4, 4, 4)
    with pytest.raises(ConfigError, match="spatial_large_size"):
        crop_sizes(CropConfig(spatial_large_size=8), 4, 7, 7)
