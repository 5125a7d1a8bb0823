"""Action text rendering, histories and many-shot sets on tiny EGTEA/EK55-shaped files."""

import pytest

from xmodal.data.text import (
    Segment,
    build_histories,
    history_text,
    many_shot_actions,
    read_egtea_actions,
    read_ek55_actions,
    read_many_shot,
    read_segments_csv,
    render_egtea,
    render_ek55,
    render_ek55_action,
)
from xmodal.errors import DataError

EGTEA_TRAIN = """uid,video_id,start_frame_30fps,end_frame_30fps,verb_class,noun_class,action_class
1,A,0,60,0,3,3
2,A,90,150,1,5,5
3,A,120,240,0,2,2
4,A,300,360,2,7,7
5,A,360,420,1,1,1
6,A,1200,1260,0,4,4
7,B,0,30,0,0,0
8,B,45,90,1,6,6
9,B,100,130,2,8,8
10,B,130,200,2,9,9
"""
VAL_UIDS = {"2", "8"}


@pytest.fixture
def segments(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text(EGTEA_TRAIN)
    segs = read_segments_csv(p, "train")
    # Mark two rows as the other split (what gappy EGTEA histories come from).
    return [Segment(s.uid, s.video, s.start, s.end, s.action, s.verb, s.noun, "val" if s.uid in VAL_UIDS else "train")
            for s in segs]


def by_uid(records):
    return {r.uid: r for r in records}


def test_read_segments_converts_frames_to_seconds(segments):
    s = by_uid(segments)["3"]
    assert (s.video, s.start, s.end, s.verb, s.noun, s.action) == ("A", 4.0, 8.0, 0, 2, 2)
    assert all(isinstance(x.uid, str) for x in segments)


def test_headerless_rulstm_csv(tmp_path):
    p = tmp_path / "rulstm.csv"
    p.write_text("0,P01_01,30,90,1,2,3\n1,P01_01,120,150,4,5,6\n")
    segs = read_segments_csv(p, "val", fps=30)
    assert [(s.uid, s.start, s.end, s.verb, s.noun, s.action, s.split) for s in segs] == [
        ("0", 1.0, 3.0, 1, 2, 3, "val"), ("1", 4.0, 5.0, 4, 5, 6, "val")]


def test_histories_end_before_start_minus_tau(segments):
    r = by_uid(build_histories(segments, 0.5))
    assert r["1"].histories == [[]]
    assert r["2"].histories == [[3]]  # uid 1 ends at 2 s <= 3 - 0.5
    assert r["3"].histories == [[3]]  # uid 2 ends at 5 s > 3.5: still running
    assert r["4"].histories == [[3, 5, 2]]  # ordered by start; overlapping 2/3 both complete
    assert r["5"].histories == [[3, 5, 2]]  # uid 4 ends at 12 > 11.5
    assert r["6"].histories == [[3, 5, 2, 7, 1]]
    assert r["10"].histories == [[0, 6]]  # uid 9 ends exactly at the target start, after 3.83
    # a larger tau_a removes the most recent segment
    assert by_uid(build_histories(segments, 1.0))["2"].histories == [[3]]  # ends exactly at the horizon
    assert by_uid(build_histories(segments, 1.5))["2"].histories == [[]]


def test_records_sorted_and_labelled(segments):
    recs = build_histories(segments, 0.5)
    assert [r.uid for r in recs] == ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]
    assert (recs[3].target, recs[3].verb, recs[3].noun, recs[3].split) == (7, 2, 7, "train")


def test_gappy_candidates(segments):
    r = by_uid(build_histories(segments, 0.5, max_gap=5.0))
    # 25.5 s unannotated before uid 6's horizon: "nothing known since the gap" + whole past
    assert r["6"].histories == [[], [3, 5, 2, 7, 1]]
    r = by_uid(build_histories(segments, 0.5, max_gap=1.5))
    # plus the 2 s hole between uid 3 (ends 8 s) and uid 4 (starts 10 s)
    assert r["6"].histories == [[], [7, 1], [3, 5, 2, 7, 1]]
    assert r["4"].histories == [[3, 5, 2]]  # 9.5 - 8 = 1.5 is not longer than max_gap


def test_split_filters(segments):
    recs = build_histories(segments, 0.5, target_splits=["val"], history_splits=["train"])
    assert [r.uid for r in recs] == ["2", "8"]
    assert by_uid(recs)["8"].histories == [[0]]
    r = by_uid(build_histories(segments, 0.5, history_splits=["train"]))
    assert r["4"].histories == [[3, 2]]  # uid 2 (val) is hidden


def test_render_egtea():
    assert render_egtea("Take_eating:utensil") == "take <v> eating utensil"
    assert render_egtea("Cut/Slice_tomato") == "cut or slice <v> tomato"
    assert render_egtea("Put_cooking:utensil/pan") == "put <v> cooking utensil or pan"


def test_render_ek55():
    assert render_ek55("take", "pan") == "take <v> pan"
    assert render_ek55("wash", "pan:frying") == "wash <v> frying pan"
    assert render_ek55_action("pick-up_chilli") == "pick-up <v> chilli"
    assert render_ek55_action("put-into_container:plastic") == "put-into <v> plastic container"
    with pytest.raises(DataError):
        render_ek55_action("take")


def test_history_text_keeps_last_actions():
    texts = ["a <v> x", "b <v> y", "c <v> z"]
    assert history_text([0, 1, 2], texts, 2) == "b <v> y <a> c <v> z"
    assert history_text([0, 1, 2], texts, None) == "a <v> x <a> b <v> y <a> c <v> z"
    assert history_text([0, 1, 2], texts, 0) == ""
    assert history_text([], texts, 5) == ""


def test_action_lists_and_many_shot(tmp_path):
    eg = tmp_path / "action_idx.csv"
    eg.write_text("0, 0_0, Take_eating:utensil\n3, 3_3, Cut_tomato\n")
    acts = read_egtea_actions(eg)
    assert [(a.id, a.verb, a.noun, a.text) for a in acts] == [(0, 0, 0, "take <v> eating utensil"), (3, 3, 3, "cut <v> tomato")]
    ek = tmp_path / "actions.csv"
    rows = ["take_pan", "take_cup", "wash_pan", "wash_cup", "put_pan:frying", "put_cup", "cut_onion", "cut_pan",
            "open_fridge", "close_fridge"]
    verbs = [0, 0, 1, 1, 2, 2, 3, 3, 4, 5]
    nouns = [0, 1, 0, 1, 2, 1, 3, 0, 4, 4]
    ek.write_text("id,action,verb,noun\n" + "".join(f"{i},{a},{v},{n}\n" for i, (a, v, n) in enumerate(zip(rows, verbs, nouns))))
    acts = read_ek55_actions(ek)
    assert acts[4].text == "put <v> frying pan"
    mv, mn = tmp_path / "EPIC_many_shot_verbs.csv", tmp_path / "EPIC_many_shot_nouns.csv"
    mv.write_text("verb_class,verb\n0,take\n3,cut\n4,open\n")
    mn.write_text("noun_class,noun\n0,pan\n3,onion\n")
    many = many_shot_actions({a.id: (a.verb, a.noun) for a in acts}, read_many_shot(mv), read_many_shot(mn))
    # verb in {0,3,4} AND noun in {0,3}: take_pan, cut_onion, cut_pan
    assert many == {0, 6, 7}


def test_reader_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("id,action,verb\n0,take_pan,0\n")
    with pytest.raises(DataError, match="bad.csv:1"):
        read_ek55_actions(p)
    p.write_text("uid,video_id,start,end,verb_class,noun_class,action_class\n1,A,x,3,0,0,0\n")
    with pytest.raises(DataError, match="bad.csv:2"):
        read_segments_csv(p, "train")
    with pytest.raises(DataError, match="not found"):
        read_segments_csv(tmp_path / "missing.csv", "train")
