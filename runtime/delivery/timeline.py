"""An OpenTimelineIO timeline per clip: the picture on a video track and each stem on its own
audio track, at the record time where it belongs.

The timeline starts at the clip's timecode, so source and record timecode agree: the picture
from `start` sits `start` seconds in, each stem likewise. Every time counts frames at the
timecode rate (30000/1001 for 29.97, exact as OTIO's float rates go), stems' too: a stem that
starts between frames has a fractional frame count, so its place stays sample-accurate in
seconds (as its BWF TimeReference is), and the OpenTimelineIO adapters for other hosts (FCP7
XML, FCPXML), which take only frame rates, convert the timeline (they round to frames). Media
references are URLs relative to the .otio file.
"""

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from urllib.parse import quote

from ..errors import UsageError
from .timecode import Timecode, rate_text

INSTALL = "pip install 'selva-rt[timeline]'"


@dataclass(frozen=True)
class StemTrack:
    """One written stem: what the audio track needs."""

    name: str  # the prompt
    path: Path
    sample_rate: int
    samples: int


def require_otio() -> None:
    """A UsageError, before any work, when opentimelineio is not installed."""
    try:
        import opentimelineio  # noqa: F401
    except ImportError:
        raise UsageError(f"--otio needs OpenTimelineIO; install it: {INSTALL}") from None


def build_timeline(
    *,
    name: str,
    clip: Path,
    timecode: Timecode,
    start: float,
    duration: float,
    stems: list[StemTrack],
    folder: Path,
    clip_seconds: float | None = None,
):
    """-> opentimelineio.schema.Timeline for the window [start, start + duration] of `clip`
    (whose first frame is at `timecode`, and which lasts `clip_seconds` if known), with
    references relative to `folder`."""
    import opentimelineio as otio

    time, span = otio.opentime.RationalTime, otio.opentime.TimeRange
    fps = float(timecode.rate)
    source = timecode.seconds + Fraction(start)  # the window's start, as clip timecode (s)

    timeline = otio.schema.Timeline(name=name, global_start_time=time(timecode.frames, fps))
    timeline.metadata["selva_rt"] = {
        "timecode": str(timecode),
        "timecode_rate": rate_text(timecode.rate),
        "drop_frame": timecode.drop_frame,
        "start_s": start,
        "duration_s": duration,
    }
    picture = otio.schema.Track(name="picture", kind=otio.schema.TrackKind.Video)
    if start > 0:
        picture.append(otio.schema.Gap(duration=time(start * fps, fps)))
    picture.append(
        otio.schema.Clip(
            name=clip.name,
            media_reference=otio.schema.ExternalReference(
                target_url=_url(clip, folder),
                available_range=span(time(timecode.frames, fps), time(clip_seconds * fps, fps))
                if clip_seconds
                else None,
            ),
            source_range=span(time(float(source * timecode.rate), fps), time(duration * fps, fps)),
        )
    )
    timeline.tracks.append(picture)
    for stem in stems:
        track = otio.schema.Track(name=stem.name, kind=otio.schema.TrackKind.Audio)
        if start > 0:
            track.append(otio.schema.Gap(duration=time(start * fps, fps)))
        seconds = Fraction(stem.samples, stem.sample_rate)
        available = span(
            time(float(source * timecode.rate), fps), time(float(seconds * timecode.rate), fps)
        )
        track.append(
            otio.schema.Clip(
                name=stem.name,
                media_reference=otio.schema.ExternalReference(
                    target_url=_url(stem.path, folder), available_range=available
                ),
                source_range=available,
            )
        )
        timeline.tracks.append(track)
    return timeline


def write_timeline(timeline, path: Path) -> None:
    """Write `timeline` as OTIO JSON to `path`."""
    import opentimelineio as otio

    Path(path).write_text(otio.adapters.write_to_string(timeline, "otio_json"))


def _url(path: Path, folder: Path) -> str:
    """`path` relative to `folder`, as a URL path ('../clips/my%20clip.mp4')."""
    relative = os.path.relpath(Path(path).resolve(), Path(folder).resolve())
    return quote(Path(relative).as_posix())
