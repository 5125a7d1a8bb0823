"""The MFH synthetic Gaussian study (specs/mfh.md §2-4, §9), vectorised over runs and sweep points.

* `sweep_gamma` (Setting G, paper Fig. 2) and `sweep_alpha` (Setting A, Fig. 3): teacher on x1,
  no-KD and KD students on x2, test accuracy after the last step.
* `table2` (Setting T, Table 2): per run, train set A → regular teacher + Algorithm 1; fresh train
  set B → no-KD / regular-KD students and, per selection (random / ground truth / Algorithm 1), a
  teacher retrained on k x1 channels and its KD student; one test set.
* `removal_study`: removal modes 0/1/2 of Algorithm 1 (and the ground-truth general / specific
  channels) applied to the teacher's input channels, then re-distilled.
* `run_synthetic(config)`: one entry point for a CLI, JSON-able output.

All linear models sharing input shapes are trained as one `LinearBank` (mfh_linear.py). Every model
is initialised from its own run seed and role, so run r's numbers do not depend on batching, and
the no-KD and KD students of a run start from the same weights (paired comparison).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from xmodal.analysis import mfh
from xmodal.analysis.mfh_linear import LinearBank, fit, fit_joint, init_bank
from xmodal.config import config_from_data, to_dict
from xmodal.data.embedded import gauss
from xmodal.errors import ConfigError, closest

SELECTIONS = ("random", "ground_truth", "algorithm1")
REMOVALS = ("none", "random", "least_salient", "most_salient", "general", "specific")
# init seed = run seed · 16 + role: teacher, student, joint f_a, joint f_b, reduced teacher
_TEACHER, _STUDENT, _JOINT_A, _JOINT_B, _REDUCED = range(5)


# ----------------------------------------------------------------------------------- configs
@dataclass
class TrainConfig:
    """Teacher and student training on gauss (spec §3)."""

    steps: int = 1000
    lr: float = 0.1
    w_gt: float = 1.0
    w_kd: float = 1.0
    temperature: float = 1.0
    reduction: Literal["batchmean", "mean_elements"] = "mean_elements"
    n_train: int = 200
    n_test: int = 1000


@dataclass
class Alg1Config:
    """Algorithm 1 on gauss (spec §4): joint pretraining, then permutation saliency."""

    steps: int = 1000
    lr: float = 0.01
    momentum: float = 0.9
    mse_weight: float = 1.0
    repeats: int = 100
    batch_size: int | None = None  # None: the whole train set is one permutation batch
    distance: Literal["mse", "mae"] = "mse"
    permutations: Literal["independent", "composed"] = "composed"  # see mfh.modality_general_saliency
    diagnose: bool = True  # also estimate γ̂ (regular teacher vs calibrated f_b) per run


@dataclass
class Stat:
    mean: float
    std: float
    runs: list[float]

    @staticmethod
    def of(values: torch.Tensor | np.ndarray | list[float]) -> Stat:
        v = np.asarray(torch.as_tensor(values).double().cpu(), dtype=np.float64)
        return Stat(float(v.mean()), float(v.std()), [float(x) for x in v])


# --------------------------------------------------------------------------------- helpers
def _stack(splits: list[gauss.GaussSplit]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(np.stack([s.x1 for s in splits])),
        torch.from_numpy(np.stack([s.x2 for s in splits])),
        torch.from_numpy(np.stack([s.y for s in splits])),
    )


def _seeds(run_seeds: list[int], role: int) -> list[int]:
    return [s * 16 + role for s in run_seeds]


def _students(x2: torch.Tensor, y: torch.Tensor, teacher_logits: list[torch.Tensor], run_seeds: list[int], cfg: TrainConfig) -> list[LinearBank]:
    """No-KD student plus one KD student per teacher, one bank sharing x2 [R, N, d] per run.

    Every student of a run starts from the same weights. Returns [no-KD, KD per teacher...].
    """
    r, reps = len(run_seeds), len(teacher_logits) + 1
    bank = fit(
        x2,
        y,
        init_bank(_seeds(run_seeds, _STUDENT) * reps, x2.shape[2]),
        steps=cfg.steps,
        lr=cfg.lr,
        teacher_logits=torch.cat([torch.zeros_like(teacher_logits[0])] + teacher_logits) if teacher_logits else None,
        w_gt=cfg.w_gt,
        w_kd=torch.tensor([0.0] * r + [cfg.w_kd] * (r * (reps - 1))),
        temperature=cfg.temperature,
        reduction=cfg.reduction,
    )
    return bank.split(r)


def _teacher(x1: torch.Tensor, y: torch.Tensor, run_seeds: list[int], cfg: TrainConfig, role: int = _TEACHER, fan_in: list[int] | None = None) -> LinearBank:
    return fit(x1, y, init_bank(_seeds(run_seeds, role), x1.shape[2], fan_in=fan_in), steps=cfg.steps, lr=cfg.lr)


@dataclass
class Alg1Out:
    f_a: LinearBank  # jointly trained teacher-side nets
    f_b: LinearBank  # jointly trained student-side nets
    saliency: list[mfh.SaliencyResult]  # per run, over f_a's input channels


def _saliency(head: LinearBank, x: torch.Tensor, target: torch.Tensor, run_seeds: list[int], cfg: Alg1Config, calibrate: bool) -> list[mfh.SaliencyResult]:
    return [
        mfh.modality_general_saliency(
            head.module(i),
            x[i],
            target[i],
            repeats=cfg.repeats,
            batch_size=cfg.batch_size,
            distance=cfg.distance,
            generator=torch.Generator().manual_seed(s),
            permutations=cfg.permutations,
            calibrate=calibrate,
        )
        for i, s in enumerate(run_seeds)
    ]


def algorithm1(x1: torch.Tensor, x2: torch.Tensor, y: torch.Tensor, run_seeds: list[int], cfg: Alg1Config, *, saliency: bool = True) -> Alg1Out:
    """Joint pretraining of (f_a on x1, f_b on x2) per run, then (if `saliency`) the saliency of
    f_a's input channels; without it only the nets are returned (the γ̂ diagnostic needs f_b)."""
    f_a, f_b = fit_joint(
        x1,
        x2,
        y,
        init_bank(_seeds(run_seeds, _JOINT_A), x1.shape[2]),
        init_bank(_seeds(run_seeds, _JOINT_B), x2.shape[2]),
        steps=cfg.steps,
        lr=cfg.lr,
        momentum=cfg.momentum,
        mse_weight=cfg.mse_weight,
    )
    return Alg1Out(f_a, f_b, _saliency(f_a, x1, f_b.logits(x2), run_seeds, cfg, calibrate=False) if saliency else [])


def diagnose(teacher: LinearBank, f_b: LinearBank, x1: torch.Tensor, x2: torch.Tensor, run_seeds: list[int], cfg: Alg1Config) -> list[mfh.SaliencyResult]:
    """The "will KD help?" saliency per run: the teacher one would distil, scored against f_b's
    calibrated logits (input for `mfh.estimate_gamma` / `mfh.kd_verdict`).

    The jointly trained f_a is pulled towards f_b by the MSE term, so its own γ̂ overstates the
    regular teacher's (≈ 0.9 at γ = 0.33 in Setting T); scoring the regular teacher does not.
    """
    return _saliency(teacher, x1, f_b.logits(x2), run_seeds, cfg, calibrate=True)


def gamma_hat(teacher: LinearBank, f_b: LinearBank, x1: torch.Tensor, x2: torch.Tensor, run_seeds: list[int], cfg: Alg1Config) -> list[float]:
    return [mfh.estimate_gamma(r) for r in diagnose(teacher, f_b, x1, x2, run_seeds, cfg)]


# ------------------------------------------------------------------------- sweeps (G and A)
@dataclass
class SweepPoint:
    param: int  # overlap o (G) or teacher-only latents d (A)
    gamma: float
    alpha: float | None  # A only
    teacher: Stat
    no_kd: Stat
    kd: Stat
    delta: Stat  # KD − no-KD, paired per run
    gamma_hat: Stat | None  # the diagnostic's estimate (Alg1Config.diagnose)


@dataclass
class SweepResult:
    setting: str
    n_runs: int
    points: list[SweepPoint]
    seconds: float


def sweep(setting: str, params: tuple[int, ...], *, n_runs: int = 10, seed: int = 0, train: TrainConfig | None = None, alg1: Alg1Config | None = None) -> SweepResult:
    """All (param, run) pairs of a G or A sweep as one bank of teachers and one bank of students."""
    cfg, acfg = train or TrainConfig(), alg1 or Alg1Config()
    t0 = time.perf_counter()
    runs = [seed + r for r in range(n_runs)]
    draws = [gauss.make_run(setting, p, s, cfg.n_train, cfg.n_test) for p in params for s in runs]
    x1, x2, y = _stack([d[0] for d in draws])
    t1, t2, ty = _stack([d[1] for d in draws])
    seeds = runs * len(params)
    teacher = _teacher(x1, y, seeds, cfg)
    ghat = None
    if acfg.diagnose:
        ghat = torch.tensor(gamma_hat(teacher, algorithm1(x1, x2, y, seeds, acfg, saliency=False).f_b, x1, x2, seeds, acfg)).view(len(params), n_runs)
    # x2 and y do not depend on the sweep parameter at a fixed seed: students share them per run
    assert bool((x2.view(len(params), n_runs, *x2.shape[1:]) == x2[:n_runs]).all()), "x2 varies with the sweep parameter"
    no_kd, *kd = _students(x2[:n_runs], y[:n_runs], list(teacher.logits(x1).split(n_runs)), runs, cfg)
    acc_t = teacher.accuracy(t1, ty).view(len(params), n_runs)
    acc_0 = no_kd.accuracy(t2[:n_runs], ty[:n_runs])
    points = []
    for i, p in enumerate(params):
        acc_k = kd[i].accuracy(t2[:n_runs], ty[:n_runs])
        g = draws[i * n_runs][2].gamma
        points.append(
            SweepPoint(
                p,
                g,
                1.0 - g if setting == "A" else None,
                Stat.of(acc_t[i]),
                Stat.of(acc_0),
                Stat.of(acc_k),
                Stat.of(acc_k - acc_0),
                Stat.of(ghat[i]) if ghat is not None else None,
            )
        )
    return SweepResult(setting, n_runs, points, time.perf_counter() - t0)


def sweep_gamma(overlaps: tuple[int, ...] = (0, 2, 4, 6, 8, 10), **kw: Any) -> SweepResult:
    """Setting G: γ = o/(20 − o) for overlaps o (paper Fig. 2)."""
    return sweep("G", overlaps, **kw)


def sweep_alpha(ds: tuple[int, ...] = (0, 10, 20, 30, 40), **kw: Any) -> SweepResult:
    """Setting A: α = d/(d + 10) for d teacher-only latents (paper Fig. 3)."""
    return sweep("A", ds, **kw)


# ---------------------------------------------------------------------------------- Table 2
@dataclass
class SelectionStats:
    teacher: Stat  # teacher retrained on the k selected x1 channels (on train set B)
    kd: Stat  # its KD student
    precision: Stat  # share of selected channels that are modality-general (ground truth)
    kd_minus_regular: Stat  # paired: this KD student − the regular-KD student
    kd_minus_no_kd: Stat  # paired: this KD student − the no-KD student


@dataclass
class Table2Row:
    k: int
    gamma: float
    teacher: Stat  # regular teacher (all 50 x1 channels, train set A)
    no_kd: Stat
    kd: Stat  # KD from the regular teacher
    selections: dict[str, SelectionStats]
    gamma_hat: Stat | None  # the diagnostic's estimate for the regular teacher


@dataclass
class Table2Result:
    n_runs: int
    rows: list[Table2Row]
    seconds: float


def _select(kind: str, k: int, saliency: list[mfh.SaliencyResult], run_seeds: list[int], d: int, replace: bool) -> torch.Tensor:
    """Selected x1 channels per run, [R, k]."""
    if kind == "ground_truth":
        return torch.arange(k).expand(len(run_seeds), k)
    if kind == "algorithm1":
        return torch.stack([s.ranking[:k] for s in saliency])
    # the reference samples the random channels with replacement (duplicates possible)
    return torch.from_numpy(np.stack([np.random.default_rng(s + 7919).choice(d, k, replace=replace) for s in run_seeds]))


def _restrict(x: torch.Tensor, sel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """x [R, N, D] -> the selected channels [R, N, kmax]; padding slots (valid False) are zero."""
    return torch.gather(x, 2, sel[:, None, :].expand(-1, x.shape[1], -1)) * valid[:, None, :]


def table2(
    ks: tuple[int, ...] = (5, 10, 15, 20, 25, 30),
    *,
    n_runs: int = 10,
    selections: tuple[str, ...] = SELECTIONS,
    seed_base: int = 42,
    random_with_replacement: bool = True,
    train: TrainConfig | None = None,
    alg1: Alg1Config | None = None,
) -> Table2Result:
    """Table 2 of the paper following the §9 data flow; all (k, run) pairs batched.

    Reduced teachers of different k share one bank: their inputs are zero-padded to max(ks), which
    leaves the padded weights untouched (zero gradient) and the logits unchanged.
    """
    cfg, acfg = train or TrainConfig(), alg1 or Alg1Config()
    for s in selections:
        if s not in SELECTIONS:
            raise ConfigError(f"selections: unknown {s!r}; expected some of {SELECTIONS}{closest(s, SELECTIONS)}")
    t0 = time.perf_counter()
    runs = [seed_base + r for r in range(n_runs)]
    seeds = runs * len(ks)  # model index = k-index · R + run
    draws = [gauss.table2_run(k, r, cfg.n_train, cfg.n_test, seed_base) for k in ks for r in range(n_runs)]
    a1, a2, ay = _stack([d.train_a for d in draws])
    b1, b2, by = _stack([d.train_b for d in draws])
    t1, t2, ty = _stack([d.test for d in draws])
    regular = _teacher(a1, ay, seeds, cfg)
    need_alg1 = "algorithm1" in selections or acfg.diagnose
    alg = algorithm1(a1, a2, ay, seeds, acfg, saliency="algorithm1" in selections) if need_alg1 else None
    ghat = torch.tensor(gamma_hat(regular, alg.f_b, a1, a2, seeds, acfg)) if alg is not None and acfg.diagnose else None
    # selected channels per (selection, k, run), zero-padded to kmax
    kmax = max(ks)
    sel = torch.zeros(len(selections), len(ks) * n_runs, kmax, dtype=torch.long)
    valid = torch.zeros(sel.shape)
    for i, kind in enumerate(selections):
        for j, k in enumerate(ks):
            rows = slice(j * n_runs, (j + 1) * n_runs)
            sel[i, rows, :k] = _select(kind, k, alg.saliency[rows] if alg else [], runs, a1.shape[2], random_with_replacement)
            valid[i, rows, :k] = 1.0
    sel, valid = sel.flatten(0, 1), valid.flatten(0, 1)
    n_sel = len(selections)
    rb1, rt1 = _restrict(b1.repeat(n_sel, 1, 1), sel, valid), _restrict(t1.repeat(n_sel, 1, 1), sel, valid)
    fan_in = [k for _ in selections for k in ks for _ in runs]
    reduced = _teacher(rb1, by.repeat(n_sel, 1), seeds * n_sel, cfg, role=_REDUCED, fan_in=fan_in)
    no_kd, kd, *sel_kd = _students(b2, by, [regular.logits(b1), *reduced.logits(rb1).split(len(seeds))], seeds, cfg)
    acc = {
        "teacher": regular.accuracy(t1, ty),
        "no_kd": no_kd.accuracy(t2, ty),
        "kd": kd.accuracy(t2, ty),
        "reduced": reduced.accuracy(rt1, ty.repeat(n_sel, 1)).view(n_sel, -1),
        "sel_kd": torch.stack([m.accuracy(t2, ty) for m in sel_kd]),
    }
    rows_out = []
    for j, k in enumerate(ks):
        r = slice(j * n_runs, (j + 1) * n_runs)
        general = set(draws[j * n_runs].layout.general_channels.tolist())
        stats = {}
        for i, kind in enumerate(selections):
            chosen = sel.view(n_sel, len(seeds), kmax)[i, r, :k]
            prec = [np.mean([c in general for c in row.tolist()]) for row in chosen]
            a = acc["sel_kd"][i, r]
            stats[kind] = SelectionStats(Stat.of(acc["reduced"][i, r]), Stat.of(a), Stat.of(prec), Stat.of(a - acc["kd"][r]), Stat.of(a - acc["no_kd"][r]))
        rows_out.append(
            Table2Row(
                k,
                draws[j * n_runs].layout.gamma,
                Stat.of(acc["teacher"][r]),
                Stat.of(acc["no_kd"][r]),
                Stat.of(acc["kd"][r]),
                stats,
                Stat.of(ghat[r]) if ghat is not None else None,
            )
        )
    return Table2Result(n_runs, rows_out, time.perf_counter() - t0)


# ------------------------------------------------------------------------------ removal study
@dataclass
class RemovalRow:
    kind: str  # none / random (mode 0) / least_salient (1) / most_salient (2) / general / specific
    n_removed: int
    teacher: Stat  # masked teacher on the test set (fill from the test batch)
    kd: Stat  # student distilled from the masked teacher
    delta: Stat  # paired: KD − no-KD
    general_removed: Stat  # share of the ground-truth general channels that were removed


@dataclass
class RemovalResult:
    setting: str
    param: int
    ratio: float
    fill: str
    teacher_kind: str
    no_kd: Stat
    rows: list[RemovalRow]
    seconds: float


def removal_study(
    setting: str = "T",
    param: int = 10,
    *,
    ratio: float = 0.75,
    fill: Literal["batch_mean", "zero"] = "batch_mean",
    teacher: Literal["joint", "regular"] = "joint",
    kinds: tuple[str, ...] = REMOVALS,
    n_runs: int = 10,
    seed: int = 0,
    train: TrainConfig | None = None,
    alg1: Alg1Config | None = None,
) -> RemovalResult:
    """Remove teacher input channels (modes 0/1/2 at `ratio`, or all ground-truth general /
    specific ones), then distil a student from the masked teacher on the same train set.

    `teacher="joint"` masks Algorithm 1's jointly trained f_a (the RAVDESS protocol); "regular"
    masks a teacher trained on labels alone. The saliency always comes from Algorithm 1.
    """
    cfg, acfg = train or TrainConfig(), alg1 or Alg1Config()
    for kind in kinds:
        if kind not in REMOVALS:
            raise ConfigError(f"kinds: unknown {kind!r}; expected some of {REMOVALS}{closest(kind, REMOVALS)}")
    t0 = time.perf_counter()
    seeds = [seed + r for r in range(n_runs)]
    draws = [gauss.make_run(setting, param, s, cfg.n_train, cfg.n_test) for s in seeds]
    lay = draws[0][2]
    x1, x2, y = _stack([d[0] for d in draws])
    t1, t2, ty = _stack([d[1] for d in draws])
    alg = algorithm1(x1, x2, y, seeds, acfg)
    model = alg.f_a if teacher == "joint" else _teacher(x1, y, seeds, cfg)

    def removed(kind: str, i: int) -> torch.Tensor:
        if kind == "none":
            return torch.zeros(0, dtype=torch.long)
        if kind in ("general", "specific"):
            return torch.as_tensor(lay.general_channels if kind == "general" else lay.specific_channels)
        mode = {"random": 0, "least_salient": 1, "most_salient": 2}[kind]
        return mfh.channels_to_remove(alg.saliency[i], ratio, mode, generator=torch.Generator().manual_seed(seeds[i] + 104729))

    channels = {kind: [removed(kind, i) for i in range(n_runs)] for kind in kinds}
    mask = lambda x, kind: torch.stack([mfh.remove_channels(x[i], channels[kind][i], fill) for i in range(n_runs)])
    no_kd, *kds = _students(x2, y, [model.logits(mask(x1, kind)) for kind in kinds], seeds, cfg)
    acc_0 = no_kd.accuracy(t2, ty)
    general = set(lay.general_channels.tolist())
    rows = []
    for kind, st in zip(kinds, kds):
        frac = [len(general & set(c.tolist())) / max(1, len(general)) for c in channels[kind]]
        acc = st.accuracy(t2, ty)
        rows.append(RemovalRow(kind, len(channels[kind][0]), Stat.of(model.accuracy(mask(t1, kind), ty)), Stat.of(acc), Stat.of(acc - acc_0), Stat.of(frac)))
    return RemovalResult(setting, param, ratio, fill, teacher, Stat.of(acc_0), rows, time.perf_counter() - t0)


# ------------------------------------------------------------------------------- entry point
@dataclass
class SyntheticConfig:
    """What `xmodal mfh synthetic` runs; every field has the spec's default."""

    studies: list[Literal["gamma", "alpha", "table2", "removal"]] = field(default_factory=lambda: ["gamma", "alpha", "table2", "removal"])
    n_runs: int = 10
    seed: int = 0  # first run seed of the G/A sweeps and the removal study
    table2_seed_base: int = 42
    overlaps: list[int] = field(default_factory=lambda: [0, 2, 4, 6, 8, 10])
    ds: list[int] = field(default_factory=lambda: [0, 10, 20, 30, 40])
    ks: list[int] = field(default_factory=lambda: [5, 10, 15, 20, 25, 30])
    selections: list[str] = field(default_factory=lambda: list(SELECTIONS))
    random_with_replacement: bool = True
    removal_setting: Literal["G", "A", "T"] = "T"
    removal_param: int = 10
    removal_ratio: float = 0.75
    removal_fill: Literal["batch_mean", "zero"] = "batch_mean"
    removal_teacher: Literal["joint", "regular"] = "joint"
    train: TrainConfig = field(default_factory=TrainConfig)
    alg1: Alg1Config = field(default_factory=Alg1Config)


def _finite(obj: Any) -> Any:
    """NaN -> None so the result is strict JSON."""
    if isinstance(obj, float):
        return None if obj != obj else obj
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    return obj


def run_synthetic(config: SyntheticConfig | dict | None = None) -> dict:
    """Run the configured studies; returns plain JSON-able data keyed by study name."""
    cfg = config if isinstance(config, SyntheticConfig) else config_from_data(config or {}, SyntheticConfig, "mfh synthetic")
    common = {"n_runs": cfg.n_runs, "train": cfg.train}
    out: dict[str, Any] = {"config": to_dict(cfg)}
    for study in cfg.studies:
        if study == "gamma":
            res: Any = sweep_gamma(tuple(cfg.overlaps), seed=cfg.seed, alg1=cfg.alg1, **common)
        elif study == "alpha":
            res = sweep_alpha(tuple(cfg.ds), seed=cfg.seed, alg1=cfg.alg1, **common)
        elif study == "table2":
            res = table2(tuple(cfg.ks), selections=tuple(cfg.selections), seed_base=cfg.table2_seed_base, random_with_replacement=cfg.random_with_replacement, alg1=cfg.alg1, **common)
        else:
            res = removal_study(cfg.removal_setting, cfg.removal_param, ratio=cfg.removal_ratio, fill=cfg.removal_fill, teacher=cfg.removal_teacher, seed=cfg.seed, alg1=cfg.alg1, **common)
        out[study] = to_dict(res)
    return _finite(out)
