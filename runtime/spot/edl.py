"""CMX 3600 EDLs (Avid Media Composer, Premiere Pro, Resolve): the picture events and their
`* LOC:` locators, read and written here.

Why not OpenTimelineIO's cmx_3600 adapter (1.0.0): it drops every drop-frame locator
(`* LOC: 01:00:00;10 ...` does not match its pattern), puts a locator's record timecode in the
clip's source time, and forgets the record start (the timeline starts at 0, not 01:00:00:00).

An EDL carries no frame rate: it is the media's (probed from the first clip found), or
`--rate`. Locators are record timecode. Motion effects (`M2` lines) are read as the event's
speed, which spotting refuses for the cues over it. Written back, an EDL is the picture plus one
locator per stem: it cannot carry the stems themselves, and its header says so.
"""

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from ..delivery.timecode import Timecode, clip_timecode, timecode_rate
from ..errors import MediaError, UsageError
from .cut import COLOURS, Cut, Marker, Relink, Shot, media_rate

_TC = r"\d{1,2}[:;.]\d{2}[:;.]\d{2}[:;.,]\d{2}"
_EVENT = re.compile(
    rf"^(\d{{3,6}})\s+(\S+)\s+(\S+)\s+(C|D|W\d+|K\S*)\s+(?:(\d+)\s+)?({_TC})\s+({_TC})\s+({_TC})\s+({_TC})\s*$"
)
_LOC = re.compile(rf"^\*\s*LOC:\s*({_TC})\s+(\w+)?\s*(.*)$")
_M2 = re.compile(rf"^M2\s+(\S+)\s+(-?[\d.]+)\s+({_TC})\s*$")
NOTE = (
    "* SELVA-RT: AN EDL CANNOT CARRY AUDIO STEMS. EACH LOCATOR NAMES ONE: A BROADCAST WAV IN THIS "
    "FOLDER, STAMPED WITH ITS RECORD TIMECODE (IMPORT IT AT ITS TIMECODE, OR USE THE .OTIO)"
)


@dataclass
class _Event:
    number: str
    reel: str
    channels: str
    source_in: str
    source_out: str
    record_in: str
    record_out: str
    name: str = ""
    file: str = ""
    speed: float | None = None  # frames per second of source, from an M2 line


def read(path: Path, relink: Relink, rate: Fraction | None = None) -> Cut:
    """The cut an EDL describes (video events only)."""
    title, drop, events, locators = path.stem, False, [], []
    for number, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines()):
        line = raw.strip()
        if not line:
            continue
        if line.upper().startswith("TITLE:"):
            title = line.split(":", 1)[1].strip() or title
        elif line.upper().startswith("FCM:"):
            if not events:  # the record timecode's mode: the first FCM
                drop = "NON" not in line.upper() and "DROP" in line.upper()
        elif m := _EVENT.match(line):
            events.append(_Event(m[1], m[2], m[3], *m.group(6, 7, 8, 9)))
        elif (m := _LOC.match(line)) and events:
            locators.append((m[1], (m[2] or "").upper(), m[3].strip(), number))
        elif (m := _M2.match(line)) and events:
            events[-1].speed = float(m[2])
        elif events and (m := re.match(r"^\*\s*FROM CLIP NAME:\s*(.*)$", line, re.I)):
            events[-1].name = m[1].strip()
        elif events and (m := re.match(r"^\*\s*(?:SOURCE FILE|FROM FILE):\s*(.*)$", line, re.I)):
            events[-1].file = m[1].strip()
    videos = [e for e in events if "V" in e.channels.upper() or e.channels.upper() == "B"]
    if not videos:
        raise UsageError(f"{path.name} has no video events")
    shots_unplaced = [(e, relink(e.file or e.name or e.reel)) for e in videos]
    if rate is None:
        probe = [Shot(e.name, p, 0, 1, Fraction(0)) for e, p in shots_unplaced]
        rate = media_rate(probe)
        if rate is None:
            raise UsageError(
                f"{path.name} does not say its frame rate and none of its media was found; "
                "pass --rate (e.g. 25 or 29.97) or --media DIR"
            )
    rate = timecode_rate(Fraction(rate))

    def tc(label: str) -> int:
        return _parse(label, rate, drop, path).frames

    start = min(tc(e.record_in) for e in videos)
    shots = []
    for event, media in shots_unplaced:
        record, end = tc(event.record_in) - start, tc(event.record_out) - start
        if end <= record:
            continue  # the outgoing half of a dissolve: the incoming event takes the frames
        source = Fraction(tc(event.source_in), 1) / rate - _media_start(media)
        speed = Fraction(1)
        if event.speed is not None:
            speed = Fraction(event.speed).limit_denominator(1000) / rate
        shots.append(Shot(event.name or event.reel, media, record, end - record, source, speed))
    markers = []
    for label, colour, text, _ in locators:
        markers.append(
            Marker(
                text,
                tc(label) - start,
                0,
                "",
                colour if colour in COLOURS else "",
                {"edl": {"locator": f"{label} {colour} {text}".strip()}},
                "timeline",
            )
        )
    length = max(s.end for s in shots)
    shots.sort(key=lambda s: s.record)
    return Cut(title, path, "edl", rate, drop, start, length, shots, markers)


def _parse(label: str, rate: Fraction, drop: bool, path: Path) -> Timecode:
    """A label; with FCM: DROP FRAME, ':' before the frames is drop-frame too (Avid writes
    both)."""
    text = label.replace(".", ";").replace(",", ";")
    if drop and ";" not in text:
        text = text[: text.rfind(":")] + ";" + text[text.rfind(":") + 1 :]
    try:
        return Timecode.parse(text, rate)
    except ValueError as err:
        raise UsageError(f"{path.name}: {err}") from None


def _media_start(media: Path | None) -> Fraction:
    """Where a file's own timecode starts (an EDL's source timecode counts from it)."""
    if media is None or not media.exists():
        return Fraction(0)
    try:
        return clip_timecode(media).seconds
    except MediaError:
        return Fraction(0)


def write(cut: Cut, stems: list, path: Path) -> str:
    """The EDL of `cut`'s picture with one locator per stem (`stems`: deliver.Placed), as text;
    written to `path` by the caller."""
    fcm = "DROP FRAME" if cut.drop_frame else "NON-DROP FRAME"
    lines = [f"TITLE: {cut.name[:70]}", f"FCM: {fcm}", ""]
    rate = timecode_rate(cut.rate)

    def label(frames: int) -> str:
        return str(Timecode(frames, rate, cut.drop_frame))

    by_event: dict[int, list] = {}
    for placed in stems:
        index = next(
            (i for i, s in enumerate(cut.shots) if s.record <= placed.record < s.end),
            len(cut.shots) - 1,
        )
        by_event.setdefault(index, []).append(placed)
    for i, shot in enumerate(cut.shots, 1):
        start = _media_start(shot.path) + shot.source
        source = round(start * rate)
        reel = re.sub(r"[^A-Z0-9_]", "", (shot.path.stem if shot.path else shot.name).upper())[:8]
        lines.append(
            f"{i:03d}  {reel or 'AX':8} V     C        {label(source)} "
            f"{label(source + shot.frames)} {label(cut.start + shot.record)} "
            f"{label(cut.start + shot.end)}"
        )
        lines.append(f"* FROM CLIP NAME: {shot.path.name if shot.path else shot.name}")
        if i == 1:  # (readers take comments only after an event)
            lines.append(NOTE)
        for placed in by_event.get(i - 1, []):
            colour = placed.colour or "GREEN"
            text = f"{placed.cue.prompt} | {placed.file.name}"
            lines.append(f"* LOC: {label(cut.start + placed.record)} {colour:7} {text}")
    return "\n".join(lines) + "\n"
