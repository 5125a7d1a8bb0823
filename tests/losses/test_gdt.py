import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dist_helpers import run_distributed, shard
from xmodal.errors import ConfigError
from xmodal.losses.gdt import (
    VIEWS,
    CropFeats,
    Key,
    StiCAFeats,
    gdt_loss,
    gdt_loss_official,
    gdt_nce,
    gdt_query_logits,
    gdt_term,
    hypothesis_table,
    hypothesis_terms,
    nce,
    official_negative_plan,
    official_query_logits,
    stica_loss,
)

MODS = ("v", "a")


def _rand(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def _global_feats(n_total, d=5, seed=0):
    return {view: (_rand(n_total, d, seed=seed + 2 * i), _rand(n_total, d, seed=seed + 2 * i + 1))
            for i, view in enumerate(VIEWS)}


def _split(glob, rank, world):
    """Rank `rank`'s local feats and the other ranks' keys (rank order), as gather_other gives."""
    n = next(iter(glob.values()))[0].shape[0] // world
    others = [r for r in range(world) if r != rank]
    local = {v: tuple(t[rank * n : (rank + 1) * n] for t in ts) for v, ts in glob.items()}
    remote = {v: tuple(torch.cat([t[r * n : (r + 1) * n] for r in others]) if others else t[:0] for t in ts)
              for v, ts in glob.items()}
    return local, remote


# ------------------------------------------------------------------------------- NCE block


def test_nce_matches_explicit_log_softmax_loop():
    q, k, z, e = _rand(3, 4, seed=1), _rand(3, 4, seed=2), _rand(2, 4, seed=3), _rand(3, 4, seed=4)
    t = 0.2
    for extra in (None, e):
        expect = 0.0
        for i in range(3):
            vals = [q[i] @ k[j] for j in range(3)] + [q[i] @ z[j] for j in range(2)]
            if extra is not None:
                vals += [q[i] @ e[j] for j in range(3) if j != i]
            vals = [float(v) / t for v in vals]
            expect += -(vals[i] - math.log(sum(math.exp(v) for v in vals)))
        got = nce(q, k, z, t, local_extra=extra)
        assert got.item() == pytest.approx(expect / 3, abs=1e-12)
    assert nce(q, k, None, t).item() == pytest.approx(nce(q, k, z[:0], t).item())


def test_keys_receive_no_gradient():
    q, k, z, e = (_rand(3, 4, seed=s).requires_grad_() for s in (5, 6, 7, 8))
    nce(q, k, z, 0.1, local_extra=e).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None and z.grad is None and e.grad is None
    x, y = _rand(3, 4, seed=9).requires_grad_(), _rand(3, 4, seed=10).requires_grad_()
    gdt_nce(x, y, symmetric=False).backward()  # query y, keys x
    assert x.grad is None and y.grad.abs().sum() > 0


# --------------------------------------------------------------------------- hypothesis table

# Spec §4.4 written out: (kind, P, Q) per term, in evaluation order.
SPEC_TERMS = {
    1: [("base", "V", None)],
    2: [("variant", "V", "VR")],
    3: [("base", "V", "VR"), ("invariant", "V", "VR")],
    4: [("variant", "V", "V2")],
    5: [("base", "V", "V2"), ("invariant", "V", "V2")],
    6: [("variant", "V", "VR"), ("variant", "V2", "V2R"), ("variant", "V", "V2"), ("variant", "VR", "V2R")],
    7: [("base", "V", "VR"), ("invariant", "V", "VR"), ("invariant", "V2", "V2R"), ("variant", "V", "V2"),
        ("variant", "VR", "V2R")],
    8: [("base", "V", "V2"), ("variant", "V", "VR"), ("variant", "V2", "V2R"), ("invariant", "V", "V2"),
        ("invariant", "VR", "V2R")],
    9: [("base", "V", "VR"), ("base", "V", "V2"), ("invariant", "V", "VR"), ("invariant", "V2", "V2R"),
        ("invariant", "V", "V2"), ("invariant", "VR", "V2R")],
}


def _triples(h):
    return {(r.term, r.query, r.positive, r.negatives, r.weight) for r in hypothesis_table(h)}


def oth(view, mod):  # the key set "every other sample of the global batch"
    return Key(view, mod, "other")


def test_table_h1_h2_h3_written_out():
    assert _triples(1) == {
        (0, ("V", "v"), ("V", "a"), frozenset({oth("V", "a")}), 0.5),
        (0, ("V", "a"), ("V", "v"), frozenset({oth("V", "v")}), 0.5),
    }
    assert _triples(2) == {
        (0, ("V", "v"), ("V", "a"), frozenset({oth("V", "a"), oth("VR", "a"), Key("VR", "a", "same")}), 0.25),
        (0, ("V", "a"), ("V", "v"), frozenset({oth("V", "v"), oth("VR", "v"), Key("VR", "v", "same")}), 0.25),
        (0, ("VR", "v"), ("VR", "a"), frozenset({oth("VR", "a"), oth("V", "a"), Key("V", "a", "same")}), 0.25),
        (0, ("VR", "a"), ("VR", "v"), frozenset({oth("VR", "v"), oth("V", "v"), Key("V", "v", "same")}), 0.25),
    }
    both_a, both_v = frozenset({oth("V", "a"), oth("VR", "a")}), frozenset({oth("V", "v"), oth("VR", "v")})
    assert _triples(3) == {
        (0, ("V", "v"), ("V", "a"), both_a, 0.125), (0, ("V", "a"), ("V", "v"), both_v, 0.125),
        (0, ("VR", "v"), ("VR", "a"), both_a, 0.125), (0, ("VR", "a"), ("VR", "v"), both_v, 0.125),
        # invariant: v and the reversed a of the same clip are positive
        (1, ("V", "v"), ("VR", "a"), both_a, 0.125), (1, ("V", "a"), ("VR", "v"), both_v, 0.125),
        (1, ("VR", "v"), ("V", "a"), both_a, 0.125), (1, ("VR", "a"), ("V", "v"), both_v, 0.125),
    }


@pytest.mark.parametrize("h", range(1, 10))
def test_table_follows_the_spec_for_every_hypothesis(h):
    terms = [tuple(t) for t in hypothesis_terms(h)]
    assert terms == SPEC_TERMS[h]
    rows = hypothesis_table(h)
    assert math.isclose(sum(r.weight for r in rows), 1.0)
    for r in rows:
        kind, p, q = SPEC_TERMS[h][r.term]
        view, m = r.query
        k = "a" if m == "v" else "v"
        partner = None if q is None else (q if view == p else p)
        assert r.kind == kind and view in (p, q) and r.positive[1] == k
        assert r.positive == ((partner, k) if kind == "invariant" else (view, k))
        expect = {oth(view, k)} | ({oth(partner, k)} if partner else set())
        if kind == "variant":
            expect.add(Key(partner, k, "same"))
        assert r.negatives == expect
        assert r.weight == pytest.approx(1 / len(terms) / (2 if q is None else 4))
    assert len(rows) == sum(2 if q is None else 4 for _, _, q in SPEC_TERMS[h])


def _identify(logits_row, q, universe, t):
    """Which keys produced a row of logits: match each value with q·key/t over all known keys."""
    names = list(universe)
    cand = torch.stack([q @ universe[n] for n in names]) / t
    gaps = (cand[:, None] - cand[None, :]).abs() + torch.eye(len(names)) * 1e9
    assert gaps.min() > 1e-9, "ambiguous random keys"
    out = []
    for val in logits_row:
        err, idx = (cand - val).abs().min(0)
        assert err < 1e-10
        out.append(names[int(idx)])
    return out


def _universe(glob):
    return {(view, m, j): ts[i][j] for view, ts in glob.items() for i, m in enumerate(MODS)
            for j in range(ts[0].shape[0])}


@pytest.mark.parametrize("h", range(1, 10))
def test_clean_logits_hold_exactly_the_tabled_keys(h):
    n, world, t = 2, 3, 1.0
    glob = _global_feats(n * world, seed=10 * h)
    universe, total = _universe(glob), n * world
    for rank in (0, 2):
        local, remote = _split(glob, rank, world)
        slow = 0.0
        for row in hypothesis_table(h):
            logits = gdt_query_logits(row, local, remote, temperature=t)
            width = 1 + 2 * (total - 1) if row.negatives != {oth(*row.positive)} else total
            assert logits.shape == (n, width + (row.kind == "variant"))
            view, m = row.query
            for i in range(n):
                g = rank * n + i
                found = _identify(logits[i], universe[(view, m, g)], universe, t)
                assert found[i] == (*row.positive, g)  # target column i is the positive
                expect = [(*row.positive, g)]
                for key in row.negatives:
                    samples = [g] if key.sample == "same" else [j for j in range(total) if j != g]
                    expect += [(key.view, key.modality, j) for j in samples]
                assert sorted(found) == sorted(expect)
                vals = [float(universe[(view, m, g)] @ universe[e]) / t for e in expect]
                slow += row.weight / n * (math.log(sum(math.exp(v) for v in vals)) - vals[0])
        got = gdt_loss(h, local, remote=remote, temperature=t)
        assert got.total.item() == pytest.approx(slow, abs=1e-12)
        assert len(got.terms) == len(SPEC_TERMS[h])


# ------------------------------------------------------------------------ official negatives


def test_official_plan_accumulates_and_duplicates_remote_sets():
    def remote_of(h, term, query):
        return [r.remote for r in official_negative_plan(h) if r.term == term and r.query == query]

    assert remote_of(1, 0, ("V", "v")) == [(("V", "a"),)]
    assert remote_of(2, 0, ("V", "v")) == [(("V", "a"), ("VR", "a"))]
    assert remote_of(3, 0, ("VR", "v")) == [(("V", "a"), ("VR", "a"))]  # Q half reuses P's concatenation
    assert remote_of(3, 1, ("V", "v")) == [(("VR", "a"), ("V", "a"), ("VR", "a"))]  # the spec's example
    assert remote_of(3, 1, ("VR", "a")) == [(("VR", "v"), ("V", "v"), ("VR", "v"))]
    # H7 worked by hand: lists persist across terms in evaluation order
    h7 = [remote_of(7, i, ("V" if i != 2 else "V2", "v"))[0] for i in range(4)]
    assert h7 == [
        (("V", "a"), ("VR", "a")),
        (("VR", "a"), ("V", "a"), ("VR", "a")),
        (("V2R", "a"), ("V2", "a")),
        (("V", "a"), ("VR", "a"), ("V2", "a")),
    ]
    assert remote_of(7, 4, ("VR", "v")) == [(("VR", "a"), ("V", "a"), ("VR", "a"), ("V2R", "a"), ("V2", "a"))]
    plan = official_negative_plan(7)
    assert {r.local_partner for r in plan if r.kind != "variant"} == {None}
    assert [r for r in plan if r.term == 3 and r.query == ("V2", "a")][0].local_partner == ("V", "v")


def _reference_harness(h, local, remote_ranks, t):
    """The reference's negatives re-stated with real per-rank tensor lists mutated in place."""
    lists = {(view, m): [rk[view][i] for rk in remote_ranks] for view in VIEWS for i, m in enumerate(MODS)}
    feat = {(view, m): local[view][i] for view in VIEWS for i, m in enumerate(MODS)}
    total = 0.0
    terms = SPEC_TERMS[h]
    for kind, p, q in terms:
        halves = [(p, q)] if q is None else [(p, q), (q, p)]
        cat = {}
        if q is None:
            cat = {k: torch.cat(lists[p, k]) for k in MODS}
        else:
            for k in MODS:
                if kind == "invariant":
                    lists[q, k] += lists[p, k]
                    cat[k] = torch.cat(lists[q, k])
                else:
                    lists[p, k] += lists[q, k]
                    cat[k] = torch.cat(lists[p, k])
        losses = []
        for x, partner in halves:
            for m in MODS:
                k = "a" if m == "v" else "v"
                query = feat[x, m]
                positive = feat[partner, k] if kind == "invariant" else feat[x, k]
                negs = cat[k] if kind != "variant" else torch.cat([cat[k], feat[partner, k]])
                logits = torch.cat([query @ positive.t(), query @ negs.t()], 1) / t
                losses.append(F.cross_entropy(logits, torch.arange(query.shape[0])))
        total = total + sum(losses) / len(losses)
    return total / len(terms)


@pytest.mark.parametrize("h", range(1, 10))
def test_official_mode_equals_in_place_list_harness(h):
    n, world = 3, 3
    glob = _global_feats(n * world, seed=7 * h)
    for rank in (0, 1):
        local, remote = _split(glob, rank, world)
        ranks = [_split(glob, r, world)[0] for r in range(world) if r != rank]
        got = gdt_loss(h, local, remote=remote, temperature=0.1, negatives="official")
        ref = _reference_harness(h, local, ranks, 0.1)
        assert torch.allclose(got.total, ref, atol=1e-12, rtol=0)
        clean = gdt_loss(h, local, remote=remote, temperature=0.1)
        if h in (1, 2, 4):  # one term, nothing accumulates: the two modes agree
            assert torch.allclose(clean.total, got.total, atol=1e-12)
        else:
            assert abs(clean.total.item() - got.total.item()) > 1e-4


def test_official_row_width_counts_duplicates():
    n, world = 2, 2
    local, remote = _split(_global_feats(n * world, seed=3), 0, world)
    row = [r for r in official_negative_plan(3) if r.term == 1 and r.query == ("V", "v")][0]
    # positive view's local block + [aR, a, aR] of one other rank
    assert official_query_logits(row, local, remote, temperature=1.0).shape == (n, n + 3 * n)


def test_single_process_without_remote_and_bad_arguments():
    local = {v: ts for v, ts in _global_feats(4, seed=5).items()}
    for h in (1, 9):
        assert torch.equal(gdt_loss(h, local).total, gdt_loss(h, local, remote={}).total)
        assert torch.equal(gdt_loss_official(h, local).total, gdt_loss(h, local, remote={}, negatives="official").total)
    term = gdt_term("variant", "V", "VR", local, remote={})
    assert torch.equal(gdt_loss(2, local, remote={}).total, term)
    with pytest.raises(ConfigError, match="hypothesis"):
        gdt_loss(10, local)
    with pytest.raises(ConfigError, match="negatives"):
        gdt_loss(1, local, negatives="dirty")
    with pytest.raises(ValueError, match="V2R"):
        gdt_loss(6, {"V": local["V"], "VR": local["VR"], "V2": local["V2"]}, remote={})


# ------------------------------------------------------------------------------------ STiCA


def _stica_feats(n, seed, crops=((2, 4), (2, 1))):
    (lg_s, s_s), (lg_t, s_t) = crops
    it = iter(range(seed, seed + 1000))

    def c():
        return CropFeats([_rand(n, 4, seed=next(it)) for _ in range(lg_s)], [_rand(n, 4, seed=next(it)) for _ in range(s_s)],
                         [_rand(n, 4, seed=next(it)) for _ in range(lg_t)], [_rand(n, 4, seed=next(it)) for _ in range(s_t)])

    return StiCAFeats(*(_rand(n, 4, seed=next(it)) for _ in range(4)), c(), c())


def test_gdt_nce_is_the_nce_block_both_ways():
    x, y, rx, ry = (_rand(3, 4, seed=s) for s in (20, 21, 22, 23))
    assert torch.equal(gdt_nce(x, y, temperature=0.3, symmetric=False, remote_x=rx), nce(y, x, rx, 0.3))
    both = gdt_nce(x, y, temperature=0.3, remote_x=rx, remote_y=ry)
    assert torch.allclose(both, 0.5 * (nce(y, x, rx, 0.3) + nce(x, y, ry, 0.3)))


def test_stica_loss_composition():
    f, r = _stica_feats(3, 0), _stica_feats(3, 500)  # r: keys of "other ranks"
    c1, c2, r1, r2 = f.crops1, f.crops2, r.crops1, r.crops2
    t = 0.5
    crop = [nce(c1.spatial_large[1], c2.spatial_large[1], r2.spatial_large[1], t) / 2
            + nce(c2.spatial_large[1], c1.spatial_large[1], r1.spatial_large[1], t) / 2]
    crop += [nce(c2.spatial_small[j], c1.spatial_large[i], r1.spatial_large[i], t) for i in range(2) for j in range(4)]
    crop += [nce(c1.temporal_large[1], c2.temporal_large[1], r2.temporal_large[1], t) / 2
             + nce(c2.temporal_large[1], c1.temporal_large[1], r1.temporal_large[1], t) / 2]
    crop += [nce(c2.temporal_small[0], c1.temporal_large[i], r1.temporal_large[i], t) for i in range(2)]
    l_crops = sum(crop) / 12
    l_av = 0.25 * (nce(f.a1, f.v1, r.v1, 0.1) + nce(f.v1, f.a1, r.a1, 0.1) + nce(f.a2, f.v2, r.v2, 0.1)
                   + nce(f.v2, f.a2, r.a2, 0.1))
    out = stica_loss(f, remote=r)
    assert torch.allclose(out.terms["crops"], l_crops, atol=1e-12)
    assert torch.allclose(out.terms["av"], l_av, atol=1e-12)
    assert torch.allclose(out.total, 0.5 * l_crops + 0.5 * l_av, atol=1e-12)
    assert torch.allclose(out.terms["crop_spatial_small"], sum(crop[1:9]) / 8, atol=1e-12)
    only = stica_loss(f, remote=r, alpha=0.0)
    assert torch.allclose(only.total, l_crops, atol=1e-12) and "av" not in only.terms

    bare = _stica_feats(3, 0, crops=((1, 0), (1, 0)))  # crops inactive
    assert torch.allclose(stica_loss(bare, alpha=0.5).total, 0.5 * stica_loss(bare, alpha=1.0).total)
    with pytest.raises(ConfigError, match="nothing to train"):
        stica_loss(bare, alpha=0.0)
    lone = _stica_feats(3, 0, crops=((2, 0), (1, 0)))  # two large spatial crops: one large-large term
    assert set(stica_loss(lone, alpha=0.0).terms) == {"crop_spatial_large", "crops"}


# ------------------------------------------------------------------------------- distributed


class AV(nn.Module):
    def __init__(self):
        super().__init__()
        self.v = nn.Linear(6, 4)
        self.a = nn.Linear(5, 4)

    def forward(self, xv: dict, xa: dict):
        return ({k: F.normalize(self.v(x), dim=-1) for k, x in xv.items()},
                {k: F.normalize(self.a(x), dim=-1) for k, x in xa.items()})


def _inputs(n=8):
    g = torch.Generator().manual_seed(42)
    xv = {f"{v}": torch.randn(n, 6, generator=g, dtype=torch.float64) for v in VIEWS}
    xa = {f"{v}": torch.randn(n, 5, generator=g, dtype=torch.float64) for v in VIEWS}
    for c in ("s1l0", "s1l1", "s2l0", "s2l1", "s2s0", "s2s1", "s1s0", "s1s1"):
        xv[c] = torch.randn(n, 6, generator=g, dtype=torch.float64)
    return xv, xa


def _to_gdt(ev, ea):
    return {v: (ev[v], ea[v]) for v in VIEWS}


def _to_stica(ev, ea):
    def crops(i):
        return CropFeats([ev[f"s{i}l0"], ev[f"s{i}l1"]], [ev[f"s{i}s0"], ev[f"s{i}s1"]])

    return StiCAFeats(ev["V"], ea["V"], ev["V2"], ea["V2"], crops(1), crops(2))


LOSSES = {
    "h1": lambda ev, ea, **kw: gdt_loss(1, _to_gdt(ev, ea), temperature=0.1, **kw),
    "h7": lambda ev, ea, **kw: gdt_loss(7, _to_gdt(ev, ea), temperature=0.1, **kw),
    "stica": lambda ev, ea, **kw: stica_loss(_to_stica(ev, ea), **kw),
}


def _ddp_worker(rank, world, state, xv, xa):
    model = AV().double()
    model.load_state_dict(state)
    ddp = nn.parallel.DistributedDataParallel(model)
    out = {}
    for name, fn in LOSSES.items():
        model.zero_grad()
        ev, ea = ddp({k: shard(x, rank, world) for k, x in xv.items()}, {k: shard(x, rank, world) for k, x in xa.items()})
        loss = fn(ev, ea).total
        loss.backward()
        out[name] = {"loss": loss.detach(), "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
                     "ev": {k: x.detach() for k, x in ev.items()}, "ea": {k: x.detach() for k, x in ea.items()}}
    out["official_h3"] = gdt_loss(3, _to_gdt(ev, ea), temperature=0.1, negatives="official").total.detach()
    return out


@pytest.mark.dist
def test_two_gloo_processes_equal_one_process_global_batch_and_explicit_remote():
    torch.manual_seed(0)
    model = AV().double()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    xv, xa = _inputs(8)
    results = run_distributed(_ddp_worker, 2, args=(state, xv, xa))
    for name, fn in LOSSES.items():
        model.zero_grad()
        loss = fn(*model(xv, xa)).total  # one process, global batch 8, no remote ranks
        loss.backward()
        # the global loss is the mean over ranks of the per-rank (local-query) losses ...
        mean = sum(r[name]["loss"] for r in results) / 2
        assert torch.allclose(mean, loss.detach(), atol=1e-12), name
        assert abs(results[0][name]["loss"] - results[1][name]["loss"]) > 1e-6
        # ... and DDP's averaged gradients are the single-process gradients
        for n, p in model.named_parameters():
            for r in results:
                assert torch.allclose(r[name]["grads"][n], p.grad, atol=1e-12, rtol=0), (name, n)
        # each rank's gathered loss == a single-process call with the other rank's keys as remote
        for rank, r in enumerate(results):
            other = results[1 - rank][name]
            if name == "stica":
                remote = _to_stica(other["ev"], other["ea"])
            else:
                remote = _to_gdt(other["ev"], other["ea"])
            again = fn(r[name]["ev"], r[name]["ea"], remote=remote).total
            assert torch.allclose(again, r[name]["loss"], atol=1e-12), name
    for rank, r in enumerate(results):
        other = _to_gdt(results[1 - rank]["stica"]["ev"], results[1 - rank]["stica"]["ea"])
        mine = _to_gdt(r["stica"]["ev"], r["stica"]["ea"])
        again = gdt_loss(3, mine, remote=other, temperature=0.1, negatives="official").total
        assert torch.allclose(again, r["official_h3"], atol=1e-12)
