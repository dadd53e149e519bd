"""`selva-rt spot`: the done-when of issue 23 on a three-minute cut made from generated clips
(32 shots, 10 markers: ranged and point, across cuts, two categories), written as .otio, FCP7
XML (as Premiere Pro writes it), FCPXML (as Final Cut Pro does) and EDL (as Avid does); each
spotted with the tiny model, its stems and timeline read back with OpenTimelineIO's adapters and
wavinfo; a second run skips all; `--ray local` gives the same stems; a re-spotted cue
re-renders alone."""

import io
import json
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import opentimelineio as otio
import pytest
import soundfile
import torch
from cuts import source_clips, three_minutes, write_cut
from selva_rt.runtime import cli
from selva_rt.runtime.delivery.timecode import Timecode
from selva_rt.runtime.spot.read import read_cut
from wavinfo import WavInfoReader

torch.set_num_threads(1)

RATE = Fraction(25)
START = "01:00:00:00"
FAST = ["--variant", "tiny", "--steps", "2", "--precision", "fp32", "--quiet", "--json"]
FORMATS = ["otio", "xml", "fcpxml", "edl"]
ADAPTER = {"otio": "otio_json", "xml": "fcp_xml", "fcpxml": "fcpx_xml", "edl": "cmx_3600"}
CATEGORY = {"GREEN": "foley", "BLUE": "ambience"}


def spot(cut: Path, out: Path, *extra: str, capsys) -> tuple[int, dict]:
    code = cli.main(["spot", str(cut), "--out", str(out), *FAST, *extra])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The source clips, the plan and the cut in each format (with the media elsewhere than
    the cut says for the EDL, which names files only: relinked with --media)."""
    root = tmp_path_factory.mktemp("spot")
    clips = source_clips(root / "media", RATE)
    plan = three_minutes(RATE)
    cuts = {f: write_cut(plan, clips, root / f"reel1.{f}", RATE, START) for f in FORMATS}
    return root, clips, plan, cuts


@pytest.fixture(scope="module")
def runs(made):
    """Each format spotted twice into its own folder: (first report, second report, mtimes)."""
    root, _, _, cuts = made
    out = {}
    for fmt, cut in cuts.items():
        folder = root / f"out_{fmt}"
        argv = ["spot", str(cut), "--out", str(folder), *FAST, "--media", str(root / "media")]
        reports = []
        for _ in range(2):
            buffer, saved = io.StringIO(), sys.stdout
            sys.stdout = buffer
            try:
                code = cli.main(argv)
            finally:
                sys.stdout = saved
            reports.append((code, json.loads(buffer.getvalue().strip().splitlines()[-1])))
            if len(reports) == 1:
                mtimes = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.wav")}
        out[fmt] = (folder, reports, mtimes)
    return out


def expected_cues(plan, fmt: str) -> list[tuple[int, int, str]]:
    return plan.cues(points=fmt == "edl")  # an EDL's locators are points


def samples_at(frames: int, rate: int) -> int:
    return round(Fraction(frames) / RATE * rate)


@pytest.mark.parametrize("fmt", FORMATS)
def test_one_stem_per_cue_at_its_record_timecode(made, runs, fmt):
    _, _, plan, _ = made
    folder, ((code, first), (code2, second)), mtimes = runs[fmt]
    assert code == 0 and first["failed"] == 0 and first["not_spotted"] == []
    cues = expected_cues(plan, fmt)
    assert first["cues"] == first["ok"] == first["stems"] == len(cues) == 10
    start = Timecode.parse(START, RATE).frames
    wavs = sorted(folder.glob("*.wav"))
    assert len(wavs) == 10
    by_prompt = {}
    for wav in wavs:
        info = WavInfoReader(str(wav))
        by_prompt[info.bext.description] = (wav, info)
    for record, frames, prompt in cues:
        wav, info = by_prompt[prompt]
        rate = info.fmt.sample_rate
        # BWF: at the marker's record timecode and exactly as long as the cue, to the sample.
        assert info.bext.time_reference == samples_at(start + record, rate), prompt
        assert soundfile.info(str(wav)).frames == samples_at(frames, rate), prompt
        assert wav.name.startswith(f"reel1_{str(Timecode(start + record, RATE)).replace(':', '')}")
    # A second run skips every cue and leaves the stems alone.
    assert code2 == 0 and second["skipped"] == 10 and second["ok"] == second["failed"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.wav")} == mtimes


@pytest.mark.parametrize("fmt", FORMATS)
def test_timeline_in_the_same_format_reads_back_with_the_adapters(made, runs, fmt):
    _, _, plan, _ = made
    folder, ((_, report), _), _ = runs[fmt]
    native = folder / f"reel1_spotted.{fmt}"
    assert sorted(report["timelines"]) == sorted({str(folder / "reel1_spotted.otio"), str(native)})
    cues = {prompt: (record, frames) for record, frames, prompt in expected_cues(plan, fmt)}
    colours = {m.name: m.colour for m in plan.markers}
    start = Timecode.parse(START, RATE).frames
    kwargs = {"rate": 25} if fmt == "edl" else {}
    timeline = otio.adapters.read_from_file(str(native), adapter_name=ADAPTER[fmt], **kwargs)
    if isinstance(timeline, otio.schema.SerializableCollection):
        (timeline,) = timeline
    if fmt == "edl":
        # An EDL carries the picture and one locator per stem, at its record timecode (the
        # adapter hangs locators on clips as they are written; each names its stem).
        (track,) = timeline.tracks
        assert len(track) == len(plan.shots)
        locators = [m for clip in track for m in clip.markers]
        assert len(locators) == 10
        for m in locators:
            prompt = m.name.split(" | ")[0]
            assert m.marked_range.start_time.to_timecode(25) == str(
                Timecode(start + cues[prompt][0], RATE)
            )
            assert (folder / m.name.split(" | ")[1]).exists()
        assert "CANNOT CARRY AUDIO STEMS" in native.read_text()
        return
    audio = [t for t in timeline.tracks if t.kind == otio.schema.TrackKind.Audio]
    stems = [(t, c) for t in audio for c in t if isinstance(c, otio.schema.Clip)]
    assert len(stems) == 10
    offset = 0
    if fmt in ("otio", "xml"):
        offset = round(timeline.global_start_time.to_seconds() * 25)
        assert offset == start  # the timeline's own start, not 00:00:00:00
    # fcpx_xml 1.0.0 reads tcStart into the offsets (its track time is record timecode) and
    # truncates float seconds to frames: 3603.2 s can read as frame 90079 (one short).
    slack = 1 if fmt == "fcpxml" else 0
    for _, clip in stems:
        record, frames = cues[clip.name]
        placed = clip.range_in_parent()
        at = round(placed.start_time.to_seconds() * 25) + offset
        assert 0 <= start + record - at <= slack, clip.name
        assert abs(round(placed.duration.to_seconds() * 25) - frames) <= slack, clip.name
    if fmt == "fcpxml":  # selva-rt's reader (exact rational times) places every stem exactly
        sounds = read_cut(native).sounds
        assert sorted((s.name, s.record, s.frames) for s in sounds) == sorted(
            (prompt, record, frames) for prompt, (record, frames) in cues.items()
        )
        if fmt == "otio":  # (the FCP7 adapter reads no track names; FCPXML's are lane numbers)
            assert track.name.split(" ")[0] == CATEGORY[colours[clip.name]]
    for track in audio:  # one category a track
        assert (
            len({CATEGORY[colours[c.name]] for c in track if isinstance(c, otio.schema.Clip)}) == 1
        )
    if fmt == "otio":  # to the sample, and the marker per stem with its metadata
        for _, clip in stems:
            info = WavInfoReader(clip.media_reference.target_url.removeprefix("file://"))
            seconds = timeline.global_start_time.to_seconds() + clip.range_in_parent(
            ).start_time.to_seconds()  # fmt: skip
            assert round(seconds * info.fmt.sample_rate) == info.bext.time_reference
            (marker,) = clip.markers
            meta = marker.metadata["selva_rt"]
            assert meta["prompt"] == clip.name and meta["variant"] == "tiny"
            assert meta["seed"] == {"wind in trees": 7, "dog barking": 11}.get(clip.name, 42)
        assert {t.name for t in audio} == {"foley", "ambience"}


def test_readers_agree_on_every_cue(runs):
    """The .otio, Premiere's FCP7 XML and Final Cut's FCPXML hold the same markers: the same
    jobs (picture ranges, prompts, seeds, negative prompts from the comments), the same stems."""
    jobs = {}
    for fmt in ("otio", "xml", "fcpxml"):
        folder = runs[fmt][0]
        records = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
        jobs[fmt] = {r["job"]["name"]: (r["id"], r["job"]) for r in records if r["status"] == "ok"}
    assert jobs["otio"] == jobs["xml"] == jobs["fcpxml"]
    negatives = {j["prompts"][0]: j["negative_prompt"] for _, j in jobs["otio"].values()}
    assert negatives["footsteps on gravel"] == "music" and negatives["birdsong"] == ""
    for name in (runs["otio"][0]).glob("*.wav"):
        assert name.read_bytes()[-4096:] == (runs["fcpxml"][0] / name.name).read_bytes()[-4096:]


def test_ray_local_gives_the_same_stems(made, runs, tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'selva-rt[ray]')")
    _, _, _, cuts = made
    code, report = spot(cuts["otio"], tmp_path / "ray", "--ray", "local", capsys=capsys)
    assert code == 0 and report["ok"] == 10
    local = runs["otio"][0]
    for wav in sorted(local.glob("*.wav")):
        a = soundfile.read(wav, dtype="float32")[0]
        b = soundfile.read(tmp_path / "ray" / wav.name, dtype="float32")[0]
        assert a.shape == b.shape
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(a), wav.name


def test_respotting_a_changed_seed_rerenders_that_cue_alone(made, runs, tmp_path, capsys):
    """The normal loop: the editor changes one marker's seed and spots again into the same
    folder; that cue is re-rendered over its own stem (no --force), the rest are skipped."""
    root, _, _, cuts = made
    folder = tmp_path / "out"
    shutil.copytree(runs["otio"][0], folder)
    timeline = otio.adapters.read_from_file(str(cuts["otio"]))
    for m in timeline.tracks.markers:
        if m.name == "birdsong":
            m.metadata["selva_rt"] = {"seed": 5}
    changed = root / "reel1_v2.otio"
    otio.adapters.write_to_file(timeline, str(changed))
    before = {p.name: p.read_bytes() for p in folder.glob("*.wav")}
    # Same cut name: rename the copy so the stems keep their names.
    moved = tmp_path / "reel1.otio"
    shutil.copy(changed, moved)
    code, report = spot(moved, folder, capsys=capsys)
    assert code == 0 and (report["ok"], report["skipped"]) == (1, 9)
    after = {p.name: p.read_bytes() for p in folder.glob("*.wav")}
    assert set(after) == set(before)
    changed_files = [n for n in after if after[n] != before[n]]
    assert len(changed_files) == 1 and "birdsong" in changed_files[0]
