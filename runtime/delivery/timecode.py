"""SMPTE timecode: read a clip's start timecode and convert labels to frame counts and seconds.

The arithmetic is exact (fractions): a label counts frames at the nominal rate (30 for 29.97),
and frame n of a 30000/1001 stream starts n * 1001/30000 s after 00:00:00:00. Drop-frame
timecode (29.97 and 59.94 only) skips labels, not frames: the first 2 (29.97) or 4 (59.94)
frame numbers of every minute except minutes 0, 10, 20, ... so its labels track wall-clock time.
"""

import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from ..errors import MediaError

# Rates a drop-frame label may use, and the frame numbers dropped per minute.
DROPPED = {Fraction(30000, 1001): 2, Fraction(60000, 1001): 4}
# A stream's frame rate this close to a timecode rate is that rate (averaged or rounded rates).
RATE_TOLERANCE = 0.005
_LABEL = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2})([:;.,])(\d{2,3})$")


@dataclass(frozen=True)
class Timecode:
    """A position as SMPTE timecode: `frames` counted from 00:00:00:00 at `rate` frames/s."""

    frames: int
    rate: Fraction  # 24000/1001, 24, 25, 30000/1001, 30, 50, 60000/1001, ...
    drop_frame: bool = False

    def __post_init__(self):
        if self.drop_frame and self.rate not in DROPPED:
            raise ValueError(f"drop-frame timecode is 29.97 or 59.94 fps, not {self.rate}")

    @property
    def nominal(self) -> int:
        """Frames per labelled second: 30 for 29.97, 24 for 23.976."""
        return round(self.rate)

    @property
    def seconds(self) -> Fraction:
        return self.frames / self.rate

    def samples(self, sample_rate: int, offset: float = 0.0) -> int:
        """round((seconds + offset) * sample_rate): the sample this timecode (plus `offset`
        seconds) falls on, as a BWF TimeReference counts it."""
        return round((self.seconds + Fraction(offset)) * sample_rate)

    @classmethod
    def parse(cls, text: str, rate: Fraction) -> "Timecode":
        """'01:00:00:00' (non-drop) or '01:00:00;00' (drop-frame: ';', '.' or ',' before the
        frames) at `rate` -> Timecode. ValueError if it is not a valid label at that rate."""
        m = _LABEL.match(text.strip())
        if not m:
            raise ValueError(f"{text!r} is not a hh:mm:ss:ff timecode")
        h, mi, s, sep, f = m.groups()
        h, mi, s, f = int(h), int(mi), int(s), int(f)
        tc = cls(0, Fraction(rate), drop_frame=sep != ":")
        if h > 23 or mi > 59 or s > 59 or f >= tc.nominal:
            raise ValueError(f"{text!r} is out of range at {_fps_text(rate)} fps")
        frames = ((h * 60 + mi) * 60 + s) * tc.nominal + f
        if tc.drop_frame:
            drop, minutes = DROPPED[tc.rate], h * 60 + mi
            if s == 0 and f < drop and mi % 10:
                raise ValueError(f"{text!r} does not exist in drop-frame timecode")
            frames -= drop * (minutes - minutes // 10)
        return cls(frames, tc.rate, tc.drop_frame)

    def __str__(self) -> str:
        n, frames = self.nominal, self.frames
        if self.drop_frame:  # add back the labels skipped before this frame
            drop = DROPPED[self.rate]
            per_minute, per_ten = 60 * n - drop, 600 * n - 9 * drop
            tens, rest = divmod(frames, per_ten)
            frames += 9 * drop * tens + (
                drop * ((rest - drop) // per_minute) if rest >= drop else 0
            )
        seconds, f = divmod(frames, n)
        minutes, s = divmod(seconds, 60)
        h, mi = divmod(minutes, 60)
        return f"{h % 24:02d}:{mi:02d}:{s:02d}{';' if self.drop_frame else ':'}{f:02d}"


def timecode_rate(fps: Fraction) -> Fraction:
    """The timecode rate of a picture rate: n or n * 1000/1001 for a whole n, whichever is
    nearer (23.976 -> 24000/1001, 25 -> 25, an averaged 29.96 -> 30000/1001)."""
    fps = Fraction(fps)
    whole = Fraction(max(1, round(fps)))
    ntsc = Fraction(max(1, round(fps * Fraction(1001, 1000))) * 1000, 1001)
    return min((whole, ntsc), key=lambda r: abs(r - fps))


def clip_timecode(path: str | os.PathLike) -> Timecode:
    """The timecode of a clip's first frame: its `timecode` tag (ffmpeg puts a MOV/MP4 tmcd
    track's start on the video stream; Matroska and MXF carry a tag), else 00:00:00:00, at the
    picture's frame rate. A tag selva-rt cannot read is a MediaError, not a silent 0."""
    from ..media.files import open_media, video_stream  # the same one-line errors as decoding

    path = Path(path)
    with open_media(path) as container:
        video = video_stream(container, path)
        fps = video.guessed_rate or video.average_rate
        tags = [video.metadata, container.metadata, *(s.metadata for s in container.streams)]
        label = next(
            (v for tags_ in tags for k, v in tags_.items() if k.lower() == "timecode"), None
        )
    if not fps:
        raise MediaError(f"{path.name} has no frame rate to count timecode in")
    rate = timecode_rate(fps)
    if label is None:
        return Timecode(0, rate)
    if abs(rate - fps) > RATE_TOLERANCE * fps:
        raise MediaError(
            f"{path.name} has timecode {label} but a {float(fps):.3f} fps picture, which is no "
            "timecode rate; remux it at its nominal rate"
        )
    try:
        return Timecode.parse(label, rate)
    except ValueError as err:
        raise MediaError(f"{path.name} has an unusable timecode: {err}") from None


def rate_text(rate: Fraction) -> str:
    """'30000/1001', '25/1': how iXML and OTIO metadata write a rate."""
    return f"{rate.numerator}/{rate.denominator}"


def _fps_text(rate: Fraction) -> str:
    return f"{float(rate):.3f}".rstrip("0").rstrip(".")
