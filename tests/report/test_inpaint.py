"""Inpainting figures: pasted visible patches, masked-patch MSE, de-normalisation, PNG files."""

from __future__ import annotations

import pytest
import torch

from xmodal.losses.mae import mae_loss
from xmodal.models.cavmae import CAVMAE, cavmae_config
from xmodal.report.inpaint import _to_raw, denormalize_image, reconstruct, save_inpaint_pngs

ARCH = dict(audio_length=16, audio_bins=16, image_size=16, patch_size=8, modality_specific_depth=1)


def _inputs(n=2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 16, 16, generator=g), torch.randn(n, 3, 16, 16, generator=g)


def test_reconstruction_pastes_visible_patches_and_scores_masked_ones():
    torch.manual_seed(0)
    model = CAVMAE(cavmae_config("tiny", norm_pix_loss=False, **ARCH))
    audio, image = _inputs()
    rec = reconstruct(model, audio, image, ratio_a=0.5, ratio_v=0.75, seed=3)
    assert rec.target_audio.shape == audio.shape and torch.equal(rec.target_image, image)
    # the same seed gives the same masks and predictions
    again = reconstruct(model, audio, image, ratio_a=0.5, ratio_v=0.75, seed=3)
    assert torch.equal(rec.recon_image, again.recon_image)
    pa = model.patchify_audio(rec.masked_audio).isnan().all(-1)  # masked audio patches
    pv = model.patchify_image(rec.masked_image).isnan().all(-1)
    assert pa.sum(1).tolist() == [2, 2] and pv.sum(1).tolist() == [3, 3]  # 4 audio / 4 image patches, keep 2 / 1
    # visible patches of the reconstruction are the input itself; masked ones are predictions
    vis_v = model.patchify_image(rec.recon_image)[~pv]
    assert torch.equal(vis_v, model.patchify_image(image)[~pv])
    assert not torch.equal(model.patchify_image(rec.recon_image)[pv], model.patchify_image(image)[pv])
    g = torch.Generator().manual_seed(3)
    noise = (torch.rand(2, 4, generator=g), torch.rand(2, 4, generator=g))
    with torch.no_grad():
        out = model.forward_inpaint(audio, image, 0.5, 0.75, "unstructured", noise)
    assert rec.mse_image == pytest.approx(float(mae_loss(out.pred_v, model.patchify_image(image), out.mask_v, norm_pix=False)))
    assert rec.mse_audio == pytest.approx(float(out.loss_a))


def test_norm_pix_predictions_are_mapped_back_with_target_statistics():
    t = torch.randn(3, 5, 12) * 4 + 2
    normed = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
    assert torch.allclose(_to_raw(normed, t, True), t, atol=1e-5)
    assert torch.equal(_to_raw(normed, t, False), normed)
    img = torch.full((3, 2, 2), float("nan"))
    img[:, 0, 0] = 0.0
    out = denormalize_image(img)
    assert out.shape == (2, 2, 3) and torch.allclose(out[0, 0], torch.tensor([0.485, 0.456, 0.406]))
    assert torch.allclose(out[1, 1], torch.full((3,), 0.5))  # masked pixels: mid grey


def test_pngs_are_written(tmp_path):
    torch.manual_seed(0)
    model = CAVMAE(cavmae_config("tiny", **ARCH))
    rec = reconstruct(model, *_inputs(3))
    paths = save_inpaint_pngs(rec, tmp_path / "figs")
    assert [p.name for p in paths] == [f"sample{i}_{m}.png" for i in range(3) for m in ("audio", "image")]
    for p in paths:
        head = p.read_bytes()[:8]
        assert head == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
