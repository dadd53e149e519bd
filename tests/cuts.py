"""Editors' cuts for the spot tests, made from generated clips: one plan (shots and markers in
frames), written out as each application lays its exports out.

    clips = source_clips(folder)                   # a few timecoded H.264 clips
    plan = three_minutes()                         # 32 shots, 10 markers
    path = write_cut(plan, clips, folder / "cut.fcpxml", rate=Fraction(25), start="01:00:00:00")

.otio through OpenTimelineIO; FCP7 XML as Premiere Pro exports it (sequence markers with
<comment> and <pproColor>, <out>-1</out> for a point marker, a clip marker on a clipitem);
FCPXML as Final Cut Pro 10.6+ writes it (media-rep, tcStart, markers with notes on the clips
that hold them, frameDuration as a rational); EDL as Avid Media Composer writes it (FCM, FROM
CLIP NAME, `* LOC:` record-timecode locators, drop-frame labels with ';').
"""

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import opentimelineio as otio
from clips import make_clip
from selva_rt.runtime.delivery.timecode import Timecode

PREMIERE = {"BLUE": 4294741314, "RED": 4281740498, "YELLOW": 4281049552}  # green: no tag


@dataclass(frozen=True)
class PlannedShot:
    clip: int  # index into the source clips
    source: int  # first source frame (from the clip's first frame)
    frames: int


@dataclass(frozen=True)
class PlannedMarker:
    record: int  # frame from the timeline's start
    frames: int  # 0: point marker
    name: str
    colour: str  # GREEN or BLUE
    comment: str = ""
    on_clip: bool = False  # a clip marker (source time) where the format has them


@dataclass
class Plan:
    shots: list[PlannedShot]
    markers: list[PlannedMarker]
    extra: list[PlannedMarker] = field(default_factory=list)  # e.g. outside the picture

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.shots)

    def starts(self) -> list[int]:
        out, at = [], 0
        for s in self.shots:
            out.append(at)
            at += s.frames
        return out

    def cues(self, points: bool = False) -> list[tuple[int, int, str]]:
        """(record, frames, prompt) of each marker by the spotting rules, written out: a
        point marker runs to the next marker or the end of its shot. `points`: every marker
        taken as a point (an EDL's locators)."""
        starts = self.starts()
        out = []
        records = sorted(m.record for m in self.markers)
        for m in sorted(self.markers, key=lambda m: m.record):
            if m.frames and not points:
                out.append((m.record, m.frames, m.name))
                continue
            shot_end = next(a + s.frames for a, s in zip(starts, self.shots, strict=True)
                            if a <= m.record < a + s.frames)  # fmt: skip
            later = [r for r in records if r > m.record]
            out.append((m.record, min([shot_end, *later[:1]]) - m.record, m.name))
        return out


def source_clips(folder: Path, rate: Fraction, count: int = 4, seconds: int = 48) -> list[Path]:
    """`count` clips of `seconds` at `rate` (64x48 H.264), each with its own start timecode."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = round(seconds * rate)
    paths = []
    for i in range(count):
        plain = make_clip(folder / f"plain{i}.mp4", frames=frames, fps=rate, gop=25)
        path = folder / f"A00{i + 1}C00{i + 1}.mov"
        label = str(Timecode((10 + i) * 3600 * round(rate), rate))
        with av.open(str(plain)) as src, av.open(str(path), "w") as out:
            stream = out.add_stream_from_template(src.streams.video[0])
            stream.metadata["timecode"] = label
            for packet in src.demux(video=0):
                if packet.dts is not None:
                    packet.stream = stream
                    out.mux(packet)
        plain.unlink()
        paths.append(path)
    return paths


def three_minutes(rate: Fraction = Fraction(25), clips: int = 4) -> Plan:
    """32 shots of 4.2 to 7 s (about 3 minutes at 25 fps) and 10 markers: ranged and point,
    some across cuts, green (foley) and blue (ambience)."""
    fps = round(rate)
    shots = []
    for i in range(32):
        frames = fps * 4 + (i * 7) % (fps * 3) + 5
        shots.append(PlannedShot(i % clips, (i * 37) % (fps * 20), frames))
    starts = Plan(shots, []).starts()
    cut = starts  # record frames where shots begin
    markers = [
        PlannedMarker(cut[1] - fps, 2 * fps, "footsteps on gravel", "GREEN", "negative: music"),
        PlannedMarker(cut[3] + 60, 0, "wind in trees", "BLUE", "seed: 7"),
        PlannedMarker(cut[3] + 90, 0, "birdsong", "BLUE"),
        PlannedMarker(cut[6] - 20, fps * 2 - 5, "door slam", "GREEN", "on the cut"),
        PlannedMarker(cut[10] - 30, fps + 7, "glass clink", "GREEN", on_clip=True),
        PlannedMarker(cut[12] - fps, 3 * fps, "rain on a roof", "BLUE", "negative: thunder"),
        PlannedMarker(cut[18] - 30, 0, "dog barking", "GREEN", "seed: 11"),
        PlannedMarker(cut[21] - 20, fps, "car passing", "BLUE"),
        PlannedMarker(cut[27] - 35, 0, "cloth rustle", "GREEN", on_clip=True),
        PlannedMarker(cut[30] - 18, fps + 3, "waves", "BLUE"),
    ]
    return Plan(shots, markers)


# ---------------------------------------------------------------------------------------------
# Writers, one per application


def write_cut(plan: Plan, clips: list[Path], path: Path, rate: Fraction, start: str) -> Path:
    writer = {".otio": _otio, ".xml": _premiere_xml, ".fcpxml": _fcpxml, ".edl": _avid_edl,
              ".aaf": _avid_aaf}  # fmt: skip
    writer[path.suffix](plan, clips, path, rate, Timecode.parse(start, rate))
    return path


def _clip_tc(clip_index: int, rate: Fraction) -> int:
    return (10 + clip_index) * 3600 * round(rate)


def _timeline(plan: Plan, clips: list[Path], rate: Fraction, tc: Timecode):
    rt, span = otio.opentime.RationalTime, otio.opentime.TimeRange
    fps = float(rate)
    timeline = otio.schema.Timeline(name="reel1", global_start_time=rt(tc.frames, fps))
    track = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
    starts = plan.starts()
    for i, shot in enumerate(plan.shots):
        media_start = _clip_tc(shot.clip, rate)
        clip = otio.schema.Clip(
            name=f"shot{i:02d}",
            media_reference=otio.schema.ExternalReference(
                target_url=clips[shot.clip].resolve().as_uri(),
                available_range=span(rt(media_start, fps), rt(48 * round(rate), fps)),
            ),
            source_range=span(rt(media_start + shot.source, fps), rt(shot.frames, fps)),
        )
        for m in plan.markers:
            if m.on_clip and starts[i] <= m.record < starts[i] + shot.frames:
                at = media_start + shot.source + m.record - starts[i]
                clip.markers.append(_otio_marker(m, rt(at, fps), fps))
        track.append(clip)
    timeline.tracks.append(track)
    for m in plan.markers + plan.extra:
        if not m.on_clip:
            timeline.tracks.markers.append(_otio_marker(m, rt(m.record, fps), fps))
    return timeline


def _otio_marker(m: PlannedMarker, at, fps: float):
    rt = otio.opentime.RationalTime
    return otio.schema.Marker(
        name=m.name,
        marked_range=otio.opentime.TimeRange(at, rt(m.frames, fps)),
        color=m.colour,
        comment=m.comment,
    )


def _otio(plan, clips, path, rate, tc):
    timeline = _timeline(plan, clips, rate, tc)
    timeline.metadata["selva_rt"] = {"drop_frame": tc.drop_frame}
    otio.adapters.write_to_file(timeline, str(path))


def _premiere_xml(plan, clips, path, rate, tc):
    """FCP7 XML laid out as Premiere Pro writes it: the clip and sequence structure through the
    adapter's writer, then the markers as Premiere writes them."""
    timeline = _timeline(plan, clips, rate, tc)
    for m in timeline.tracks.markers:
        m.metadata["fcp_xml"] = {"comment": m.comment}
    otio.adapters.write_to_file(timeline, str(path), adapter_name="fcp_xml")
    root = ET.parse(path).getroot()
    by_name = {m.name: m for m in plan.markers}
    for element in root.iter("marker"):
        m = by_name[element.findtext("name")]
        if element.find("comment") is None:
            ET.SubElement(element, "comment").text = m.comment
        if m.frames == 0:
            element.find("out").text = "-1"
        if m.colour in PREMIERE:
            ET.SubElement(element, "pproColor").text = str(PREMIERE[m.colour])
    sequence = next(root.iter("sequence"))
    display = sequence.find("timecode/displayformat")
    display.text = "DF" if tc.drop_frame else "NDF"
    ET.ElementTree(root).write(path, encoding="UTF-8", xml_declaration=True)


def _fcpxml(plan, clips, path, rate, tc):
    """FCPXML 1.10 as Final Cut Pro writes it."""

    def t(x: Fraction) -> str:
        x = Fraction(x)
        return f"{x.numerator}s" if x.denominator == 1 else f"{x.numerator}/{x.denominator}s"

    frame = 1 / rate
    tc_start = tc.frames * frame
    root = ET.Element("fcpxml", version="1.10")
    res = ET.SubElement(root, "resources")
    ET.SubElement(res, "format", id="r1", name="FFVideoFormat1080p25", frameDuration=t(frame),
                  width="1920", height="1080", colorSpace="1-1-1 (Rec. 709)")  # fmt: skip
    for i, clip in enumerate(clips):
        asset = ET.SubElement(res, "asset", id=f"r{i + 2}", name=clip.stem, uid=f"UID{i}",
                              start=t(_clip_tc(i, rate) * frame), duration=t(48), hasVideo="1",
                              format="r1", videoSources="1")  # fmt: skip
        ET.SubElement(asset, "media-rep", kind="original-media", sig=f"SIG{i}",
                      src=clip.resolve().as_uri())  # fmt: skip
    library = ET.SubElement(root, "library", location="file:///Users/editor/Movies/Lib.fcpbundle/")
    event = ET.SubElement(library, "event", name="Reel 1", uid="EVENT")
    project = ET.SubElement(event, "project", name="reel1", uid="PROJECT")
    sequence = ET.SubElement(project, "sequence", format="r1", duration=t(plan.frames * frame),
                             tcStart=t(tc_start), tcFormat="DF" if tc.drop_frame else "NDF",
                             audioLayout="stereo", audioRate="48k")  # fmt: skip
    spine = ET.SubElement(sequence, "spine")
    starts = plan.starts()
    for i, shot in enumerate(plan.shots):
        local = (_clip_tc(shot.clip, rate) + shot.source) * frame
        clip = ET.SubElement(spine, "asset-clip", ref=f"r{shot.clip + 2}",
                             offset=t(tc_start + starts[i] * frame), name=f"shot{i:02d}",
                             start=t(local), duration=t(shot.frames * frame), format="r1",
                             tcFormat="DF" if tc.drop_frame else "NDF")  # fmt: skip
        for m in plan.markers:  # FCP keeps markers on the clip under them
            if starts[i] <= m.record < starts[i] + shot.frames:
                attrs = {
                    "start": t(local + (m.record - starts[i]) * frame),
                    "duration": t((m.frames or 1) * frame) if m.frames else t(frame),
                    "value": m.name,
                }
                if m.colour == "GREEN":
                    attrs["completed"] = "1"
                if m.comment:
                    attrs["note"] = m.comment
                ET.SubElement(clip, "marker", attrs)
    ET.indent(root, "    ")
    body = ET.tostring(root, encoding="unicode")
    path.write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE fcpxml>\n\n{body}\n')


def _avid_edl(plan, clips, path, rate, tc):
    """A CMX 3600 EDL as Avid Media Composer's List Tool writes it; locators are points."""

    def label(frames: int) -> str:
        return str(Timecode(frames, rate, tc.drop_frame))

    lines = ["TITLE:   REEL1", f"FCM: {'DROP FRAME' if tc.drop_frame else 'NON-DROP FRAME'}"]
    starts = plan.starts()
    for i, shot in enumerate(plan.shots):
        source = _clip_tc(shot.clip, rate) + shot.source
        record = tc.frames + starts[i]
        reel = clips[shot.clip].stem[:8]
        lines.append(
            f"{i + 1:03d}  {reel:<8} V     C        {label(source)} {label(source + shot.frames)} "
            f"{label(record)} {label(record + shot.frames)}"
        )
        lines.append(f"* FROM CLIP NAME:  {clips[shot.clip].name}")
        for m in plan.markers:
            if starts[i] <= m.record < starts[i] + shot.frames:
                lines.append(f"* LOC: {label(tc.frames + m.record)} {m.colour:<7} {m.name}")
    path.write_text("\r\n".join(lines) + "\r\n")


def _avid_aaf(plan, clips, path, rate, tc):
    """An AAF: the composition through the AAF adapter's writer, then the markers as Avid keeps
    them (DescriptiveMarkers on an EventMobSlot, described slot = the picture track)."""
    import aaf2

    timeline = _timeline(plan, clips, rate, tc)
    for clip in timeline.find_clips():
        clip.markers.clear()
    timeline.tracks.markers.clear()
    otio.adapters.write_to_file(timeline, str(path), adapter_name="AAF", use_empty_mob_ids=True)
    with aaf2.open(str(path), "rw") as f:
        composition = next(f.content.compositionmobs())
        picture = next(s for s in composition.slots if s.media_kind == "Picture")
        picture["PhysicalTrackNumber"].value = 1
        sequence = f.create.Sequence(media_kind="DescriptiveMetadata")
        for m in plan.markers:
            marker = f.create.DescriptiveMarker()
            marker["Position"].value = m.record
            marker["Length"].value = m.frames or 1
            marker["Comment"].value = m.name
            marker["CommentMarkerUser"].value = "editor"
            marker["DescribedSlots"].value = {picture.slot_id}
            sequence.components.append(marker)
        slot = f.create.EventMobSlot()
        slot.edit_rate = rate
        slot["SlotID"].value = 1000
        slot["PhysicalTrackNumber"].value = 1
        slot.segment = sequence
        composition.slots.append(slot)
