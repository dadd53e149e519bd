"""Reading editors' exports as the applications write them, where OpenTimelineIO's 1.0.0
adapters misread (each test names the adapter's mistake it guards against), every frame rate
read and written back exactly, and what spotting does with cues it cannot run."""

import json
import shutil
from fractions import Fraction
from pathlib import Path

import opentimelineio as otio
import pytest
import torch
from clips import make_clip
from cuts import Plan, PlannedMarker, PlannedShot, source_clips, write_cut
from selva_rt.runtime import cli
from selva_rt.runtime.delivery.timecode import Timecode
from selva_rt.runtime.spot import cues as cue_rules
from selva_rt.runtime.spot import edl, fcpxml
from selva_rt.runtime.spot.cut import Relink, from_otio
from selva_rt.runtime.spot.deliver import build_otio, place
from selva_rt.runtime.spot.read import read_cut

torch.set_num_threads(1)

NTSC = Fraction(30000, 1001)

# Final Cut Pro 10.6 exporting a 29.97 project at 01:00:00;00 (drop frame): a clip at its own
# timecode 12:00:00;00 with a standard marker (note) and a to-do marker; media as media-rep.
FCP_2997_DF = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE fcpxml>

<fcpxml version="1.10">
    <resources>
        <format id="r1" name="FFVideoFormat1080p2997" frameDuration="1001/30000s" \
width="1920" height="1080" colorSpace="1-1-1 (Rec. 709)"/>
        <asset id="r2" name="A001C003" uid="5D9B4E0F" start="1295998704/30000s" \
duration="300300/30000s" hasVideo="1" format="r1" videoSources="1">
            <media-rep kind="original-media" sig="5D9B4E0F" \
src="file:///Volumes/SHOOT/A001C003.mov"/>
        </asset>
    </resources>
    <library location="file:///Users/editor/Movies/Film.fcpbundle/">
        <event name="Day 1" uid="E1">
            <project name="Scene 4" uid="P1" modDate="2024-05-02 10:11:12 +0200">
                <sequence format="r1" duration="150150/30000s" tcStart="107999892/30000s" \
tcFormat="DF" audioLayout="stereo" audioRate="48k">
                    <spine>
                        <asset-clip ref="r2" offset="107999892/30000s" name="A001C003" \
start="1296058764/30000s" duration="150150/30000s" format="r1" tcFormat="DF">
                            <marker start="1296088794/30000s" duration="1001/30000s" \
value="door creak" note="negative: music; slow"/>
                            <marker start="1296148854/30000s" duration="1001/30000s" \
value="latch click" completed="0"/>
                        </asset-clip>
                    </spine>
                </sequence>
            </project>
        </event>
    </library>
</fcpxml>
"""

# Avid Media Composer's EDL of a 29.97 drop-frame sequence at 01:00:00;00 with locators.
AVID_DF = """TITLE:   SCENE 4
FCM: DROP FRAME
001  A001C003 V     C        12:00:02;00 12:00:07;00 01:00:00;00 01:00:05;00
* FROM CLIP NAME:  A001C003.mov
* LOC: 01:00:00;10 RED     door creak
* LOC: 01:00:02;12 BLUE    latch click
"""

# Premiere Pro's FCP7 XML: sequence markers with comment and pproColor (blue), one without a
# colour tag (green, Premiere's default), a point marker (out -1).
PREMIERE = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE xmeml>
<xmeml version="4">
  <sequence id="sequence-1">
    <uuid>0f2a1c3e-1111-2222-3333-444455556666</uuid>
    <duration>250</duration>
    <rate><timebase>25</timebase><ntsc>FALSE</ntsc></rate>
    <name>Scene 4</name>
    <media>
      <video>
        <format><samplecharacteristics><rate><timebase>25</timebase><ntsc>FALSE</ntsc></rate>
          <width>1920</width><height>1080</height></samplecharacteristics></format>
        <track>
          <clipitem id="clipitem-1">
            <masterclipid>masterclip-1</masterclipid>
            <name>shot.mov</name>
            <enabled>TRUE</enabled>
            <duration>1200</duration>
            <rate><timebase>25</timebase><ntsc>FALSE</ntsc></rate>
            <start>0</start><end>250</end><in>100</in><out>350</out>
            <file id="file-1">
              <name>shot.mov</name>
              <pathurl>file://localhost/Volumes/SHOOT/shot.mov</pathurl>
              <rate><timebase>25</timebase><ntsc>FALSE</ntsc></rate>
              <duration>1200</duration>
              <timecode><rate><timebase>25</timebase><ntsc>FALSE</ntsc></rate>
                <string>00:00:00:00</string><frame>0</frame><displayformat>NDF</displayformat>
              </timecode>
              <media><video><samplecharacteristics><width>1920</width><height>1080</height>
              </samplecharacteristics></video></media>
            </file>
          </clipitem>
        </track>
      </video>
    </media>
    <timecode>
      <rate><timebase>25</timebase><ntsc>FALSE</ntsc></rate>
      <string>01:00:00:00</string><frame>90000</frame><displayformat>NDF</displayformat>
    </timecode>
    <marker><comment>negative: music</comment><name>footsteps</name><in>25</in><out>75</out>\
</marker>
    <marker><comment>seed: 9</comment><name>wind</name><in>100</in><out>-1</out>\
<pproColor>4294741314</pproColor></marker>
  </sequence>
</xmeml>
"""


def test_fcpxml_from_final_cut_at_2997_drop_frame(tmp_path):
    """fcpx_xml 1.0.0 reads this timeline at 29 fps (int(30000/1001)), loses the notes, sees no
    media (media-rep) and no timecode start: selva-rt's reader is exact."""
    path = tmp_path / "scene4.fcpxml"
    path.write_text(FCP_2997_DF)
    cut = read_cut(path, media=[])
    assert (cut.rate, cut.drop_frame, cut.start, cut.frames) == (NTSC, True, 107892, 150)
    assert str(cut.timecode(0)) == "01:00:00;00"
    (shot,) = cut.shots
    assert shot.path == Path("/Volumes/SHOOT/A001C003.mov")
    assert (shot.record, shot.frames) == (0, 150)
    assert shot.source == Fraction(60 * 1001, 30000)  # 2 s of frames into the file
    creak, latch = cut.markers
    assert (creak.name, creak.record, creak.frames, creak.colour) == ("door creak", 30, 1, "BLUE")
    assert creak.comment == "negative: music; slow"
    assert (latch.record, latch.colour) == (90, "RED")
    cues, problems = cue_rules.from_markers(cut, cue_rules.categories([]))
    assert problems == [] and [(c.record, c.frames) for c in cues] == [(30, 60), (90, 60)]
    assert cues[0].negative_prompt == "music" and cues[0].note == "slow"


def test_fcpxmld_bundle_and_media_from_another_machine(tmp_path):
    """The adapter cannot open a .fcpxmld bundle (a folder); --media relinks by file name."""
    bundle = tmp_path / "Scene 4.fcpxmld"
    bundle.mkdir()
    (bundle / "Info.fcpxml").write_text(FCP_2997_DF)
    media = tmp_path / "media" / "day1"
    media.mkdir(parents=True)
    make_clip(media / "A001C003.mov", frames=10)
    cut = read_cut(bundle, media=[tmp_path / "media"])
    assert cut.shots[0].path == media / "A001C003.mov"


def test_avid_edl_drop_frame_locators_and_record_start(tmp_path):
    """cmx_3600 1.0.0 drops every drop-frame locator and starts the timeline at 0."""
    path = tmp_path / "scene4.edl"
    path.write_text(AVID_DF)
    cut = read_cut(path, rate=NTSC)
    assert (cut.rate, cut.drop_frame, cut.start) == (NTSC, True, 107892)
    (shot,) = cut.shots
    assert (shot.record, shot.frames) == (0, 150)
    assert shot.source == Timecode.parse("12:00:02;00", NTSC).seconds  # no file: no offset
    assert [(m.name, m.record, m.colour) for m in cut.markers] == [
        ("door creak", 10, "RED"),
        ("latch click", 72, "BLUE"),  # 01:00:02;12 = 2 s (60 frames) + 12
    ]
    adapter = otio.adapters.read_from_file(str(path), adapter_name="cmx_3600", rate=30000 / 1001)
    assert not [m for c in adapter.find_clips() for m in c.markers]  # the adapter's loss


def test_premiere_markers_comment_and_colour(tmp_path):
    """fcp_xml 1.0.0 leaves <comment> and <pproColor> in metadata and marks every marker RED:
    selva-rt reads them, so colours give categories and comments negative prompts and seeds."""
    path = tmp_path / "scene4.xml"
    path.write_text(PREMIERE)
    cut = read_cut(path)
    assert (cut.rate, cut.start, cut.frames) == (25, 90000, 250)
    assert cut.shots[0].path == Path("/Volumes/SHOOT/shot.mov")
    assert cut.shots[0].source == 4  # <in>100</in> at 25 fps
    footsteps, wind = cut.markers
    assert (footsteps.colour, footsteps.comment, footsteps.frames) == (
        "GREEN",
        "negative: music",
        50,
    )
    assert (wind.colour, wind.frames) == ("BLUE", 0)
    cues, _ = cue_rules.from_markers(cut, cue_rules.categories(["blue=backgrounds"]))
    assert [(c.prompt, c.category, c.negative_prompt, c.seed) for c in cues] == [
        ("footsteps", "foley", "music", None),
        ("wind", "backgrounds", "", 9),
    ]
    assert (cues[1].record, cues[1].frames) == (100, 150)  # a point: to its shot's end


def test_markers_on_timeline_track_and_clip_and_outside_the_picture():
    """Clip markers are in source time (placed through the trim); a marker past the picture or
    over a gap is reported, not dropped silently."""
    rt, span = otio.opentime.RationalTime, otio.opentime.TimeRange
    timeline = otio.schema.Timeline(name="t", global_start_time=rt(86400, 24))
    track = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
    clip = otio.schema.Clip(
        name="a",
        media_reference=otio.schema.ExternalReference(
            target_url="file:///x/a.mov", available_range=span(rt(1000, 24), rt(500, 24))
        ),
        source_range=span(rt(1100, 24), rt(48, 24)),
    )
    clip.markers.append(otio.schema.Marker("on clip", span(rt(1110, 24), rt(24, 24))))
    track.extend([clip, otio.schema.Gap(duration=rt(24, 24)), clip.clone()])
    track.markers.append(otio.schema.Marker("on track", span(rt(30, 24), rt(0, 24))))
    timeline.tracks.append(track)
    timeline.tracks.markers.append(otio.schema.Marker("in the gap", span(rt(60, 24), rt(0, 24))))
    timeline.tracks.markers.append(otio.schema.Marker("past the end", span(rt(200, 24), rt(0, 24))))
    cut = from_otio(timeline, Path("t.otio"), "otio", Relink(Path(".")))
    assert cut.start == 86400
    assert [(s.record, s.source) for s in cut.shots] == [
        (0, Fraction(100, 24)),
        (72, Fraction(100, 24)),
    ]
    places = {m.name: (m.record, m.where) for m in cut.markers}
    assert places["on clip"] in ((10, "clip a"), (82, "clip a"))
    assert places["on track"] == (30, "track V1")
    cues, problems = cue_rules.from_markers(cut, {})
    assert sorted(c.prompt for c in cues) == ["on clip", "on clip", "on track"]
    assert problems == [
        "marker 'in the gap' at 01:00:02:12 (timeline) lies outside the picture",
        "marker 'past the end' at 01:00:08:08 (timeline) lies outside the picture",
    ]


RATES = [
    (Fraction(24000, 1001), "01:00:00:00"),
    (Fraction(24), "01:00:00:00"),
    (Fraction(25), "10:00:00:00"),
    (NTSC, "01:00:00:00"),
    (NTSC, "01:00:00;00"),
    (Fraction(30), "00:59:50:00"),
    (Fraction(50), "01:00:00:00"),
    (Fraction(60000, 1001), "01:00:00;00"),
    (Fraction(60), "01:00:00:00"),
]


@pytest.mark.parametrize("rate, start", RATES, ids=lambda x: str(x))
@pytest.mark.parametrize("suffix", [".otio", ".xml", ".fcpxml", ".edl"])
def test_every_rate_reads_and_writes_back_exactly(tmp_path, rate, start, suffix):
    """Each rate, in each format: the cut written as the applications write it reads back at
    exact frames and the exact rate; the timeline spot writes back (the stems placed) reads
    back with every stem at its cue's frame."""
    fps = round(rate)
    shots = [PlannedShot(i % 2, 10 * i, fps * 3 + 7 * i) for i in range(4)]
    plan = Plan(shots, [])
    starts = plan.starts()
    plan.markers = [
        PlannedMarker(starts[1] - fps, fps * 2, "across the cut", "GREEN", "seed: 3"),
        PlannedMarker(starts[2] + 5, 0, "point", "BLUE"),
        PlannedMarker(starts[3] + fps, fps, "late", "BLUE", on_clip=True),
    ]
    clips = [tmp_path / "media" / f"A00{i + 1}C00{i + 1}.mov" for i in range(2)]
    path = write_cut(plan, clips, tmp_path / f"cut{suffix}", rate, start)
    cut = read_cut(path, rate=rate if suffix == ".edl" else None)
    tc = Timecode.parse(start, rate)
    assert (cut.rate, cut.drop_frame, cut.start) == (rate, tc.drop_frame, tc.frames)
    planned = [(a, s.frames) for a, s in zip(starts, shots, strict=True)]
    assert [(s.record, s.frames) for s in cut.shots] == planned
    # source offsets are exact seconds (the clips' own timecode taken off)
    clip_tc = {0: 10 * 3600 * fps, 1: 11 * 3600 * fps}
    for s, planned in zip(cut.shots, shots, strict=True):
        want = Fraction(planned.source) / rate
        if suffix == ".edl":  # no media here to take its timecode from: source timecode
            want += Fraction(clip_tc[planned.clip]) / rate
        assert s.source == want
    cues, problems = cue_rules.from_markers(cut, cue_rules.categories([]))
    assert problems == []
    want = plan.cues(points=suffix == ".edl")
    assert [(c.record, c.frames, c.prompt) for c in cues] == want
    # The timeline spot writes (.otio always; FCPXML and EDL written here) reads back exactly.
    done = [(c, tmp_path / f"stem{c.number}.wav", 48000, 42) for c in cues]
    placed = place(cut, done, "tiny")
    timeline = build_otio(cut, placed, tmp_path)
    back = from_otio(timeline, tmp_path / "x.otio", "otio", Relink(tmp_path))
    assert (back.start, back.rate) == (cut.start, cut.rate)
    audio = [t for t in timeline.tracks if t.kind == otio.schema.TrackKind.Audio]
    got = sorted(
        (round(c.range_in_parent().start_time.to_seconds() * rate), c.name)
        for t in audio for c in t if isinstance(c, otio.schema.Clip)
    )  # fmt: skip
    assert got == sorted((c.record, c.prompt) for c in cues)
    if suffix == ".fcpxml":
        out = tmp_path / "back.fcpxml"
        out.write_text(fcpxml.write(cut, placed, out))
        again = read_cut(out)
        assert [(s.record, s.frames) for s in again.shots] == [
            (s.record, s.frames) for s in cut.shots
        ]
        assert sorted((s.record, s.frames, s.name) for s in again.sounds) == sorted(
            (c.record, c.frames, c.prompt) for c in cues
        )
        assert again.start == cut.start and again.rate == rate
        # the editor's markers kept, the stems' own markers not taken for cues
        assert [(m.record, m.name) for m in again.markers] == [
            (m.record, m.name) for m in cut.markers
        ]
    if suffix == ".edl":
        out = tmp_path / "back.edl"
        out.write_text(edl.write(cut, placed, out))
        again = read_cut(out, rate=rate)
        assert again.start == cut.start
        assert sorted(m.record for m in again.markers) == sorted(c.record for c in cues)


def test_cues_that_cannot_run_fail_alone(tmp_path, capsys):
    """A missing clip (its path in the message) and a speed change (one line) fail their cues;
    the cue over good picture is rendered; the exit status says something failed."""
    clips = source_clips(tmp_path / "media", Fraction(25), count=2, seconds=8)
    shots = [PlannedShot(0, 0, 50), PlannedShot(1, 0, 50), PlannedShot(0, 60, 50)]
    plan = Plan(shots, [
        PlannedMarker(5, 25, "fine", "GREEN"),
        PlannedMarker(55, 25, "on the missing clip", "GREEN"),
        PlannedMarker(105, 25, "on the slowed shot", "GREEN"),
    ])  # fmt: skip
    path = write_cut(plan, clips, tmp_path / "cut.edl", Fraction(25), "01:00:00:00")
    text = path.read_text().replace("A002C002.mov", "gone.mov")
    text = text.replace("* FROM CLIP NAME:  A001C001.mov\n* LOC: 01:00:04:05",
                        "M2   A001C001       012.5                10:00:02:10\n"
                        "* FROM CLIP NAME:  A001C001.mov\n* LOC: 01:00:04:05")  # fmt: skip
    assert "M2" in text
    path.write_text(text)
    argv = ["spot", str(path), "--out", str(tmp_path / "out"), "--media", str(tmp_path / "media")]
    code = cli.main([*argv, "--variant", "tiny", "--steps", "1", "--json", "--quiet"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and (report["ok"], report["failed"]) == (1, 2)
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").open()]
    errors = [r["error"] for r in records if r["status"] == "failed"]
    assert any("gone.mov does not exist" in e and str(tmp_path) in e for e in errors)
    assert any("plays at 50% speed" in e for e in errors)
    assert all("\n" not in e for e in errors)
    assert len(list((tmp_path / "out").glob("*.wav"))) == 1


def test_cue_sheet_over_a_reference_movie(tmp_path, capsys):
    """A cue sheet (CSV) on the movie's own timecode: stems at their record timecode."""
    from test_delivery import timecoded  # a clip with a tmcd track

    movie = timecoded(tmp_path / "ref.mov", 25, "01:00:00:00", frames=100)
    sheet = tmp_path / "cues.csv"
    sheet.write_text(
        "record_in,record_out,prompt,category,seed\n"
        "01:00:00:10,01:00:01:15,door knock,foley,3\n"
        "01:00:02:00,01:00:03:20,rain,ambience,\n"
    )
    argv = ["spot", str(sheet), "--picture", str(movie), "--out", str(tmp_path / "out")]
    assert cli.main([*argv, "--variant", "tiny", "--steps", "1", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] == 2
    timeline = otio.adapters.read_from_file(report["timelines"][0])
    assert {t.name for t in timeline.audio_tracks()} == {"foley", "ambience"}
    from wavinfo import WavInfoReader

    refs = sorted(
        WavInfoReader(str(p)).bext.time_reference for p in (tmp_path / "out").glob("*.wav")
    )
    assert refs == [round((90000 + 10) / 25 * 16000), round((90000 + 50) / 25 * 16000)]
    shutil.rmtree(tmp_path / "out")


def test_avid_aaf_in_and_out(tmp_path, capsys):
    """An AAF with Avid's markers (DescriptiveMarkers) spotted: stems on the AAF written back
    (through the AAF adapter) at their record frames. (The adapter writes no markers.)"""
    clips = source_clips(tmp_path / "media", Fraction(25), count=2, seconds=8)
    shots = [PlannedShot(0, 0, 50), PlannedShot(1, 10, 60)]
    plan = Plan(shots, [
        PlannedMarker(30, 40, "door", "GREEN"),
        PlannedMarker(70, 0, "rain", "BLUE"),
    ])  # fmt: skip
    path = write_cut(plan, clips, tmp_path / "reel2.aaf", Fraction(25), "01:00:00:00")
    argv = ["spot", str(path), "--out", str(tmp_path / "out"), "--variant", "tiny"]
    assert cli.main([*argv, "--steps", "1", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] == 2
    back = otio.adapters.read_from_file(str(tmp_path / "out" / "reel2_spotted.aaf"))
    assert round(back.global_start_time.to_seconds() * 25) == 90000
    placed = sorted(
        (round(c.range_in_parent().start_time.to_seconds() * 25), c.duration().to_frames(25))
        for t in back.audio_tracks() for c in t.find_clips()
    )  # fmt: skip
    assert placed == [(30, 40), (70, 40)]  # the point marker: to its shot's end (110)


def test_batch_job_over_an_edit_and_a_changed_seed(tmp_path):
    """A JSONL job whose clip is an edit, with a timecode; rerun with a new seed: its own stem
    is re-rendered without --force; a file no job wrote is still refused."""
    from wavinfo import WavInfoReader

    clips = source_clips(tmp_path / "media", Fraction(25), count=2, seconds=4)
    job = {
        "clip": {"segments": [
            {"path": f"media/{clips[0].name}", "start": 1, "duration": "3/5"},
            {"path": f"media/{clips[1].name}", "start": "1/25", "duration": 1},
        ]},
        "prompts": ["rain"], "seed": 1, "name": "cue",
        "timecode": {"start": "01:00:10:00", "rate": "25"},
    }  # fmt: skip
    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    args = ["batch", str(jobs), "--out", str(out), "--variant", "tiny", "--steps", "1", "--quiet"]
    jobs.write_text(json.dumps(job) + "\n")
    assert cli.main([*args, "--no-video"]) == 0
    stem = out / "cue_rain.wav"
    first = stem.read_bytes()
    info = WavInfoReader(str(stem))
    assert info.bext.time_reference == 3610 * 16000  # 01:00:10:00
    assert info.data.frame_count == round(1.6 * 16000)  # the edit's 1.6 s
    jobs.write_text(json.dumps(job | {"seed": 2}) + "\n")
    assert cli.main([*args, "--no-video"]) == 0
    assert stem.read_bytes() != first
    (out / "other_rain.wav").write_bytes(b"mine")
    jobs.write_text(json.dumps(job | {"name": "other"}) + "\n")
    assert cli.main([*args, "--no-video"]) == 1
    records = [json.loads(line) for line in (out / "results.jsonl").open()]
    assert "other_rain.wav already exists and no job here wrote it" in records[-1]["error"]
    assert cli.main([*args]) == 1  # an edit gets stems only
    assert "pass --no-video" in [json.loads(x) for x in (out / "results.jsonl").open()][-1]["error"]
