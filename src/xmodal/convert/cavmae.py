"""CAV-MAE checkpoint conversions (spec §7, §10): released files -> xmodal, ImageNet MAE -> CAV-MAE init.

Assumed ImageNet MAE ViT-B layout (facebookresearch/mae ``mae_pretrain_vit_base_full.pth``, timm
names, possibly wrapped as ``{"model": state}``):
``cls_token [1,1,768]``, ``pos_embed [1,197,768]``, ``patch_embed.proj.weight [768,3,16,16]`` / ``.bias``,
``blocks.{0..11}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.{weight,bias}``, ``norm.*``,
``mask_token [1,1,512]``, ``decoder_embed [512,768]``, ``decoder_pos_embed [1,197,512]``,
``decoder_blocks.{0..7}.*`` (same block names, d=512), ``decoder_norm.*``, ``decoder_pred [768,512]`` / ``[768]``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import torch

from xmodal.errors import CheckpointError
from xmodal.models.cavmae import CAVMAE, CAVMAEFT, CAVMAEConfig

_BLOCK_PARAMS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


def expected_shapes(cfg: CAVMAEConfig | None = None, finetune: bool = False, label_dim: int = 527) -> dict[str, tuple[int, ...]]:
    """Key -> shape of our model's state dict (built on the meta device: no memory, no init cost)."""
    cfg = cfg or CAVMAEConfig()
    with torch.device("meta"):
        model = CAVMAEFT(cfg, label_dim=label_dim) if finetune else CAVMAE(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def state_diff(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> str:
    """One line describing missing / unexpected / wrongly shaped keys; '' when they match."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)}!={expected[k]}" for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if keys:
            parts.append(f"{len(keys)} {label}: " + ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""))
    return "; ".join(parts)


def _unwrap(state) -> dict:
    from xmodal.engine.checkpoint import strip_prefix

    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"expected a state dict, found {type(state).__name__}")
    return strip_prefix(state)


def _depth(state: Mapping, prefix: str) -> int:
    pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    idx = {int(m.group(1)) for k in state if (m := pat.match(k))}
    return max(idx) + 1 if idx else 0


def official_to_ours(state: Mapping[str, torch.Tensor], cfg: CAVMAEConfig | None = None) -> dict[str, torch.Tensor]:
    """Released CAV-MAE state dict (``module.``-prefixed) -> ours, validated against our key/shape table.

    Pretrain vs finetune, the class count, the audio length and the modality-specific depth are
    read from the file; other sizes come from `cfg` (default: the base model every release uses).
    """
    state = _unwrap(state)
    cfg = cfg or CAVMAEConfig()
    if "pos_embed_a" not in state or "blocks_a.0.attn.qkv.weight" not in state:
        raise CheckpointError(f"not a CAV-MAE checkpoint (no pos_embed_a / blocks_a.0; first keys: {', '.join(list(state)[:3])})")
    grid_f = cfg.audio_bins // cfg.patch_size
    audio_length = state["pos_embed_a"].shape[1] // grid_f * cfg.patch_size
    cfg = dataclasses.replace(cfg, audio_length=audio_length, modality_specific_depth=_depth(state, "blocks_a"))
    finetune = "decoder_embed.weight" not in state
    label_dim = state["mlp_head.1.weight"].shape[0] if "mlp_head.1.weight" in state else 527
    diff = state_diff(state, expected_shapes(cfg, finetune, label_dim))
    if diff:
        raise CheckpointError(f"CAV-MAE {'finetune' if finetune else 'pretrain'} checkpoint does not match our layout: {diff}")
    return dict(state)


def imagenet_mae_to_cavmae(mae_state: Mapping[str, torch.Tensor], cfg: CAVMAEConfig | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """ImageNet MAE ViT -> CAV-MAE pretraining init (the reference's ``ori_mae_11.pth`` recipe).

    MAE blocks 0..S-1 -> ``blocks_a`` and ``blocks_v`` (S = modality_specific_depth); the next
    shared_depth blocks -> ``blocks_u`` with their norms also copied to ``norm{1,2}_{a,v}``; final
    norm -> ``norm``, ``norm_a``, ``norm_v``; MAE decoder -> decoder, ``decoder_pred`` ->
    ``decoder_pred_v`` and its first p·p rows -> ``decoder_pred_a``; audio patch embedding = image
    patch-embedding weights summed over RGB. Positional tables are our sin-cos ones; modality
    tokens and the unused ``_a/_v`` norms of other blocks keep a fresh init (seeded).
    """
    mae = _unwrap(mae_state)
    cfg = cfg or CAVMAEConfig()
    s, u = cfg.modality_specific_depth, cfg.shared_depth
    need = ["patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias", "mask_token",
            "decoder_embed.weight", "decoder_embed.bias", "decoder_norm.weight", "decoder_norm.bias",
            "decoder_pred.weight", "decoder_pred.bias"]
    need += [f"{blocks}.{i}.{p}.{wb}" for blocks, n in (("blocks", s + u), ("decoder_blocks", cfg.decoder_depth))
             for i in range(n) for p in _BLOCK_PARAMS for wb in ("weight", "bias")]
    absent = [k for k in need if k not in mae]
    if absent:
        raise CheckpointError(f"ImageNet MAE state: {len(absent)} expected keys missing: {', '.join(absent[:4])}")
    if _depth(mae, "blocks") != s + u:
        raise CheckpointError(f"ImageNet MAE state: {_depth(mae, 'blocks')} encoder blocks, expected {s}+{u}={s + u}")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CAVMAE(cfg)
    out = {k: v.clone() for k, v in model.state_dict().items()}

    def put(dst: str, src: torch.Tensor) -> None:
        assert dst in out, dst
        if tuple(src.shape) != tuple(out[dst].shape):
            raise CheckpointError(f"ImageNet MAE state -> {dst}: shape {tuple(src.shape)}, expected {tuple(out[dst].shape)}")
        out[dst] = src.detach().clone().to(out[dst].dtype)

    def copy_block(src: str, dst: str, modality_norms: bool) -> None:
        for p in _BLOCK_PARAMS:
            for wb in ("weight", "bias"):
                put(f"{dst}.{p}.{wb}", mae[f"{src}.{p}.{wb}"])
                if modality_norms and p.startswith("norm"):
                    for m in ("a", "v"):
                        put(f"{dst}.{p}_{m}.{wb}", mae[f"{src}.{p}.{wb}"])

    for i in range(s):
        copy_block(f"blocks.{i}", f"blocks_a.{i}", False)
        copy_block(f"blocks.{i}", f"blocks_v.{i}", False)
    for j in range(u):
        copy_block(f"blocks.{s + j}", f"blocks_u.{j}", True)
    for i in range(cfg.decoder_depth):
        copy_block(f"decoder_blocks.{i}", f"decoder_blocks.{i}", False)
    for wb in ("weight", "bias"):
        for dst in ("norm", "norm_a", "norm_v"):
            put(f"{dst}.{wb}", mae[f"norm.{wb}"])
        put(f"patch_embed_v.proj.{wb}", mae[f"patch_embed.proj.{wb}"])
        put(f"decoder_embed.{wb}", mae[f"decoder_embed.{wb}"])
        put(f"decoder_norm.{wb}", mae[f"decoder_norm.{wb}"])
        put(f"decoder_pred_v.{wb}", mae[f"decoder_pred.{wb}"])
        put(f"decoder_pred_a.{wb}", mae[f"decoder_pred.{wb}"][: cfg.patch_size**2])
    put("patch_embed_a.proj.weight", mae["patch_embed.proj.weight"].sum(dim=1, keepdim=True))
    put("patch_embed_a.proj.bias", mae["patch_embed.proj.bias"])
    put("mask_token", mae["mask_token"])
    return out
