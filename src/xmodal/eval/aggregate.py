"""Video-level evaluation: pool the scores of many windows / frames / crops of one video.

Used for CCL and GDT (all windows or 30 views of a test video) and CAV-MAE (10 frames per clip).
Groups keep the order in which they first appear, so results line up with the input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from xmodal.errors import DataError

_HOW = ("mean_softmax", "mean_logits", "mean_sigmoid")


class GroupedScores(NamedTuple):
    groups: list[str]  # unique group ids, first-appearance order
    scores: torch.Tensor  # [G, C]


class GroupedLabels(NamedTuple):
    groups: list[str]
    labels: torch.Tensor  # [G] or [G, K]


class VideoLevel(NamedTuple):
    groups: list[str]
    scores: torch.Tensor
    labels: torch.Tensor


def group_index(groups: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """(unique ids in first-appearance order, [N] long index of each row's group)."""
    first = dict.fromkeys(groups)
    pos = {g: i for i, g in enumerate(first)}
    return list(first), torch.tensor([pos[g] for g in groups], dtype=torch.long)


def aggregate_scores(groups: Sequence[str], scores: Any, how: str = "mean_softmax") -> GroupedScores:
    """Mean per group of softmax(scores), raw scores or sigmoid(scores).

    mean_softmax: CCL's protocol (average of per-window class probabilities); mean_logits: GDT's
    30-view average; mean_sigmoid: CAV-MAE's 10-frame average for multi-label mAP.
    """
    if how not in _HOW:
        raise DataError(f"aggregate how: expected one of {', '.join(_HOW)}, found '{how}'")
    s = torch.as_tensor(scores).detach().cpu()
    if s.dim() != 2 or s.shape[0] != len(groups):
        raise DataError(f"aggregate scores: expected shape ({len(groups)}, C), found {tuple(s.shape)}")
    s = s.double() if not s.is_floating_point() or s.dtype == torch.float64 else s.float()
    if how == "mean_softmax":
        s = s.softmax(1)
    elif how == "mean_sigmoid":
        s = s.sigmoid()
    uniq, idx = group_index(groups)
    sums = torch.zeros(len(uniq), s.shape[1], dtype=s.dtype).index_add_(0, idx, s)
    counts = torch.bincount(idx, minlength=len(uniq)).to(s.dtype)
    return GroupedScores(uniq, sums / counts[:, None])


def aggregate_labels(groups: Sequence[str], labels: Any) -> GroupedLabels:
    """One label ([N] or multi-hot [N,K]) per group; DataError if a group's windows disagree."""
    y = torch.as_tensor(labels).detach().cpu()
    if y.dim() not in (1, 2) or y.shape[0] != len(groups):
        raise DataError(
            f"aggregate labels: expected shape ({len(groups)},) or ({len(groups)}, K), found {tuple(y.shape)}"
        )
    uniq, idx = group_index(groups)
    # the label of a group's first row is the reference every other row must equal
    first_row = torch.full((len(uniq),), len(groups), dtype=torch.long).scatter_reduce_(
        0, idx, torch.arange(len(groups)), reduce="amin"
    )
    ref = y[first_row]
    differs = ref[idx] != y
    if differs.dim() == 2:
        differs = differs.any(1)
    if differs.any():
        row = int(differs.nonzero()[0])
        g = groups[row]
        raise DataError(
            f"aggregate labels: group '{g}' has windows with different labels"
            f" ({ref[idx[row]].tolist()} at row {int(first_row[idx[row]])} vs {y[row].tolist()} at row {row})"
        )
    return GroupedLabels(uniq, ref)


def aggregate_outputs(
    groups: Sequence[str], scores: Any, labels: Any, how: str = "mean_softmax"
) -> VideoLevel:
    """Grouped scores and their (checked) labels, aligned row by row."""
    s = aggregate_scores(groups, scores, how)
    y = aggregate_labels(groups, labels)
    return VideoLevel(s.groups, s.scores, y.labels)
