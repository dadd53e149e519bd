"""The cut as selva-rt reads it: the timeline's rate and start, the picture the audience sees
(shots: which source range of which file plays at which record frame) and every marker, placed
in record frames from the timeline's start.

    cut = read.read_cut(Path("reel1.xml"), media=[Path("/Volumes/media")])   # (read.py)

.otio files are read by OpenTimelineIO; FCP7 XML (Premiere Pro, Resolve) and AAF (Avid) through
its adapter plugins (`pip install 'selva-rt[timeline]'`), with what the adapters get wrong put
right here: the FCP7 XML reader keeps a marker's comment and colour only in its metadata
(`fcp_xml`: comment, pproColor, color), which `_fcp7_marker` reads. FCPXML and EDLs are read by
fcpxml.py and edl.py (their adapters misread too much to mend).

Picture: of several video tracks, the topmost clip at a frame is what the audience sees.
Markers on the timeline (stack), on a track (track time) and on a clip (source time: placed
through the clip's trim) all count.
"""

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..delivery.timecode import Timecode, timecode_rate
from ..errors import MediaError, UsageError

INSTALL = "pip install 'selva-rt[timeline]'"
# Colours as selva-rt names them (OpenTimelineIO's MarkerColor names).
COLOURS = ("RED", "PINK", "ORANGE", "YELLOW", "GREEN", "CYAN", "BLUE", "PURPLE", "MAGENTA",
           "BLACK", "WHITE")  # fmt: skip
# Premiere Pro's <pproColor> (0xAABBGGRR as an integer; green, its default, may be absent).
PREMIERE_COLOURS = {
    4281740498: "RED",
    4281049552: "YELLOW",
    4289825711: "PURPLE",
    4280578025: "ORANGE",
    4294967295: "WHITE",
    4294741314: "BLUE",
    4292277273: "CYAN",
    4278255360: "GREEN",
}
FORMATS = {  # suffix -> (format name, OpenTimelineIO adapter or None: read here)
    ".otio": ("otio", "otio_json"),
    ".xml": ("fcp_xml", "fcp_xml"),
    ".fcpxml": ("fcpxml", None),
    ".fcpxmld": ("fcpxml", None),
    ".edl": ("edl", None),
    ".aaf": ("aaf", "AAF"),
}


@dataclass(frozen=True)
class Shot:
    """A stretch of picture: `frames` record frames from `record` show `path` from `source`
    seconds (its presentation time) at `speed`."""

    name: str
    path: Path | None  # None: the clip has no media file (a generator, a missing reference)
    record: int
    frames: int
    source: Fraction
    speed: Fraction = Fraction(1)

    @property
    def end(self) -> int:
        return self.record + self.frames


@dataclass(frozen=True)
class Marker:
    """A marker at record frames [record, record + frames) (frames 0: a point marker)."""

    name: str
    record: int
    frames: int = 0
    comment: str = ""
    colour: str = ""  # one of COLOURS, or "" when the format has none
    metadata: dict = field(default_factory=dict, compare=False)
    where: str = "timeline"  # timeline, track NAME or clip NAME


@dataclass
class Cut:
    name: str
    path: Path  # the file read
    format: str  # otio, fcp_xml, fcpxml, edl, aaf, cues
    rate: Fraction  # timeline frames per second, exact
    drop_frame: bool
    start: int  # the timeline's first frame as timecode frames (01:00:00:00 at 25: 90000)
    frames: int  # the timeline's length
    shots: list[Shot]
    markers: list[Marker]
    timeline: object = None  # the opentimelineio Timeline read, where one was (to write back)
    sounds: list[Shot] = field(default_factory=list)  # audio clips (FCPXML: what spot wrote)

    def timecode(self, frame: int) -> Timecode:
        """The record timecode of a frame counted from the timeline's start."""
        return Timecode(self.start + frame, timecode_rate(self.rate), self.drop_frame)

    def seconds(self, frames: int) -> Fraction:
        return frames / self.rate


def require_otio():
    """The opentimelineio module, or a UsageError saying how to install it."""
    try:
        import opentimelineio
    except ImportError:
        raise UsageError(f"reading timelines needs OpenTimelineIO; install it: {INSTALL}") from None
    return opentimelineio


def timeline_format(path: Path) -> str:
    """The format of a timeline file by its suffix (a UsageError for others)."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        known = ", ".join(sorted(FORMATS))
        raise UsageError(f"{path.name}: spot reads {known} timelines or .csv/.json cue sheets")
    return FORMATS[suffix][0]


def from_otio(timeline, path: Path, kind: str, relink: "Relink") -> Cut:
    """A Cut from an opentimelineio Timeline: the rate from its picture, the start from its
    global start time, shots from its video tracks (topmost wins), markers from everywhere."""
    otio = require_otio()
    videos = [t for t in timeline.tracks if t.kind == otio.schema.TrackKind.Video and t.enabled]
    rate = _rate(timeline, videos)
    start = timeline.global_start_time
    drop = _drop_frame(timeline, kind)
    first = round(Fraction(start.to_seconds()) * rate) if start is not None else 0
    markers = [_marker(m, m.marked_range.start_time, rate, "timeline", kind)
               for m in timeline.tracks.markers]  # fmt: skip
    layers: list[list[Shot]] = []
    for track in videos:
        shots = []
        for item in track:
            if not isinstance(item, otio.schema.Clip) or not item.enabled:
                continue
            placed = track.range_of_child(item)
            record = _frames(placed.start_time, rate)
            frames = _frames(placed.duration, rate)
            source_range = item.trimmed_range()
            shots.append(_shot(item, record, frames, source_range.start_time, relink))
            for m in item.markers:  # in source time
                at = record + _frames(m.marked_range.start_time - source_range.start_time, rate)
                markers.append(_marker(m, None, rate, f"clip {item.name}", kind, at))
        for m in track.markers:
            markers.append(_marker(m, m.marked_range.start_time, rate, f"track {track.name}", kind))
        layers.append(shots)
    length = _frames(timeline.tracks.duration(), rate)
    return Cut(
        name=timeline.name or path.stem,
        path=path,
        format=kind,
        rate=rate,
        drop_frame=drop,
        start=first,
        frames=length,
        shots=visible(layers, rate),
        markers=sorted(markers, key=lambda m: (m.record, m.name)),
        timeline=timeline,
    )


def visible(layers: list[list[Shot]], rate: Fraction) -> list[Shot]:
    """What the audience sees of stacked video tracks (bottom first): at each frame the clip of
    the highest track that has one, cut into the pieces that show."""
    shown: list[Shot] = []
    for shots in layers:  # each higher track covers what lies under it
        for top in shots:
            kept = []
            for below in shown:
                if below.end <= top.record or below.record >= top.end:
                    kept.append(below)
                    continue
                if below.record < top.record:
                    kept.append(_trimmed(below, below.record, top.record, rate))
                if below.end > top.end:
                    kept.append(_trimmed(below, top.end, below.end, rate))
            shown = kept + [top]
    return sorted(shown, key=lambda s: s.record)


def _trimmed(shot: Shot, first: int, end: int, rate: Fraction) -> Shot:
    """The part of `shot` on record frames [first, end): its source moves with them."""
    skip = Fraction(first - shot.record) / rate * shot.speed
    return Shot(shot.name, shot.path, first, end - first, shot.source + skip, shot.speed)


def _rate(timeline, videos) -> Fraction:
    """The timeline's frame rate, exact: the picture's rate as OpenTimelineIO holds it (a
    float: 29.97002997 -> 30000/1001)."""
    for track in videos:
        for item in track:
            if hasattr(item, "source_range") and item.source_range is not None:
                return timecode_rate(Fraction(item.source_range.duration.rate))
    start = timeline.global_start_time
    if start is not None:
        return timecode_rate(Fraction(start.rate))
    raise UsageError(f"{timeline.name or 'the timeline'} has no picture to take a frame rate from")


def _drop_frame(timeline, kind: str) -> bool:
    """Drop-frame display, where the file says so (FCP7 XML's displayformat; selva-rt's own
    metadata in .otio)."""
    metadata = _plain(timeline.metadata)
    ours = metadata.get("selva_rt", {})
    if "drop_frame" in ours:
        return bool(ours["drop_frame"])
    fcp = metadata.get("fcp_xml", {})
    tc = fcp.get("timecode", {}) if isinstance(fcp, dict) else {}
    return isinstance(tc, dict) and tc.get("displayformat") == "DF"


def _frames(time, rate: Fraction) -> int:
    """An OpenTimelineIO time (float rate) as whole frames at the exact `rate`."""
    return round(seconds(time) * rate)


def seconds(time) -> Fraction:
    """An OpenTimelineIO time in exact seconds: its float rate read as the timecode rate it
    stands for (29.97002997 -> 30000/1001), its value as the whole or decimal count it is."""
    value = Fraction(time.value).limit_denominator(10**6)
    rate = Fraction(time.rate)
    exact = timecode_rate(rate) if rate >= 1 else rate
    return value / (
        exact if abs(exact - rate) < Fraction(1, 10**4) else rate.limit_denominator(10**6)
    )


def _shot(clip, record: int, frames: int, source_start, relink: "Relink") -> Shot:
    """A Shot of an OpenTimelineIO clip: its file relinked, its source start in seconds from the
    media's first frame (the media's start timecode, its available range, taken off)."""
    otio = require_otio()
    reference = clip.media_reference
    path, media_start = None, Fraction(0)
    if isinstance(reference, otio.schema.ExternalReference) and reference.target_url:
        path = relink(reference.target_url)
        if reference.available_range is not None:
            media_start = seconds(reference.available_range.start_time)
    speed = Fraction(1)
    for effect in clip.effects:
        if isinstance(effect, otio.schema.FreezeFrame):
            speed = Fraction(0)
        elif isinstance(effect, otio.schema.LinearTimeWarp):
            speed *= Fraction(effect.time_scalar).limit_denominator(1000)
    source = seconds(source_start) - media_start
    return Shot(clip.name, path, record, frames, source, speed)


def _marker(m, start, rate: Fraction, where: str, kind: str, at: int | None = None) -> Marker:
    """A Marker from an OpenTimelineIO marker at `start` (or record frame `at`), with the
    comment and colour the FCP7 XML reader leaves in metadata put back."""
    comment, colour = m.comment or "", str(m.color or "").upper()
    metadata = _plain(m.metadata)
    if kind == "fcp_xml":
        comment, colour = _fcp7_marker(metadata.get("fcp_xml", {}), comment, colour)
    record = _frames(start, rate) if at is None else at
    frames = _frames(m.marked_range.duration, rate)
    return Marker(m.name, record, max(0, frames), comment, colour, metadata, where)


def _plain(value):
    """OpenTimelineIO metadata (AnyDictionary, AnyVector) as plain dicts and lists."""
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        return value
    return [_plain(v) for v in value]


def _fcp7_marker(fields: dict, comment: str, colour: str) -> tuple[str, str]:
    """The FCP7 XML adapter keeps <comment>, Premiere's <pproColor> and Resolve's <color> in
    the marker's metadata and sets every colour RED: read them from there."""
    if not isinstance(fields, dict):
        return comment, colour
    comment = str(fields.get("comment") or comment or "")
    ppro = fields.get("pproColor")
    if ppro is not None:
        try:
            return comment, PREMIERE_COLOURS.get(int(ppro), "")
        except ValueError:
            return comment, ""
    rgb = fields.get("color")
    if isinstance(rgb, dict):
        return comment, _nearest_colour(*(int(rgb.get(k, 0)) for k in ("red", "green", "blue")))
    return comment, "GREEN" if "pproColor" not in fields else colour  # Premiere's default


def _nearest_colour(r: int, g: int, b: int) -> str:
    named = {
        "RED": (255, 0, 0), "ORANGE": (255, 128, 0), "YELLOW": (255, 255, 0),
        "GREEN": (0, 255, 0), "CYAN": (0, 255, 255), "BLUE": (0, 0, 255),
        "PURPLE": (128, 0, 255), "MAGENTA": (255, 0, 255), "PINK": (255, 128, 192),
        "WHITE": (255, 255, 255), "BLACK": (0, 0, 0),
    }  # fmt: skip
    return min(
        named, key=lambda n: sum((a - c) ** 2 for a, c in zip(named[n], (r, g, b), strict=True))
    )


class Relink:
    """Media paths as the timeline names them (file URLs, absolute or relative paths, often
    from another machine) -> files here: the path itself if it exists, else a file of the same
    name in one of the `media` folders (searched recursively), else the path as named (a
    missing file: the cues over it fail, naming it)."""

    def __init__(self, base: Path, media: list[Path] = ()):
        self.base = Path(base)
        self.index: dict[str, Path] = {}
        for folder in media:
            folder = Path(folder)
            if not folder.is_dir():
                raise UsageError(f"--media {folder} is not a folder")
            for root, _, files in os.walk(folder):
                for name in sorted(files):
                    self.index.setdefault(name, Path(root) / name)

    def __call__(self, url: str) -> Path:
        path = _path_of(url)
        if not path.is_absolute():
            path = self.base / path
        if path.exists():
            return path
        return self.index.get(path.name, path)


def _path_of(url: str) -> Path:
    """file:///a/b%20c.mov, file://localhost/a/b.mov, /a/b.mov, C:\\x\\b.mov -> a Path."""
    if url.startswith("file:"):
        parsed = urlparse(url)
        text = unquote(parsed.path)
        if len(text) > 2 and text[0] == "/" and text[2] == ":":  # file:///C:/...
            text = text[1:]
        return Path(text)
    if "\\" in url:  # a Windows path: keep the file name for relinking
        return Path(url.replace("\\", "/"))
    return Path(unquote(url))


def media_rate(cut_shots: list[Shot]) -> Fraction | None:
    """The timecode rate of the first shot's file that exists (for EDLs, which carry none)."""
    from .. import media

    for shot in cut_shots:
        if shot.path is not None and shot.path.exists():
            try:
                return timecode_rate(media.probe(shot.path).fps)
            except MediaError:
                continue
    return None
