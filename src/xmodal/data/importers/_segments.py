"""Action segments (EGTEA Gaze+, EPIC-Kitchens-55) -> manifest rows, shared by both importers.

The annotation CSVs and action lists are read by `xmodal.data.text` (RULSTM headerless order
`uid, video_id, start_frame, end_frame, verb, noun, action` or a header naming the columns —
`start_frame_30fps`/`end_frame_30fps` in the text-KD train files, `start`/`end` in its val files —
frames at 30 fps -> seconds). Here the segments become rows (labels = [action], group = video)
carrying the teacher's candidate histories (textkd §2: past segments of the same video that end
before start - tau_a, ordered by start, all labelled segments of both splits).
"""

from __future__ import annotations

from xmodal.data.importers import Imported, media_path
from xmodal.data.manifest import Label, ManifestRow
from xmodal.data.text import ActionInfo, Segment, build_histories
from xmodal.errors import DataError


def actions_to_labels(actions: list[ActionInfo], path: str) -> list[Label]:
    """Action list -> labels 0..K-1; ids must cover 0..K-1 once."""
    by_id = {}
    for a in actions:
        if a.id in by_id:
            raise DataError(f"{path}: action id {a.id} listed twice")
        by_id[a.id] = a
    missing = [i for i in range(len(by_id)) if i not in by_id]
    if missing:
        raise DataError(f"{path}: action ids must be 0..K-1; missing {missing[:5]}")
    return [Label(i, by_id[i].name, by_id[i].name.replace("_", " ")) for i in range(len(by_id))]


def segments_to_imported(
    segments: list[Segment],
    actions: list[ActionInfo],
    *,
    sources: dict[str, str],
    actions_path: str,
    video_template: str,
    root: str | None,
    tau_a: float,
    history_len: int,
    max_gap: float | None,
    notes: list[str],
) -> Imported:
    """Rows for `segments` (split already set) with labels and histories.

    `sources` maps a split to the CSV its segments came from (for error messages).
    """
    labels = actions_to_labels(actions, actions_path)
    info = {a.id: a for a in actions}
    for s in segments:
        at = f"{sources.get(s.split, s.split)}: uid {s.uid}"
        a = info.get(s.action)
        if a is None:
            raise DataError(f"{at} (video {s.video}): action {s.action} not in {actions_path} (0..{len(labels) - 1})")
        if (s.verb, s.noun) != (a.verb, a.noun):
            raise DataError(f"{at}: verb/noun {s.verb}/{s.noun} disagree with action {s.action} = {a.verb}_{a.noun} in {actions_path} (wrong column order?)")
        if s.end < s.start:
            raise DataError(f"{at} (video {s.video}): end frame before start frame")
    seen: dict[str, str] = {}
    for s in segments:
        if s.uid in seen:
            raise DataError(f"{sources.get(s.split, s.split)}: uid {s.uid} already defined in {sources.get(seen[s.uid], seen[s.uid])}")
        seen[s.uid] = s.split
    histories = {r.uid: r.histories for r in build_histories(segments, tau_a, max_gap=max_gap)}
    rows = []
    for s in segments:
        a = info[s.action]
        meta = {"verb": s.verb, "noun": s.noun, "action_text": a.name}
        if history_len > 0:
            meta["histories"] = [h[-history_len:] for h in histories[s.uid]]
        try:
            video = video_template.format(video_id=s.video, participant=s.video.split("_")[0])
        except (KeyError, IndexError, ValueError) as e:
            raise DataError(f"--video-template {video_template!r}: only {{video_id}} and {{participant}} are known ({e})") from None
        rows.append(ManifestRow(s.uid, s.split, [s.action], video=media_path(video, root), start=s.start, end=s.end,
                                group=s.video, meta=meta))
    extras = {"actions": [{"id": a.id, "verb": a.verb, "noun": a.noun, "name": a.name, "text": a.text}
                          for a in sorted(actions, key=lambda a: a.id)]}
    return Imported(rows, labels, extras=extras, notes=notes)
