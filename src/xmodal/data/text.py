"""Actions as text for the language-model teacher of text-KD anticipation (specs/textkd.md §2-3).

* Rendering an action label as text: EGTEA (`Take_eating:utensil` -> `take <v> eating utensil`) and
  EK55 (`verb <v> noun`, nouns `a:b` -> `b a`). `<v>` / `<a>` are plain text, not special tokens.
* `build_histories`: for each target segment, the candidate histories of past action ids the
  teacher reads (one record per target; see the function for the exact rule).
* Many-shot actions of EK55: verb many-shot AND noun many-shot.
* Small readers for the EGTEA/EK55 action lists, many-shot lists and annotation CSVs.

Everything is plain Python: these run once per dataset, not in a training loop.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xmodal.errors import DataError

VERB_SEP = " <v> "
ACTION_SEP = " <a> "


# ---------------------------------------------------------------------------------- rendering
def _squash(text: str) -> str:
    # Tokenisers split on whitespace, so runs of spaces carry no information; squashing keeps the
    # rendered strings readable and comparable.
    return re.sub(r"\s+", " ", text).strip()


def render_egtea(name: str) -> str:
    """EGTEA action name -> text: lower-case; `_` -> ` <v> `; `/` -> ` or `; `:` -> space.

    `Take_eating:utensil` -> `take <v> eating utensil`; `Open/close_fridge` -> `open or close <v> fridge`.
    """
    text = name.lower().replace("_", VERB_SEP).replace("/", " or ").replace(":", " ")
    return _squash(text)


def render_ek55_noun(noun: str) -> str:
    """EK55 noun -> text: the `:`-separated parts in reverse order (`pan:frying` -> `frying pan`)."""
    return _squash(" ".join(reversed(noun.split(":"))))


def render_ek55(verb: str, noun: str) -> str:
    """EK55 (verb, noun) -> `verb <v> noun` with `a:b` nouns written `b a`."""
    return _squash(f"{verb}{VERB_SEP}{render_ek55_noun(noun)}")


def render_ek55_action(name: str) -> str:
    """EK55 action text `verb_noun` (e.g. `pick-up_chilli`) -> text; split at the first `_`."""
    verb, sep, noun = name.partition("_")
    if not sep:
        raise DataError(f"EK55 action '{name}': expected 'verb_noun'")
    return render_ek55(verb, noun)


def history_text(history: Sequence[int], action_texts: Sequence[str], hist_len: int | None) -> str:
    """The last `hist_len` actions of `history` (None: all), oldest first, joined by ` <a> `."""
    ids = list(history)
    if hist_len is not None:
        ids = ids[max(0, len(ids) - hist_len):]
    return ACTION_SEP.join(action_texts[a] for a in ids)


# --------------------------------------------------------------------------------- histories
@dataclass(frozen=True)
class Segment:
    """One labelled action segment; times in seconds; uid always a string (spec trap 6)."""

    uid: str
    video: str
    start: float
    end: float
    action: int
    verb: int = -1
    noun: int = -1
    split: str = ""


@dataclass
class HistoryRecord:
    """Teacher input for one target segment: its label and candidate histories of past action ids."""

    uid: str
    video: str
    start: float
    target: int
    verb: int
    noun: int
    split: str
    histories: list[list[int]] = field(default_factory=list)


def build_histories(
    segments: Iterable[Segment],
    tau_a: float,
    *,
    target_splits: Iterable[str] | None = None,
    history_splits: Iterable[str] | None = None,
    max_gap: float | None = None,
) -> list[HistoryRecord]:
    """Candidate histories of past actions for every target segment.

    Past of a target = segments of the same video with ``end <= target.start - tau_a`` (fully
    observed before the anticipation window closes), restricted to ``history_splits`` when given
    (e.g. only train labels known), ordered by (start, end, uid). The target itself never enters.

    Candidates (spec §2 "gappy" past, our rule): without ``max_gap`` there is one candidate, the
    whole past. With ``max_gap`` (seconds) the past is cut at every *gap*: a stretch longer than
    ``max_gap`` not covered by any past segment — before a past segment (measured from the latest
    end so far) or between the last past end and ``target.start - tau_a``. Across a gap the
    teacher cannot know whether earlier actions still belong to the current activity, so the
    candidates are the suffixes that start after each gap, most recent first, ending with the
    whole past (an empty suffix is a valid candidate: "nothing known since the gap"). Teacher
    predictions are averaged over candidates (spec §3). Segments of splits hidden by
    ``history_splits`` leave holes, which a ``max_gap`` turns into gaps.

    Records come sorted by (video, start, uid) — the EGTEA "sorted segments" training order —
    for targets in ``target_splits`` (default: all).
    """
    by_video: dict[str, list[Segment]] = defaultdict(list)
    for s in segments:
        by_video[s.video].append(s)
    tsplits = None if target_splits is None else set(target_splits)
    hsplits = None if history_splits is None else set(history_splits)
    records = []
    for video in sorted(by_video):
        segs = sorted(by_video[video], key=lambda s: (s.start, s.end, s.uid))
        visible = [s for s in segs if hsplits is None or s.split in hsplits]
        for tgt in segs:
            if tsplits is not None and tgt.split not in tsplits:
                continue
            horizon = tgt.start - tau_a
            past = [s for s in visible if s.end <= horizon and s.uid != tgt.uid]
            records.append(
                HistoryRecord(
                    tgt.uid, video, tgt.start, tgt.action, tgt.verb, tgt.noun, tgt.split,
                    _candidates(past, horizon, max_gap),
                )
            )
    return records


def _candidates(past: list[Segment], horizon: float, max_gap: float | None) -> list[list[int]]:
    ids = [s.action for s in past]
    if max_gap is None:
        return [ids]
    cuts = []  # indices i such that a gap precedes past[i] (len(past): gap before the horizon)
    latest = None
    for i, s in enumerate(past):
        if latest is not None and s.start - latest > max_gap:
            cuts.append(i)
        latest = s.end if latest is None else max(latest, s.end)
    if past and horizon - latest > max_gap:
        cuts.append(len(past))
    return [ids[i:] for i in reversed(cuts)] + [ids]


# ---------------------------------------------------------------------------------- many-shot
def many_shot_actions(
    action_verb_noun: Mapping[int, tuple[int, int]], many_verbs: Iterable[int], many_nouns: Iterable[int]
) -> set[int]:
    """Actions whose verb is many-shot AND whose noun is many-shot (EK55 protocol)."""
    mv, mn = set(many_verbs), set(many_nouns)
    return {a for a, (v, n) in action_verb_noun.items() if v in mv and n in mn}


# ------------------------------------------------------------------------------------ readers
@dataclass(frozen=True)
class ActionInfo:
    id: int
    verb: int
    noun: int
    name: str  # as in the dataset file (`Take_eating:utensil`, `take_pan`)
    text: str  # rendered for the LM


def _rows(path: str | Path) -> list[list[str]]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    with p.open(newline="") as f:
        return [[c.strip() for c in row] for row in csv.reader(f) if row and any(c.strip() for c in row)]


def _int(value: str, where: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{where}: {what}: expected an integer, found '{value}'") from None


def read_egtea_actions(path: str | Path) -> list[ActionInfo]:
    """EGTEA action list, rows `id, verb_noun ids, Verb_noun` (e.g. `3, 3_3, Cut_tomato`)."""
    out = []
    for i, row in enumerate(_rows(path), 1):
        where = f"{path}:{i}"
        if len(row) != 3:
            raise DataError(f"{where}: expected 3 columns 'id, verb_noun ids, Verb_noun', found {len(row)}")
        v, sep, n = row[1].partition("_")
        if not sep:
            raise DataError(f"{where}: verb_noun ids: expected 'verb_noun', found '{row[1]}'")
        out.append(ActionInfo(_int(row[0], where, "id"), _int(v, where, "verb id"), _int(n, where, "noun id"),
                              row[2], render_egtea(row[2])))
    return out


def read_ek55_actions(path: str | Path) -> list[ActionInfo]:
    """EK55 `actions.csv` with header `id,action,verb,noun` (action text `verb_noun`)."""
    rows = _rows(path)
    if not rows or [c.lower() for c in rows[0][:4]] != ["id", "action", "verb", "noun"]:
        raise DataError(f"{path}:1: expected header 'id,action,verb,noun', found '{','.join(rows[0]) if rows else ''}'")
    out = []
    for i, row in enumerate(rows[1:], 2):
        where = f"{path}:{i}"
        if len(row) < 4:
            raise DataError(f"{where}: expected 4 columns, found {len(row)}")
        out.append(ActionInfo(_int(row[0], where, "id"), _int(row[2], where, "verb"), _int(row[3], where, "noun"),
                              row[1], render_ek55_action(row[1])))
    return out


def read_many_shot(path: str | Path) -> set[int]:
    """Class ids of an `EPIC_many_shot_{verbs,nouns}.csv`: the `*_class` column (else the first)."""
    rows = _rows(path)
    if not rows:
        raise DataError(f"{path}: empty many-shot list")
    header = [c.lower() for c in rows[0]]
    col = next((j for j, c in enumerate(header) if c.endswith("_class")), 0)
    start = 1 if not header[col].lstrip("-").isdigit() else 0
    return {_int(r[col], f"{path}:{i}", header[col]) for i, r in enumerate(rows[start:], start + 1)}


_SEG_COLUMNS = {
    "uid": ("uid", "id", "narration_id"),
    "video": ("video_id", "video"),
    "start": ("start_frame_30fps", "start_frame", "start"),
    "end": ("end_frame_30fps", "end_frame", "end"),
    "verb": ("verb_class", "verb"),
    "noun": ("noun_class", "noun"),
    "action": ("action_class", "action"),
}
# RULSTM-style headerless CSVs: uid, video, start frame, end frame, verb, noun, action.
_HEADERLESS = ("uid", "video", "start", "end", "verb", "noun", "action")


def read_segments_csv(path: str | Path, split: str, *, fps: float = 30.0) -> list[Segment]:
    """Annotation CSV -> Segments. Start/end are frame numbers at `fps` (EGTEA `*_30fps` columns,
    RULSTM frames) converted to seconds. With a header, columns are found by name (`uid`,
    `video_id`, `start_frame_30fps|start_frame|start`, ..., `action_class`); without one the
    RULSTM order `uid, video, start, end, verb, noun, action` is assumed.
    """
    rows = _rows(path)
    if not rows:
        return []
    header = [c.lower() for c in rows[0]]
    if header[0].isdigit():
        cols = {k: j for j, k in enumerate(_HEADERLESS)}
        body, first = rows, 1
    else:
        cols = {}
        for key, names in _SEG_COLUMNS.items():
            j = next((header.index(n) for n in names if n in header), None)
            if j is None:
                raise DataError(f"{path}:1: no column for '{key}' (expected one of {', '.join(names)})")
            cols[key] = j
        body, first = rows[1:], 2
    out = []
    for i, r in enumerate(body, first):
        where = f"{path}:{i}"
        if len(r) < len(cols):
            raise DataError(f"{where}: expected at least {len(cols)} columns, found {len(r)}")
        try:
            start, end = float(r[cols["start"]]) / fps, float(r[cols["end"]]) / fps
        except ValueError:
            raise DataError(f"{where}: start/end: expected numbers, found '{r[cols['start']]}', '{r[cols['end']]}'") from None
        out.append(Segment(r[cols["uid"]], r[cols["video"]], start, end, _int(r[cols["action"]], where, "action"),
                           _int(r[cols["verb"]], where, "verb"), _int(r[cols["noun"]], where, "noun"), split))
    return out
