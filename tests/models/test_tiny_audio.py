import pytest
import torch

from xmodal.errors import DataError
from xmodal.models.tiny_audio import tiny_audio


def test_layouts_and_pooling():
    torch.manual_seed(0)
    m = tiny_audio(mel_bins=8, widths=(6, 5), num_classes=3).eval()
    fbank = torch.randn(2, 20, 8)  # [B, frames, mel]
    spec = fbank.transpose(1, 2)[:, None]  # [B, 1, mel, frames]
    a, b = m(fbank, return_map=True), m(spec)
    torch.testing.assert_close(a.feature, b.feature)
    assert a.fmap.shape == (2, 5, 10)  # stride 2 in time after the first layer
    torch.testing.assert_close(a.feature, a.fmap.amax(2) + a.fmap.mean(2))
    assert a.logits.shape == (2, 3) and m.feature_dim == 5
    with pytest.raises(DataError, match=r"\[B, 1, 8, T\]"):
        m(torch.randn(2, 1, 9, 20))
