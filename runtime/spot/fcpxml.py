"""Final Cut Pro's FCPXML (1.8 to 1.13; `.fcpxml` files and `.fcpxmld` bundles), read and
written here.

Why not OpenTimelineIO's fcpx_xml adapter (1.0.0): it counts frames at int(1 / frameDuration)
(a 29.97 timeline read as 29 fps: times off by up to 0.3 s), truncates times to whole frames,
drops marker notes, ignores `media-rep` (where FCPXML 1.9+ keeps a file's location), cannot open
a `.fcpxmld` bundle (a folder holding Info.fcpxml), ignores the sequence's `tcStart`, and writes
no timecode start and no rate it has no table entry for. Times here are exact: FCPXML writes
them as rational seconds ("1001/30000s").

Read: the project's sequence; its spine (the primary storyline) and connected clips (`lane`);
asset-clips and clips holding a video reference are picture, a connected clip on a positive
lane is above the spine. Markers: `marker` (FCP shows it blue; a to-do `completed="0"` red,
done `completed="1"` green) and `chapter-marker` (orange), with `value` as name and `note` as
comment, in the time of the clip that holds them.

Written: the picture as asset-clips on the spine, each stem a connected audio clip on a lane per
category track (below the spine: -1, -2, ...) at its record time on the picture's frame grid
(the BWF keeps the sample-accurate position), with a marker carrying the prompt, and the
sequence's tcStart and tcFormat.
"""

import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

from ..delivery.timecode import clip_timecode, timecode_rate
from ..errors import MediaError, UsageError
from .cut import Cut, Marker, Relink, Shot, visible

VERSION = "1.10"


def seconds(text: str | None) -> Fraction:
    """'1001/30000s', '3600s', '0s' -> exact seconds."""
    if not text:
        return Fraction(0)
    text = text.strip()
    if not text.endswith("s"):
        raise ValueError(f"{text!r} is not an FCPXML time")
    return Fraction(text[:-1])


def time_text(x: Fraction) -> str:
    """Exact seconds as FCPXML writes them."""
    x = Fraction(x)
    return f"{x.numerator}s" if x.denominator == 1 else f"{x.numerator}/{x.denominator}s"


def document(path: Path) -> Path:
    """The XML file of an .fcpxml, or of an .fcpxmld bundle (Info.fcpxml inside)."""
    if path.is_dir():
        inner = path / "Info.fcpxml"
        if not inner.is_file():
            raise UsageError(f"{path.name} is a bundle without Info.fcpxml")
        return inner
    return path


def read(path: Path, relink: Relink) -> Cut:
    """The cut of the first project in an FCPXML file or bundle."""
    try:
        root = ET.parse(document(path)).getroot()
    except ET.ParseError as err:
        raise UsageError(f"{path.name} is not valid XML ({err})") from None
    if root.tag != "fcpxml":
        raise UsageError(f"{path.name} is not FCPXML (its root is <{root.tag}>)")
    formats = {f.get("id"): f for f in root.iter("format")}
    assets = {a.get("id"): a for a in root.iter("asset")}
    project = root.find(".//project")
    sequence = project.find("sequence") if project is not None else None
    if sequence is None:
        raise UsageError(f"{path.name} has no project with a sequence")
    try:
        frame = seconds(formats[sequence.get("format")].get("frameDuration"))
    except (KeyError, ValueError, TypeError):
        raise UsageError(f"{path.name}: the sequence's format has no frameDuration") from None
    rate = 1 / frame
    tc_start = seconds(sequence.get("tcStart"))
    reader = _Reader(rate, tc_start, assets, relink, path)
    spine = sequence.find("spine")
    if spine is not None:
        for element in spine:
            reader.item(element, tc_start, tc_start, 0)
    layers = [reader.layers[lane] for lane in sorted(reader.layers)]
    length = round((seconds(sequence.get("duration")) or reader.end) * rate)
    return Cut(
        name=project.get("name") or path.stem,
        path=path,
        format="fcpxml",
        rate=timecode_rate(rate) if abs(timecode_rate(rate) - rate) < Fraction(1, 10**6) else rate,
        drop_frame=sequence.get("tcFormat") == "DF",
        start=round(tc_start * rate),
        frames=length,
        shots=visible(layers, rate),
        markers=sorted(reader.markers, key=lambda m: (m.record, m.name)),
        sounds=reader.sounds,
    )


class _Reader:
    """Walks the storylines, placing each item on the sequence's time."""

    PICTURE = ("asset-clip", "clip", "video", "mc-clip", "sync-clip", "ref-clip")

    def __init__(self, rate, tc_start, assets, relink, path):
        self.rate, self.tc_start, self.assets = rate, tc_start, assets
        self.relink, self.path = relink, path
        self.layers: dict[int, list[Shot]] = {}
        self.sounds: list[Shot] = []
        self.markers: list[Marker] = []
        self.end = Fraction(0)

    def item(self, e: ET.Element, parent_at: Fraction, parent_start: Fraction, lane: int):
        """Place element `e`, whose `offset` counts in its parent's local time, where the
        parent's local time `parent_start` sits at sequence time `parent_at`."""
        if e.tag in ("marker", "chapter-marker"):
            return
        local_start = seconds(e.get("start"))
        duration = seconds(e.get("duration"))
        at = parent_at + seconds(e.get("offset")) - parent_start  # sequence time of e's start
        record = round((at - self.tc_start) * self.rate)
        frames = round(duration * self.rate)
        self.end = max(self.end, at - self.tc_start + duration)
        media, sound = self._media(e), None
        if media is None and e.tag == "asset-clip":
            sound = self._asset(e.get("ref"), True)
        if media is not None and frames > 0:
            path, source = media
            shot = Shot(e.get("name") or path.name, path, record, frames, source + local_start)
            self.layers.setdefault(lane, []).append(shot)
        elif sound is not None and frames > 0:
            path, source = sound
            self.sounds.append(Shot(e.get("name") or path.name, path, record, frames, source))
        for child in e:
            if child.tag in ("marker", "chapter-marker"):
                if sound is not None:  # a stem's own marker (spot wrote it), not a cue
                    continue
                self._marker(child, at, local_start, e.get("name") or e.tag)
            elif child.tag == "spine":  # a secondary storyline, connected at its offset
                base = at + seconds(child.get("offset")) - local_start
                for grand in child:
                    self.item(grand, base, Fraction(0), int(child.get("lane", "0")))
            elif child.get("lane") is not None:  # a connected clip
                self.item(child, at, local_start, int(child.get("lane")))

    def _media(self, e: ET.Element) -> tuple[Path, Fraction] | None:
        """(file, its time at the element's local time 0 in seconds from the file's first
        frame) for picture elements; None for gaps, titles, audio-only clips."""
        if e.tag == "asset-clip":
            return self._asset(e.get("ref"))
        if e.tag == "clip":  # a clip wraps its media: <video ref offset start>
            inner = e.find("video")
            if inner is not None and inner.get("ref") in self.assets:
                found = self._asset(inner.get("ref"))
                shift = seconds(inner.get("start")) - seconds(inner.get("offset"))
                return None if found is None else (found[0], found[1] + shift)
        return None

    def _asset(self, ref: str | None, sound: bool = False) -> tuple[Path, Fraction] | None:
        """(file, minus its start) of a picture asset (with `sound`: of an audio-only one)."""
        asset = self.assets.get(ref)
        if asset is None or (asset.get("hasVideo", "1") == "0") != sound:
            return None
        rep = asset.find("media-rep[@kind='original-media']")
        src = asset.get("src") or (rep.get("src") if rep is not None else None)
        if not src:
            return None
        # Asset time counts from the file's own timecode (its `start`).
        return self.relink(src), -seconds(asset.get("start"))

    def _marker(self, m: ET.Element, at: Fraction, local_start: Fraction, where: str):
        when = at + seconds(m.get("start")) - local_start
        if m.tag == "chapter-marker":
            colour = "ORANGE"
        else:
            colour = {"0": "RED", "1": "GREEN"}.get(m.get("completed"), "BLUE")
        self.markers.append(
            Marker(
                m.get("value", ""),
                round((when - self.tc_start) * self.rate),
                round(seconds(m.get("duration")) * self.rate),
                m.get("note", ""),
                colour,
                {"fcpxml": dict(m.attrib)},
                f"clip {where}",
            )
        )


def write(cut: Cut, placed: list, path: Path) -> str:
    """An FCPXML document (text) of `cut`'s picture with every stem (deliver.Placed) connected
    below it on its category's lane, frame-accurate; media as file URLs."""
    rate = cut.rate
    frame = 1 / rate
    tc_start = cut.start * frame
    root = ET.Element("fcpxml", version=VERSION)
    resources = ET.SubElement(root, "resources")
    ET.SubElement(
        resources, "format", id="r1", frameDuration=time_text(frame), name=_format_name(rate)
    )
    ids: dict[Path, str] = {}

    def asset(file: Path, start: Fraction, length: Fraction, video: bool, extra: dict) -> str:
        key = Path(file)
        if key not in ids:
            ids[key] = f"r{len(ids) + 2}"
            a = ET.SubElement(
                resources,
                "asset",
                id=ids[key],
                name=key.stem,
                start=time_text(start),
                duration=time_text(length),
                hasVideo="1" if video else "0",
                hasAudio="0" if video else "1",
                **({"format": "r1"} if video else {}),
                **extra,
            )
            ET.SubElement(a, "media-rep", kind="original-media", src=key.resolve().as_uri())
        return ids[key]

    library = ET.SubElement(root, "library")
    event = ET.SubElement(library, "event", name="selva-rt")
    project = ET.SubElement(event, "project", name=cut.name)
    sequence = ET.SubElement(
        project,
        "sequence",
        format="r1",
        duration=time_text(cut.frames * frame),
        tcStart=time_text(tc_start),
        tcFormat="DF" if cut.drop_frame else "NDF",
    )
    spine = ET.SubElement(sequence, "spine")
    items: list[tuple[int, int, ET.Element, Fraction]] = []  # (record, end, element, start)
    cursor = 0
    for shot in cut.shots:
        if shot.record > cursor:
            gap = ET.SubElement(
                spine,
                "gap",
                name="Gap",
                offset=time_text(tc_start + cursor * frame),
                start=time_text(tc_start),
                duration=time_text((shot.record - cursor) * frame),
            )
            items.append((cursor, shot.record, gap, tc_start))
        begin = _media_start(shot.path) if shot.path else Fraction(0)
        local = begin + shot.source
        ref = asset(
            shot.path or Path(shot.name), begin, local + shot.frames * frame - begin, True, {}
        )
        clip = ET.SubElement(
            spine,
            "asset-clip",
            ref=ref,
            name=shot.name,
            offset=time_text(tc_start + shot.record * frame),
            start=time_text(local),
            duration=time_text(shot.frames * frame),
            tcFormat="DF" if cut.drop_frame else "NDF",
        )
        items.append((shot.record, shot.end, clip, local))
        cursor = shot.end
    lanes: dict[str, int] = {}
    for p in placed:
        lane = lanes.setdefault(p.track, -(len(lanes) + 1))
        record, end = p.record, p.record + p.frames
        parent = next((it for it in items if it[0] <= record < it[1]), items[-1] if items else None)
        if parent is None:
            continue
        p_record, _, p_element, p_local = parent
        stem_start = (cut.start + record) * frame  # the stem's timecode, as its BWF says
        ref = asset(
            p.file,
            stem_start,
            (end - record) * frame,
            False,
            {"audioSources": "1", "audioChannels": "1", "audioRate": str(p.sample_rate)},
        )
        stem = ET.SubElement(
            p_element,
            "asset-clip",
            ref=ref,
            lane=str(lane),
            name=p.cue.prompt,
            offset=time_text(p_local + (record - p_record) * frame),
            start=time_text(stem_start),
            duration=time_text((end - record) * frame),
            audioRole=_role(p.track),
        )
        ET.SubElement(
            stem,
            "marker",
            start=time_text(stem_start),
            duration=time_text(frame),
            value=p.cue.prompt,
            note=p.note,
        )
    for m in cut.markers:  # the editor's markers, on the item under them (after its anchors)
        parent = next((it for it in items if it[0] <= m.record < it[1]), None)
        if parent is None:
            continue
        p_record, _, p_element, p_local = parent
        attrs = {
            "start": time_text(p_local + (m.record - p_record) * frame),
            "duration": time_text(max(1, m.frames) * frame),
            "value": m.name,
        }
        if m.colour in ("RED", "GREEN"):  # FCP's to-do markers
            attrs["completed"] = "1" if m.colour == "GREEN" else "0"
        if m.comment:
            attrs["note"] = m.comment
        ET.SubElement(p_element, "marker", attrs)
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE fcpxml>\n\n{body}\n'


def _media_start(path: Path) -> Fraction:
    """A file's own start timecode in seconds (FCP's asset start), 0 if it has none."""
    if path is None or not path.exists():
        return Fraction(0)
    try:
        return clip_timecode(path).seconds
    except MediaError:
        return Fraction(0)


def _role(track: str) -> str:
    """FCP audio roles take letters, digits and spaces; a category's is a subrole of effects."""
    name = "".join(c for c in track if c.isalnum() or c == " ").strip() or "stems"
    return f"effects.{name}"


def _format_name(rate: Fraction) -> str:
    names = {
        Fraction(24000, 1001): "2398",
        Fraction(24): "24",
        Fraction(25): "25",
        Fraction(30000, 1001): "2997",
        Fraction(30): "30",
        Fraction(50): "50",
        Fraction(60000, 1001): "5994",
        Fraction(60): "60",
    }
    return (
        f"FFVideoFormat1080p{names.get(rate, '')}"
        if rate in names
        else "FFVideoFormatRateUndefined"
    )
