from fractions import Fraction
from math import floor

import pytest
import torch

from xmodal.errors import ConfigError
from xmodal.models.heads import count_params
from xmodal.models.video import mid_channels, r2plus1d_18, r2plus1d_vcop, tiny_video
from xmodal.registry import MODELS

TINY = (8, 16, 32, 32)


def _mid(cin, cout, kt=3, k=3):
    return floor(Fraction(kt * k * k * cin * cout, k * k * cin + kt * cout))


def test_mid_channels_formula():
    # hand-computed: stem 3->64 (3,7,7): 28224/339 = 83.26; 64->64: 110592/768 = 144;
    # 64->128: 221184/960 = 230.4; 128->128: 442368/1536 = 288; 1x1x1 64->128: 8192/192 = 42.67
    assert mid_channels(3, 64, 3, 7) == 83
    assert mid_channels(64, 64) == 144
    assert mid_channels(64, 128) == 230
    assert mid_channels(128, 128) == 288
    assert mid_channels(64, 128, 1, 1) == 42
    for cin in (1, 3, 8, 45, 64, 256):
        for cout in (1, 16, 64, 512):
            assert mid_channels(cin, cout) == _mid(cin, cout)


# --------------------------------------------------------------------------- CCL student (VCOP)
def _vcop_count(num_classes, layers, widths=(64, 128, 256, 512)):
    """Analytic parameter count of ccl §3.1, independent of the module code."""

    def st(cin, cout, kt, k):  # spatial conv + BN(M) + temporal conv, bias-free
        m = _mid(cin, cout, kt, k)
        return k * k * cin * m + 2 * m + m * kt * cout

    def block(cin, cout, down):
        n = st(cin, cout, 3, 3) + 2 * cout + st(cout, cout, 3, 3) + 2 * cout
        return n + (st(cin, cout, 1, 1) + 2 * cout if down else 0)

    total = st(3, widths[0], 3, 7) + 2 * widths[0]
    cin = widths[0]
    for i, (n, w) in enumerate(zip(layers, widths)):
        total += block(cin, w, i > 0) + (n - 1) * block(w, w, False)
        cin = w
    return total + cin * num_classes + num_classes


def test_vcop_published_sizes():
    with torch.device("meta"):
        m18 = r2plus1d_vcop(51)
        m34 = r2plus1d_vcop(51, depth=34)
    assert count_params(m18) == _vcop_count(51, (1, 1, 1, 1))
    assert count_params(m34) == _vcop_count(51, (3, 4, 6, 3))
    assert round(count_params(m18) / 1e6, 2) == 14.39  # ccl §3.1
    assert round(count_params(m34) / 1e6, 1) == 63.5


def test_vcop_reference_names_and_shapes():
    with torch.device("meta"):
        sd = r2plus1d_vcop(51, depth=34).state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["conv1.spatial_conv.weight"] == (83, 3, 1, 7, 7)
    assert shapes["conv1.bn.running_var"] == (83,)
    assert shapes["conv1.temporal_conv.weight"] == (64, 83, 3, 1, 1)
    assert shapes["bn1.weight"] == (64,)
    assert shapes["conv2.block1.conv1.spatial_conv.weight"] == (144, 64, 1, 3, 3)
    assert shapes["conv3.block1.conv1.spatial_conv.weight"] == (230, 64, 1, 3, 3)
    assert shapes["conv3.block1.conv2.spatial_conv.weight"] == (288, 128, 1, 3, 3)
    assert shapes["conv3.block1.downsampleconv.spatial_conv.weight"] == (42, 64, 1, 1, 1)
    assert shapes["conv3.block1.downsampleconv.temporal_conv.weight"] == (128, 42, 1, 1, 1)
    assert shapes["conv3.block1.downsamplebn.num_batches_tracked"] == ()
    assert shapes["conv4.blocks.4.bn2.weight"] == (256,)
    assert "conv4.blocks.5.bn2.weight" not in shapes
    assert shapes["linear.weight"] == (51, 512)
    assert not any(k.endswith(".bias") and "bn" not in k and k != "linear.bias" for k in shapes)  # bias-free convs
    with torch.device("meta"):
        assert "conv2.blocks.0.bn1.weight" not in r2plus1d_vcop(51).state_dict()  # one block per stage


def test_vcop_shapes_at_published_input_size():
    with torch.device("meta"):
        out = r2plus1d_vcop(51)(torch.empty(2, 3, 16, 112, 112), return_map=True)
    assert out.fmap.shape == (2, 512, 2, 7, 7)
    assert out.feature.shape == (2, 512) and out.logits.shape == (2, 51)


def test_vcop_tiny_forward_feature_is_pooled_map():
    torch.manual_seed(0)
    model = MODELS.build_named("r2plus1d_vcop", num_classes=10, widths=list(TINY)).eval()
    x = torch.randn(2, 3, 8, 32, 32)
    logits, feature, fmap = model(x, return_map=True)
    assert fmap.shape == (2, 32, 1, 2, 2)
    torch.testing.assert_close(feature, fmap.mean(dim=(2, 3, 4)))
    torch.testing.assert_close(logits, model.linear(feature))
    assert model(x).fmap is None
    headless = r2plus1d_vcop(0, widths=TINY)
    assert headless(x).logits is None


def test_vcop_rejects_bad_config():
    with pytest.raises(ConfigError, match="depth"):
        r2plus1d_vcop(depth=50)
    with pytest.raises(ConfigError, match="widths"):
        MODELS.build_named("r2plus1d_vcop", widths=[8, 16, 32])


# -------------------------------------------------------------------- GDT trunk (VideoResNet)
def _bn(prefix, c):
    return [(f"{prefix}.{n}", (c,)) for n in ("weight", "bias", "running_mean", "running_var")] + [
        (f"{prefix}.num_batches_tracked", ())
    ]


def _torchvision_r2plus1d_18_table():
    """torchvision VideoResNet r2plus1d_18 state-dict keys/shapes (no fc), written from gdt §3.1/§10."""
    rows = [("stem.0.weight", (45, 3, 1, 7, 7))] + _bn("stem.1", 45)
    rows += [("stem.3.weight", (64, 45, 3, 1, 1))] + _bn("stem.4", 64)
    cin = 64
    for layer, cout in enumerate((64, 128, 256, 512), start=1):
        for b in (0, 1):
            bin_ = cin if b == 0 else cout
            mid = _mid(bin_, cout)  # torchvision: both pairs of a block use mid(block in, block out)
            p = f"layer{layer}.{b}"
            rows += [(f"{p}.conv1.0.0.weight", (mid, bin_, 1, 3, 3))] + _bn(f"{p}.conv1.0.1", mid)
            rows += [(f"{p}.conv1.0.3.weight", (cout, mid, 3, 1, 1))] + _bn(f"{p}.conv1.1", cout)
            rows += [(f"{p}.conv2.0.0.weight", (mid, cout, 1, 3, 3))] + _bn(f"{p}.conv2.0.1", mid)
            rows += [(f"{p}.conv2.0.3.weight", (cout, mid, 3, 1, 1))] + _bn(f"{p}.conv2.1", cout)
            if b == 0 and layer > 1:
                rows += [(f"{p}.downsample.0.weight", (cout, bin_, 1, 1, 1))] + _bn(f"{p}.downsample.1", cout)
        cin = cout
    return rows


def test_r2plus1d_18_key_table_and_size():
    with torch.device("meta"):
        model = r2plus1d_18()
        with_fc = r2plus1d_18(num_classes=400)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == _torchvision_r2plus1d_18_table()
    assert count_params(model) == 31_300_125  # gdt §3.1: 31.30 M
    assert count_params(with_fc) == 31_505_325  # torchvision's published r2plus1d_18 (400 classes)
    assert tuple(with_fc.state_dict()["fc.weight"].shape) == (400, 512)


def test_r2plus1d_18_map_shapes_at_published_input_size():
    with torch.device("meta"):
        model = r2plus1d_18()
        out30 = model(torch.empty(2, 3, 30, 112, 112), return_map=True)
        out60 = model(torch.empty(1, 3, 60, 112, 112), return_map=True)
    assert out30.fmap.shape == (2, 512, 4, 7, 7) and out30.feature.shape == (2, 512) and out30.logits is None
    assert out60.fmap.shape == (1, 512, 8, 7, 7)


def test_r2plus1d_18_kaiming_fan_out_init():
    torch.manual_seed(0)
    model = r2plus1d_18(widths=(8, 16, 32, 64), stem_mid=6)
    w = model.layer4[0].conv2[0][0].weight  # (mid, 64, 1, 3, 3), fan_out = mid * 9
    expect = (2.0 / (w.shape[0] * 9)) ** 0.5
    assert w.numel() > 50_000
    assert abs(w.std().item() / expect - 1) < 0.03
    bn = model.layer4[0].conv2[1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_r2plus1d_18_tiny_forward_and_channels_last():
    torch.manual_seed(0)
    model = r2plus1d_18(num_classes=5, widths=TINY, stem_mid=6).eval()
    x = torch.randn(2, 3, 8, 32, 32)
    out = model(x, return_map=True)
    assert out.fmap.shape == (2, 32, 1, 2, 2) and out.logits.shape == (2, 5)
    torch.testing.assert_close(out.feature, out.fmap.mean(dim=(2, 3, 4)))
    cl = model.to(memory_format=torch.channels_last_3d)(x.to(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(cl.logits, out.logits, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------ tiny
def test_tiny_video_shapes_and_registry():
    torch.manual_seed(0)
    model = MODELS.build_named("tiny_video", num_classes=10, widths=[8, 16, 32])
    out = model.eval()(torch.randn(3, 3, 8, 32, 32), return_map=True)
    assert out.logits.shape == (3, 10) and out.feature.shape == (3, 32)
    assert out.fmap.shape == (3, 32, 8, 4, 4)  # 32 px -> pool 2 -> 16 -> two max-pools -> 4


def test_tiny_video_temporal_conv_sees_frame_order():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 32, 32)
    rev = x.flip(2)
    per_frame = tiny_video(4, (8, 16), temporal_kernel=0).eval()
    torch.testing.assert_close(per_frame(x).feature, per_frame(rev).feature, atol=1e-5, rtol=1e-5)
    temporal = tiny_video(4, (8, 16), temporal_kernel=3).eval()
    assert not torch.allclose(temporal(x).feature, temporal(rev).feature, atol=1e-4)


def test_tiny_video_rejects_even_temporal_kernel():
    with pytest.raises(ConfigError, match="temporal_kernel"):
        tiny_video(temporal_kernel=2)
