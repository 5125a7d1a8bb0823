"""The MFH RAVDESS network (specs/mfh.md §5), used for both the audio teacher and the image student.

conv(32) → pool → conv(64) → pool → conv(128) → AdaptiveMaxPool(7, 14) → fc 12544→1024 → fc
1024→128 → fc 128→C, ReLU after every conv and hidden fc. Audio: 7/5/5 kernels on a 1×40×256 map;
image: 3×3 kernels on 3×256×512. Built as a named nn.Sequential so that Algorithm 1 can read any
place by module path and run the rest as the head (`mfh.head_after`); the reference's "place 5"
(the 1024→128 fc output, 128 channels) is ``fc2``.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from xmodal.errors import ConfigError
from xmodal.registry import register_model


@register_model("mfh_cnn")
def mfh_cnn(num_classes: int = 8, in_channels: int = 3, kernels: tuple[int, int, int] = (3, 3, 3),
            widths: tuple[int, int, int] = (32, 64, 128), pool: tuple[int, int] = (7, 14),
            hidden: tuple[int, int] = (1024, 128)) -> nn.Sequential:
    """RAVDESS image student (kernels 3,3,3, in_channels 3) or audio teacher (kernels 7,5,5, in_channels 1)."""
    if len(kernels) != 3 or len(widths) != 3 or min(kernels) < 1 or min(widths) < 1:
        raise ConfigError(f"mfh_cnn: expected 3 positive kernels and widths, got {tuple(kernels)}, {tuple(widths)}")
    layers: list[tuple[str, nn.Module]] = []
    cin = in_channels
    for i, (k, w) in enumerate(zip(kernels, widths), 1):
        layers += [(f"conv{i}", nn.Conv2d(cin, w, k, padding=k // 2)), (f"relu{i}", nn.ReLU())]
        if i < 3:
            layers.append((f"pool{i}", nn.MaxPool2d(2)))
        cin = w
    flat = cin * pool[0] * pool[1]
    layers += [("pool3", nn.AdaptiveMaxPool2d(tuple(pool))), ("flatten", nn.Flatten()),
               ("fc1", nn.Linear(flat, hidden[0])), ("relu_fc1", nn.ReLU()),
               ("fc2", nn.Linear(hidden[0], hidden[1])), ("relu_fc2", nn.ReLU()),
               ("fc3", nn.Linear(hidden[1], num_classes))]
    return nn.Sequential(OrderedDict(layers))
