"""The timeline back: the cut's picture, one audio track per category (a second, third ... where
a category's stems overlap), each stem at its cue's record frame, and a marker on each stem
with the prompt, seed and model in its metadata (`selva_rt`) and, for formats without metadata,
in its comment.

    placed = place(cut, cues, stems)                     # which track each stem goes on
    paths = write_timelines(cut, placed, out, force)     # <name>_spotted.otio (+ its own format)

The .otio keeps the cut as read (an .otio, FCP7 XML or AAF input: every track, effect and
metadata as the adapter gave them) and adds the audio tracks; stems start on the picture's
frames, so frame times are exact (the BWF TimeReference holds the same position in samples).
In the input's own format: FCP7 XML and AAF through the OpenTimelineIO adapters, FCPXML and EDL
through fcpxml.py and edl.py (an EDL carries the picture and a locator per stem only).
"""

import copy
import os
from dataclasses import dataclass
from pathlib import Path

from ... import __version__
from ..errors import OutputError
from . import edl, fcpxml
from .cues import Cue
from .cut import Cut, require_otio

SUFFIX = {"otio": ".otio", "fcp_xml": ".xml", "fcpxml": ".fcpxml", "edl": ".edl", "aaf": ".aaf"}


@dataclass(frozen=True)
class Placed:
    """A written stem where it goes."""

    cue: Cue
    file: Path
    track: str  # the audio track: the category, or "category 2" where stems overlap
    sample_rate: int
    seed: int
    variant: str

    @property
    def record(self) -> int:
        return self.cue.record

    @property
    def frames(self) -> int:
        return self.cue.frames

    @property
    def colour(self) -> str:
        return self.cue.colour

    @property
    def note(self) -> str:
        """What a marker's comment says of the stem (formats without metadata)."""
        parts = [f"seed {self.seed}", f"{self.variant}", self.file.name]
        if self.cue.negative_prompt:
            parts.insert(1, f"negative: {self.cue.negative_prompt}")
        return "selva-rt " + "; ".join(parts)

    def metadata(self) -> dict:
        return {
            "prompt": self.cue.prompt,
            "negative_prompt": self.cue.negative_prompt,
            "seed": self.seed,
            "category": self.cue.category,
            "variant": self.variant,
            "model": f"selva-rt {__version__} {self.variant}",
            "file": self.file.name,
            "cue": self.cue.number,
        }


def place(cut: Cut, done: list[tuple[Cue, Path, int, int]], variant: str) -> list[Placed]:
    """(cue, stem file, sample rate, seed) -> Placed, each on its category's first track free
    over its frames."""
    tracks: dict[str, list[list[tuple[int, int]]]] = {}
    placed = []
    for cue, file, rate, seed in sorted(done, key=lambda d: (d[0].record, d[0].number)):
        lanes = tracks.setdefault(cue.category, [])
        i = next((i for i, used in enumerate(lanes) if _free(used, cue)), len(lanes))
        if i == len(lanes):
            lanes.append([])
        lanes[i].append((cue.record, cue.end))
        name = cue.category if i == 0 else f"{cue.category} {i + 1}"
        placed.append(Placed(cue, file, name, rate, seed, variant))
    return placed


def _free(used: list[tuple[int, int]], cue: Cue) -> bool:
    return all(cue.end <= a or cue.record >= b for a, b in used)


def timeline_paths(cut: Cut, out: Path) -> list[Path]:
    """The timeline files spot writes for `cut`: .otio, and the input's own format."""
    stem = f"{cut.path.stem}_spotted"
    paths = [out / f"{stem}.otio"]
    if cut.format in SUFFIX and cut.format != "otio":
        paths.append(out / f"{stem}{SUFFIX[cut.format]}")
    return paths


def build_otio(cut: Cut, placed: list[Placed], folder: Path):
    """The output timeline: the cut as read (or its picture, for formats read here) with the
    stems' audio tracks and markers."""
    otio = require_otio()
    rt, span = otio.opentime.RationalTime, otio.opentime.TimeRange
    fps = float(cut.rate)
    if cut.timeline is not None:
        timeline = copy.deepcopy(cut.timeline)
    else:
        timeline = otio.schema.Timeline(name=cut.name, global_start_time=rt(cut.start, fps))
        picture = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
        cursor = 0
        for shot in cut.shots:
            if shot.record > cursor:
                picture.append(otio.schema.Gap(duration=rt(shot.record - cursor, fps)))
            source = shot.source * cut.rate
            picture.append(
                otio.schema.Clip(
                    name=shot.name,
                    media_reference=otio.schema.ExternalReference(
                        target_url=_url(shot.path, folder) if shot.path else ""
                    ),
                    source_range=span(rt(float(source), fps), rt(shot.frames, fps)),
                )
            )
            cursor = shot.end
        timeline.tracks.append(picture)
        for m in cut.markers:
            timeline.tracks.markers.append(
                otio.schema.Marker(
                    name=m.name,
                    marked_range=span(rt(m.record, fps), rt(m.frames, fps)),
                    color=m.colour or otio.schema.MarkerColor.GREEN,
                    comment=m.comment,
                )
            )
    if timeline.global_start_time is None:
        timeline.global_start_time = rt(cut.start, fps)
    timeline.metadata["selva_rt"] = {
        "timecode": str(cut.timecode(0)),
        "timecode_rate": f"{cut.rate.numerator}/{cut.rate.denominator}",
        "drop_frame": cut.drop_frame,
        "spotted_from": cut.path.name,
    }
    by_track: dict[str, list[Placed]] = {}
    for p in placed:
        by_track.setdefault(p.track, []).append(p)
    for name, stems in by_track.items():
        track = otio.schema.Track(name=name, kind=otio.schema.TrackKind.Audio)
        cursor = 0
        for p in sorted(stems, key=lambda p: p.record):
            if p.record > cursor:
                track.append(otio.schema.Gap(duration=rt(p.record - cursor, fps)))
            # source timecode = record timecode, as the BWF says
            available = span(rt(cut.start + p.record, fps), rt(p.frames, fps))
            clip = otio.schema.Clip(
                name=p.cue.prompt,
                media_reference=otio.schema.ExternalReference(
                    target_url=_url(p.file, folder), available_range=available
                ),
                source_range=available,
            )
            clip.markers.append(
                otio.schema.Marker(
                    name=p.cue.prompt,
                    marked_range=span(available.start_time, rt(0, fps)),
                    color=p.colour or otio.schema.MarkerColor.GREEN,
                    comment=p.note,
                    metadata={"selva_rt": p.metadata(), "fcp_xml": {"comment": p.note}},
                )
            )
            track.append(clip)
            cursor = p.record + p.frames
        timeline.tracks.append(track)
    return timeline


def write_timelines(cut: Cut, placed: list[Placed], out: Path) -> list[Path]:
    """Write the .otio and the input's own format into `out` (each atomically); -> paths."""
    otio = require_otio()
    paths = timeline_paths(cut, out)
    timeline = build_otio(cut, placed, out)
    texts: list[tuple[Path, str | None]] = [
        (paths[0], otio.adapters.write_to_string(timeline, "otio_json"))
    ]
    if len(paths) > 1:
        target = paths[1]
        if cut.format == "fcpxml":
            texts.append((target, fcpxml.write(cut, placed, target)))
        elif cut.format == "edl":
            texts.append((target, edl.write(cut, placed, target)))
        elif cut.format == "fcp_xml":
            texts.append((target, otio.adapters.write_to_string(timeline, "fcp_xml")))
        elif cut.format == "aaf":
            texts.append((target, None))
    for path, text in texts:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            if text is None:  # AAF: the adapter writes the file itself
                _write_aaf(otio, timeline, tmp)
            else:
                tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return paths


def _write_aaf(otio, timeline, path: Path) -> None:
    try:
        # The stems are new to the AAF: they get new mob IDs.
        otio.adapters.write_to_file(timeline, str(path), adapter_name="AAF", use_empty_mob_ids=True)
    except Exception as err:  # noqa: BLE001 - the adapter raises anything; one line for the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OutputError(f"the AAF adapter cannot write {path.name} ({first})") from None


def _url(path: Path, folder: Path) -> str:
    """A file URL (absolute: editors relink by it), for a path relative to `folder` too."""
    path = Path(path)
    return (path if path.is_absolute() else Path(folder) / path).resolve().as_uri()
