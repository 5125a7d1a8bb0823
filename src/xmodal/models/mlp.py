"""Small MLP classifier: the tiny model of the engine's end-to-end tests and the gauss recipes."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from xmodal.registry import register_model


class ClassifierOut(NamedTuple):
    logits: torch.Tensor
    feature: torch.Tensor  # input of the final linear layer


class MLP(nn.Module):
    """in → [hidden → ReLU]* → classes; with no hidden layers it is a linear classifier."""

    def __init__(self, in_dim: int, num_classes: int, hidden: tuple[int, ...] = (), dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        self.trunk = nn.Sequential(*layers)
        self.fc = nn.Linear(d, num_classes)
        self.feature_dim = d

    def forward(self, x: torch.Tensor) -> ClassifierOut:
        f = self.trunk(x.flatten(1))
        return ClassifierOut(self.fc(f), f)


@register_model("mlp")
def mlp(in_dim: int = 0, num_classes: int = 0, hidden: list[int] = [], dropout: float = 0.0) -> MLP:  # noqa: B006
    """`in_dim`/`num_classes` = 0 are filled in from the data by the method."""
    if in_dim <= 0 or num_classes <= 0:
        from xmodal.errors import ConfigError

        raise ConfigError(f"model mlp: in_dim and num_classes must be positive, got {in_dim}, {num_classes}")
    return MLP(in_dim, num_classes, tuple(hidden), dropout)
