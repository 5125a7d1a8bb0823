"""EPIC-Kitchens-55 action segments in the RULSTM format (specs/textkd.md §2): 2513 actions.

Files (RULSTM `data/ek55/`): `training.csv` / `validation.csv`, headerless rows
`uid, video_id, start_frame, end_frame, verb, noun, action` with zero-padded numbers and ", "
separators (`00330, P01_02, 0000000152, 0000000205, 000, 004, 0194`), frames at 30 fps;
`validation_videos.csv` (one video id per line) marks the validation videos; `actions.csv` with
header `id,action,verb,noun` (`0, take_pan,0,1`); the many-shot lists `EPIC_many_shot_verbs.csv`
(`verb_class,verb`) and `EPIC_many_shot_nouns.csv` (`noun_class,noun`) from the EPIC annotations.

Assumptions (documented, not verified against every release): the train split is "train minus
val" — rows of `train_csv` whose uid is in `val_csv` or whose video is listed in `val_videos` go to
the validation split (so a full training.csv works as well as RULSTM's already-reduced one); uids
are kept as the strings in the file (zero padding included); videos default to
`<root>/<participant>/<video_id>.MP4`. The many-shot action set (verb many-shot AND noun many-shot)
is written to `many_shot.json` and flagged per row in meta `many_shot`.
"""

from __future__ import annotations

from dataclasses import replace

from xmodal.data.importers import Imported, register_importer
from xmodal.data.importers._common import numbered_lines
from xmodal.data.importers._segments import segments_to_imported
from xmodal.data.text import many_shot_actions, read_ek55_actions, read_many_shot, read_segments_csv
from xmodal.errors import DataError


@register_importer("epic55", help="EPIC-Kitchens-55 RULSTM csvs (training/validation + actions.csv)")
def import_epic55(
    *,
    train_csv: str,
    actions: str,
    val_csv: str | None = None,
    val_videos: str | None = None,
    many_shot_verbs: str | None = None,
    many_shot_nouns: str | None = None,
    root: str | None = None,
    video_template: str = "{participant}/{video_id}.MP4",
    fps: float = 30.0,
    tau_a: float = 1.0,
    history_len: int = 20,
    max_gap: float | None = None,
    val_split: str = "val",
) -> Imported:
    """Rows (uid, split, [action], start/end seconds, group = video) for EK55 train and validation.

    Args:
        train_csv: RULSTM training.csv.
        actions: actions.csv with header id,action,verb,noun.
        val_csv: RULSTM validation.csv (its rows form the validation split).
        val_videos: validation_videos.csv: train rows of these videos move to the validation split.
        many_shot_verbs: EPIC_many_shot_verbs.csv (needs many_shot_nouns too).
        many_shot_nouns: EPIC_many_shot_nouns.csv.
        root: video folder joined to the video template.
        video_template: video path per segment; {video_id} and {participant} are filled in.
        fps: frame rate of the start/end frame numbers.
        tau_a: anticipation time (s) for the histories (EK55: 1 s).
        history_len: keep the last N actions of each candidate history in meta (0: no histories).
        max_gap: split histories at unannotated gaps longer than this (s), giving several candidates.
        val_split: split name of the validation rows (the reported evaluation set).
    """
    if val_csv is None and val_videos is None:
        raise DataError("epic55: give --val-csv and/or --val-videos (the validation split is carved from training.csv)")
    if (many_shot_verbs is None) != (many_shot_nouns is None):
        raise DataError("epic55: --many-shot-verbs and --many-shot-nouns go together")
    train = read_segments_csv(train_csv, "train", fps=fps)
    val = read_segments_csv(val_csv, val_split, fps=fps) if val_csv else []
    held_videos = {v for _, v in numbered_lines(val_videos, "validation video list")} if val_videos else set()
    val_uids = {s.uid for s in val}
    moved = [replace(s, split=val_split) for s in train if s.video in held_videos and s.uid not in val_uids]
    kept = [s for s in train if s.video not in held_videos and s.uid not in val_uids]
    notes = [f"tau_a = {tau_a} s, fps = {fps}",
             f"train minus val: {len(train) - len(kept)} of {len(train)} training rows are validation rows"]
    acts = read_ek55_actions(actions)
    imported = segments_to_imported(
        kept + val + moved, acts, sources={"train": train_csv, val_split: val_csv or train_csv},
        actions_path=actions, video_template=video_template, root=root, tau_a=tau_a,
        history_len=history_len, max_gap=max_gap, notes=notes,
    )
    if many_shot_verbs is not None:
        verbs, nouns = read_many_shot(many_shot_verbs), read_many_shot(many_shot_nouns)
        many = many_shot_actions({a.id: (a.verb, a.noun) for a in acts}, verbs, nouns)
        imported.extras["many_shot"] = {"actions": sorted(many), "verbs": sorted(verbs), "nouns": sorted(nouns)}
        for r in imported.rows:
            r.meta["many_shot"] = r.labels[0] in many
        notes.append(f"{len(many)} many-shot actions ({len(verbs)} verbs x {len(nouns)} nouns)")
    return imported
