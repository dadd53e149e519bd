"""An edit: source ranges of several clips played back to back, as one picture.

    edit = Edit((Segment(Path("a.mov"), Fraction(12), Fraction(3)),
                 Segment(Path("b.mov"), Fraction(40), Fraction(5, 2))), name="cue 3")
    video = media.decode_video(edit, duration=5.5, to_end=True)   # what the audience sees

An editor's cue often spans a cut: the model must see the record-time picture, the last
seconds of one shot and then the next. `decode_video`, `decode_windows` and `clip_duration`
take an Edit wherever they take a path; a frame of segment i at source time t (its
presentation time, as decoding measures it) plays at edit time offset_i + (t - start_i).
Times are exact fractions: an editor's in and out points lie on frames.
"""

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from ..errors import UsageError


@dataclass(frozen=True)
class Segment:
    """`duration` seconds of `path` from its presentation time `start`."""

    path: Path
    start: Fraction
    duration: Fraction

    def __post_init__(self):
        if self.start < 0 or self.duration <= 0:
            raise UsageError(
                f"a segment of {Path(self.path).name} needs start >= 0 and duration > 0, not "
                f"{float(self.start):g} and {float(self.duration):g} s"
            )

    def to_dict(self) -> dict:
        """JSON form: exact times as 'num/den' text."""
        return {
            "path": str(self.path),
            "start": _text(self.start),
            "duration": _text(self.duration),
        }


@dataclass(frozen=True)
class Edit:
    """Segments played back to back; `name` says which picture it is in messages (a cue's
    place on the timeline)."""

    segments: tuple[Segment, ...]
    name: str = "edit"

    def __post_init__(self):
        if not self.segments:
            raise UsageError(f"{self.name} has no picture")

    @property
    def duration(self) -> Fraction:
        return sum((s.duration for s in self.segments), Fraction(0))

    @property
    def stem(self) -> str:
        """A name for output files (what a clip's file name gives)."""
        return self.name

    def to_dict(self) -> dict:
        return {"name": self.name, "segments": [s.to_dict() for s in self.segments]}

    @classmethod
    def from_dict(cls, data: dict, base: Path) -> "Edit":
        """An Edit from its JSON form; relative paths are taken from `base`. ValueError (with
        the field) when malformed."""
        segments = []
        for item in data.get("segments", ()):
            if not isinstance(item, dict) or set(item) - {"path", "start", "duration"}:
                raise ValueError("each segment is {path, start, duration}")
            path = item.get("path")
            if not isinstance(path, str) or not path.strip():
                raise ValueError("a segment's path must be text")
            start, duration = _time(item.get("start", 0)), _time(item.get("duration"))
            segments.append(
                Segment(Path(path) if os.path.isabs(path) else base / path, start, duration)
            )
        name = data.get("name", "edit")
        if not isinstance(name, str):
            raise ValueError("an edit's name must be text")
        return cls(tuple(segments), name)


def _time(value) -> Fraction:
    """Seconds from JSON: a number or 'num/den' text."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"a time must be seconds (a number or 'num/den'), not {value!r}")
    try:
        return Fraction(value)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{value!r} is not a time in seconds") from None


def _text(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"
