"""GDT generalized-NCE (Patrick et al., ICCV 2021) and STiCA crop/cross-modal losses
(specs/gdt-stica.md §4).

Every NCE here detaches its keys: gradients reach the encoders through the queries only, and
each loss is applied with every modality/crop as query. Negatives from other processes are the
detached embeddings of the other ranks; each function takes them explicitly (``remote``) so it
runs in one process (W = 1: no remote keys), or gathers them itself with
`xmodal.engine.dist.gather_other` when ``remote=None``.

Global loss under DDP: a rank's loss is the mean over its N local queries, whose negatives are the
whole global batch. DDP averages gradients over W ranks, so training follows the mean over ranks
of the per-rank losses = the mean over all N·W queries = the single-process loss on the global
batch (tests/losses/test_gdt.py checks value and gradients).

Views (GDT): ``V`` clip 1, ``V2`` clip 2 (time shift), ``VR`` / ``V2R`` time-reversed; features
are passed as ``{view: (video_emb, audio_emb)}`` with [N, D] tensors per modality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

from xmodal.engine.dist import gather_other
from xmodal.errors import ConfigError
from xmodal.losses import LossOut

VIEWS = ("V", "V2", "VR", "V2R")
MODALITIES = ("v", "a")
KINDS = ("base", "variant", "invariant")
NEGATIVE_MODES = ("clean", "official")

Feats = dict[str, tuple[torch.Tensor, torch.Tensor]]


class Term(NamedTuple):
    """One GDT term T(kind; p, q); q is None for the single-view base term of H1."""

    kind: str
    p: str
    q: str | None = None

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.p}" + (f"_{self.q}" if self.q else "")


def _terms(*spec: str) -> tuple[Term, ...]:
    # "var 1 3" -> Term("variant", "V", "VR"); view numbers as in the paper (1 V, 2 V2, 3 VR, 4 V2R)
    kinds = {"base": "base", "var": "variant", "inv": "invariant"}
    out = []
    for s in spec:
        kind, *views = s.split()
        out.append(Term(kinds[kind], *(VIEWS[int(v) - 1] for v in views)))
    return tuple(out)


# Spec §4.4, in the reference's evaluation order (matters only for the "official" negatives).
HYPOTHESES: dict[int, tuple[Term, ...]] = {
    1: _terms("base 1"),
    2: _terms("var 1 3"),
    3: _terms("base 1 3", "inv 1 3"),
    4: _terms("var 1 2"),
    5: _terms("base 1 2", "inv 1 2"),
    6: _terms("var 1 3", "var 2 4", "var 1 2", "var 3 4"),
    7: _terms("base 1 3", "inv 1 3", "inv 2 4", "var 1 2", "var 3 4"),
    8: _terms("base 1 2", "var 1 3", "var 2 4", "inv 1 2", "inv 3 4"),
    9: _terms("base 1 3", "base 1 2", "inv 1 3", "inv 2 4", "inv 1 2", "inv 3 4"),
}


def hypothesis_terms(hypothesis: int) -> tuple[Term, ...]:
    if hypothesis not in HYPOTHESES:
        raise ConfigError(f"hypothesis: expected an integer 1..9, found {hypothesis!r}")
    return HYPOTHESES[hypothesis]


def _views(terms: tuple[Term, ...]) -> list[str]:
    used = {v for t in terms for v in (t.p, t.q) if v}
    return [v for v in VIEWS if v in used]


def _other(modality: str) -> str:
    return "a" if modality == "v" else "v"


class Key(NamedTuple):
    """A key set: `view`'s `modality` embedding of the query's own sample ("same") or of every
    other sample j ≠ i of the global batch ("other")."""

    view: str
    modality: str
    sample: str


class NCEQuery(NamedTuple):
    """One CE of a hypothesis (clean negatives of §4.3): its query, positive and negative sets,
    and its weight in the hypothesis' total loss."""

    term: int
    kind: str
    query: tuple[str, str]
    positive: tuple[str, str]
    negatives: frozenset[Key]
    weight: float


def _term_queries(index: int, term: Term, weight: float) -> list[NCEQuery]:
    if term.q is None:
        return [NCEQuery(index, term.kind, (term.p, m), (term.p, _other(m)),
                         frozenset({Key(term.p, _other(m), "other")}), weight / 2) for m in MODALITIES]
    rows = []
    for x, partner in ((term.p, term.q), (term.q, term.p)):
        for m in MODALITIES:
            k = _other(m)
            negatives = {Key(x, k, "other"), Key(partner, k, "other")}
            if term.kind == "variant":  # hard negative: same sample, other transformation
                negatives.add(Key(partner, k, "same"))
            positive = (partner, k) if term.kind == "invariant" else (x, k)
            rows.append(NCEQuery(index, term.kind, (x, m), positive, frozenset(negatives), weight / 4))
    return rows


def hypothesis_table(hypothesis: int) -> list[NCEQuery]:
    """Every (query, positive, negative set) CE of hypothesis 1..9 with its weight (they sum to 1)."""
    terms = hypothesis_terms(hypothesis)
    return [row for i, t in enumerate(terms) for row in _term_queries(i, t, 1.0 / len(terms))]


# --------------------------------------------------------------------------------- NCE block


def _drop_diagonal(m: torch.Tensor) -> torch.Tensor:
    """[N, N] -> [N, N−1] without the diagonal (row i keeps columns j ≠ i in order)."""
    n = m.shape[0]
    return m.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(n, n - 1)


def nce_logits(
    q: torch.Tensor,
    k_pos: torch.Tensor,
    negatives: torch.Tensor | None = None,
    *,
    temperature: float,
    local_extra: torch.Tensor | None = None,
) -> torch.Tensor:
    """[q k_posᵀ | q local_extraᵀ without its diagonal | q negativesᵀ] / t; the target of row i is
    column i. All keys are detached. `local_extra` is a row-aligned local key block whose
    same-sample entry is excluded (it is the positive of a sibling term)."""
    blocks = [q @ k_pos.detach().t()]
    if local_extra is not None:
        blocks.append(_drop_diagonal(q @ local_extra.detach().t()))
    if negatives is not None and negatives.shape[0] > 0:
        blocks.append(q @ negatives.detach().t())
    return torch.cat(blocks, 1) / temperature


def nce(
    q: torch.Tensor,
    k_pos: torch.Tensor,
    negatives: torch.Tensor | None = None,
    temperature: float = 0.07,
    *,
    local_extra: torch.Tensor | None = None,
) -> torch.Tensor:
    """NCE block of §4.1: ``mean_i CE([q k_posᵀ | q Zᵀ] / t, target i)``; keys detached.

    Local off-diagonal positives k_pos(j ≠ i) are negatives; Z (`negatives`) are extra negatives
    (remote ranks, hard negatives). See `nce_logits` for `local_extra`.
    """
    logits = nce_logits(q, k_pos, negatives, temperature=temperature, local_extra=local_extra)
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


# ------------------------------------------------------------------------- GDT, clean negatives


def _emb(feats: Feats, view: str, modality: str) -> torch.Tensor:
    if view not in feats:
        raise ValueError(f"GDT features: view '{view}' missing; given {sorted(feats)}")
    return feats[view][MODALITIES.index(modality)]


def _remote(remote: Feats, view: str, modality: str, like: torch.Tensor) -> torch.Tensor:
    if view not in remote:  # {} stands for "no other ranks"
        return like.detach()[:0]
    return remote[view][MODALITIES.index(modality)]


def gather_remote(feats: Feats, views: list[str] | None = None) -> Feats:
    """{view: (v, a)} of all other ranks (detached, rank order); empty tensors when alone.

    A collective: every rank must call it with the same views in the same order."""
    views = [v for v in VIEWS if v in feats] if views is None else views
    return {v: (gather_other(feats[v][0]), gather_other(feats[v][1])) for v in views}


def gdt_query_logits(row: NCEQuery, feats: Feats, remote: Feats, *, temperature: float) -> torch.Tensor:
    """Logits [N, 1 + 2(NW−1) (+1 for variant)] of one `hypothesis_table` row (target: column i)."""
    view, m = row.query
    pos_view, k = row.positive
    q = _emb(feats, view, m)
    other_views = {key.view for key in row.negatives if key.sample == "other"}
    same_views = {key.view for key in row.negatives if key.sample == "same"}
    assert pos_view in other_views and all(key.modality == k for key in row.negatives)
    partner = sorted(other_views - {pos_view})
    assert len(partner) <= 1 and same_views <= set(partner)
    blocks, local_extra = [], None
    if partner:
        local = _emb(feats, partner[0], k)
        if partner[0] in same_views:
            blocks.append(local)  # the whole local block, same sample included (hard negative)
        else:
            local_extra = local
    blocks += [_remote(remote, v, k, q) for v in [pos_view, *partner]]
    return nce_logits(q, _emb(feats, pos_view, k), torch.cat(blocks, 0), temperature=temperature,
                      local_extra=local_extra)


def _row_loss(logits: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


def gdt_term(
    kind: str, p: str, q: str | None, feats: Feats, *, remote: Feats | None = None, temperature: float = 0.07
) -> torch.Tensor:
    """T(kind; p, q) of §4.3 with clean negatives: mean of the 4 CEs (v_p, a_p, v_q, a_q as
    queries), or ½(L_v + L_a) for the single-view base term (q None)."""
    if kind not in KINDS:
        raise ConfigError(f"GDT term kind: expected one of {', '.join(KINDS)}, found '{kind}'")
    term = Term(kind, p, q)
    if remote is None:
        remote = gather_remote(feats, _views((term,)))
    rows = _term_queries(0, term, 1.0)
    return sum(r.weight * _row_loss(gdt_query_logits(r, feats, remote, temperature=temperature)) for r in rows)


def gdt_loss(
    hypothesis: int,
    feats: Feats,
    *,
    temperature: float = 0.07,
    remote: Feats | None = None,
    negatives: str = "clean",
) -> LossOut:
    """GDT loss of hypothesis 1..9 (§4.4): the mean of its terms T(kind; P, Q).

    `remote`: {view: (v, a)} of the other ranks (detached; ``{}`` for none); None gathers them.
    ``negatives="official"`` runs the reference's accumulated negatives (`gdt_loss_official`).
    Terms: each T by `Term.name`.
    """
    if negatives not in NEGATIVE_MODES:
        raise ConfigError(f"negatives: expected one of {', '.join(NEGATIVE_MODES)}, found '{negatives}'")
    if negatives == "official":
        return gdt_loss_official(hypothesis, feats, temperature=temperature, remote=remote)
    terms = hypothesis_terms(hypothesis)
    if remote is None:
        remote = gather_remote(feats, _views(terms))
    values = {t.name: gdt_term(t.kind, t.p, t.q, feats, remote=remote, temperature=temperature) for t in terms}
    return LossOut(sum(values.values()) / len(values), values)


# ------------------------------------------------------------ GDT, reference ("official") negatives


class OfficialQuery(NamedTuple):
    """One CE as the reference computes it: local negatives are the positive view's block
    (+ the partner's full local block for variant); `remote` lists the (view, modality) key sets
    of the other ranks concatenated as negatives, duplicates included."""

    term: int
    kind: str
    query: tuple[str, str]
    positive: tuple[str, str]
    remote: tuple[tuple[str, str], ...]
    local_partner: tuple[str, str] | None
    weight: float


def official_negative_plan(hypothesis: int) -> list[OfficialQuery]:
    """Emulate the reference's per-(view, modality) remote lists, extended in place (§4.5, §11).

    Each list starts as [that key set of the other ranks]. The P-as-query half of a term extends
    one list per key modality — base/variant: own view's list += partner's; invariant: partner's
    list += own view's — and the Q half reuses those concatenations. Lists persist over the terms.
    """
    terms = hypothesis_terms(hypothesis)
    lists = {(v, m): [(v, m)] for v in VIEWS for m in MODALITIES}
    weight = 1.0 / len(terms)
    plan = []
    for i, term in enumerate(terms):
        if term.q is None:
            plan += [OfficialQuery(i, term.kind, (term.p, m), (term.p, _other(m)),
                                   tuple(lists[term.p, _other(m)]), None, weight / 2) for m in MODALITIES]
            continue
        concat = {}
        for k in MODALITIES:
            own, partner = lists[term.p, k], lists[term.q, k]
            grown = partner if term.kind == "invariant" else own
            grown.extend(own if term.kind == "invariant" else partner)
            concat[k] = tuple(grown)
        for x, partner in ((term.p, term.q), (term.q, term.p)):
            for m in MODALITIES:
                k = _other(m)
                positive = (partner, k) if term.kind == "invariant" else (x, k)
                hard = (partner, k) if term.kind == "variant" else None
                plan.append(OfficialQuery(i, term.kind, (x, m), positive, concat[k], hard, weight / 4))
    return plan


def official_query_logits(row: OfficialQuery, feats: Feats, remote: Feats, *, temperature: float) -> torch.Tensor:
    """[q·positive-view block | q·remote lists | q·partner block (variant)] / t, as the reference."""
    q = _emb(feats, *row.query)
    blocks = [_remote(remote, v, mod, q) for v, mod in row.remote]
    if row.local_partner is not None:
        blocks.append(_emb(feats, *row.local_partner))
    return nce_logits(q, _emb(feats, *row.positive), torch.cat(blocks, 0), temperature=temperature)


def gdt_loss_official(
    hypothesis: int, feats: Feats, *, temperature: float = 0.07, remote: Feats | None = None
) -> LossOut:
    """GDT loss with the reference implementation's negatives (bit-parity mode, not a default).

    Differs from `gdt_loss` (spec §8.2): base/invariant queries see no local partner block, and
    remote negatives accumulate and repeat across terms (see `official_negative_plan`).
    """
    terms = hypothesis_terms(hypothesis)
    if remote is None:
        remote = gather_remote(feats, _views(terms))
    values = [0.0] * len(terms)
    for row in official_negative_plan(hypothesis):
        loss = _row_loss(official_query_logits(row, feats, remote, temperature=temperature))
        values[row.term] = values[row.term] + row.weight * len(terms) * loss
    named = {t.name: v for t, v in zip(terms, values)}
    return LossOut(sum(values) / len(values), named)


# ---------------------------------------------------------------------------------------- STiCA


def gdt_nce(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    temperature: float = 0.1,
    symmetric: bool = True,
    remote_x: torch.Tensor | None = None,
    remote_y: torch.Tensor | None = None,
) -> torch.Tensor:
    """STiCA's NCE: ``L_yx = CE([y xᵀ | y remote_xᵀ] / t, i)`` (query y, keys x detached);
    symmetric: ½(L_yx + L_xy). A None remote is gathered from the other ranks."""
    if remote_x is None:
        remote_x = gather_other(x)
    l_yx = nce(y, x, remote_x, temperature)
    if not symmetric:
        return l_yx
    if remote_y is None:
        remote_y = gather_other(y)
    return 0.5 * (l_yx + nce(x, y, remote_y, temperature))


@dataclass
class CropFeats:
    """Embeddings [N, D] of one view's feature-map crops (large ≤ 2 per type)."""

    spatial_large: list[torch.Tensor] = field(default_factory=list)
    spatial_small: list[torch.Tensor] = field(default_factory=list)
    temporal_large: list[torch.Tensor] = field(default_factory=list)
    temporal_small: list[torch.Tensor] = field(default_factory=list)


@dataclass
class StiCAFeats:
    """Global video/audio embeddings of the two forward passes and their crops."""

    v1: torch.Tensor
    a1: torch.Tensor
    v2: torch.Tensor
    a2: torch.Tensor
    crops1: CropFeats = field(default_factory=CropFeats)
    crops2: CropFeats = field(default_factory=CropFeats)


def _crop_terms(kind: str, feats: StiCAFeats, remote: StiCAFeats | None, temperature: float):
    """(group, loss) pairs of one crop type (spatial | temporal), as in §4.6."""
    large1, small2 = getattr(feats.crops1, f"{kind}_large"), getattr(feats.crops2, f"{kind}_small")
    large2 = getattr(feats.crops2, f"{kind}_large")
    lg, s = len(large1), len(small2)
    if lg > 2 or len(large2) != lg or len(getattr(feats.crops1, f"{kind}_small")) != s:
        raise ValueError(f"STiCA {kind} crops: both views need the same counts and at most 2 large crops")
    if not (s > 0 or lg > 1):
        return []

    def rem(crops: str, size: str, i: int) -> torch.Tensor | None:
        return None if remote is None else getattr(getattr(remote, crops), f"{kind}_{size}")[i]

    out = []
    if lg == 2:
        out.append((f"{kind}_large", gdt_nce(large2[1], large1[1], temperature=temperature, symmetric=True,
                                             remote_x=rem("crops2", "large", 1), remote_y=rem("crops1", "large", 1))))
    for i in range(lg):
        for j in range(s):  # query: view 2's small crop; keys: view 1's large crop
            out.append((f"{kind}_small", gdt_nce(large1[i], small2[j], temperature=temperature, symmetric=False,
                                                 remote_x=rem("crops1", "large", i))))
    return out


def stica_loss(
    feats: StiCAFeats,
    *,
    remote: StiCAFeats | None = None,
    alpha: float = 0.5,
    av_temperature: float = 0.1,
    crop_temperature: float = 0.5,
    av_symmetric: bool = True,
) -> LossOut:
    """STiCA objective (§4.6): ``L = (1 − α) L_crops + α L_av``.

    L_av = ½[gdt_nce(v¹, a¹) + gdt_nce(v², a²)] at `av_temperature` (query a, keys v; + the
    reverse when symmetric). L_crops = mean over all crop terms, per type (spatial, temporal):
    large-large gdt_nce(c2.large[1], c1.large[1], sym) when 2 large crops, and for each large crop
    i of view 1 and small crop j of view 2 gdt_nce(c1.large[i], c2.small[j], asym). Every term uses
    keys of all ranks (`remote` = the other ranks' StiCAFeats, detached; None gathers). With no
    crop terms L_crops = 0 (the reference divides 0 by 0); α = 0 skips L_av.
    """
    crop_terms = _crop_terms("spatial", feats, remote, crop_temperature)
    crop_terms += _crop_terms("temporal", feats, remote, crop_temperature)
    if alpha == 0 and not crop_terms:
        raise ConfigError("stica: alpha = 0 and no crop terms (need small crops or 2 large crops): nothing to train")
    terms: dict[str, torch.Tensor | float] = {}
    for group in dict.fromkeys(g for g, _ in crop_terms):
        losses = [loss for g, loss in crop_terms if g == group]
        terms[f"crop_{group}"] = sum(losses) / len(losses)
    loss_crops = sum(loss for _, loss in crop_terms) / len(crop_terms) if crop_terms else feats.v1.sum() * 0.0
    terms["crops"] = loss_crops
    if alpha == 0:
        return LossOut(loss_crops, terms)
    pairs = [(feats.v1, feats.a1, "v1", "a1"), (feats.v2, feats.a2, "v2", "a2")]
    l_av = 0.5 * sum(
        gdt_nce(v, a, temperature=av_temperature, symmetric=av_symmetric,
                remote_x=None if remote is None else getattr(remote, rv),
                remote_y=None if remote is None else getattr(remote, ra))
        for v, a, rv, ra in pairs
    )
    terms["av"] = l_av
    return LossOut((1 - alpha) * loss_crops + alpha * l_av, terms)
