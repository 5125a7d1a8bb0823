"""The MFH RAVDESS network: shapes for both modalities and Algorithm 1's place 5 (`fc2`)."""

import torch

from xmodal.analysis import mfh
from xmodal.registry import MODELS


def test_audio_and_image_variants_and_place_five():
    audio = MODELS.build_named("mfh_cnn", num_classes=8, in_channels=1, kernels=[7, 5, 5])
    image = MODELS.build_named("mfh_cnn", num_classes=8, in_channels=3)
    assert audio(torch.randn(2, 1, 40, 256)).shape == (2, 8)
    assert image(torch.randn(2, 3, 64, 128)).shape == (2, 8)
    assert audio.fc1.in_features == 128 * 7 * 14 == 12544
    x = torch.randn(3, 1, 40, 256)
    feats = mfh.features_at(audio, "fc2", x)
    assert feats.shape == (3, 128)
    with torch.no_grad():
        torch.testing.assert_close(mfh.head_after(audio, "fc2")(feats), audio(x))
