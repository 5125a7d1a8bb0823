"""A tiny 1-D audio CNN on log-mel frames, for embedded data (avdigits).

Input: spectrogram [B, 1, F, T] or fbank [B, T, F]; the mel bins are the channels of Conv1d
layers over time: BN over mel bins, Conv1d(F→w1, k5) - BN - ReLU, then Conv1d(k3, stride 2) - BN -
ReLU per further width; feature = max + mean over time (PANNs' clip pooling). PyTorch default
init.

Why not a tiny ResNet-9: on avdigits a linear probe on the random-init features of this encoder
reads the spoken digit far better than on a random 2-D ResNet-9 (≈ 60 % vs ≈ 20 %: the 7×7
stride-2 stem and global pooling blur the spectral shape). Cross-modal contrastive learning from
scratch starts from that random-feature signal, so GDT/STiCA on embedded data escape their
initial loss plateau in a few hundred steps instead of not at all on a CPU budget.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from xmodal.errors import ConfigError, DataError
from xmodal.models.heads import EncoderOut
from xmodal.registry import register_model


class TinyAudio(nn.Module):
    def __init__(self, mel_bins: int = 40, widths: Sequence[int] = (128, 128), num_classes: int = 0):
        super().__init__()
        if not widths or min(widths) < 1 or mel_bins < 1:
            raise ConfigError(f"tiny_audio: widths needs positive entries and mel_bins >= 1, got {tuple(widths)}, {mel_bins}")
        self.mel_bins = mel_bins
        self.feature_dim = widths[-1]
        self.bn0 = nn.BatchNorm1d(mel_bins)
        layers: list[nn.Module] = []
        cin = mel_bins
        for i, w in enumerate(widths):
            k, s = (5, 1) if i == 0 else (3, 2)
            layers += [nn.Conv1d(cin, w, k, s, k // 2, bias=False), nn.BatchNorm1d(w), nn.ReLU(inplace=True)]
            cin = w
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes) if num_classes > 0 else None

    def forward(self, x: Tensor, return_map: bool = False) -> EncoderOut:
        if x.dim() == 4 and x.shape[1] == 1:
            x = x[:, 0]  # [B, F, T]
        elif x.dim() == 3 and x.shape[-1] == self.mel_bins and x.shape[1] != self.mel_bins:
            x = x.transpose(1, 2)  # fbank [B, T, F]
        if x.dim() != 3 or x.shape[1] != self.mel_bins:
            raise DataError(f"tiny_audio: expected [B, 1, {self.mel_bins}, T] or [B, T, {self.mel_bins}], got {tuple(x.shape)}")
        fmap = self.net(self.bn0(x.contiguous()))  # a transposed input made Conv1d ~10x slower
        feature = fmap.amax(dim=2) + fmap.mean(dim=2)
        logits = self.fc(feature) if self.fc is not None else None
        return EncoderOut(logits, feature, fmap if return_map else None)


@register_model("tiny_audio")
def tiny_audio(mel_bins: int = 40, widths: tuple[int, ...] = (128, 128), num_classes: int = 0) -> TinyAudio:
    """Tiny Conv1d encoder over log-mel frames for embedded clips (see TinyAudio)."""
    return TinyAudio(mel_bins, widths, num_classes)
