"""What an editor re-imports keeps its place: stems and muxed copies exactly as long as the
picture at every frame rate (the official frame-count rule stops short: a 3.00 s clip gave a
2.96 s stem), muxed copies at --sample-rate with the clip's timecode, and `generate --otio`
timelines that the OpenTimelineIO adapters for other hosts convert."""

import json
from fractions import Fraction

import av
import opentimelineio as otio
import pytest
import soundfile
import torch
from clips import make_clip
from selva_rt.runtime import cli, media
from selva_rt.runtime.delivery.timecode import clip_timecode
from test_delivery import timecoded

torch.set_num_threads(1)

FAST = ["--variant", "tiny", "--steps", "1", "--precision", "fp32", "--json", "--quiet"]


@pytest.mark.parametrize(
    "fps, frames, label",
    [
        (Fraction(25), 75, "01:00:00:00"),  # 3.00 s: the official rule gives 2.96 s
        (Fraction(30000, 1001), 119, "01:00:00;00"),  # 3.97 s: 3.96 s by the rule
        (Fraction(24000, 1001), 72, "10:00:00:00"),
        (Fraction(50), 149, "00:59:59:00"),
        (Fraction(60), 181, "01:00:00:00"),
    ],
    ids=str,
)
def test_stem_and_muxed_copy_as_long_as_the_picture(tmp_path, capsys, fps, frames, label):
    clip = timecoded(tmp_path / "shot.mov", fps, label, frames=frames)
    picture = Fraction(frames) / fps
    out = tmp_path / "out"
    argv = ["generate", str(clip), "rain", "--out", str(out), "--sample-rate", "48000", *FAST]
    assert cli.main(argv) == 0
    (entry,) = json.loads(capsys.readouterr().out)["outputs"]
    assert entry["time_reference"] == round(clip_timecode(clip).seconds * 48000)
    info = soundfile.info(entry["audio"])
    assert (info.samplerate, info.frames) == (48000, round(picture * 48000))
    with av.open(entry["video"]) as muxed:
        (audio,) = muxed.streams.audio
        assert audio.codec_context.sample_rate == 48000  # the WAV's rate, not the model's
        samples = sum(f.samples for f in muxed.decode(audio))
    assert samples == round(picture * 48000)
    assert clip_timecode(entry["video"]) == clip_timecode(clip)  # tmcd kept
    assert media.clip_duration(entry["video"], to_end=True) == pytest.approx(float(picture))


def test_generate_otio_converts_to_other_hosts(tmp_path, capsys):
    """The issue's case: 6 s at 25 fps, 01:00:00:00, --otio. fcp_xml and fcpx_xml convert it
    (they failed on sample-rate times); the stem lands at its record timecode in both."""
    clip = timecoded(tmp_path / "shot.mov", 25, "01:00:00:00", frames=150)
    argv = ["generate", str(clip), "rain", "--out", str(tmp_path / "o"), "--otio", "--no-video"]
    assert cli.main([*argv, "--start", "0.4", "--sample-rate", "48000", *FAST]) == 0
    timeline = otio.adapters.read_from_file(json.loads(capsys.readouterr().out)["otio"])
    fcp7 = otio.adapters.read_from_string(
        otio.adapters.write_to_string(timeline, "fcp_xml"), "fcp_xml"
    )
    (stem,) = fcp7.audio_tracks()[0].find_clips()
    at = fcp7.global_start_time + stem.range_in_parent().start_time
    assert at.to_timecode(25) == "01:00:00:10"  # 0.4 s in
    fcpx = otio.adapters.read_from_string(
        otio.adapters.write_to_string(timeline, "fcpx_xml"), "fcpx_xml"
    )
    (collection,) = [fcpx] if isinstance(fcpx, otio.schema.Timeline) else list(fcpx)
    audio = [c for t in collection.tracks if t.kind == "Audio" for c in t.find_clips()]
    assert [round(c.range_in_parent().start_time.to_seconds() * 25) for c in audio] == [10]


def test_an_edit_is_the_record_time_picture_across_the_cut(tmp_path):
    """A cue over a cut: the model sees the end of one shot, then the next, at record time."""
    red = make_clip(tmp_path / "red.mp4", frames=100, image=_solid((255, 0, 0)))
    blue = make_clip(tmp_path / "blue.mp4", frames=100, image=_solid((0, 0, 255)))
    edit = media.Edit(
        (
            media.Segment(red, Fraction(2), Fraction(1)),
            media.Segment(blue, Fraction(1), Fraction(2)),
        )
    )
    video = media.decode_video(edit, 8.0, to_end=True)
    assert video.duration == 3.0 and not video.more
    reds = (video.sync_frames[:, 0].float().mean((1, 2)) > 128).tolist()
    # 1 s of red, then blue: the slots the official rule fills from the red frames (times up to
    # 0.96 s; the slot times accumulate in floats, as officially)
    slot, n = 0.0, 0
    while slot <= 0.96:
        slot, n = slot + 0.04, n + 1
    assert reds == [True] * n + [False] * (75 - n) and n in (24, 25)
    assert media.clip_duration(edit, 0.5) == 2.5


def test_a_long_edit_runs_in_windows_to_its_exact_end(tmp_path):
    from selva_rt.runtime.pipeline import Pipeline

    a = make_clip(tmp_path / "a.mp4", frames=200)
    b = make_clip(tmp_path / "b.mp4", frames=200, fps=Fraction(30000, 1001))
    edit = media.Edit(
        (
            media.Segment(a, Fraction(1), Fraction(6)),
            media.Segment(b, Fraction(0), Fraction(4004, 1000)),
        )
    )
    pipe = Pipeline.from_pretrained("tiny", device="cpu", precision="fp32")
    result = pipe.generate(edit, ["rain"], steps=1)
    assert result.duration == pytest.approx(10.004)
    assert result.audio.shape == (1, round(Fraction(10004, 1000) * result.sample_rate))


def _solid(rgb):
    import numpy as np

    return np.broadcast_to(np.array(rgb, np.uint8), (48, 64, 3)).copy()
