"""Anticipation data sources: avdigits-seq windows, frame features, teacher stores; imported
EGTEA/EK55 histories; observed-window rows and past-frame labels."""

import json

import numpy as np
import pytest
import torch

from xmodal.data.embedded.avdigits_seq import frame_actions, generate_sequences, grammar
from xmodal.data.features import FeatureStore
from xmodal.data.manifest import ManifestRow, write_manifest
from xmodal.data.sequences import (
    SequencesDataConfig,
    anticipation_window_rows,
    avdigits_seq_data,
    observed_frames,
    past_frame_labels,
)
from xmodal.errors import ConfigError, DataError
from xmodal.registry import DATASETS

CFG = dict(num_sequences=40)


@pytest.fixture(scope="module")
def bundle():
    return DATASETS.build_named("avdigits_seq", inputs=["video", "frame_features"], **CFG)


def test_observed_frames_end_tau_a_before_the_start():
    # 4 fps, tau_a 0.5 s = 2 frames: last frame = start - 3; 1 fps sampling = every 4th frame
    idx = observed_frames(np.array([20, 3]), fps=4.0, tau_a=0.5, frames=4, sample_fps=1.0)
    np.testing.assert_array_equal(idx, [[5, 9, 13, 17], [-12, -8, -4, 0]])


def test_samples_labels_histories_and_past_frames(bundle):
    cfg = SequencesDataConfig(**CFG)
    seqs = {q.video: q for q in generate_sequences(cfg, cfg.seed)}
    g = grammar(cfg)
    ds = bundle.train
    b = ds.__getitems__(list(range(len(ds))))
    assert b["video"].shape == (len(ds), 3, cfg.frames, cfg.size, cfg.size)
    assert b["video"].min() >= -1 and b["video"].max() <= 1
    assert b["frame_features"].shape == (len(ds), cfg.frames, 10)
    for i in range(0, len(ds), 7):
        q = seqs[b["group"][i]]
        j = int(b["uid"][i].rsplit("_", 1)[1])
        seg = q.segments[j]
        assert (b["label"][i], b["verb"][i], b["noun"][i]) == (seg.action, g.actions[seg.action].verb, g.actions[seg.action].noun)
        assert b["history"][i] == [[s.action for s in q.segments[:j]]]  # gaps >= tau_a: the whole past
        obs = observed_frames(np.array([round(seg.start * cfg.fps)]), fps=cfg.fps, tau_a=cfg.tau_a,
                              frames=cfg.frames, sample_fps=cfg.sample_fps)[0]
        lab = frame_actions(q, cfg.fps)
        want = np.where(obs >= 0, lab[obs.clip(0)], -1)
        np.testing.assert_array_equal(b["past_labels"][i].numpy(), want)
    # every split is one set of whole videos
    assert not set(bundle.train.columns["group"]) & set(bundle.test.columns["group"])


def test_frames_show_the_digit_of_past_nouns(bundle):
    """The template-matching frame features recognise the digit of observed action frames
    (unseen handwriting in test videos) far above chance (10 %)."""
    cfg = SequencesDataConfig(**CFG)
    noun = torch.tensor([a.noun for a in grammar(cfg).actions])
    for ds in (bundle.train, bundle.test):
        b = ds.__getitems__(list(range(len(ds))))
        on = b["past_labels"] >= 0
        pred = b["frame_features"][on].argmax(-1)
        assert (pred == noun[b["past_labels"][on]]).float().mean() > 0.4
    # the first action of a video: its window lies before the video start (padding = zero features)
    first = [i for i, u in enumerate(bundle.train.uids) if u.endswith("_000")]
    b = bundle.train.__getitems__(first)
    assert (b["past_labels"] == -1).all() and (b["frame_features"][:, 0] == 0).all()


def test_deterministic_and_text_only_mode():
    a = avdigits_seq_data(SequencesDataConfig(**CFG))
    b = avdigits_seq_data(SequencesDataConfig(**CFG))
    ia = a.train.__getitems__([0, 5, 9])
    torch.testing.assert_close(ia["frame_features"], b.train.__getitems__([0, 5, 9])["frame_features"])
    text = avdigits_seq_data(SequencesDataConfig(inputs=[], **CFG))
    it = text.train.__getitems__([0, 5, 9])
    assert "frame_features" not in it and "past_labels" not in it
    assert it["uid"] == ia["uid"] and it["history"] == ia["history"]
    info = text.info.extra
    assert len(info["action_texts"]) == text.info.num_classes == 24
    assert sum(info["train_counts"]["action"]) == len(text.train)
    assert info["action_verb"] == [a.verb for a in grammar(SequencesDataConfig()).actions]


def test_teacher_store_is_joined_by_uid_and_a_missing_uid_is_named(tmp_path):
    text = avdigits_seq_data(SequencesDataConfig(inputs=[], **CFG))
    uids = [u for ds in (text.train, text.val, text.test) for u in ds.uids]
    logits = torch.randn(len(uids), 24)
    FeatureStore.write(tmp_path / "p.safetensors", uids, {"logits": logits, "feature": torch.randn(len(uids), 4)})
    data = avdigits_seq_data(SequencesDataConfig(inputs=[], features={"teacher": str(tmp_path / "p.safetensors")}, **CFG))
    b = data.test.__getitems__([0, 3])
    rows = [uids.index(u) for u in b["uid"]]
    torch.testing.assert_close(b["teacher.logits"], logits[rows])
    assert b["teacher.feature"].shape == (2, 4)
    gone = data.test.uids[3]
    keep = [i for i, u in enumerate(uids) if u != gone]
    FeatureStore.write(tmp_path / "q.safetensors", [uids[i] for i in keep], {"logits": logits[keep], "feature": torch.zeros(len(keep), 2)})
    with pytest.raises(DataError, match=f"'{gone}'"):
        avdigits_seq_data(SequencesDataConfig(inputs=[], features={"teacher": str(tmp_path / "q.safetensors")}, **CFG))
    lax = avdigits_seq_data(SequencesDataConfig(inputs=[], features={"teacher": str(tmp_path / "q.safetensors")},
                                                missing_features="zeros", **CFG))
    b = lax.test.__getitems__([2, 3])
    assert b["teacher.present"].tolist() == [True, False] and (b["teacher.logits"][1] == 0).all()


def test_config_errors():
    with pytest.raises(ConfigError, match="sample_fps"):
        avdigits_seq_data(SequencesDataConfig(sample_fps=3.0, **CFG))
    with pytest.raises(ConfigError, match="inputs"):
        avdigits_seq_data(SequencesDataConfig(inputs=["audio"], **CFG))


# ------------------------------------------------------------------------------ real data
def _imported(tmp_path):
    """A 2-video EGTEA-shaped import: actions.json + manifest rows (times in seconds)."""
    actions = [{"id": i, "verb": v, "noun": n, "name": nm, "text": tx} for i, (v, n, nm, tx) in enumerate(
        [(0, 0, "Take_cup", "take <v> cup"), (1, 1, "Cut_tomato", "cut <v> tomato"), (0, 1, "Take_tomato", "take <v> tomato")])]
    (tmp_path / "actions.json").write_text(json.dumps(actions))
    segs = [("1", "v1", 0.0, 2.0, 0, "train"), ("2", "v1", 3.0, 5.0, 1, "val"), ("3", "v1", 5.2, 6.0, 2, "train"),
            ("4", "v2", 1.0, 2.0, 2, "train"), ("5", "v2", 2.2, 4.0, 0, "val")]
    rows = [ManifestRow(u, sp, [a], video=f"{v}.mp4", start=s, end=e, group=v) for u, v, s, e, a, sp in segs]
    write_manifest(rows, tmp_path / "manifest.jsonl")
    return rows


def test_action_history_from_an_imported_folder(tmp_path):
    _imported(tmp_path)
    data = DATASETS.build_named("action_history", manifest=str(tmp_path / "manifest.jsonl"), tau_a=0.5)
    tr = data.train.__getitems__(list(range(len(data.train))))
    assert tr["uid"] == ["1", "3", "4"]  # strings, sorted by (video, start)
    # uid 3 starts at 5.2: segments ending by 4.7 are its past, whatever their split
    assert tr["history"][1] == [[0]] and tr["history"][0] == [[]]
    va = data.val.__getitems__([0, 1])
    assert va["uid"] == ["2", "5"] and va["history"] == [[[0]], [[]]]  # uid 5: uid 4 ends at 2.0 > 1.7
    assert (va["verb"].tolist(), va["noun"].tolist()) == ([1, 0], [1, 0])
    assert data.info.extra["action_texts"][1] == "cut <v> tomato" and data.info.extra["num_nouns"] == 2
    (tmp_path / "actions.json").unlink()
    with pytest.raises(DataError, match="actions.json"):
        DATASETS.build_named("action_history", manifest=str(tmp_path / "manifest.jsonl"))


def test_windows_and_past_frame_labels(tmp_path):
    rows = _imported(tmp_path)
    win = anticipation_window_rows(rows, tau_a=0.5, tau_o=3.0)
    by = {r.uid: r for r in win}
    assert "1" not in by  # starts at 0: nothing observed
    assert (by["3"].start, by["3"].end) == (pytest.approx(1.7), pytest.approx(4.7))
    assert by["3"].meta["segment_start"] == 5.2 and by["3"].labels == [2] and by["3"].group == "v1"
    # dense 1 fps store of [1.7, 4.7): frames at 1.7, 2.7, 3.7 (n = 3); the last 4 -> one padding
    past = past_frame_labels(rows, win, fps=1.0, frames=4)
    assert past["3"] == [-1, 0, -1, 1]  # 1.7 in uid 1 (0-2 s), 2.7 in no segment, 3.7 in uid 2 (3-5 s)
    assert past["2"] == [-1, 0, 0, -1]  # window [0, 2.5): frames at 0, 1, 2 (uid 1 ends at 2.0)
