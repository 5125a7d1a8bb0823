"""`xmodal mfh diagnose`: "will cross-modal KD from this teacher help this student?" (specs/mfh.md §4).

Given a recipe naming a teacher modality and a student modality on one paired data source:

1. the teacher is trained on its own modality (or loaded from a checkpoint / run folder);
2. the no-KD student is trained on the student's labelled split, and a student-side reference
   net f_b (`saliency.reference`: that student, one trained on another labelled paired split, or
   Algorithm 1 step 1's jointly trained f_b);
3. Algorithm 1's permutation saliency scores every channel of the teacher's place (default: the
   pooled feature before its classifier) on the paired split where KD would happen (e.g. the
   unlabelled pool), against f_b's logits on the paired student inputs, calibrated to the
   teacher's logit scale (`mfh.modality_general_saliency(calibrate=True)`);
4. γ̂ = the modality-general share of the teacher's decisive signal (`mfh.estimate_gamma`,
   per channel or for the whole place, optionally divided by the reference's ceiling) and a
   plain-language verdict (`mfh.kd_verdict`);
5. optionally (`verify_kd`) a KD student is trained and its gain over a no-KD student measured
   (analysis/mfh_kd.py: the `kd` method where it applies, else a minimal loop).

Everything is callable from Python: ``diagnose(DiagnoseConfig | dict | path) -> DiagnoseResult``.
The models are trained through the engine (`engine.trainer.train`), so a teacher trained here and
one trained with ``xmodal train`` are the same kind of run and either can be passed as checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from xmodal.analysis import mfh
from xmodal.config import (
    OptimConfig,
    RunConfig,
    TrainConfig,
    config_from_data,
    load_config,
    registered,
    to_dict,
)
from xmodal.errors import CheckpointError, ConfigError, DataError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- configs
@dataclass
class SideConfig:
    """One side of the pair: which batch key it reads, its own labels, its model and training."""

    modality: str = ""  # batch key the model reads: fbank, video, image, x1, x2, ...
    label_key: str = "label"  # the labels of this side's own task (avdigits audio teacher: audio_label)
    model: Any = registered("models")
    split: str = "train"  # split it is trained on (teacher: usually a large split of its own modality)
    checkpoint: str = ""  # teacher only: a run folder or weights file to load instead of training
    steps: int = 200
    batch_size: int = 64
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 0.0


@dataclass
class SaliencyConfig:
    """Algorithm 1 steps 2-3 on the teacher's place."""

    split: str = "pool"  # paired split the saliency (and KD) runs on
    place: str = "feature"  # "feature": the encoder output before `head`; or a module path in an nn.Sequential model
    head: str = "fc"  # module applied to the "feature" place
    repeats: int = 10
    batch_size: int = 512
    distance: Literal["mse", "mae"] = "mse"
    max_samples: int = 0  # 0 = the whole split
    # γ̂ from the per-channel permutations ("channels", exact for independent channels such as
    # gauss inputs) or from permuting the whole place at once ("joint": robust to the correlated
    # channels of a CNN feature; see mfh.estimate_gamma)
    gamma: Literal["channels", "joint"] = "joint"
    # [ours] divide γ̂ by the ceiling a reference of this quality can reach: the same explained
    # share computed for a teacher that outputs the student's labels (one-hot) on the same split.
    # A weak reference (few labels, hard modality) attenuates both alike, so the ratio is about
    # the teacher, not the reference. Needs the student's labels on the saliency split.
    normalise: bool = True
    # The modality-b net whose logits the teacher is scored against. "supervised": the no-KD
    # student itself (trained on the student's labelled split). "joint": Algorithm 1 step 1, a fresh
    # teacher-architecture f_a and student-architecture f_b trained together on the labelled pairs
    # with CE + CE + MSE(logits) (SGD lr `joint_lr`, momentum 0.9, student.steps full passes);
    # f_b then carries more of what the modalities share (the gauss threshold 0.4 was set with it).
    reference: Literal["supervised", "joint"] = "supervised"
    joint_lr: float = 0.01
    # Labelled paired split the reference is trained on ("" = student.split, then the supervised
    # reference is the no-KD student itself). A reference near chance makes γ̂ ≈ 0 whatever the
    # teacher (γ̂ is attenuated by the reference's noise): give it enough labelled pairs, e.g. the
    # pool's labels, which only the diagnostic reads, never the KD student.
    reference_split: str = ""


@dataclass
class KDConfig:
    """The observed-gain check: a KD student from the teacher on the saliency split."""

    steps: int = 0  # 0 = student.steps (the no-KD student's budget: a paired comparison)
    batch_size: int = 64  # paired clips with teacher soft targets per step, next to a student.batch_size labelled batch
    w_gt: float = 1.0
    w_kd: float = 1.0
    temperature: float = 1.0
    reduction: Literal["batchmean", "mean_elements"] = "batchmean"  # minimal runner (the kd method uses batchmean)
    # auto: the `kd` method (methods/kd.py) where it applies (avdigits, teacher run folder), else
    # the minimal loop of analysis/mfh_kd.py; see there
    runner: Literal["auto", "method", "minimal"] = "auto"
    # a "does not help" verdict agrees with an observed gain below this many points (seed noise)
    agree_margin: float = 1.0


@dataclass
class DiagnoseConfig:
    name: str = "mfh-diagnose"
    description: str = ""
    data: Any = field(default=None, metadata={"registry": "datasets"})
    teacher: SideConfig | None = None
    student: SideConfig | None = None
    saliency: SaliencyConfig = field(default_factory=SaliencyConfig)
    threshold: float = 0.4  # γ̂ at or above which KD is expected to help (see mfh.kd_verdict)
    verify_kd: bool = False
    kd: KDConfig = field(default_factory=KDConfig)
    seed: int = 0
    threads: int = 0

    def validate(self) -> None:
        if self.data is None:
            raise ValueError("data: section missing; name the paired data source (e.g. {name: avdigits})")
        if self.teacher is None or not self.teacher.modality:
            raise ValueError("teacher: no teacher modality; a diagnose recipe names `teacher.modality` (e.g. fbank) and `student.modality` (e.g. video)")
        if self.student is None or not self.student.modality:
            raise ValueError("student: no student modality; a diagnose recipe names `student.modality` (e.g. video)")
        for side in ("teacher", "student"):
            if getattr(self, side).model is None:
                raise ValueError(f"{side}.model: missing; name a registered model, e.g. {{name: tiny_audio}}")
        if self.student.checkpoint:
            raise ValueError("student.checkpoint: only the teacher can be loaded; the student-side reference is trained here")


def load_diagnose_config(path: str | Path, overrides: list[str] | None = None) -> DiagnoseConfig:
    return load_config(path, overrides, cls=DiagnoseConfig)


# ----------------------------------------------------------------------------------- results
@dataclass
class DiagnoseResult:
    name: str
    teacher_modality: str
    student_modality: str
    gamma_hat: float
    helps: bool
    threshold: float
    verdict: str
    scores: list[float]  # per channel, min-max normalised (Algorithm 1)
    ranking: list[int]
    top_channels: list[int]
    teacher_acc: float  # on its own labels, test split
    teacher_acc_on_student_labels: float  # the teacher's predictions scored against the student's labels
    student_acc: float  # no-KD student, test split
    reference_acc: float  # the student-side reference net of Algorithm 1, test split (= student_acc when it is the no-KD student)
    kd_acc: float | None = None  # observed, when verify_kd
    kd_baseline_acc: float | None = None  # the no-KD student the KD student is compared with (same batches and init)
    kd_gain: float | None = None  # kd_acc − kd_baseline_acc (points)
    agrees: bool | None = None  # helps: gain > kd.agree_margin; does not help: gain < kd.agree_margin
    kd_runner: str | None = None  # "methods.kd" or "minimal" (analysis/mfh_kd.py)
    gamma_raw: float = 0.0  # γ̂ before dividing by the reference's ceiling
    gamma_ceiling: float | None = None  # the explained share a label-perfect teacher would get (saliency.normalise)
    n_saliency: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    teacher_source: str = "trained"
    config: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------- helpers
def _subset(ds: Any, n: int) -> Any:
    return ds if n <= 0 or n >= len(ds) else torch.utils.data.Subset(ds, range(n))


def _run_config(cfg: DiagnoseConfig, side: SideConfig, name: str, n_train: int) -> RunConfig:
    from xmodal.methods.supervised import SupervisedConfig

    method = SupervisedConfig(input_key=side.modality, label_key=side.label_key, model=side.model)
    optim = OptimConfig(name=side.optimizer, lr=side.lr, momentum=side.momentum, weight_decay=side.weight_decay)
    train = TrainConfig(max_steps=side.steps, batch_size=min(side.batch_size, n_train), eval_every=0, ckpt_every_epochs=0,
                        progress=False, tensorboard=False, seed=cfg.seed, threads=cfg.threads, log_every=max(1, side.steps // 4))
    return RunConfig(name=f"{cfg.name}-{name}", method=method, data=cfg.data, optim=optim, train=train)


def _bundle_for(data: Any, train_split: str, what: str) -> Any:
    from xmodal.data.bundle import DataBundle

    ds = data.split(train_split)
    if ds is None or len(ds) == 0:
        have = [s for s in ("train", "val", "test", *data.extra) if data.split(s) is not None]
        raise ConfigError(f"{what}.split: the data has no split '{train_split}' (has: {', '.join(have)})")
    return DataBundle(train=ds, info=data.info, test=data.test, collate=data.collate)


def _train_side(cfg: DiagnoseConfig, side: SideConfig, name: str, data: Any, out: Path) -> Any:
    from xmodal.engine.trainer import train

    bundle = _bundle_for(data, side.split, name)
    res = train(_run_config(cfg, side, name, len(bundle.train)), out_dir=out / name, data=bundle)
    return res.method


def _load_teacher(cfg: DiagnoseConfig, data: Any) -> Any:
    """The teacher method with weights from `teacher.checkpoint` (run folder or weights file)."""
    from xmodal.engine.checkpoint import load_state_file, load_weights
    from xmodal.engine.runs import find_weights
    from xmodal.registry import METHODS

    side = cfg.teacher
    path = Path(side.checkpoint)
    weights = find_weights(path) if path.is_dir() else path
    if weights is None:
        raise CheckpointError(f"teacher.checkpoint {path}: run folder without weights (weights.safetensors or checkpoints/)")
    state = load_state_file(weights)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a full training checkpoint
    if not isinstance(state, dict):
        raise CheckpointError(f"teacher.checkpoint {weights}: expected a state dict, found {type(state).__name__}")
    method = METHODS.build(_run_config(cfg, side, "teacher", 1).method, info=data.info)
    # a bare model's state (no "model." prefix) is accepted as well as a supervised run's
    if not any(k.startswith("model.") for k in state):
        state = {f"model.{k}": v for k, v in state.items()}
    name = type(method.model).__name__
    load_weights(method, state, what=f"teacher.checkpoint {weights} (teacher.model {side.model.name} → {name})")
    return method.eval()


@torch.no_grad()
def _outputs(model: nn.Module, ds: Any, key: str, collate: Any, bs: int = 256, label_keys: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """logits, feature (when the model returns one) and labels over a whole split."""
    from xmodal.data.bundle import collate as default_collate

    loader = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=False, collate_fn=collate or default_collate)
    parts: dict[str, list[Tensor]] = {}
    was = model.training
    model.eval()
    try:
        for batch in loader:
            if key not in batch:
                raise ConfigError(f"modality {key!r}: the data has no such batch key; keys: {sorted(batch)}")
            out = model(batch[key])
            logits = out[0] if isinstance(out, tuple) else out
            parts.setdefault("logits", []).append(logits.float())
            feat = getattr(out, "feature", None)
            if feat is not None:
                parts.setdefault("feature", []).append(feat.float())
            parts.setdefault("n", []).append(torch.tensor([len(batch[key])]))
            for lk in dict.fromkeys(label_keys):
                if lk in batch:
                    parts.setdefault(lk, []).append(batch[lk])
    finally:
        model.train(was)
    return {k: torch.cat(v) for k, v in parts.items()}


def _acc(logits: Tensor, labels: Tensor) -> float:
    return 100.0 * (logits.argmax(1) == labels).double().mean().item()


def teacher_place(method: Any, sal: SaliencyConfig) -> tuple[nn.Module, str]:
    """The teacher network and the head that maps the place's features to logits."""
    model = method.model
    if sal.place == "feature":
        head = getattr(model, sal.head, None)
        if not isinstance(head, nn.Module):
            raise ConfigError(f"saliency.head: {type(model).__name__} has no module {sal.head!r} after its feature")
        return model, "feature"
    return model, sal.place


# --------------------------------------------------------------------------------- diagnose
def diagnose(config: DiagnoseConfig | dict | str | Path, *, out_dir: str | Path | None = None, data: Any = None,
             verify_kd: bool | None = None) -> DiagnoseResult:
    """Run the diagnostic; `out_dir` keeps the trained teacher/student runs (default: a temp dir).

    `data`: an already built DataBundle for `config.data` (saves regenerating it).
    """
    import tempfile

    from xmodal.engine.trainer import configure_cpu
    from xmodal.registry import DATASETS

    if isinstance(config, (str, Path)):
        cfg = load_diagnose_config(config)
    elif isinstance(config, dict):
        cfg = config_from_data(config, DiagnoseConfig, "mfh diagnose")
    else:
        cfg = config
        cfg.validate() if cfg.data is not None and cfg.teacher is not None and cfg.student is not None else _raise_incomplete(cfg)
    if verify_kd is not None:
        cfg = dataclasses.replace(cfg, verify_kd=verify_kd)
    configure_cpu(cfg.threads)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    data = data if data is not None else DATASETS.build(cfg.data)
    seconds["data"] = time.perf_counter() - t0
    if data.test is None:
        raise ConfigError("data: the data source has no test split (needed to score the teacher and the students)")
    with tempfile.TemporaryDirectory(prefix="mfh-diagnose-") as tmp:
        out = Path(out_dir) if out_dir is not None else Path(tmp)
        t = time.perf_counter()
        if cfg.teacher.checkpoint:
            teacher, source = _load_teacher(cfg, data), f"loaded from {cfg.teacher.checkpoint}"
        else:
            teacher, source = _train_side(cfg, cfg.teacher, "teacher", data, out), "trained"
        seconds["teacher"] = time.perf_counter() - t
        t = time.perf_counter()
        student = _train_side(cfg, cfg.student, "student", data, out)
        seconds["student"] = time.perf_counter() - t
        reference = student.model
        ref_split = cfg.saliency.reference_split or cfg.student.split
        if cfg.saliency.reference == "joint":
            t = time.perf_counter()
            reference = _joint_reference(cfg, data, ref_split)
            seconds["reference"] = time.perf_counter() - t
        elif ref_split != cfg.student.split:
            t = time.perf_counter()
            reference = _train_side(cfg, dataclasses.replace(cfg.student, split=ref_split), "reference", data, out).model
            seconds["reference"] = time.perf_counter() - t
        res = _score(cfg, data, teacher, student, reference, seconds, source)
        if cfg.verify_kd:
            t = time.perf_counter()
            from xmodal.analysis.mfh_kd import kd_method_accuracy, kd_student_accuracy, uses_kd_method

            run = _teacher_run(cfg, out)
            if uses_kd_method(cfg, run):
                (res.kd_acc, res.kd_baseline_acc), res.kd_runner = kd_method_accuracy(cfg, run, out), "methods.kd"
            else:
                res.kd_acc, res.kd_baseline_acc, res.kd_runner = kd_student_accuracy(cfg, data, teacher, out), res.student_acc, "minimal"
            res.kd_gain = res.kd_acc - res.kd_baseline_acc
            res.agrees = res.kd_gain > cfg.kd.agree_margin if res.helps else res.kd_gain < cfg.kd.agree_margin
            seconds["kd"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    res.seconds = {k: round(v, 3) for k, v in seconds.items()}
    return res


def _teacher_run(cfg: DiagnoseConfig, out: Path) -> Path | None:
    """The teacher as a `supervised` run folder (what the kd method loads), if it is one."""
    if not cfg.teacher.checkpoint:
        return out / "teacher"
    p = Path(cfg.teacher.checkpoint)
    return p if p.is_dir() else None


def _raise_incomplete(cfg: DiagnoseConfig) -> None:
    try:
        cfg.validate()
    except ValueError as e:
        raise ConfigError(f"mfh diagnose: {e}") from None


def _joint_reference(cfg: DiagnoseConfig, data: Any, split: str) -> nn.Module:
    """Algorithm 1 step 1 on the student's labelled pairs; returns f_b."""
    from xmodal.data.bundle import collate as default_collate
    from xmodal.engine.trainer import seed_everything
    from xmodal.methods.supervised import fill_model_dims
    from xmodal.registry import MODELS

    side = cfg.student
    ds = _bundle_for(data, split, "saliency.reference").train
    seed_everything(cfg.seed + 1)
    f_a = _Logits(MODELS.build(fill_model_dims(cfg.teacher.model, data.info, cfg.teacher.modality)))
    f_b = _Logits(MODELS.build(fill_model_dims(side.model, data.info, side.modality)))
    bs = min(side.batch_size, len(ds))
    loader = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, drop_last=True, collate_fn=data.collate or default_collate,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    mfh.joint_pretrain(f_a, f_b, loader, steps=side.steps, lr=cfg.saliency.joint_lr, momentum=0.9,
                       keys=(cfg.teacher.modality, side.modality, side.label_key))
    return f_b.model


class _Logits(nn.Module):
    """A model returning (logits, ...) as a plain logits module (joint_pretrain reads tensors)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, tuple) else out


def _score(cfg: DiagnoseConfig, data: Any, teacher: Any, student: Any, reference: nn.Module, seconds: dict, source: str) -> DiagnoseResult:
    sal = cfg.saliency
    t = time.perf_counter()
    split = data.split(sal.split)
    if split is None or len(split) == 0:
        have = [s for s in ("train", "val", "test", *data.extra) if data.split(s) is not None]
        raise ConfigError(f"saliency.split: the data has no split '{sal.split}' (has: {', '.join(have)})")
    split = _subset(split, sal.max_samples)
    model, place = teacher_place(teacher, sal)
    ta = _outputs(model, split, cfg.teacher.modality, data.collate)
    sb = _outputs(reference, split, cfg.student.modality, data.collate, label_keys=(cfg.student.label_key,))
    if len(ta["logits"]) != len(sb["logits"]):
        raise DataError(f"saliency.split '{sal.split}': {len(ta['logits'])} teacher-side but {len(sb['logits'])} student-side samples; modalities must be paired")
    if place == "feature":
        if "feature" not in ta:
            raise ConfigError(f"saliency.place: {type(model).__name__} returns no `feature`; name a module path instead")
        feats, head = ta["feature"], getattr(model, sal.head)
    else:
        feats = mfh.features_at(model, place, _stack_inputs(split, cfg.teacher.modality, data.collate), batch_size=256)
        head = mfh.head_after(model, place)
    res = mfh.modality_general_saliency(head, feats, sb["logits"], repeats=sal.repeats, batch_size=sal.batch_size,
                                        distance=sal.distance, generator=torch.Generator().manual_seed(cfg.seed),
                                        calibrate=True)
    seconds["saliency"] = time.perf_counter() - t
    test = data.test
    tt = _outputs(model, test, cfg.teacher.modality, data.collate, label_keys=(cfg.teacher.label_key, cfg.student.label_key))
    st = _outputs(student.model, test, cfg.student.modality, data.collate, label_keys=(cfg.student.label_key,))
    teacher_acc = _acc(tt["logits"], tt[cfg.teacher.label_key])
    teacher_on_student = _acc(tt["logits"], tt[cfg.student.label_key]) if cfg.student.label_key in tt else float("nan")
    student_acc = _acc(st["logits"], st[cfg.student.label_key])
    rt = st if reference is student.model else _outputs(reference, test, cfg.student.modality, data.collate, label_keys=(cfg.student.label_key,))
    reference_acc = _acc(rt["logits"], rt[cfg.student.label_key])
    ceiling = None
    if sal.normalise and cfg.student.label_key in sb:
        onehot = torch.nn.functional.one_hot(sb[cfg.student.label_key], sb["logits"].shape[1]).float()
        ceiling = mfh.explained_share(onehot, sb["logits"])
    v = mfh.kd_verdict(res, threshold=cfg.threshold, teacher_acc=teacher_acc, student_acc=student_acc, mode=sal.gamma,
                       ceiling=ceiling)
    return DiagnoseResult(
        name=cfg.name, teacher_modality=cfg.teacher.modality, student_modality=cfg.student.modality,
        gamma_hat=v.gamma_hat, helps=v.helps, threshold=v.threshold, verdict=v.text,
        scores=[round(float(s), 5) for s in res.scores], ranking=res.ranking.tolist(), top_channels=v.top_channels,
        teacher_acc=teacher_acc, teacher_acc_on_student_labels=teacher_on_student, student_acc=student_acc,
        reference_acc=reference_acc,
        n_saliency=len(feats), teacher_source=source, config=to_dict(cfg),
        gamma_raw=mfh.estimate_gamma(res, sal.gamma), gamma_ceiling=ceiling,
    )  # fmt: skip


def _stack_inputs(ds: Any, key: str, collate: Any) -> Tensor:
    from xmodal.data.bundle import collate as default_collate

    loader = torch.utils.data.DataLoader(ds, batch_size=512, shuffle=False, collate_fn=collate or default_collate)
    return torch.cat([b[key] for b in loader])
