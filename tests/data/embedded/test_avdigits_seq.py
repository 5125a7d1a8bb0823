"""The avdigits-seq grammar: determinism, timing, corpus format and learnable order-2+ structure."""

import re
from collections import Counter, defaultdict
from dataclasses import replace

import numpy as np
import pytest

from xmodal.data.embedded.avdigits_seq import (
    SeqConfig,
    assemble_video,
    frame_actions,
    generate_sequences,
    grammar,
    sample_action_sequences,
    segments,
    text_corpus,
)
from xmodal.data.text import build_histories
from xmodal.errors import ConfigError

CFG = SeqConfig(num_sequences=200)


def test_deterministic_and_seeded():
    a, b = generate_sequences(CFG, 3), generate_sequences(CFG, 3)
    assert [q.segments for q in a] == [q.segments for q in b]
    c = generate_sequences(CFG, 4)
    assert [s.action for s in segments(a)] != [s.action for s in segments(c)]
    assert text_corpus(CFG, 1, 50) == text_corpus(CFG, 1, 50)
    # the grammar depends on grammar_seed only
    assert grammar(CFG).templates == grammar(replace(CFG, num_sequences=5)).templates
    assert grammar(CFG).templates != grammar(replace(CFG, grammar_seed=1)).templates


def test_action_set_covers_verbs_and_nouns():
    g = grammar(CFG)
    assert len(g.actions) == CFG.num_actions == len({(a.verb, a.noun) for a in g.actions})
    assert {a.verb for a in g.actions} == set(range(len(CFG.verbs)))
    assert {a.noun for a in g.actions} == set(range(len(CFG.nouns)))
    a = g.actions[5]
    assert a.name == f"{CFG.verbs[a.verb]}_{CFG.nouns[a.noun]}" and a.text == f"{CFG.verbs[a.verb]} <v> {CFG.nouns[a.noun]}"
    assert np.isclose(g.template_prior.sum(), 1) and np.isclose(g.action_prior.sum(), 1)
    assert all(x != y for t in g.templates for x, y in zip(t, t[1:]))


def test_timing_splits_and_labels():
    seqs = generate_sequences(CFG, 0)
    assert Counter(q.split for q in seqs) == {"train": 120, "val": 40, "test": 40}
    g = grammar(CFG)
    lo, hi = CFG.gap_frames
    for q in seqs:
        assert all(s.split == q.split and s.video == q.video for s in q.segments)
        frames = [(round(s.start * CFG.fps), round(s.end * CFG.fps)) for s in q.segments]
        assert all(e - s == CFG.clip_frames for s, e in frames)
        gaps = [frames[0][0]] + [b[0] - a[1] for a, b in zip(frames, frames[1:])] + [q.num_frames - frames[-1][1]]
        assert all(lo <= x <= hi for x in gaps)
        assert all((s.verb, s.noun) == (g.actions[s.action].verb, g.actions[s.action].noun) for s in q.segments)
        lab = frame_actions(q, CFG.fps)
        assert lab.shape == (q.num_frames,)
        assert (lab >= 0).sum() == CFG.clip_frames * len(q.segments)
        assert all(lab[f0] == s.action and lab[f1 - 1] == s.action for (f0, f1), s in zip(frames, q.segments))


def test_assemble_video_places_clips_at_their_frames():
    q = generate_sequences(CFG, 0)[0]
    video = assemble_video(q, lambda s: np.full((CFG.clip_frames, 2, 2), s.action), lambda n: np.full((n, 2, 2), -1), CFG.fps)
    assert video.shape == (q.num_frames, 2, 2)
    np.testing.assert_array_equal(video[:, 0, 0], frame_actions(q, CFG.fps))


def test_histories_with_tau_half_second_are_the_whole_past():
    # gaps >= 0.5 s: with tau_a = 0.5 s every earlier action is complete before the window closes
    seqs = generate_sequences(CFG, 0)
    recs = {r.uid: r for r in build_histories(segments(seqs), 0.5)}
    for q in seqs[:20]:
        for j, s in enumerate(q.segments):
            assert recs[s.uid].histories == [[x.action for x in q.segments[:j]]]


def test_corpus_format():
    lines = text_corpus(CFG, 0, 100)
    pair = r"[a-z-]+ <v> [a-z]+"
    assert all(re.fullmatch(rf"{pair}( <a> {pair})*", ln) for ln in lines)
    # corpus and video sequences use separate random streams
    seq_lines = {" ".join(map(str, a)) for _, a in sample_action_sequences(CFG, 0, 100)}
    corpus_lines = {" ".join(map(str, a)) for _, a in sample_action_sequences(CFG, 0, 100, "corpus")}
    assert seq_lines != corpus_lines


def _ngram_accuracy(train, test, order):
    """Next-action top-1 of a count-based n-gram with back-off to shorter contexts."""
    counts = defaultdict(Counter)
    for s in train:
        for i, a in enumerate(s):
            for o in range(min(order, i + 1)):
                counts[tuple(s[i - o : i])][a] += 1
    hits = n = 0
    for s in test:
        for i in range(1, len(s)):
            ctx = next(c for o in range(min(order - 1, i), -1, -1) if (c := tuple(s[i - o : i])) in counts)
            hits += counts[ctx].most_common(1)[0][0] == s[i]
            n += 1
    return hits / n


def test_grammar_has_learnable_order_two_structure():
    train = [a for _, a in sample_action_sequences(CFG, 0, 2000, "corpus")]
    test = [[s.action for s in q.segments] for q in generate_sequences(CFG, 0)]
    uni, bi, tri = (_ngram_accuracy(train, test, o) for o in (1, 2, 3))
    assert uni < 0.25  # chance is 1/24; the most frequent action is right ~15 % of the time
    assert bi > uni + 0.15
    assert tri > bi + 0.1


@pytest.mark.parametrize("bad", [dict(num_actions=50), dict(num_actions=5), dict(template_len=(1, 3)),
                                 dict(split_fractions=(0.5, 0.2, 0.2)), dict(p_skip=1.0)])
def test_config_errors(bad):
    with pytest.raises(ConfigError, match="avdigits_seq"):
        grammar(replace(CFG, **bad))
