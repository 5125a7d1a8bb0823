import math

import pytest
import torch
import torch.nn.functional as F

from xmodal.models.vit import Block, PatchEmbed, sincos_2d


def explicit_block(blk: Block, x: torch.Tensor, n1, n2) -> torch.Tensor:
    """Slow re-statement: per-head q kᵀ softmax attention, exact GELU MLP."""
    b, n, c = x.shape
    h = blk.attn.num_heads
    dh = c // h
    y = n1(x)
    qkv = y @ blk.attn.qkv.weight.t() + blk.attn.qkv.bias
    q, k, v = qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :]
    heads = []
    for i in range(h):
        sl = slice(i * dh, (i + 1) * dh)
        att = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(dh), dim=-1)
        heads.append(att @ v[..., sl])
    x = x + torch.cat(heads, -1) @ blk.attn.proj.weight.t() + blk.attn.proj.bias
    z = n2(x) @ blk.mlp.fc1.weight.t() + blk.mlp.fc1.bias
    z = 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))
    return x + z @ blk.mlp.fc2.weight.t() + blk.mlp.fc2.bias


def perturb_norms(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.add_(0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.add_(0.3 * torch.randn(m.bias.shape, generator=g))


def test_block_matches_explicit_attention_for_each_norm_pair():
    torch.manual_seed(0)
    blk = Block(32, 4, modality_norms=("a", "v"))
    perturb_norms(blk)
    x = torch.randn(2, 7, 32)
    for mod, (n1, n2) in {None: (blk.norm1, blk.norm2), "a": (blk.norm1_a, blk.norm2_a), "v": (blk.norm1_v, blk.norm2_v)}.items():
        torch.testing.assert_close(blk(x, mod), explicit_block(blk, x, n1, n2), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(blk(x, "a"), blk(x, "v"))
    with pytest.raises(AssertionError):
        Block(32, 4)(x, "a")


def test_block_key_names():
    plain = set(Block(16, 2).state_dict())
    cav = set(Block(16, 2, modality_norms=("a", "v")).state_dict())
    core = {f"{p}.{wb}" for p in ("norm1", "norm2", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2") for wb in ("weight", "bias")}
    assert plain == core
    assert cav == core | {f"norm{i}_{m}.{wb}" for i in (1, 2) for m in "av" for wb in ("weight", "bias")}


def test_patch_embed_equals_conv2d():
    torch.manual_seed(0)
    pe = PatchEmbed(3, 24, 4, (3, 5))
    x = torch.randn(2, 3, 12, 20)
    ref = F.conv2d(x, pe.proj.weight, pe.proj.bias, stride=4).flatten(2).transpose(1, 2)
    torch.testing.assert_close(pe(x), ref, rtol=1e-5, atol=1e-5)
    assert pe(x).shape == (2, 15, 24)


@pytest.mark.parametrize("dim,rows,cols", [(768, 8, 64), (512, 14, 14), (16, 3, 5)])
def test_sincos_matches_restatement(dim, rows, cols):
    table = sincos_2d(dim, rows, cols)
    assert table.shape == (rows * cols, dim) and table.dtype == torch.float32
    q = dim // 4
    # independent re-statement in plain Python floats (double precision), on a few tokens
    for tok in {0, 1, cols - 1, cols, rows * cols - 1, (rows // 2) * cols + cols // 3}:
        r, c = divmod(tok, cols)
        expect = []
        for pos in (c, r):  # first half: column, second half: row
            w = [10000.0 ** (-k / q) for k in range(q)]
            expect += [math.sin(pos * wk) for wk in w] + [math.cos(pos * wk) for wk in w]
        assert (table[tok].double() - torch.tensor(expect, dtype=torch.float64)).abs().max() < 1e-6
