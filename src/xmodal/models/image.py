"""2-D ResNets (BasicBlock) with torchvision's exact state-dict names.

Names: ``conv1``, ``bn1``, ``layer{1..4}.{i}.{conv1,bn1,conv2,bn2}``, ``layer{2,3,4}.0.downsample.{0,1}``
(1x1 conv + BN projection on a block that changes width or stride), ``fc``. So an ImageNet
``resnet34`` state dict (the CCL image teacher, ccl §10) loads with zero missing/unexpected keys,
and the GDT audio trunk (``resnet9`` in models/audio.py) reuses this class with one input channel.

Initialisation follows torchvision: convs kaiming-normal (fan_out, ReLU gain), BN weight 1 bias 0,
``fc`` PyTorch's default Linear init.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from xmodal.errors import ConfigError
from xmodal.models.heads import EncoderOut
from xmodal.registry import register_model

RESNET_WIDTHS = (64, 128, 256, 512)
TINY_WIDTHS = (8, 16, 32, 64)


class BasicBlock(nn.Module):
    """conv3x3(stride) - BN - ReLU - conv3x3 - BN, plus the (projected) input, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """ResNet with BasicBlocks: conv 7x7/2 - BN - ReLU - maxpool 3/2 - 4 stages - GAP - optional fc.

    ``num_classes=0`` drops ``fc`` (feature extractor: ``logits`` is None). Input [B, C, H, W];
    ``feature`` is the global-average-pooled last map ([B, widths[-1]]).

    ``small_input`` (off = torchvision's network) makes the stem a 3x3 stride-1 conv without
    max-pool, the CIFAR-style stem for small frames: the ImageNet stem divides the side by 4 and
    leaves ~4 px of a 16 px digit on a 32 px frame. Parameter names stay torchvision's.
    """

    def __init__(self, layers: Sequence[int] = (2, 2, 2, 2), widths: Sequence[int] = RESNET_WIDTHS,
                 in_channels: int = 3, num_classes: int = 1000, small_input: bool = False):
        super().__init__()
        if len(layers) != 4 or len(widths) != 4 or min(layers) < 1 or min(widths) < 1:
            raise ConfigError(f"ResNet: layers and widths need 4 positive entries, got layers={tuple(layers)} "
                              f"widths={tuple(widths)}")
        self.feature_dim = widths[-1]
        if small_input:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        cin = widths[0]
        for i, (n, w) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(cin, w, stride)] + [BasicBlock(w, w) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            cin = w
        self.fc = nn.Linear(cin, num_classes) if num_classes > 0 else None
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_map(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor, return_map: bool = False) -> EncoderOut:
        fmap = self.forward_map(x)
        feature = fmap.mean(dim=(2, 3))
        logits = self.fc(feature) if self.fc is not None else None
        return EncoderOut(logits, feature, fmap if return_map else None)


@register_model("resnet18")
def resnet18(num_classes: int = 1000, in_channels: int = 3,
             widths: tuple[int, int, int, int] = RESNET_WIDTHS,
             small_input: bool = False) -> ResNet:
    """ResNet-18 (11.69 M params with the 1000-way fc); ``num_classes=0`` = feature extractor."""
    return ResNet((2, 2, 2, 2), widths, in_channels, num_classes, small_input)


@register_model("resnet34")
def resnet34(num_classes: int = 1000, in_channels: int = 3,
             widths: tuple[int, int, int, int] = RESNET_WIDTHS,
             small_input: bool = False) -> ResNet:
    """ResNet-34 (21.80 M params with the 1000-way fc); the CCL image teacher uses
    ``num_classes=0`` (512-d GAP feature). Tiny test config: ``widths=(8, 16, 32, 64)``."""
    return ResNet((3, 4, 6, 3), widths, in_channels, num_classes, small_input)


def imagenet_normalize(x: Tensor) -> Tensor:
    """[B, 3, H, W] in [0, 1] -> ImageNet-normalised (what torchvision's published weights expect)."""
    mean = torch.tensor((0.485, 0.456, 0.406), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
