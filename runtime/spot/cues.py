"""Cues: what to generate where. From the cut's markers, or from a cue sheet.

Markers -> cues (the rules, as the README states them):
  * a marker with a duration is one cue over it; a point marker (one frame long at most, as
    Final Cut Pro writes its markers) runs to the next marker on the timeline or to the end of
    the shot it sits on, whichever comes first;
  * prompt = the marker's name; its comment holds notes and, as `key: value` parts separated
    by ';' or new lines, `negative: ...` (the negative prompt), `seed: 7`, `category: foley`;
    in an .otio file the marker's metadata `selva_rt` {negative_prompt, seed, category} too;
  * category = the marker's colour through a mapping (`DEFAULT_CATEGORIES`, changed with
    `--category COLOUR=NAME`); an explicit category wins;
  * a marker outside any picture (past the end, over a gap) or without a name is reported,
    never dropped silently.

A cue sheet (.csv with a header, or .json: a list of objects, or {"cues": [...]}) has
`record_in`, `record_out` (timecode labels on the picture's timecode), `prompt` and optionally
`negative_prompt`, `category`, `seed`; its picture is a reference movie (`--picture`), whose
own timecode the record timecodes count on.
"""

import csv
import json
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from ..delivery.timecode import Timecode, clip_timecode
from ..errors import MediaError, UsageError
from ..media import Edit, Segment
from .cut import COLOURS, Cut, Shot

DEFAULT_CATEGORY = "effects"
DEFAULT_CATEGORIES = {"GREEN": "foley", "BLUE": "ambience", "CYAN": "ambience"}
SHEET_FIELDS = ("record_in", "record_out", "prompt", "negative_prompt", "category", "seed")
_KEY = re.compile(r"^\s*(negative|negative prompt|seed|category)\s*[:=]\s*(.*?)\s*$", re.I)


@dataclass(frozen=True)
class Cue:
    number: int  # 1-based, in timeline order
    prompt: str
    record: int  # first frame, from the timeline's start
    frames: int
    category: str
    negative_prompt: str = ""
    seed: int | None = None
    note: str = ""
    colour: str = ""
    where: str = "timeline"

    @property
    def end(self) -> int:
        return self.record + self.frames


def categories(pairs: list[str]) -> dict[str, str]:
    """The colour -> category mapping: the defaults with `COLOUR=NAME` pairs over them."""
    mapping = dict(DEFAULT_CATEGORIES)
    for pair in pairs or ():
        colour, _, name = pair.partition("=")
        colour, name = colour.strip().upper(), name.strip()
        if colour not in COLOURS or not name:
            raise UsageError(
                f"--category {pair!r}: give COLOUR=NAME with a colour of {', '.join(COLOURS)}"
            )
        mapping[colour] = name
    return mapping


def from_markers(cut: Cut, mapping: dict[str, str]) -> tuple[list[Cue], list[str]]:
    """The cut's cues, and one line per marker that gives none (and why)."""
    markers = sorted(cut.markers, key=lambda m: (m.record, m.name))
    cues, problems = [], []
    for m in markers:
        at = f"{m.name or '(no name)'!r} at {cut.timecode(m.record)} ({m.where})"
        if not m.name.strip():
            problems.append(f"marker {at} has no name to use as a prompt")
            continue
        shot = shot_at(cut.shots, m.record)
        if shot is None:
            problems.append(f"marker {at} lies outside the picture")
            continue
        frames = m.frames
        if frames <= 1:  # a point marker: to the next marker or the end of its shot
            later = [o.record for o in markers if o.record > m.record]
            frames = min([shot.end, *later[:1]]) - m.record
        fields = _comment(m.comment)
        ours = m.metadata.get("selva_rt", {}) if isinstance(m.metadata, dict) else {}
        seed = ours.get("seed", fields.get("seed"))
        category = ours.get("category") or fields.get("category")
        cues.append(
            Cue(
                number=len(cues) + 1,
                prompt=m.name.strip(),
                record=m.record,
                frames=frames,
                category=category or mapping.get(m.colour, DEFAULT_CATEGORY),
                negative_prompt=ours.get("negative_prompt") or fields.get("negative", ""),
                seed=_seed(seed, at),
                note=fields.get("note", ""),
                colour=m.colour,
                where=m.where,
            )
        )
    return cues, problems


def shot_at(shots: list[Shot], frame: int) -> Shot | None:
    return next((s for s in shots if s.record <= frame < s.end), None)


def _comment(text: str) -> dict:
    """`negative: music; seed: 7` and free notes -> {negative, seed, category, note}."""
    fields, notes = {}, []
    for part in re.split(r"[;\n]", text or ""):
        m = _KEY.match(part)
        if m:
            key = m[1].lower().split()[0]
            fields[key] = m[2]
        elif part.strip():
            notes.append(part.strip())
    fields["note"] = "; ".join(notes)
    return fields


def _seed(value, at: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"marker {at}: seed {value!r} is not a whole number") from None


def picture(cut: Cut, cue: Cue) -> Edit:
    """The record-time picture under a cue: the source ranges of the shots it spans. A
    MediaError (one line, naming the cue) for a gap, a shot at another speed or without
    media."""
    label = f"cue {cue.number} ({cue.prompt!r} at {cut.timecode(cue.record)})"
    segments, at = [], cue.record
    for shot in cut.shots:
        if shot.end <= at or shot.record >= cue.end:
            continue
        if shot.record > at:
            break
        if shot.speed != 1:
            raise MediaError(
                f"{label}: {shot.name} plays at {float(shot.speed) * 100:g}% speed; spot takes "
                "shots at their own speed (render the speed change into a clip first)"
            )
        if shot.path is None:
            raise MediaError(f"{label}: {shot.name} has no media file")
        first, end = at, min(cue.end, shot.end)
        skip = Fraction(first - shot.record) / cut.rate
        segments.append(Segment(shot.path, shot.source + skip, Fraction(end - first) / cut.rate))
        at = end
        if at == cue.end:
            break
    if at < cue.end:
        raise MediaError(f"{label}: the picture has no shot at {cut.timecode(at)}")
    return Edit(tuple(_joined(segments)), label)


def _joined(segments: list[Segment]) -> list[Segment]:
    """Neighbouring ranges of one file that continue each other, as one (one decode)."""
    out: list[Segment] = []
    for s in segments:
        last = out[-1] if out else None
        if last and last.path == s.path and last.start + last.duration == s.start:
            out[-1] = Segment(s.path, last.start, last.duration + s.duration)
        else:
            out.append(s)
    return out


def read_sheet(path: Path, picture_path: Path, mapping: dict[str, str]) -> tuple[Cut, list[Cue]]:
    """A cue sheet over a reference movie -> (the movie as a one-shot cut, its cues)."""
    from .. import media

    if picture_path is None:
        raise UsageError(f"{path.name} is a cue sheet: give the picture with --picture MOVIE")
    picture_path = media.existing_file(picture_path)
    tc = clip_timecode(picture_path)
    length = round(Fraction(media.clip_duration(picture_path, to_end=True)) * tc.rate)
    shot = Shot(picture_path.name, picture_path, 0, length, Fraction(0))
    cut = Cut(path.stem, path, "cues", tc.rate, tc.drop_frame, tc.frames, length, [shot], [])
    rows = _rows(path)
    cues = []
    for i, row in enumerate(rows, 1):
        unknown = sorted(set(row) - set(SHEET_FIELDS))
        if unknown:
            raise UsageError(f"{path.name} cue {i}: unknown field {unknown[0]!r}")
        try:
            first = Timecode.parse(str(row.get("record_in", "")), tc.rate).frames - tc.frames
            end = Timecode.parse(str(row.get("record_out", "")), tc.rate).frames - tc.frames
        except ValueError as err:
            raise UsageError(f"{path.name} cue {i}: {err}") from None
        prompt = str(row.get("prompt") or "").strip()
        if not prompt or end <= first:
            raise UsageError(f"{path.name} cue {i}: needs a prompt and record_out after record_in")
        cues.append(
            Cue(
                number=i,
                prompt=prompt,
                record=first,
                frames=end - first,
                category=str(row.get("category") or "").strip() or DEFAULT_CATEGORY,
                negative_prompt=str(row.get("negative_prompt") or "").strip(),
                seed=_seed(row.get("seed"), f"cue {i}"),
                where="cue sheet",
            )
        )
    return cut, cues


def _rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(
                f"{path.name} is not valid JSON ({err.msg}, line {err.lineno})"
            ) from None
        data = data.get("cues") if isinstance(data, dict) else data
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise UsageError(f'{path.name}: a cue sheet is a list of cues or {{"cues": [...]}}')
        return data
    return [
        {k.strip(): v for k, v in row.items() if k} for row in csv.DictReader(text.splitlines())
    ]
