"""Small heads shared by the encoders and methods, and the encoders' typed output.

* ``EncoderOut(logits, feature, fmap)``: what every convolutional encoder of xmodal returns.
* ``ProjectionHead`` / ``LinearProjection``: the GDT/STiCA projection heads (gdt §3.3), with the
  reference module indices so that ``mlp_v.*`` / ``mlp_a.*`` weights of released checkpoints load.
* ``LinearClassifier``: the fine-tuning classifier (orthogonal weight, zero bias; gdt §6).
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from xmodal.registry import register_model


class EncoderOut(NamedTuple):
    """Output of an encoder.

    logits: [B, C] class scores (pre-softmax / pre-sigmoid), None when the encoder has no classifier.
    feature: [B, D] pooled feature (the encoder's embedding).
    fmap: the pre-pool feature map ([B, D, T', H', W'] video, [B, D, H', W'] image/audio) when the
        caller asked for it (``return_map=True``), else None.
    """

    logits: Tensor | None
    feature: Tensor
    fmap: Tensor | None = None


class ProjectionHead(nn.Module):
    """Dropout → Linear(in, hidden, no bias) → BN1d → ReLU → Dropout → Linear(hidden, out) → L2.

    The Sequential keeps the reference head's indices (0 flatten, 1 dropout, 2 linear, 3 unsqueeze,
    4 BN, 5 flatten, 6 ReLU, 7 dropout, 8 linear): the reshapes around its BatchNorm1d are
    identities here because BN1d over [B, D] equals BN1d over [B, D, 1].
    """

    def __init__(self, in_dim: int = 512, hidden_dim: int = 512, out_dim: int = 256, dropout: float = 0.3,
                 normalize: bool = True):
        super().__init__()
        self.normalize = normalize
        self.out_dim = out_dim
        self.block_forward = nn.Sequential(
            nn.Flatten(1),
            nn.Dropout(dropout),
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.Identity(),
            nn.BatchNorm1d(hidden_dim),
            nn.Identity(),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        z = self.block_forward(x)
        return F.normalize(z, dim=1) if self.normalize else z


class LinearProjection(nn.Linear):
    """The no-MLP head: Linear(in, out) → L2. A bare Linear so its keys are ``weight``/``bias``."""

    def __init__(self, in_dim: int = 512, out_dim: int = 256, normalize: bool = True):
        super().__init__(in_dim, out_dim)
        self.normalize = normalize
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        z = super().forward(x.flatten(1))
        return F.normalize(z, dim=1) if self.normalize else z


class LinearClassifier(nn.Linear):
    """Linear(in, C) with an orthogonal weight and zero bias (GDT/STiCA fine-tuning head)."""

    def __init__(self, in_dim: int = 512, num_classes: int = 101):
        super().__init__(in_dim, num_classes)
        nn.init.orthogonal_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.flatten(1))


@register_model("projection_head")
def projection_head(in_dim: int = 512, hidden_dim: int = 512, out_dim: int = 256, mlp: bool = True,
                    dropout: float = 0.3, normalize: bool = True) -> nn.Module:
    """GDT/STiCA projection head (gdt §3.3): the MLP (0.39 M params at 512/512/256) or, with
    ``mlp=False``, a single Linear(in_dim, out_dim); the output is L2-normalised unless told not to."""
    if mlp:
        return ProjectionHead(in_dim, hidden_dim, out_dim, dropout, normalize)
    return LinearProjection(in_dim, out_dim, normalize)


@register_model("linear_classifier")
def linear_classifier(in_dim: int = 512, num_classes: int = 101) -> LinearClassifier:
    """Linear classifier with orthogonal init and zero bias (gdt §6 fine-tuning / linear probe)."""
    return LinearClassifier(in_dim, num_classes)


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (works on meta-device modules)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

