"""Action-anticipation data sources for text-KD (specs/textkd.md §2, §8; DESIGN §4).

* ``avdigits_seq``: the embedded setting. Sequences of (verb, noun) actions from the
  `avdigits_seq` grammar; noun i is shown by an avdigits clip of digit i (train videos use train
  handwriting, val/test videos unseen handwriting), gaps show an empty noisy canvas. One sample
  per target segment: the T frames sampled at `sample_fps` from the observed window that ends
  `tau_a` before the target starts (AVT "last clip" sampling; frames before the video start are
  padding), the target's action/verb/noun, the action of every observed frame (AVT's past
  labels, -1 in gaps/padding), and the candidate histories of past action ids the text teacher
  reads. In memory, deterministic, built in about a second.
* ``action_history``: the text teacher's records of an imported EGTEA Gaze+ / EPIC-Kitchens-55
  folder (`xmodal import egtea|epic55`; history texts only). The video student reads a prepared
  `store` of the observed windows (`anticipation_window_rows`, `xmodal textkd windows`).

Batch keys: "video" [3,T,H,W] in [-1, 1] (AVT normalisation, mean = std = 0.5), "label"
(action), "verb", "noun", "past_labels" [T], "history" (list of candidate histories), "uid",
"group" (video), plus per feature store `features: {key: file}` its tensors, named as the `store`
source names them ("key" for a one-tensor store, else "key.<tensor>": a teacher prediction store
gives "teacher.logits" and "teacher.feature"), and "key.present" (bool: False where the store
has no row for the uid; only with ``missing_features: zeros``, else a missing uid is an error
naming it).

`DataInfo.extra` carries what the teacher and the anticipation metrics need: "action_texts",
"action_verb" / "action_noun" (action -> verb / noun ids), "num_verbs", "num_nouns",
"many_shot_actions" (or None), "train_counts" (per label type, for balanced class weights).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from xmodal.data.bundle import DataBundle, DataInfo, DictDataset, collate
from xmodal.data.embedded.avdigits_seq import (
    SeqConfig,
    assemble_video,
    frame_actions,
    generate_sequences,
    grammar,
)
from xmodal.data.text import ActionInfo, HistoryRecord, Segment, build_histories
from xmodal.errors import ConfigError, DataError
from xmodal.registry import register_dataset

ROLES = ("train", "val", "test")


# ------------------------------------------------------------------------------------ datasets
class SequenceDataset(DictDataset):
    """Columns of one split; "video" / "frame_features" are gathered on access from shared banks."""

    def __init__(self, frame_index: torch.Tensor | None = None, banks: Mapping[str, torch.Tensor] | None = None,
                 **columns: Any):  # fmt: skip
        super().__init__(**columns)
        self.frame_index, self.banks = frame_index, dict(banks or {})
        self.uids: list[str] = list(columns["uid"])

    def __getitem__(self, i: int) -> dict:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}

    def __getitems__(self, idx: list[int]) -> dict:
        out = super().__getitems__(idx)
        if self.banks:
            rows = self.frame_index[torch.as_tensor(idx, dtype=torch.long)]  # [B, T]
            if "video" in self.banks:  # uint8 [B,T,H,W,3] -> [B,3,T,H,W] in [-1, 1]
                out["video"] = self.banks["video"][rows].permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)
            if "frame_features" in self.banks:
                out["frame_features"] = self.banks["frame_features"][rows]
        return out


def record_columns(records: Sequence[HistoryRecord]) -> dict[str, Any]:
    """Label/uid/history columns of teacher records."""
    return {
        "uid": [str(r.uid) for r in records],
        "group": [r.video for r in records],
        "label": torch.tensor([r.target for r in records], dtype=torch.long),
        "verb": torch.tensor([r.verb for r in records], dtype=torch.long),
        "noun": torch.tensor([r.noun for r in records], dtype=torch.long),
        "history": [r.histories for r in records],
    }


def feature_columns(uids: Sequence[str], features: Mapping[str, str], missing: str) -> dict[str, Any]:
    """Per feature store, its rows for `uids` as columns named like the `store` source names them
    ("key" for a one-tensor store, else "key.<tensor>"), plus "key.present" with missing zeros."""
    if not features:
        return {}
    from xmodal.data.features import FeatureStore, feature_keys

    out: dict[str, Any] = {}
    for key, path in features.items():
        store = FeatureStore(path, missing="zeros" if missing == "zeros" else "error")
        names = feature_keys(key, store)
        out.update({names[n]: v for n, v in store.get_many(list(uids)).items()})
        if missing == "zeros":
            out[f"{key}.present"] = torch.tensor([u in store for u in uids], dtype=torch.bool)
    return out


def train_counts(records: Sequence[HistoryRecord], sizes: Mapping[str, int]) -> dict[str, list[int]]:
    """Per label type, how often each class is a training target (for balanced class weights)."""
    cols = {"action": [r.target for r in records], "verb": [r.verb for r in records], "noun": [r.noun for r in records]}
    return {k: np.bincount(np.asarray(v, dtype=np.int64), minlength=sizes[k]).tolist() for k, v in cols.items()
            if sizes[k] > 0 and all(x >= 0 for x in v)}


# -------------------------------------------------------------------------------- avdigits-seq
@dataclass
class SequencesDataConfig(SeqConfig):
    """`avdigits_seq`: grammar (SeqConfig fields) + video rendering + observed-window sampling."""

    name: str = "avdigits_seq"
    seed: int = 0  # which sequences, clips and noise (the grammar depends on grammar_seed only)
    fps: float = 4.0  # video frame rate
    clip_frames: int = 4  # one action = 1 s
    gap_frames: tuple[int, int] = (2, 6)  # 0.5-1.5 s between actions
    tau_a: float = 0.5  # anticipation time (s): the observed window ends this long before the action
    frames: int = 10  # T observed frames ...
    sample_fps: float = 1.0  # ... at this rate (AVT EGTEA: 10 frames at 1 fps)
    size: int = 16  # frame side (px); the digit is size/2
    video_noise: float = 0.2
    clips_per_digit: int = 48  # distinct avdigits clips per digit and handwriting split
    # per-frame inputs: "frame_features" (template matching, the "AVT-h only" student) and/or
    # "video" (frames, for end-to-end backbones); [] = history and labels only (text teacher)
    inputs: list[str] = field(default_factory=lambda: ["frame_features"])
    feature_grid: int = 1  # frame features: K·grid² template-match maxima (grid × grid regions)
    features: dict[str, str] = field(default_factory=dict)  # batch key -> FeatureStore file
    missing_features: Literal["error", "zeros"] = "error"

    def validate(self) -> None:
        step = self.fps / self.sample_fps
        if self.sample_fps <= 0 or abs(step - round(step)) > 1e-6:
            raise ValueError(f"sample_fps: must divide fps {self.fps}, found {self.sample_fps}")
        if self.frames < 1 or self.clips_per_digit < 1 or self.tau_a < 0:
            raise ValueError("frames and clips_per_digit must be >= 1, tau_a >= 0")
        bad = [k for k in self.inputs if k not in ("video", "frame_features")]
        if bad:
            raise ValueError(f"inputs: unknown {bad}; expected video and/or frame_features")
        if len(self.nouns) > 10:
            raise ValueError(f"nouns: avdigits shows at most 10 digits, found {len(self.nouns)} nouns")


def observed_frames(seq_starts: np.ndarray, *, fps: float, tau_a: float, frames: int, sample_fps: float) -> np.ndarray:
    """Frame indices [S, T] observed for targets starting at frame `seq_starts` [S].

    The window ends `tau_a` before the start: its last frame is ``start − round(tau_a·fps) − 1``,
    and the T frames are spaced ``fps / sample_fps`` apart, oldest first (negative = before the
    video: padding).
    """
    step = int(round(fps / sample_fps))
    last = seq_starts - int(round(tau_a * fps)) - 1
    return last[:, None] - step * np.arange(frames - 1, -1, -1)[None, :]


@dataclass
class _Rendered:
    bank: torch.Tensor  # uint8 [F, H, W, 3]: clip frames, then gap frames, then one padding frame
    features: torch.Tensor  # float [F, nouns]: per-frame template-matching features of the bank
    index: dict[str, np.ndarray]  # uid -> [T] bank rows
    past: dict[str, np.ndarray]  # uid -> [T] action per observed frame (-1 gap / padding)


def digit_templates(images: np.ndarray, classes: np.ndarray, num_classes: int, side: int) -> torch.Tensor:
    """Zero-mean, unit-norm class-mean digit images [K, side, side] (the matched filters)."""
    from xmodal.data.embedded.avdigits import upscale

    t = torch.stack([torch.from_numpy(upscale(images[classes == c], side).mean(0)) for c in range(num_classes)])
    t = t - t.mean((1, 2), keepdim=True)
    return t / t.norm(dim=(1, 2), keepdim=True).clamp_min(1e-12)


def template_features(frames: torch.Tensor, templates: torch.Tensor, grid: int = 1) -> torch.Tensor:
    """uint8 frames [N, H, W, 3] -> [N, K·grid²]: per class, the best normalised cross-correlation
    of the grey frame with the class template over the placements in each of grid × grid regions
    (a fixed "pretrained" conv encoder: K matched filters, then max pooling).

    ncc(P, T) = <P − mean P, T> / ‖P − mean P‖ for every template-sized patch P (T zero-mean,
    unit norm); 1 = a perfect match up to brightness and contrast.
    """
    side = templates.shape[-1]
    grey = frames.float().div(255).mean(-1, keepdim=True).permute(0, 3, 1, 2)  # [N,1,H,W]
    box = torch.full((1, 1, side, side), 1.0 / side**2)
    mean, sq = F.conv2d(grey, box), F.conv2d(grey * grey, box)
    norm = (sq - mean * mean).clamp_min(1e-8).sqrt() * side  # ‖P − mean P‖
    ncc = F.conv2d(grey, templates[:, None].float()) / norm
    return F.adaptive_max_pool2d(ncc, grid).flatten(1)


def _render(cfg: SequencesDataConfig, seqs: list) -> _Rendered:
    """avdigits clips per digit, a segment -> clip assignment and the observed frames of every target."""
    from xmodal.data.embedded.avdigits import AVDigitsConfig, generate, load_digits

    k = len(cfg.nouns)
    clips = generate(AVDigitsConfig(num_classes=k, n_train_per_class=cfg.clips_per_digit, n_pool=0,
                                    n_test_per_class=cfg.clips_per_digit, frames=cfg.clip_frames, size=cfg.size,
                                    fps=cfg.fps, audio_seconds=0.05, video_noise=cfg.video_noise, seed=cfg.seed))
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 7]))
    n_gap = 16
    gap = 0.25 + cfg.video_noise * rng.standard_normal((n_gap, cfg.size, cfg.size, 1))
    gap = np.clip(np.repeat(gap, 3, -1) * 255 + 0.5, 0, 255).astype(np.uint8)
    pad = np.zeros((1, cfg.size, cfg.size, 3), np.uint8)
    bank = torch.from_numpy(np.concatenate([clips.video.reshape(-1, cfg.size, cfg.size, 3), gap, pad]))
    gap0, pad_row = len(clips.video) * cfg.clip_frames, len(bank) - 1
    # matched filters from the handwriting shown in train clips only
    images, classes = load_digits()
    shown = np.unique(clips.image[clips.split == "train"])
    feats = template_features(bank, digit_templates(images[shown], classes[shown], k, cfg.size // 2), cfg.feature_grid)
    feats[pad_row] = 0.0  # padding (before the video) carries no evidence
    # avdigits clips of digit d: train handwriting for train videos, unseen handwriting otherwise
    pools = {(s, d): np.flatnonzero((clips.split == s) & (clips.label == d)) for s in ("train", "test") for d in range(k)}
    index, past = {}, {}
    for q in seqs:
        part = "train" if q.split == "train" else "test"
        choice = {s.uid: int(rng.choice(pools[part, s.noun])) for s in q.segments}
        rows = assemble_video(q, lambda s, c=choice: c[s.uid] * cfg.clip_frames + np.arange(cfg.clip_frames),
                              lambda n: gap0 + rng.integers(n_gap, size=n), cfg.fps)
        labels = frame_actions(q, cfg.fps)
        starts = np.array([int(round(s.start * cfg.fps)) for s in q.segments])
        obs = observed_frames(starts, fps=cfg.fps, tau_a=cfg.tau_a, frames=cfg.frames, sample_fps=cfg.sample_fps)
        inside = obs >= 0
        rows_obs = np.where(inside, rows[obs.clip(0)], pad_row)
        lab_obs = np.where(inside, labels[obs.clip(0)], -1)
        for j, s in enumerate(q.segments):
            index[s.uid], past[s.uid] = rows_obs[j], lab_obs[j]
    return _Rendered(bank, feats, index, past)


def data_info(texts: Sequence[str], verbs: Sequence[int], nouns: Sequence[int], num_verbs: int, num_nouns: int,
              train_records: Sequence[HistoryRecord], many_shot: Sequence[int] | None = None,
              class_names: Sequence[str] | None = None, **extra: Any) -> DataInfo:
    """DataInfo of an anticipation source (see the module docstring for the extra keys)."""
    sizes = {"action": len(texts), "verb": num_verbs, "noun": num_nouns}
    return DataInfo(
        num_classes=len(texts), class_names=list(class_names or texts),
        extra={"action_texts": list(texts), "action_verb": list(verbs), "action_noun": list(nouns),
               "num_verbs": num_verbs, "num_nouns": num_nouns,
               "many_shot_actions": sorted(many_shot) if many_shot is not None else None,
               "train_counts": train_counts(train_records, sizes), **extra},
    )  # fmt: skip


def _standardise(rendered: _Rendered, train_uids: Sequence[str]) -> torch.Tensor:
    """Frame features z-scored per dimension with the statistics of the frames train samples
    observe (padding excluded, and kept at 0)."""
    pad = len(rendered.features) - 1
    rows = torch.from_numpy(np.concatenate([rendered.index[u] for u in train_uids]))
    ref = rendered.features[rows[rows != pad]]
    out = (rendered.features - ref.mean(0)) / ref.std(0).clamp_min(1e-6)
    out[pad] = 0.0
    return out


@register_dataset("avdigits_seq", config=SequencesDataConfig)
def avdigits_seq_data(cfg: SequencesDataConfig) -> DataBundle:
    """In-memory avdigits-seq: train / val / test videos, one sample per action segment."""
    try:
        cfg.validate()
    except ValueError as e:
        raise ConfigError(f"data (avdigits_seq): {e}") from None
    g = grammar(cfg)
    seqs = generate_sequences(cfg, cfg.seed)
    records = build_histories([s for q in seqs for s in q.segments], cfg.tau_a)
    rendered = _render(cfg, seqs) if cfg.inputs else None
    by_role = {r: [x for x in records if x.split == r] for r in ROLES}
    banks: dict[str, torch.Tensor] = {}
    if rendered is not None:
        if "video" in cfg.inputs:
            banks["video"] = rendered.bank
        if "frame_features" in cfg.inputs:
            banks["frame_features"] = _standardise(rendered, [r.uid for r in by_role["train"]])

    def part(role: str) -> SequenceDataset | None:
        recs = by_role[role]
        if not recs:
            return None
        cols = record_columns(recs)
        index = None
        if rendered is not None:
            index = torch.from_numpy(np.stack([rendered.index[u] for u in cols["uid"]]))
            cols["past_labels"] = torch.from_numpy(np.stack([rendered.past[u] for u in cols["uid"]]))
        cols.update(feature_columns(cols["uid"], cfg.features, cfg.missing_features))
        return SequenceDataset(index, banks, **cols)

    if not by_role["train"]:
        raise ConfigError("data (avdigits_seq): no training video (num_sequences / split_fractions)")
    info = data_info(g.texts, [a.verb for a in g.actions], [a.noun for a in g.actions], len(cfg.verbs),
                     len(cfg.nouns), by_role["train"], class_names=[a.name for a in g.actions],
                     fps=cfg.fps, frames=cfg.frames, size=cfg.size, tau_a=cfg.tau_a,
                     dims={"frame_features": len(cfg.nouns) * cfg.feature_grid**2})
    return DataBundle(train=part("train"), val=part("val"), test=part("test"), info=info, collate=collate)


# ------------------------------------------------------------------------------ action_history
@dataclass
class ActionHistoryConfig:
    """`action_history`: teacher records of an imported EGTEA / EK55 folder (`xmodal import egtea|epic55`).

    Reads `manifest.jsonl` (rows: uid, split, labels [action], start, end, group = video, meta
    verb/noun) and, next to it, `actions.json` (id, verb, noun, name, text) and, when present,
    `many_shot.json`. Histories are rebuilt from the rows (not read from meta, which the importer
    may have cut to its `history_len`), with the same rule as the importer.
    """

    name: str = "action_history"
    manifest: str = ""
    train: str = "train"  # split names of the manifest per role
    val: str | None = "val"
    test: str | None = None
    tau_a: float = 1.0  # EGTEA 0.5 (AVT config), EK55 1.0
    max_gap: float | None = None  # seconds; cuts the past into candidate histories (see build_histories)
    features: dict[str, str] = field(default_factory=dict)
    missing_features: Literal["error", "zeros"] = "error"

    def validate(self) -> None:
        if not self.manifest:
            raise ValueError("manifest: path of an imported manifest.jsonl (xmodal import egtea|epic55) is required")


def read_imported_actions(folder: Path) -> list[ActionInfo]:
    """`actions.json` written by the EGTEA / EK55 importers, ordered by id (must be 0..K-1)."""
    import json

    path = folder / "actions.json"
    if not path.is_file():
        raise DataError(f"{path}: not found (written by `xmodal import egtea|epic55` next to the manifest)")
    try:
        acts = [ActionInfo(int(a["id"]), int(a["verb"]), int(a["noun"]), str(a["name"]), str(a["text"]))
                for a in json.loads(path.read_text(encoding="utf-8"))]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: expected a list of {{id, verb, noun, name, text}} ({e})") from None
    acts.sort(key=lambda a: a.id)
    if [a.id for a in acts] != list(range(len(acts))):
        raise DataError(f"{path}: action ids must be 0..{len(acts) - 1}")
    return acts


@register_dataset("action_history", config=ActionHistoryConfig)
def action_history_data(cfg: ActionHistoryConfig) -> DataBundle:
    """Text-teacher records (history, action/verb/noun, uid) of the roles' manifest splits."""
    import json

    from xmodal.data.manifest import read_manifest

    try:
        cfg.validate()
    except ValueError as e:
        raise ConfigError(f"data (action_history): {e}") from None
    path = Path(cfg.manifest)
    actions = read_imported_actions(path.parent)
    roles = {r: sp for r, sp in (("train", cfg.train), ("val", cfg.val), ("test", cfg.test)) if sp}
    segs = []
    for i, row in enumerate(read_manifest(path), 1):
        if len(row.labels) != 1 or not 0 <= row.labels[0] < len(actions) or row.start is None or row.end is None:
            raise DataError(f"{path}:{i}: uid '{row.uid}': expected one action label in 0..{len(actions) - 1} and start/end")
        a = actions[row.labels[0]]
        segs.append(Segment(row.uid, row.group or "", row.start, row.end, a.id, a.verb, a.noun, row.split))
    records = build_histories(segs, cfg.tau_a, max_gap=cfg.max_gap)
    by_role = {r: [x for x in records if x.split == sp] for r, sp in roles.items()}
    if not by_role["train"]:
        raise DataError(f"{path}: no rows in split '{cfg.train}' (data.train)")
    many = None
    if (path.parent / "many_shot.json").is_file():
        many = json.loads((path.parent / "many_shot.json").read_text(encoding="utf-8"))["actions"]

    def part(role: str) -> SequenceDataset | None:
        recs = by_role.get(role)
        if not recs:
            return None
        cols = record_columns(recs)
        cols.update(feature_columns(cols["uid"], cfg.features, cfg.missing_features))
        return SequenceDataset(**cols)

    info = data_info([a.text for a in actions], [a.verb for a in actions], [a.noun for a in actions],
                     max(a.verb for a in actions) + 1, max(a.noun for a in actions) + 1, by_role["train"], many,
                     class_names=[a.name for a in actions], tau_a=cfg.tau_a)
    return DataBundle(train=part("train"), val=part("val"), test=part("test"), info=info, collate=collate)


# ------------------------------------------------------------------------ anticipation windows
def anticipation_window_rows(rows: Sequence[Any], *, tau_a: float, tau_o: float) -> list[Any]:
    """Segment manifest rows -> rows whose media span is the observed window of each segment.

    The window of a segment starting at s is [max(0, s − tau_a − tau_o), s − tau_a]; rows whose
    window would end before the video starts (s < tau_a) are dropped (nothing is observed). The
    segment's own start/end move to meta `segment_start` / `segment_end`; uid, split, labels,
    group and the rest of meta are kept, so teacher predictions and the student share uids.
    """
    from dataclasses import replace

    out = []
    for r in rows:
        if r.start is None:
            raise DataError(f"manifest row '{r.uid}': no start time; anticipation windows need segment times")
        end = r.start - tau_a
        if end <= 0:
            continue
        meta = {**r.meta, "segment_start": r.start, "segment_end": r.end}
        out.append(replace(r, start=max(0.0, end - tau_o), end=end, meta=meta))
    return out


def past_frame_labels(segment_rows: Sequence[Any], window_rows: Sequence[Any], *, fps: float, frames: int) -> dict[str, list[int]]:
    """AVT's past-frame labels for windows prepared as dense stores at `fps`.

    A dense store keeps the frames at ``start + k / fps < end`` (n = ceil((end − start)·fps));
    the student reads the last `frames` of them. Each gets the action of the segment of the same
    video (group) that covers its time (the latest-starting one when segments overlap), else −1;
    positions before the first stored frame are −1.
    """
    by_video: dict[str, list[tuple[float, float, int]]] = {}
    for r in segment_rows:
        by_video.setdefault(r.group or "", []).append((float(r.start), float(r.end), int(r.labels[0])))
    table = {v: np.array(sorted(s), dtype=np.float64) for v, s in by_video.items()}
    out = {}
    for w in window_rows:
        n = int(np.ceil((w.end - w.start) * fps - 1e-9))
        k = np.arange(n - frames, n)
        t = w.start + k / fps
        segs = table.get(w.group or "", np.zeros((0, 3)))
        cover = (segs[None, :, 0] <= t[:, None]) & (t[:, None] < segs[None, :, 1])  # [T, S]
        last = np.where(cover.any(1), cover.shape[1] - 1 - cover[:, ::-1].argmax(1), -1)
        lab = np.where(last >= 0, segs[last.clip(0), 2] if len(segs) else -1, -1).astype(np.int64)
        out[w.uid] = np.where(k >= 0, lab, -1).tolist()
    return out
