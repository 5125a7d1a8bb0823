"""Released GDT/STiCA checkpoints -> the state dict of xmodal's ``gdt`` method (specs/gdt-stica.md §10).

Assumed release layout (from the spec; no released file was available to check against):
a torch pickle ``{"model": state_dict, "epoch": ..., ...}`` (older files: ``"state_dict"``),
keys possibly prefixed ``module.`` (DDP), then

* ``video_network.base.*`` — the R(2+1)D-18 trunk in torchvision's VideoResNet names
  (``stem.{0,1,3,4}``, ``layer{1..4}.{0,1}.conv{1,2}.0.{0,1,3}``, ``.conv{1,2}.1``,
  ``layer{2,3,4}.0.downsample.{0,1}``) -> ``video.*`` (same names below the prefix);
* ``audio_network.base.*`` — the audio ResNet-9 in torchvision ResNet names -> ``audio.*``; its
  unused ``fc`` (the 1000-way classifier torchvision's constructor adds) is dropped;
* ``mlp_v.*``, ``mlp_a.*`` — the projection heads (same module indices as ours) -> unchanged;
* anything else (STiCA's pooling transformer and crop heads, a text network, optimiser state
  under the model key ...) is reported as unexpected and not converted.

The mapping is a prefix rename, independent of the layer widths. The result is checked against
the key/shape table of our ``gdt`` method (published sizes unless another table is given):
missing, unexpected and shape-mismatched keys are reported, and a video trunk that is not fully
covered (a missing or mismatched ``video.*`` key) is an error — the trunk is what fine-tuning
transfers. BatchNorm ``num_batches_tracked`` counters absent from very old files are filled with 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from xmodal.errors import CheckpointError

PREFIXES = (  # released prefix -> ours
    ("video_network.base.", "video."),
    ("audio_network.base.", "audio."),
    ("mlp_v.", "mlp_v."),
    ("mlp_a.", "mlp_a."),
)
DROPPED = ("audio_network.base.fc.",)  # torchvision's unused classifier on the audio trunk
PARTS = ("video", "audio", "heads")


@dataclass
class GDTConversion:
    """The converted state dict and what did not map (our key names, except `unexpected`)."""

    state: dict[str, torch.Tensor]
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # released key names
    mismatched: list[str] = field(default_factory=list)  # "key (theirs) != (ours)"
    dropped: list[str] = field(default_factory=list)  # released keys left out on purpose
    filled: list[str] = field(default_factory=list)  # num_batches_tracked counters set to 0

    def summary(self) -> str:
        def show(label: str, keys: list[str]) -> str:
            more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
            return f"{len(keys)} {label}: {', '.join(keys[:4])}{more}"

        parts = [f"{len(self.state)} tensors converted"]
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape mismatch", self.mismatched), ("dropped", self.dropped), ("filled", self.filled)):
            if keys:
                parts.append(show(label, keys))
        return "; ".join(parts)


def expected_shapes(method_cfg=None) -> dict[str, tuple[int, ...]]:
    """Key -> shape of our ``gdt`` method's state dict (built on the meta device)."""
    from xmodal.data.bundle import DataInfo
    from xmodal.methods.gdt import GDT, GDTConfig

    with torch.device("meta"):
        method = GDT(method_cfg or GDTConfig(), DataInfo())
    return {k: tuple(v.shape) for k, v in method.state_dict().items()}


def _unwrap(obj, where: str) -> dict[str, torch.Tensor]:
    from xmodal.engine.checkpoint import strip_prefix

    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{where}: expected a state dict (or {{'model' | 'state_dict': state_dict}}), "
                              f"found {type(obj).__name__}")
    tensors = {k: v for k, v in strip_prefix(obj).items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{where}: no tensors found under the state dict")
    return tensors


def _part(our_key: str) -> str:
    return "heads" if our_key.startswith("mlp_") else our_key.split(".", 1)[0]


def convert_gdt(
    checkpoint: str | Path | Mapping,
    *,
    expected: Mapping[str, tuple[int, ...]] | None = None,
    parts: tuple[str, ...] = PARTS,
) -> GDTConversion:
    """Released GDT/STiCA checkpoint (path or loaded object) -> `GDTConversion` in our names.

    `expected`: our key -> shape table (default `expected_shapes()`: published sizes); `parts`:
    which of "video", "audio", "heads" to keep (e.g. ("video",) for fine-tuning only). Raises
    CheckpointError when the file is not a state dict or the video trunk is not fully covered.
    """
    where = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "checkpoint"
    if isinstance(checkpoint, (str, Path)):
        from xmodal.engine.checkpoint import load_state_file

        checkpoint = load_state_file(checkpoint)
    bad = [p for p in parts if p not in PARTS]
    if bad or "video" not in parts:
        raise CheckpointError(f"convert gdt: parts must include 'video' and be among {PARTS}, found {parts}")
    state = _unwrap(checkpoint, where)
    expected = dict(expected_shapes() if expected is None else expected)
    expected = {k: s for k, s in expected.items() if _part(k) in parts}
    out = GDTConversion({})
    for key, value in state.items():
        if key.startswith(DROPPED):
            out.dropped.append(key)
            continue
        ours = next((new + key[len(old):] for old, new in PREFIXES if key.startswith(old)), None)
        if ours is None or ours not in expected:
            if ours is None or _part(ours) in parts:
                out.unexpected.append(key)
            else:
                out.dropped.append(key)
            continue
        if tuple(value.shape) != tuple(expected[ours]):
            out.mismatched.append(f"{ours} {tuple(value.shape)} != {tuple(expected[ours])}")
            continue
        out.state[ours] = value
    for key, shape in expected.items():
        if key in out.state:
            continue
        if key.endswith("num_batches_tracked") and not shape:
            out.state[key] = torch.zeros((), dtype=torch.long)
            out.filled.append(key)
        elif not any(m.startswith(key + " ") for m in out.mismatched):
            out.missing.append(key)
    trunk_gaps = [k for k in out.missing if k.startswith("video.")] + [m for m in out.mismatched if m.startswith("video.")]
    if trunk_gaps:
        raise CheckpointError(f"{where}: the video trunk is not fully covered ({len(trunk_gaps)} keys, e.g. "
                              f"{', '.join(trunk_gaps[:3])}); {out.summary()}")
    return out
