"""Video encoders: the two R(2+1)D families of the papers, and a tiny encoder for embedded data.

* ``r2plus1d_vcop`` — CCL's student (ccl §3.1), the VCOP-style R(2+1)D: every conv factorised as
  spatial (1,k,k) Cin→M, BN, ReLU, temporal (kt,1,1) M→Cout with
  M = floor(kt·k·k·Cin·Cout / (k·k·Cin + kt·Cout)); one block per stage ("1111", 14.39 M params at
  51 classes) or (3,4,6,3) for depth 34 (63.5 M). Parameter names follow the reference student
  (``conv1.{spatial_conv,bn,temporal_conv}``, ``bn1``, ``conv{2..5}.block1.*``,
  ``conv{2..5}.blocks.{i}.*``, ``downsampleconv``/``downsamplebn``, ``linear``).
* ``r2plus1d_18`` — the GDT/STiCA trunk in torchvision's VideoResNet layout (gdt §3.1, §10):
  ``stem.{0,1,3,4}``, ``layer{1..4}.{0,1}.conv{1,2}.0.{0,1,3}``, ``.conv{1,2}.1``,
  ``downsample.{0,1}``; 31.30 M params without ``fc``. As in torchvision, both (2+1)D pairs of a
  block use the mid width computed from the block's (Cin, Cout), so conv2 of a widening block is
  narrower than the formula applied to (Cout, Cout) would give — the released weights need this.
* ``tiny_video`` — for 32x32-pixel, 8-frame embedded clips (EMBEDDED-DATA.md): 2x2 average pool of
  the noisy frame, per-frame 2-D convs, a temporal conv over the pooled per-frame features (so the
  encoder can tell a clip from its time reversal), mean over time.

All take video [B, C, T, H, W] and return ``EncoderOut``; ``return_map=True`` adds the pre-pool
map [B, D, T', H', W'] (STiCA's feature crops). No op depends on the memory format, so inputs in
``torch.channels_last_3d`` work unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from xmodal.errors import ConfigError
from xmodal.models.heads import EncoderOut
from xmodal.registry import register_model

Triple = tuple[int, int, int]

R2PLUS1D_WIDTHS = (64, 128, 256, 512)
TINY_WIDTHS = (8, 16, 32, 32)
VCOP_DEPTHS = {18: (1, 1, 1, 1), 34: (3, 4, 6, 3)}


def mid_channels(cin: int, cout: int, kt: int = 3, k: int = 3) -> int:
    """Mid width of a (2+1)D factorisation with about the parameters of the full kt x k x k conv:
    M = floor(kt·k·k·Cin·Cout / (k·k·Cin + kt·Cout)) (Tran et al. 2018, §3.5)."""
    return (kt * k * k * cin * cout) // (k * k * cin + kt * cout)


def _triple(v: int | Sequence[int]) -> Triple:
    return (v, v, v) if isinstance(v, int) else (int(v[0]), int(v[1]), int(v[2]))


def _check_widths(widths: Sequence[int], what: str) -> None:
    if len(widths) != 4 or min(widths) < 1:
        raise ConfigError(f"{what}: widths needs 4 positive entries, got {tuple(widths)}")


def _kaiming_fan_out(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.Conv2d, nn.Conv1d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm3d, nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------ CCL student (VCOP R(2+1)D)
class SpatioTemporalConv(nn.Module):
    """(2+1)D conv as in the VCOP student: spatial_conv - bn - ReLU - temporal_conv (no BN after)."""

    def __init__(self, cin: int, cout: int, kernel: int | Sequence[int], stride: int | Sequence[int] = 1,
                 padding: int | Sequence[int] = 0):
        super().__init__()
        kt, kh, kw = _triple(kernel)
        st, sh, sw = _triple(stride)
        pt, ph, pw = _triple(padding)
        assert kh == kw, "square spatial kernels only"
        mid = mid_channels(cin, cout, kt, kh)
        self.spatial_conv = nn.Conv3d(cin, mid, (1, kh, kw), (1, sh, sw), (0, ph, pw), bias=False)
        self.bn = nn.BatchNorm3d(mid)
        self.temporal_conv = nn.Conv3d(mid, cout, (kt, 1, 1), (st, 1, 1), (pt, 0, 0), bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.temporal_conv(F.relu(self.bn(self.spatial_conv(x)), inplace=True))


class VCOPBlock(nn.Module):
    """(2+1)D 3x3x3 - BN - ReLU - (2+1)D 3x3x3 - BN, + shortcut, ReLU. ``downsample``: stride 2 in
    T, H, W and a (2+1)D 1x1x1 stride-2 projection + BN on the shortcut."""

    def __init__(self, cin: int, cout: int, downsample: bool = False):
        super().__init__()
        stride = 2 if downsample else 1
        self.downsample = downsample
        if downsample:
            self.downsampleconv = SpatioTemporalConv(cin, cout, 1, stride=2)
            self.downsamplebn = nn.BatchNorm3d(cout)
        self.conv1 = SpatioTemporalConv(cin, cout, 3, stride, 1)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = SpatioTemporalConv(cout, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm3d(cout)

    def forward(self, x: Tensor) -> Tensor:
        res = F.relu(self.bn1(self.conv1(x)), inplace=True)
        res = self.bn2(self.conv2(res))
        if self.downsample:
            x = self.downsamplebn(self.downsampleconv(x))
        return F.relu(x + res, inplace=True)


class VCOPStage(nn.Module):
    """``block1`` (possibly downsampling) followed by ``blocks`` (n - 1 identity-width blocks)."""

    def __init__(self, cin: int, cout: int, n: int, downsample: bool):
        super().__init__()
        self.block1 = VCOPBlock(cin, cout, downsample)
        self.blocks = nn.ModuleList(VCOPBlock(cout, cout) for _ in range(n - 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.block1(x)
        for block in self.blocks:
            x = block(x)
        return x


class R2Plus1DVCOP(nn.Module):
    """CCL's student. Input [B, 3, 16, 112, 112] -> map [B, 512, 2, 7, 7] -> GAP -> ``linear``.

    Stem: (2+1)D(3→64, (3,7,7), stride (1,2,2), pad (1,3,3)) + BN + ReLU, no max-pool. Stages 2-4
    stride 2 in T, H, W. PyTorch default init (the reference does not re-initialise).
    """

    def __init__(self, num_classes: int = 51, layers: Sequence[int] = (1, 1, 1, 1),
                 widths: Sequence[int] = R2PLUS1D_WIDTHS, in_channels: int = 3):
        super().__init__()
        _check_widths(widths, "r2plus1d_vcop")
        self.feature_dim = widths[-1]
        self.conv1 = SpatioTemporalConv(in_channels, widths[0], (3, 7, 7), (1, 2, 2), (1, 3, 3))
        self.bn1 = nn.BatchNorm3d(widths[0])
        cin = widths[0]
        for i, (n, w) in enumerate(zip(layers, widths)):
            self.add_module(f"conv{i + 2}", VCOPStage(cin, w, n, downsample=i > 0))
            cin = w
        self.linear = nn.Linear(cin, num_classes) if num_classes > 0 else None

    def forward(self, x: Tensor, return_map: bool = False) -> EncoderOut:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        fmap = self.conv5(self.conv4(self.conv3(self.conv2(x))))
        feature = fmap.mean(dim=(2, 3, 4))
        logits = self.linear(feature) if self.linear is not None else None
        return EncoderOut(logits, feature, fmap if return_map else None)


@register_model("r2plus1d_vcop")
def r2plus1d_vcop(num_classes: int = 51, depth: Literal[18, 34] = 18,
                  widths: tuple[int, int, int, int] = R2PLUS1D_WIDTHS, in_channels: int = 3) -> R2Plus1DVCOP:
    """CCL student "R(2+1)D-18" (one block per stage; 14.39 M params at 51 classes) or depth 34
    (3,4,6,3; 63.5 M). ``num_classes=0`` drops the classifier. Tiny config: widths (8,16,32,32)."""
    if depth not in VCOP_DEPTHS:
        raise ConfigError(f"r2plus1d_vcop: depth must be one of {sorted(VCOP_DEPTHS)}, got {depth}")
    return R2Plus1DVCOP(num_classes, VCOP_DEPTHS[depth], widths, in_channels)


# ------------------------------------------------------------- GDT trunk (torchvision VideoResNet)
class Conv2Plus1D(nn.Sequential):
    """torchvision's (2+1)D pair: [0] Conv3d (1,3,3) stride (1,s,s), [1] BN, [2] ReLU,
    [3] Conv3d (3,1,1) stride (s,1,1)."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int = 1):
        super().__init__(
            nn.Conv3d(cin, mid, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, cout, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False),
        )


class VideoBasicBlock(nn.Module):
    """conv1 = (pair, BN, ReLU), conv2 = (pair, BN); projection ``downsample`` = (1x1x1 conv
    stride s in T/H/W, BN). Both pairs use mid_channels(Cin, Cout) (torchvision's choice)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        mid = mid_channels(cin, cout)
        self.conv1 = nn.Sequential(Conv2Plus1D(cin, cout, mid, stride), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(Conv2Plus1D(cout, cout, mid), nn.BatchNorm3d(cout))
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.conv1(x))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut, inplace=True)


class VideoResNet(nn.Module):
    """R(2+1)D-18 trunk: stem (Conv (1,7,7)/(1,2,2) 3→45, BN, ReLU, Conv (3,1,1) 45→64, BN, ReLU),
    4 stages of BasicBlocks (strides 1,2,2,2 in T, H, W), GAP -> ``feature``; optional ``fc``.

    Input [B, 3, 30, 112, 112] -> map [B, 512, 4, 7, 7]; 60 frames -> [B, 512, 8, 7, 7].
    """

    def __init__(self, num_classes: int = 0, layers: Sequence[int] = (2, 2, 2, 2),
                 widths: Sequence[int] = R2PLUS1D_WIDTHS, stem_mid: int = 45, in_channels: int = 3):
        super().__init__()
        _check_widths(widths, "r2plus1d_18")
        self.feature_dim = widths[-1]
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, stem_mid, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
            nn.BatchNorm3d(stem_mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(stem_mid, widths[0], (3, 1, 1), 1, (1, 0, 0), bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
        )
        cin = widths[0]
        for i, (n, w) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            blocks = [VideoBasicBlock(cin, w, stride)] + [VideoBasicBlock(w, w) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            cin = w
        self.fc = nn.Linear(cin, num_classes) if num_classes > 0 else None
        _kaiming_fan_out(self)
        if self.fc is not None:
            nn.init.normal_(self.fc.weight, 0.0, 0.01)
            nn.init.zeros_(self.fc.bias)

    def forward_map(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor, return_map: bool = False) -> EncoderOut:
        fmap = self.forward_map(x)
        feature = fmap.mean(dim=(2, 3, 4))
        logits = self.fc(feature) if self.fc is not None else None
        return EncoderOut(logits, feature, fmap if return_map else None)


@register_model("r2plus1d_18")
def r2plus1d_18(num_classes: int = 0, widths: tuple[int, int, int, int] = R2PLUS1D_WIDTHS, stem_mid: int = 45,
                in_channels: int = 3) -> VideoResNet:
    """GDT/STiCA video trunk (31.30 M params, 512-d feature; ``num_classes>0`` adds torchvision's
    ``fc``). Tiny config: widths (8,16,32,32), stem_mid 6."""
    return VideoResNet(num_classes, (2, 2, 2, 2), widths, stem_mid, in_channels)


# ------------------------------------------------------------------------ tiny (embedded data)
class TinyVideo(nn.Module):
    """Fast encoder for small clips: avg-pool 2x2, per-frame [conv3x3 - BN - ReLU - maxpool 2] per
    width, spatial GAP, temporal Conv1d over frames (optional), mean over time, ``fc``.

    A stride-2 first conv on the noisy 32 px frames did not learn (EMBEDDED-DATA.md), hence the
    average pool; per-frame 2-D convs make a [B·T, C, H, W] batch, which is fast on CPU.
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64), in_channels: int = 3,
                 input_pool: int = 2, temporal_kernel: int = 3):
        super().__init__()
        if not widths or min(widths) < 1:
            raise ConfigError(f"tiny_video: widths needs positive entries, got {tuple(widths)}")
        if temporal_kernel < 0 or (temporal_kernel and temporal_kernel % 2 == 0):
            raise ConfigError(f"tiny_video: temporal_kernel must be 0 (off) or odd, got {temporal_kernel}")
        self.feature_dim = widths[-1]
        self.input_pool = input_pool
        layers: list[nn.Module] = []
        cin = in_channels
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(cin, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.frames = nn.Sequential(*layers)
        self.temporal = None
        if temporal_kernel:
            self.temporal = nn.Sequential(
                nn.Conv1d(cin, cin, temporal_kernel, padding=temporal_kernel // 2, bias=False),
                nn.BatchNorm1d(cin),
                nn.ReLU(inplace=True),
            )
        self.fc = nn.Linear(cin, num_classes) if num_classes > 0 else None
        _kaiming_fan_out(self.frames)

    def forward(self, x: Tensor, return_map: bool = False) -> EncoderOut:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        if self.input_pool > 1:
            frames = F.avg_pool2d(frames, self.input_pool)
        fm = self.frames(frames)  # [B·T, D, h', w']
        per_frame = fm.mean(dim=(2, 3)).reshape(b, t, -1).transpose(1, 2)  # [B, D, T]
        if self.temporal is not None:
            per_frame = per_frame + self.temporal(per_frame.contiguous())
        feature = per_frame.mean(dim=2)
        logits = self.fc(feature) if self.fc is not None else None
        fmap = None
        if return_map:
            fmap = fm.reshape(b, t, *fm.shape[1:]).transpose(1, 2)  # [B, D, T, h', w']
        return EncoderOut(logits, feature, fmap)


@register_model("tiny_video")
def tiny_video(num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64), in_channels: int = 3,
               input_pool: int = 2, temporal_kernel: int = 3) -> TinyVideo:
    """Tiny video encoder for embedded 32x32x8 clips (see TinyVideo); ``temporal_kernel=0`` makes
    it a pure per-frame encoder (invariant to frame order)."""
    return TinyVideo(num_classes, widths, in_channels, input_pool, temporal_kernel)
