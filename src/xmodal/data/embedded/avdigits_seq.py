"""`avdigits-seq`: action sequences from a stochastic grammar, plus a text corpus from the same grammar.

The embedded setting for text-to-video anticipation KD (DESIGN §4, specs/textkd.md §8).

Actions are (verb, noun) pairs: `num_actions` of the verbs × nouns combinations (every verb and
noun used at least once). Noun i is shown on video by avdigits digit i; the verb is not visible (a
low-resolution clip does not resolve the hand motion), so a video student sees a weak, noun-only
view of the history while a text teacher reads the full labels.

Grammar (the hidden "recipe" structure a language model can learn):
* `num_templates` recipe templates, each a fixed sequence of `template_len` actions drawn from a
  Zipf popularity over actions (no immediate repeats). Templates share actions, so the last action
  alone is ambiguous; the previous two or three identify the template and hence what comes next
  (an order-2+ structure: a bigram beats the unigram, a trigram beats the bigram).
* A sequence (one "video") picks a template from a Zipf prior and performs it with noise: adjacent
  steps swapped with p_swap, each step skipped with p_skip, a random action inserted before a step
  with p_insert.
* Timing: every segment lasts one avdigits clip (`clip_frames` at `fps`); consecutive segments are
  separated by a gap of `gap_frames` frames (default ≥ 0.5 s, so with τa = 0.5 s the previous
  action is always complete before the observed window closes).

`generate_sequences(cfg, seed)` draws the sequences (video/split/segments with times);
`text_corpus(cfg, seed, n_lines)` writes lines `verb <v> noun <a> verb <v> noun ...` from the same
grammar (the Recipe1M-corpus analogue for MLM pretraining). The grammar (action set, templates,
priors) depends only on `cfg.grammar_seed`; `seed` picks the samples, and corpus and sequences use
separate random streams, so they never coincide line for line. Everything is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from xmodal.data.text import ACTION_SEP, ActionInfo, Segment, render_ek55
from xmodal.errors import ConfigError

NOUNS = ("cup", "pan", "knife", "bowl", "plate", "spoon", "lid", "board", "onion", "tomato")
VERBS = ("take", "wash", "cut", "put")
SPLITS = ("train", "val", "test")
_STREAM = {"grammar": 0, "sequences": 1, "corpus": 2}


@dataclass
class SeqConfig:
    verbs: tuple[str, ...] = VERBS
    nouns: tuple[str, ...] = NOUNS  # noun i is drawn with digit i: at most 10 for avdigits video
    num_actions: int = 24
    num_templates: int = 12
    template_len: tuple[int, int] = (6, 10)  # inclusive range of template lengths
    template_zipf: float = 1.0  # template prior ∝ (rank + 1)^-s
    action_zipf: float = 0.5  # action popularity in templates and insertions ∝ (rank + 1)^-s
    p_skip: float = 0.1
    p_insert: float = 0.1
    p_swap: float = 0.05
    num_sequences: int = 400
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train / val / test videos
    fps: float = 8.0
    clip_frames: int = 8
    gap_frames: tuple[int, int] = (4, 12)  # inclusive range
    grammar_seed: int = 0


@dataclass
class Grammar:
    actions: list[ActionInfo]  # id, verb, noun, name `verb_noun`, text `verb <v> noun`
    templates: list[list[int]]
    template_prior: np.ndarray  # [num_templates]
    action_prior: np.ndarray  # [num_actions]

    @property
    def texts(self) -> list[str]:
        return [a.text for a in self.actions]


@dataclass
class Sequence:
    video: str
    split: str
    template: int  # hidden: which recipe was performed (for analysis only)
    num_frames: int
    segments: list[Segment] = field(default_factory=list)


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAM[stream]]))


def _zipf(n: int, s: float, rng: np.random.Generator) -> np.ndarray:
    p = (np.arange(n) + 1.0) ** -s
    return rng.permutation(p / p.sum())  # which item gets which rank is random


def _check(cfg: SeqConfig) -> None:
    v, n = len(cfg.verbs), len(cfg.nouns)
    if not max(v, n) <= cfg.num_actions <= v * n:
        raise ConfigError(f"avdigits_seq.num_actions: expected {max(v, n)}..{v * n} for {v} verbs × {n} nouns, found {cfg.num_actions}")
    lo, hi = cfg.template_len
    if not 2 <= lo <= hi:
        raise ConfigError(f"avdigits_seq.template_len: expected 2 <= min <= max, found {cfg.template_len}")
    if cfg.num_templates < 1 or cfg.num_sequences < 1:
        raise ConfigError("avdigits_seq: num_templates and num_sequences must be >= 1")
    if len(cfg.split_fractions) != 3 or min(cfg.split_fractions) < 0 or abs(sum(cfg.split_fractions) - 1) > 1e-6:
        raise ConfigError(f"avdigits_seq.split_fractions: expected 3 non-negative numbers summing to 1, found {cfg.split_fractions}")
    if not 0 <= cfg.gap_frames[0] <= cfg.gap_frames[1] or cfg.clip_frames < 1:
        raise ConfigError(f"avdigits_seq: gap_frames {cfg.gap_frames} / clip_frames {cfg.clip_frames} out of range")
    for name in ("p_skip", "p_insert", "p_swap"):
        if not 0 <= getattr(cfg, name) < 1:
            raise ConfigError(f"avdigits_seq.{name}: expected a probability in [0, 1), found {getattr(cfg, name)}")


def grammar(cfg: SeqConfig) -> Grammar:
    """The action set, templates and priors (a function of `cfg.grammar_seed` only)."""
    _check(cfg)
    rng = _rng(cfg.grammar_seed, "grammar")
    v, n = len(cfg.verbs), len(cfg.nouns)
    # Every noun once with a verb (verbs cycled so each verb appears), then random further pairs.
    verbs_cycle = rng.permutation(np.resize(np.arange(v), max(v, n)))
    pairs = {(int(verbs_cycle[i]), i % n) for i in range(max(v, n))}
    rest = [(a, b) for a in range(v) for b in range(n) if (a, b) not in pairs]
    for j in rng.permutation(len(rest))[: cfg.num_actions - len(pairs)]:
        pairs.add(rest[j])
    actions = [
        ActionInfo(i, a, b, f"{cfg.verbs[a]}_{cfg.nouns[b]}", render_ek55(cfg.verbs[a], cfg.nouns[b]))
        for i, (a, b) in enumerate(sorted(pairs))
    ]
    action_prior = _zipf(len(actions), cfg.action_zipf, rng)
    templates = []
    for _ in range(cfg.num_templates):
        length = int(rng.integers(cfg.template_len[0], cfg.template_len[1] + 1))
        t = [int(rng.choice(len(actions), p=action_prior))]
        while len(t) < length:
            p = action_prior.copy()
            p[t[-1]] = 0.0  # no immediate repeat inside a template
            t.append(int(rng.choice(len(actions), p=p / p.sum())))
        templates.append(t)
    return Grammar(actions, templates, _zipf(cfg.num_templates, cfg.template_zipf, rng), action_prior)


def _perform(g: Grammar, cfg: SeqConfig, rng: np.random.Generator) -> tuple[int, list[int]]:
    k = int(rng.choice(len(g.templates), p=g.template_prior))
    steps = list(g.templates[k])
    for i in range(len(steps) - 1):
        if rng.random() < cfg.p_swap:
            steps[i], steps[i + 1] = steps[i + 1], steps[i]
    out = []
    for a in steps:
        if rng.random() < cfg.p_insert:
            out.append(int(rng.choice(len(g.actions), p=g.action_prior)))
        if rng.random() >= cfg.p_skip:
            out.append(a)
    return k, out or [steps[0]]


def sample_action_sequences(cfg: SeqConfig, seed: int, n: int, stream: str = "sequences") -> list[tuple[int, list[int]]]:
    """`n` (template, action ids) draws from the grammar."""
    g = grammar(cfg)
    rng = _rng(seed, stream)
    return [_perform(g, cfg, rng) for _ in range(n)]


def generate_sequences(cfg: SeqConfig, seed: int) -> list[Sequence]:
    """`cfg.num_sequences` videos with timed segments and a train/val/test split per video."""
    g = grammar(cfg)
    rng = _rng(seed, "sequences")
    draws = [_perform(g, cfg, rng) for _ in range(cfg.num_sequences)]
    counts = np.floor(np.asarray(cfg.split_fractions) * cfg.num_sequences).astype(int)
    counts[0] += cfg.num_sequences - counts.sum()
    split_of = np.repeat(np.arange(3), counts)[rng.permutation(cfg.num_sequences)]
    lo, hi = cfg.gap_frames
    out = []
    for i, (k, acts) in enumerate(draws):
        video = f"seq{i:05d}"
        gaps = rng.integers(lo, hi + 1, size=len(acts) + 1)
        starts = gaps[0] + np.concatenate([[0], np.cumsum(cfg.clip_frames + gaps[1:-1])])
        segs = [
            Segment(f"{video}_{j:03d}", video, float(s) / cfg.fps, float(s + cfg.clip_frames) / cfg.fps, a,
                    g.actions[a].verb, g.actions[a].noun, SPLITS[split_of[i]])
            for j, (s, a) in enumerate(zip(starts.tolist(), acts))
        ]
        num_frames = int(starts[-1] + cfg.clip_frames + gaps[-1])
        out.append(Sequence(video, SPLITS[split_of[i]], k, num_frames, segs))
    return out


def text_corpus(cfg: SeqConfig, seed: int, n_lines: int) -> list[str]:
    """`n_lines` corpus lines `verb <v> noun <a> verb <v> noun ...`, one performed recipe per line."""
    texts = grammar(cfg).texts
    return [ACTION_SEP.join(texts[a] for a in acts) for _, acts in sample_action_sequences(cfg, seed, n_lines, "corpus")]


def frame_actions(seq: Sequence, fps: float) -> np.ndarray:
    """Action id of every frame of the sequence's video (-1 in gaps): AVT's past-frame labels."""
    lab = np.full(seq.num_frames, -1, dtype=np.int64)
    for s in seq.segments:
        lab[int(round(s.start * fps)) : int(round(s.end * fps))] = s.action
    return lab


def assemble_video(seq: Sequence, clip: Callable[[Segment], np.ndarray], gap: Callable[[int], np.ndarray],
                   fps: float) -> np.ndarray:
    """A sequence's frames [num_frames, ...]: `clip(segment)` (its `clip_frames` frames, e.g. an
    avdigits clip of digit `segment.noun`) at each segment, `gap(n)` (n filler frames) between."""
    parts, cursor = [], 0
    for s in seq.segments:
        f0 = int(round(s.start * fps))
        if f0 > cursor:
            parts.append(gap(f0 - cursor))
        frames = clip(s)
        assert len(frames) == int(round(s.end * fps)) - f0, f"clip of {s.uid}: {len(frames)} frames"
        parts.append(frames)
        cursor = f0 + len(frames)
    if seq.num_frames > cursor:
        parts.append(gap(seq.num_frames - cursor))
    return np.concatenate(parts)


def segments(sequences: list[Sequence]) -> list[Segment]:
    """All segments of all sequences (input of `xmodal.data.text.build_histories`)."""
    return [s for q in sequences for s in q.segments]
