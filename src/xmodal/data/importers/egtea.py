"""EGTEA Gaze+ action segments (specs/textkd.md §2): 106 actions, 19 verbs, 51 nouns, 3 splits.

Files (RULSTM `data/egtea/`, also used by AVT and text-KD): `training{k}.csv` / `validation{k}.csv`
with rows `uid, video_id, start_frame, end_frame, verb, noun, action` (30 fps frames; headerless,
or with a header — `start_frame_30fps, end_frame_30fps` in text-KD's train files, `start, end` in
its val files; both accepted), and `actions.csv` rows `id, verb_noun ids, Verb_noun`
(`3, 3_3, Cut_tomato`). Videos default to `<root>/<video_id>.mp4` (e.g. OP01-R01-PastaSalad.mp4).
"""

from __future__ import annotations

from xmodal.data.importers import Imported, register_importer
from xmodal.data.importers._segments import segments_to_imported
from xmodal.data.text import read_egtea_actions, read_segments_csv


@register_importer("egtea", help="EGTEA Gaze+ action csvs (training/validation + actions.csv)")
def import_egtea(
    *,
    train_csv: str,
    val_csv: str,
    actions: str,
    root: str | None = None,
    video_template: str = "{video_id}.mp4",
    fps: float = 30.0,
    tau_a: float = 0.5,
    history_len: int = 20,
    max_gap: float | None = None,
    val_split: str = "val",
) -> Imported:
    """Rows (uid, split, [action], start/end seconds, group = video) of one EGTEA split pair.

    Args:
        train_csv: training annotation csv of the split (e.g. training1.csv).
        val_csv: validation annotation csv of the same split (e.g. validation1.csv).
        actions: action list `id, verb_noun ids, Verb_noun` (actions.csv).
        root: video folder joined to the video template.
        video_template: video path per segment; {video_id} and {participant} are filled in.
        fps: frame rate of the start/end frame numbers.
        tau_a: anticipation time (s): a history segment must end before start - tau_a (AVT EGTEA: 0.5).
        history_len: keep the last N actions of each candidate history in meta (0: no histories).
        max_gap: split histories at unannotated gaps longer than this (s), giving several candidates.
        val_split: split name of the validation csv rows (the reported evaluation set).
    """
    segments = read_segments_csv(train_csv, "train", fps=fps) + read_segments_csv(val_csv, val_split, fps=fps)
    return segments_to_imported(
        segments, read_egtea_actions(actions), sources={"train": train_csv, val_split: val_csv},
        actions_path=actions, video_template=video_template, root=root, tau_a=tau_a,
        history_len=history_len, max_gap=max_gap, notes=[f"tau_a = {tau_a} s, fps = {fps}"],
    )
