"""Action-anticipation metrics (EGTEA Gaze+ / EPIC-Kitchens-55 style) and score-averaging ensembles.

* `anticipation_metrics`: action top-1 / top-5, class-mean top-1 accuracy, class-mean top-5 recall
  (all classes present, and the many-shot subset when given: the EK55 headline number), and the
  same for verbs and nouns derived from the action scores.
* Verb/noun scores from action scores (`marginal_scores`): softmax over the actions, then the
  probabilities of all actions sharing a verb (noun) are summed — P(v) = Σ_{a: verb(a)=v} P(a).
* `ensemble_outputs`: several checkpoints' eval outputs aligned by uid and averaged (softmax
  probabilities by default, or raw logits), as the EK55 results of text-KD/AVT use.

Percentages in [0, 100], as in `xmodal.eval.metrics` (whose tie rule they share).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from xmodal.errors import DataError
from xmodal.eval.metrics import class_mean_topk_recall, mean_class_accuracy, topk_accuracy


@dataclass
class ActionSpace:
    """How actions decompose: action -> verb / noun ids, and the many-shot sets (EK55)."""

    action_verb: list[int] | None = None
    action_noun: list[int] | None = None
    many_shot_actions: list[int] | None = None
    many_shot_verbs: list[int] | None = None
    many_shot_nouns: list[int] | None = None

    @classmethod
    def from_info(cls, extra: dict[str, Any]) -> ActionSpace:
        """From a data source's `DataInfo.extra` (keys of the same names; absent ones stay None)."""
        return cls(*(extra.get(k) for k in ("action_verb", "action_noun", "many_shot_actions",
                                             "many_shot_verbs", "many_shot_nouns")))  # fmt: skip

    def or_else(self, other: ActionSpace) -> ActionSpace:
        """This space's fields, with `other`'s where this one has none."""
        return ActionSpace(*(a if a is not None else b for a, b in zip(vars(self).values(), vars(other).values())))

    @classmethod
    def from_files(cls, actions: str | None = None, many_shot: str | None = None) -> ActionSpace:
        """From an importer's `actions.json` (id, verb, noun, ...) and `many_shot.json` (actions, verbs, nouns)."""
        import json
        from pathlib import Path

        out = cls()
        if actions:
            rows = sorted(json.loads(Path(actions).read_text(encoding="utf-8")), key=lambda a: int(a["id"]))
            if [int(a["id"]) for a in rows] != list(range(len(rows))):
                raise DataError(f"{actions}: action ids must be 0..{len(rows) - 1}")
            out.action_verb, out.action_noun = [int(a["verb"]) for a in rows], [int(a["noun"]) for a in rows]
        if many_shot:
            m = json.loads(Path(many_shot).read_text(encoding="utf-8"))
            out.many_shot_actions, out.many_shot_verbs, out.many_shot_nouns = (m.get(k) for k in ("actions", "verbs", "nouns"))
        return out


def marginal_scores(action_scores: torch.Tensor, action_to_group: Sequence[int], num_groups: int | None = None) -> torch.Tensor:
    """[N, A] action logits -> [N, G] probabilities of the groups (verbs or nouns):
    P(g) = Σ_{a: group(a) = g} softmax(s)_a. Computed in float64 so sums of tiny terms keep their order."""
    s = torch.as_tensor(action_scores).double()
    group = torch.as_tensor(list(action_to_group), dtype=torch.long)
    if group.numel() != s.shape[1]:
        raise DataError(f"action -> verb/noun map: {group.numel()} entries for {s.shape[1]} action scores")
    g = int(num_groups if num_groups is not None else group.max() + 1)
    return torch.zeros(s.shape[0], g, dtype=s.dtype).index_add_(1, group, s.softmax(1))


def _scores_metrics(scores: torch.Tensor, labels: torch.Tensor, k: int, many: Sequence[int] | None) -> dict[str, float]:
    out = topk_accuracy(scores, labels, ks=(1,))
    out["mean_class_acc"] = mean_class_accuracy(scores, labels)
    if k >= scores.shape[1]:  # top-k of k or fewer classes is trivially 100: not reported
        return out
    out.update(topk_accuracy(scores, labels, ks=(k,)))
    out[f"cm_recall{k}"] = class_mean_topk_recall(scores, labels, k)
    if many is not None:
        present = set(torch.unique(labels).tolist()) & set(many)
        # an eval set without any many-shot class has no such number (not 0)
        out[f"cm_recall{k}_many_shot"] = class_mean_topk_recall(scores, labels, k, classes=list(many)) if present else float("nan")
    return out


def anticipation_metrics(scores: Any, labels: Any, space: ActionSpace | None = None, *, k: int = 5) -> dict[str, float]:
    """Action metrics on `scores` [N, A] (logits or probabilities) and, with the action -> verb /
    noun maps, verb_* and noun_* metrics on the marginal probabilities.

    Keys: top1, top{k}, mean_class_acc (class-mean top-1 over classes present), cm_recall{k}
    (class-mean top-k recall over classes present), cm_recall{k}_many_shot (over the many-shot
    classes present; EK55's headline; NaN when none is present), each also prefixed verb_ /
    noun_. The top-k keys are left out when there are k classes or fewer (they would be 100).
    """
    s = torch.as_tensor(scores).detach().cpu()
    y = torch.as_tensor(labels).detach().cpu().long()
    space = space or ActionSpace()
    out = _scores_metrics(s, y, k, space.many_shot_actions)
    for name, mapping, many in (("verb", space.action_verb, space.many_shot_verbs),
                                ("noun", space.action_noun, space.many_shot_nouns)):  # fmt: skip
        if mapping is None:
            continue
        group = torch.as_tensor(list(mapping), dtype=torch.long)
        if y.max() >= group.numel():
            raise DataError(f"{name} map: {group.numel()} actions, but a label is {int(y.max())}")
        probs = marginal_scores(s, group)
        out.update({f"{name}_{key}": v for key, v in _scores_metrics(probs, group[y], k, many).items()})
    return out


# ---------------------------------------------------------------------------------- ensembles
def ensemble_scores(scores: Sequence[torch.Tensor], *, mode: Literal["prob", "logit"] = "prob",
                    weights: Sequence[float] | None = None) -> torch.Tensor:
    """Weighted mean of several models' [N, C] scores: softmax probabilities ("prob") or logits."""
    if not scores:
        raise DataError("ensemble: no model outputs")
    if mode not in ("prob", "logit"):
        raise DataError(f"ensemble mode: expected 'prob' or 'logit', found '{mode}'")
    shapes = {tuple(s.shape) for s in scores}
    if len(shapes) != 1:
        raise DataError(f"ensemble: models disagree on the score shape: {sorted(shapes)}")
    w = torch.tensor(list(weights) if weights is not None else [1.0] * len(scores), dtype=torch.float64)
    if w.numel() != len(scores) or (w < 0).any() or w.sum() <= 0:
        raise DataError(f"ensemble weights: expected {len(scores)} non-negative numbers with a positive sum")
    stack = torch.stack([s.double().softmax(1) if mode == "prob" else s.double() for s in scores])
    return (w[:, None, None] * stack).sum(0) / w.sum()


@dataclass
class EnsembleOut:
    scores: torch.Tensor  # [N, C] averaged
    labels: torch.Tensor  # [N]
    uids: list[str]


def ensemble_outputs(outputs: Sequence[dict], *, mode: Literal["prob", "logit"] = "prob",
                     weights: Sequence[float] | None = None, names: Sequence[str] | None = None) -> EnsembleOut:
    """Average eval outputs ({"uid", "logits", "label"} per model) after aligning rows by uid.

    Every model must have scored exactly the same uids (in any order) with the same labels; rows
    follow the first model's order.
    """
    names = list(names or [f"model {i}" for i in range(len(outputs))])
    if not outputs:
        raise DataError("ensemble: no model outputs")
    ref = [str(u) for u in outputs[0]["uid"]]
    if len(set(ref)) != len(ref):
        raise DataError(f"ensemble: {names[0]} scored some uid twice")
    aligned, labels = [], torch.as_tensor(outputs[0]["label"])
    for name, out in zip(names, outputs):
        row = {str(u): i for i, u in enumerate(out["uid"])}
        missing = [u for u in ref if u not in row]
        if missing or len(row) != len(ref):
            extra = sorted(set(row) - set(ref))
            raise DataError(f"ensemble: {name} scored other uids than {names[0]} "
                            f"(missing '{missing[0] if missing else ''}', extra '{extra[0] if extra else ''}')")  # fmt: skip
        idx = torch.tensor([row[u] for u in ref])
        if not torch.equal(torch.as_tensor(out["label"])[idx], labels):
            raise DataError(f"ensemble: {name} has other labels than {names[0]} for the same uids")
        aligned.append(torch.as_tensor(out["logits"])[idx])
    return EnsembleOut(ensemble_scores(aligned, mode=mode, weights=weights), labels, ref)
