"""CAV-MAE inpainting figures (spec §11): masked input / reconstruction / target, audio and frames.

`reconstruct` masks both modalities (unstructured 75 % by default), predicts every patch, pastes
the visible patches back from the input and reports the raw-target MSE over the masked patches.
A model trained with ``norm_pix_loss`` predicts each patch in its own normalised space; its
predictions are mapped back with the target patch's mean and std (as MAE visualisations do) — the
released *-NoNorm model needs no such step and is the one to use for honest pictures.
`save_inpaint_pngs` writes one PNG per sample and modality (matplotlib, Agg canvas, imported lazily).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from xmodal.losses.mae import MaskMode, mae_loss

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Inpainting(NamedTuple):
    """Three views per modality in input layout; masked patches of `masked_*` are NaN."""

    masked_audio: torch.Tensor  # [B, T, F]
    recon_audio: torch.Tensor
    target_audio: torch.Tensor
    masked_image: torch.Tensor  # [B, 3, H, W] (model input space: ImageNet-normalised)
    recon_image: torch.Tensor
    target_image: torch.Tensor
    mse_audio: float  # raw-target MSE over masked patches
    mse_image: float


def _to_raw(pred: torch.Tensor, target: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """Undo norm_pix_loss' per-patch normalisation with the target's (unbiased) statistics."""
    if not norm_pix:
        return pred
    return pred * (target.var(dim=-1, keepdim=True) + 1.0e-6).sqrt() + target.mean(dim=-1, keepdim=True)


@torch.no_grad()
def reconstruct(
    model,
    audio: torch.Tensor,
    image: torch.Tensor,
    *,
    ratio_a: float = 0.75,
    ratio_v: float = 0.75,
    mask_mode: MaskMode = "unstructured",
    seed: int = 0,
) -> Inpainting:
    """Inpaint a batch with a `CAVMAE` model; masking noise from `seed` (reproducible figures)."""
    was_training = model.training
    model.eval()
    try:
        g = torch.Generator().manual_seed(seed)
        la, lv = model.patch_embed_a.num_patches, model.patch_embed_v.num_patches
        noise = (torch.rand(audio.shape[0], la, generator=g).to(audio.device),
                 torch.rand(image.shape[0], lv, generator=g).to(image.device))
        out = model.forward_inpaint(audio, image, ratio_a, ratio_v, mask_mode, noise)
    finally:
        model.train(was_training)
    norm_pix = model.cfg.norm_pix_loss
    views = []
    for pred, target, mask, unpatch in (
        (out.pred_a, model.patchify_audio(audio), out.mask_a, model.unpatchify_audio),
        (out.pred_v, model.patchify_image(image), out.mask_v, model.unpatchify_image),
    ):
        raw = _to_raw(pred.float(), target.float(), norm_pix)
        m = mask.unsqueeze(-1).bool()
        recon = torch.where(m, raw, target)  # visible patches pasted from the input
        masked = torch.where(m, torch.full_like(target, float("nan")), target)
        views.append((unpatch(masked), unpatch(recon), unpatch(target), float(mae_loss(raw, target, mask, norm_pix=False))))
    (ma, ra, ta, ea), (mv, rv, tv, ev) = views
    return Inpainting(ma, ra, ta, mv, rv, tv, ea, ev)


def denormalize_image(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """[3, H, W] normalised -> [H, W, 3] in [0, 1]; NaN (masked) pixels become mid grey."""
    img = x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return img.nan_to_num(0.5).clamp(0, 1).permute(1, 2, 0)


_TITLES = ("masked input", "reconstruction", "target")


def _save(fig, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path


def save_inpaint_pngs(rec: Inpainting, out_dir: str | Path, prefix: str = "sample") -> list[Path]:
    """``{prefix}{i}_audio.png`` (spectrograms: frequency up, time right, one colour scale per
    sample) and ``{prefix}{i}_image.png`` (de-normalised frames) for every sample; returns the paths."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    cmap = colormaps["magma"].with_extremes(bad="#7f7f7f")  # masked (NaN) cells in grey
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(rec.target_audio.shape[0]):
        spec = [v[i].float().cpu().T.numpy() for v in (rec.masked_audio, rec.recon_audio, rec.target_audio)]
        lo, hi = float(spec[2].min()), float(spec[2].max())
        fig = Figure(figsize=(12, 3.2))  # fixed margins: a layout engine triples the drawing time
        fig.subplots_adjust(left=0.05, right=0.99, bottom=0.16, top=0.8, wspace=0.2)
        for ax, s, title in zip(fig.subplots(1, 3), spec, _TITLES):
            ax.imshow(s, origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap=cmap, interpolation="nearest")
            ax.set(title=title, xlabel="frame", ylabel="mel bin")
        fig.suptitle(f"audio {i}: masked-patch MSE (batch) {rec.mse_audio:.4f}")
        paths.append(_save(fig, out / f"{prefix}{i}_audio.png"))
        imgs = [denormalize_image(v[i].float().cpu()).numpy() for v in (rec.masked_image, rec.recon_image, rec.target_image)]
        fig = Figure(figsize=(9, 3.4))
        fig.subplots_adjust(left=0.02, right=0.98, bottom=0.03, top=0.82, wspace=0.05)
        for ax, img, title in zip(fig.subplots(1, 3), imgs, _TITLES):
            ax.imshow(img, interpolation="nearest")
            ax.set(title=title, xticks=[], yticks=[])
        fig.suptitle(f"frame {i}: masked-patch MSE (batch) {rec.mse_image:.4f}")
        paths.append(_save(fig, out / f"{prefix}{i}_image.png"))
    return paths


def write_inpainting(method, dataset, out_dir: str | Path, *, n: int = 4, ratio: float = 0.75,
                     mode: MaskMode = "unstructured", seed: int = 0, collate=None) -> dict:
    """PNGs and ``inpaint.json`` for the first `n` clips of `dataset` under a pretraining method
    (`CavmaePretrain`: it owns the decoder and its input pipeline); returns the json summary."""
    import json

    from torch.utils.data import DataLoader

    from xmodal.data.bundle import collate as default_collate

    batch = next(iter(DataLoader(dataset, batch_size=min(n, len(dataset)), shuffle=False, collate_fn=collate or default_collate)))
    audio, image = method.model_inputs(batch, train=False)
    rec = reconstruct(method.model, audio, image, ratio_a=ratio, ratio_v=ratio, mask_mode=mode, seed=seed)
    paths = save_inpaint_pngs(rec, out_dir)
    summary = {"mse_audio": rec.mse_audio, "mse_image": rec.mse_image, "ratio": ratio, "mode": mode,
               "norm_pix_loss": method.model.cfg.norm_pix_loss, "pngs": [p.name for p in paths]}
    (Path(out_dir) / "inpaint.json").write_text(json.dumps(summary, indent=2))
    return summary
