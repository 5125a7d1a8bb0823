"""CAV-MAE (Gong et al., ICLR 2023): contrastive audio-visual masked autoencoder.

`CAVMAE` (pretraining, with decoder) and `CAVMAEFT` (classification) use the parameter names of
the released checkpoints, so those load unchanged once their ``module.`` prefix is stripped
(`load_cavmae_checkpoint`). Audio is a normalised log-mel ``[B, T, F]``, seen as a 1-channel
image of height F and width T: audio tokens are frequency-major (token = f·(T/p) + t).
Images are ``[B, 3, H, W]`` ImageNet-normalised. Spec: /work/shared/specs/cavmae.md §1-§7.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import nn

from xmodal.errors import CheckpointError, ConfigError, DataError, closest
from xmodal.losses.mae import (
    MaskMode,
    cavmae_contrastive,
    mae_loss,
    patchify,
    random_masking,
    structured_noise,
    unpatchify,
)
from xmodal.models.vit import Block, PatchEmbed, init_vit_weights, sincos_2d
from xmodal.registry import register_model

log = logging.getLogger(__name__)

FinetuneMode = Literal["multimodal", "audioonly", "videoonly", "missingaudioonly", "missingvideoonly"]
FINETUNE_MODES = ("multimodal", "audioonly", "videoonly", "missingaudioonly", "missingvideoonly")


@dataclass(frozen=True)
class CAVMAEConfig:
    """Architecture; the defaults are the released base model (all checkpoints share it)."""

    embed_dim: int = 768
    num_heads: int = 12
    modality_specific_depth: int = 11
    shared_depth: int = 1
    decoder_dim: int = 512
    decoder_heads: int = 16
    decoder_depth: int = 8
    mlp_ratio: float = 4.0
    audio_length: int = 1024  # T, fbank frames
    audio_bins: int = 128  # F, mel bins
    image_size: int = 224
    patch_size: int = 16
    norm_pix_loss: bool = True  # False only for the *-NoNorm (inpainting) checkpoint

    def __post_init__(self):
        p = self.patch_size
        for name in ("audio_length", "audio_bins", "image_size"):
            if getattr(self, name) % p:
                raise ConfigError(f"cavmae: {name}={getattr(self, name)} is not a multiple of patch_size={p}")
        for dim, heads, what in ((self.embed_dim, self.num_heads, "embed_dim"), (self.decoder_dim, self.decoder_heads, "decoder_dim")):
            if dim % heads or dim % 4:
                raise ConfigError(f"cavmae: {what}={dim} must be divisible by its head count {heads} and by 4")

    @property
    def audio_grid(self) -> tuple[int, int]:
        """(frequency rows, time columns) of the audio patch grid, e.g. (8, 64)."""
        return self.audio_bins // self.patch_size, self.audio_length // self.patch_size

    @property
    def image_grid(self) -> tuple[int, int]:
        return self.image_size // self.patch_size, self.image_size // self.patch_size


CAVMAE_SIZES: dict[str, CAVMAEConfig] = {
    "base": CAVMAEConfig(),
    # for tests and embedded runs: 32 audio tokens (4 freq x 8 time), 16 image tokens
    "tiny": CAVMAEConfig(
        embed_dim=64, num_heads=4, modality_specific_depth=2, shared_depth=1,
        decoder_dim=32, decoder_heads=4, decoder_depth=1,
        audio_length=64, audio_bins=32, image_size=32, patch_size=8,
    ),
}


def cavmae_config(size: str = "base", **overrides) -> CAVMAEConfig:
    """A size preset with some fields replaced (``None`` values are ignored)."""
    if size not in CAVMAE_SIZES:
        raise ConfigError(f"cavmae: size: unknown '{size}'{closest(size, CAVMAE_SIZES)}; known: {', '.join(CAVMAE_SIZES)}")
    return dataclasses.replace(CAVMAE_SIZES[size], **{k: v for k, v in overrides.items() if v is not None})


# ----------------------------------------------------------------------------------------- outputs
class CAVMAEOut(NamedTuple):
    """Pretraining step. loss = loss_mae + loss_c; loss_mae and loss_c are weighted, the per-modality
    MAE terms are not. A branch with weight 0 is skipped and reported as zeros."""

    loss: torch.Tensor
    loss_mae: torch.Tensor
    loss_mae_a: torch.Tensor
    loss_mae_v: torch.Tensor
    loss_c: torch.Tensor
    mask_a: torch.Tensor
    mask_v: torch.Tensor
    c_acc: torch.Tensor


class CAVMAEFeatures(NamedTuple):
    audio: torch.Tensor  # [B, La, D] after blocks_u('a') + norm_a
    image: torch.Tensor  # [B, Lv, D] after blocks_u('v') + norm_v


class CAVMAEInpaint(NamedTuple):
    pred_a: torch.Tensor  # [B, La, p·p] patch predictions (normalised space when norm_pix_loss)
    pred_v: torch.Tensor  # [B, Lv, p·p·3]
    mask_a: torch.Tensor
    mask_v: torch.Tensor
    loss_a: torch.Tensor
    loss_v: torch.Tensor


class CAVMAEEncoded(NamedTuple):
    latent: torch.Tensor  # [B, keep_a + keep_v, D] joint tokens after blocks_u + norm
    mask_a: torch.Tensor
    ids_restore_a: torch.Tensor
    mask_v: torch.Tensor
    ids_restore_v: torch.Tensor
    c_a: torch.Tensor  # visible audio tokens after blocks_u('a') + norm_a
    c_v: torch.Tensor
    keep_a: int


# ----------------------------------------------------------------------------------------- encoder
def _block(dim: int, heads: int, cfg: CAVMAEConfig) -> Block:
    return Block(dim, heads, cfg.mlp_ratio, qkv_bias=True, norm_eps=1e-5, modality_norms=("a", "v"))


def _fixed_table(n: int, dim: int, trainable: bool) -> nn.Parameter:
    return nn.Parameter(torch.zeros(1, n, dim), requires_grad=trainable)


class CAVMAEEncoder(nn.Module):
    """Patch embeddings, modality-specific streams, the shared block(s) and the three final norms."""

    def __init__(self, cfg: CAVMAEConfig, trainable_pos: bool):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.embed_dim, cfg.patch_size
        self.patch_embed_a = PatchEmbed(1, d, p, cfg.audio_grid)
        self.patch_embed_v = PatchEmbed(3, d, p, cfg.image_grid)
        self.modality_a = nn.Parameter(torch.zeros(1, 1, d))
        self.modality_v = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed_a = _fixed_table(self.patch_embed_a.num_patches, d, trainable_pos)
        self.pos_embed_v = _fixed_table(self.patch_embed_v.num_patches, d, trainable_pos)
        self.blocks_a = nn.ModuleList(_block(d, cfg.num_heads, cfg) for _ in range(cfg.modality_specific_depth))
        self.blocks_v = nn.ModuleList(_block(d, cfg.num_heads, cfg) for _ in range(cfg.modality_specific_depth))
        self.blocks_u = nn.ModuleList(_block(d, cfg.num_heads, cfg) for _ in range(cfg.shared_depth))
        self.norm_a = nn.LayerNorm(d)
        self.norm_v = nn.LayerNorm(d)
        self.norm = nn.LayerNorm(d)

    def _init_encoder(self) -> None:
        init_vit_weights(self)
        with torch.no_grad():
            self.pos_embed_a.copy_(sincos_2d(self.cfg.embed_dim, *self.cfg.audio_grid)[None])
            self.pos_embed_v.copy_(sincos_2d(self.cfg.embed_dim, *self.cfg.image_grid)[None])
        nn.init.normal_(self.modality_a, std=0.02)
        nn.init.normal_(self.modality_v, std=0.02)

    def embed_audio(self, a: torch.Tensor) -> torch.Tensor:
        """[B, T, F] log-mel -> [B, La, D] tokens with position and modality embeddings."""
        t, f = self.cfg.audio_length, self.cfg.audio_bins
        if a.dim() != 3 or tuple(a.shape[1:]) != (t, f):
            raise DataError(f"cavmae: audio input: expected [B, {t}, {f}] (frames, mel bins), got {list(a.shape)}")
        x = self.patch_embed_a(a.unsqueeze(1).transpose(2, 3))
        return x + self.pos_embed_a + self.modality_a

    def embed_image(self, v: torch.Tensor) -> torch.Tensor:
        s = self.cfg.image_size
        if v.dim() != 4 or tuple(v.shape[1:]) != (3, s, s):
            raise DataError(f"cavmae: image input: expected [B, 3, {s}, {s}], got {list(v.shape)}")
        x = self.patch_embed_v(v)
        return x + self.pos_embed_v + self.modality_v

    @staticmethod
    def run(blocks: nn.ModuleList, x: torch.Tensor, modality: str | None = None) -> torch.Tensor:
        for blk in blocks:
            x = blk(x, modality)
        return x

    def joint(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Shared block(s) with the default norms over [audio; image] tokens, then `norm`."""
        return self.norm(self.run(self.blocks_u, torch.cat([a, v], dim=1)))

    def single(self, x: torch.Tensor, modality: Literal["a", "v"]) -> torch.Tensor:
        """Shared block(s) with the modality's norms, then `norm_a` / `norm_v`."""
        # The reference applies every shared block to the stream input (not chained); with its one
        # shared block that is the same as chaining, which is what we do for any depth.
        out = self.run(self.blocks_u, x, modality)
        return self.norm_a(out) if modality == "a" else self.norm_v(out)

    def audio_stream(self, a: torch.Tensor) -> torch.Tensor:
        return self.run(self.blocks_a, self.embed_audio(a))

    def image_stream(self, v: torch.Tensor) -> torch.Tensor:
        return self.run(self.blocks_v, self.embed_image(v))


# --------------------------------------------------------------------------------------- pretrain
class CAVMAE(CAVMAEEncoder):
    """Pretraining model: masked encoder + joint decoder + MAE and contrastive losses (spec §3-§5)."""

    def __init__(self, cfg: CAVMAEConfig | None = None, trainable_pos: bool = False):
        cfg = cfg or CAVMAEConfig()
        super().__init__(cfg, trainable_pos)
        dd, p = cfg.decoder_dim, cfg.patch_size
        self.decoder_embed = nn.Linear(cfg.embed_dim, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_modality_a = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_modality_v = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_pos_embed_a = _fixed_table(self.patch_embed_a.num_patches, dd, trainable_pos)
        self.decoder_pos_embed_v = _fixed_table(self.patch_embed_v.num_patches, dd, trainable_pos)
        self.decoder_blocks = nn.ModuleList(_block(dd, cfg.decoder_heads, cfg) for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(dd)
        self.decoder_pred_a = nn.Linear(dd, p * p * 1)
        self.decoder_pred_v = nn.Linear(dd, p * p * 3)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        self._init_encoder()
        with torch.no_grad():
            self.decoder_pos_embed_a.copy_(sincos_2d(self.cfg.decoder_dim, *self.cfg.audio_grid)[None])
            self.decoder_pos_embed_v.copy_(sincos_2d(self.cfg.decoder_dim, *self.cfg.image_grid)[None])
        for t in (self.mask_token, self.decoder_modality_a, self.decoder_modality_v):
            nn.init.normal_(t, std=0.02)

    # -- patches
    def patchify_audio(self, a: torch.Tensor) -> torch.Tensor:
        """[B, T, F] -> [B, La, p·p]; patches frequency-major, inside a patch (freq, time), time fastest."""
        return patchify(a.unsqueeze(1).transpose(2, 3), self.cfg.patch_size)

    def unpatchify_audio(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x, self.cfg.patch_size, 1, self.cfg.audio_grid)[:, 0].transpose(1, 2)

    def patchify_image(self, v: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, Lv, p·p·3]; inside a patch (row, col, RGB), RGB fastest."""
        return patchify(v, self.cfg.patch_size)

    def unpatchify_image(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x, self.cfg.patch_size, 3, self.cfg.image_grid)

    # -- encoder / decoder
    def forward_encoder(
        self,
        audio: torch.Tensor,
        imgs: torch.Tensor,
        mask_ratio_a: float = 0.75,
        mask_ratio_v: float = 0.75,
        mask_mode: MaskMode = "unstructured",
        noise: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> CAVMAEEncoded:
        a, v = self.embed_audio(audio), self.embed_image(imgs)
        b = a.shape[0]
        # audio noise is drawn before image noise, as in the reference
        noise_a = noise[0] if noise is not None else torch.rand(b, a.shape[1], device=a.device)
        noise_a = structured_noise(noise_a, self.cfg.audio_grid, mask_ratio_a, mask_mode)
        noise_v = noise[1] if noise is not None else torch.rand(b, v.shape[1], device=v.device)
        a, mask_a, ids_a = random_masking(a, mask_ratio_a, noise_a)
        v, mask_v, ids_v = random_masking(v, mask_ratio_v, noise_v)
        a = self.run(self.blocks_a, a)
        v = self.run(self.blocks_v, v)
        latent = self.joint(a, v)
        return CAVMAEEncoded(latent, mask_a, ids_a, mask_v, ids_v, self.single(a, "a"), self.single(v, "v"), a.shape[1])

    def forward_decoder(self, enc: CAVMAEEncoded) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint latent -> (pred_a [B, La, p·p], pred_v [B, Lv, 3·p·p]) for every token."""
        x = self.decoder_embed(enc.latent)
        b, _, d = x.shape
        la, lv = self.patch_embed_a.num_patches, self.patch_embed_v.num_patches
        ka = enc.keep_a
        kv = x.shape[1] - ka

        def unshuffle(kept: torch.Tensor, length: int, ids_restore: torch.Tensor) -> torch.Tensor:
            full = torch.cat([kept, self.mask_token.expand(b, length - kept.shape[1], d)], dim=1)
            return torch.gather(full, 1, ids_restore.unsqueeze(-1).expand(b, length, d))

        assert kv <= lv and ka <= la
        xa = unshuffle(x[:, :ka], la, enc.ids_restore_a) + self.decoder_pos_embed_a + self.decoder_modality_a
        xv = unshuffle(x[:, ka:], lv, enc.ids_restore_v) + self.decoder_pos_embed_v + self.decoder_modality_v
        x = self.decoder_norm(self.run(self.decoder_blocks, torch.cat([xa, xv], dim=1)))
        return self.decoder_pred_a(x[:, :la]), self.decoder_pred_v(x[:, la:])

    def forward(
        self,
        audio: torch.Tensor,
        imgs: torch.Tensor,
        mask_ratio_a: float = 0.75,
        mask_ratio_v: float = 0.75,
        mae_loss_weight: float = 1.0,
        contrast_loss_weight: float = 0.01,
        mask_mode: MaskMode = "unstructured",
        noise: tuple[torch.Tensor, torch.Tensor] | None = None,
        symmetric_contrast: bool = False,
        gather: bool = False,
    ) -> CAVMAEOut:
        enc = self.forward_encoder(audio, imgs, mask_ratio_a, mask_ratio_v, mask_mode, noise)
        zero = enc.latent.new_zeros(())
        if mae_loss_weight != 0:
            pred_a, pred_v = self.forward_decoder(enc)
            loss_mae_a = mae_loss(pred_a, self.patchify_audio(audio), enc.mask_a, self.cfg.norm_pix_loss)
            loss_mae_v = mae_loss(pred_v, self.patchify_image(imgs), enc.mask_v, self.cfg.norm_pix_loss)
            loss_mae = mae_loss_weight * (loss_mae_a + loss_mae_v)
        else:
            loss_mae_a = loss_mae_v = loss_mae = zero
        if contrast_loss_weight != 0:
            c = cavmae_contrastive(enc.c_a.mean(dim=1), enc.c_v.mean(dim=1), 0.05, symmetric_contrast, gather)
            loss_c, c_acc = contrast_loss_weight * c.total, c.terms["c_acc"]
        else:
            loss_c, c_acc = zero, zero
        return CAVMAEOut(loss_mae + loss_c, loss_mae, loss_mae_a, loss_mae_v, loss_c, enc.mask_a, enc.mask_v, c_acc)

    def forward_inpaint(
        self,
        audio: torch.Tensor,
        imgs: torch.Tensor,
        mask_ratio_a: float = 0.75,
        mask_ratio_v: float = 0.75,
        mask_mode: MaskMode = "unstructured",
        noise: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> CAVMAEInpaint:
        """Predictions for every patch plus the masked-patch losses (use a norm_pix_loss=False model
        to get pixel-space predictions)."""
        enc = self.forward_encoder(audio, imgs, mask_ratio_a, mask_ratio_v, mask_mode, noise)
        pred_a, pred_v = self.forward_decoder(enc)
        loss_a = mae_loss(pred_a, self.patchify_audio(audio), enc.mask_a, self.cfg.norm_pix_loss)
        loss_v = mae_loss(pred_v, self.patchify_image(imgs), enc.mask_v, self.cfg.norm_pix_loss)
        return CAVMAEInpaint(pred_a, pred_v, enc.mask_a, enc.mask_v, loss_a, loss_v)

    def forward_feat(self, audio: torch.Tensor, imgs: torch.Tensor) -> CAVMAEFeatures:
        """Unmasked modality-only token features (retrieval): blocks_x -> blocks_u('x') -> norm_x."""
        return CAVMAEFeatures(self.single(self.audio_stream(audio), "a"), self.single(self.image_stream(imgs), "v"))


# --------------------------------------------------------------------------------------- finetune
class CAVMAEFT(CAVMAEEncoder):
    """Classifier: the encoder (no masking, no decoder) + ``mlp_head = LayerNorm, Linear(D, K)``."""

    def __init__(self, cfg: CAVMAEConfig | None = None, label_dim: int = 527, trainable_pos: bool = True):
        cfg = cfg or CAVMAEConfig()
        super().__init__(cfg, trainable_pos)
        self.label_dim = label_dim
        self.mlp_head = nn.Sequential(nn.LayerNorm(cfg.embed_dim), nn.Linear(cfg.embed_dim, label_dim))
        self._init_encoder()

    def forward_features(self, a: torch.Tensor | None, v: torch.Tensor | None, mode: FinetuneMode = "multimodal") -> torch.Tensor:
        """Mean-pooled [B, D] representation fed to the head (spec §6)."""
        if mode not in FINETUNE_MODES:
            raise ConfigError(f"cavmae_ft: mode: unknown '{mode}'{closest(mode, FINETUNE_MODES)}; known: {', '.join(FINETUNE_MODES)}")
        needs_a = mode in ("multimodal", "audioonly", "missingaudioonly")
        needs_v = mode in ("multimodal", "videoonly", "missingvideoonly")
        if (needs_a and a is None) or (needs_v and v is None):
            raise DataError(f"cavmae_ft: mode '{mode}' needs {'audio' if needs_a and a is None else 'image'} input, got None")
        if mode == "multimodal":
            return self.joint(self.audio_stream(a), self.image_stream(v)).mean(dim=1)
        m = "a" if needs_a else "v"
        x = self.audio_stream(a) if m == "a" else self.image_stream(v)
        pooled = self.single(x, m).mean(dim=1)
        if mode.startswith("missing"):
            # a multimodally finetuned model seeing one modality: average the joint-norm and
            # modality-norm views of the same stream
            pooled = (self.norm(self.run(self.blocks_u, x)).mean(dim=1) + pooled) / 2
        return pooled

    def forward(self, a: torch.Tensor | None, v: torch.Tensor | None, mode: FinetuneMode = "multimodal") -> torch.Tensor:
        """Logits [B, K]."""
        return self.mlp_head(self.forward_features(a, v, mode))


# ---------------------------------------------------------------------------------------- loading
class LoadReport(NamedTuple):
    missing: list[str]  # model keys the checkpoint did not have (left as initialised)
    ignored: list[str]  # checkpoint keys the model has no use for


def load_cavmae_checkpoint(model: CAVMAEEncoder, path_or_state: str | Path | Mapping[str, torch.Tensor], strict: bool = True) -> LoadReport:
    """Load a released (DataParallel, ``module.``-prefixed) or xmodal state dict into `model`.

    strict: every key must match. Non-strict (pretrain -> finetune): ``mlp_head.*`` stays new and
    the decoder keys / ``mask_token`` are ignored; both lists are logged and returned. Shape
    mismatches always fail.
    """
    from xmodal.engine.checkpoint import load_state_file, load_weights, strip_prefix

    where = str(path_or_state) if isinstance(path_or_state, (str, Path)) else type(model).__name__
    state = load_state_file(path_or_state) if isinstance(path_or_state, (str, Path)) else path_or_state
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]  # an xmodal training checkpoint
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{where}: expected a state dict, found {type(state).__name__}")
    state = strip_prefix(state)
    own = model.state_dict()
    if not any(k in own for k in state):
        raise CheckpointError(f"{where}: no key fits {type(model).__name__} (first keys: {', '.join(list(state)[:3])})")
    missing, ignored = load_weights(model, state, strict=strict, what=f"{where} -> {type(model).__name__}")
    if missing or ignored:
        log.info("%s: %d keys left as initialised (%s); %d checkpoint keys ignored (%s)", where,
                 len(missing), _summary(missing), len(ignored), _summary(ignored))
    return LoadReport(missing, ignored)


def _summary(keys: list[str]) -> str:
    """'decoder_blocks.* (160), mask_token' style grouping by top-level name."""
    groups: dict[str, int] = {}
    for k in keys:
        top = k.split(".")[0]
        groups[top] = groups.get(top, 0) + 1
    return ", ".join(f"{g}.* ({n})" if n > 1 else g for g, n in groups.items()) or "-"


# --------------------------------------------------------------------------------------- builders
@register_model("cavmae")
def build_cavmae(
    size: Literal["base", "tiny"] = "base",
    audio_length: int | None = None,
    image_size: int | None = None,
    patch_size: int | None = None,
    modality_specific_depth: int | None = None,
    norm_pix_loss: bool = True,
    trainable_pos: bool = False,
    checkpoint: str | None = None,
) -> CAVMAE:
    """Pretraining CAV-MAE from a size preset plus overrides; `checkpoint` loads strictly."""
    cfg = cavmae_config(size, audio_length=audio_length, image_size=image_size, patch_size=patch_size,
                        modality_specific_depth=modality_specific_depth, norm_pix_loss=norm_pix_loss)
    model = CAVMAE(cfg, trainable_pos=trainable_pos)
    if checkpoint:
        load_cavmae_checkpoint(model, checkpoint, strict=True)
    return model


@register_model("cavmae_ft")
def build_cavmae_ft(
    label_dim: int = 527,
    size: Literal["base", "tiny"] = "base",
    audio_length: int | None = None,
    image_size: int | None = None,
    patch_size: int | None = None,
    modality_specific_depth: int | None = None,
    trainable_pos: bool = True,
    checkpoint: str | None = None,
    strict: bool = False,
) -> CAVMAEFT:
    """Finetuning CAV-MAE; `checkpoint` is usually a pretrained one (strict=False: new head)."""
    cfg = cavmae_config(size, audio_length=audio_length, image_size=image_size, patch_size=patch_size,
                        modality_specific_depth=modality_specific_depth)
    model = CAVMAEFT(cfg, label_dim=label_dim, trainable_pos=trainable_pos)
    if checkpoint:
        load_cavmae_checkpoint(model, checkpoint, strict=strict)
    return model
