"""Delivery: timecode arithmetic and reading, R 128 loudness on known signals, Broadcast WAV
chunks and OpenTimelineIO timelines, each read back with an independent reader (OTIO's own
timecode code, pyloudnorm, wavinfo, opentimelineio)."""

import json
import math
import os
import stat
import sys
from fractions import Fraction
from pathlib import Path
from urllib.parse import unquote

import av
import numpy as np
import opentimelineio as otio
import pyloudnorm
import pytest
import soundfile
import torch
from clips import make_clip
from selva_rt.runtime import cli
from selva_rt.runtime.delivery import bwf, loudness
from selva_rt.runtime.delivery.outputs import plan_outputs, report, write_outputs
from selva_rt.runtime.delivery.timecode import Timecode, clip_timecode, timecode_rate
from selva_rt.runtime.errors import MediaError, UsageError
from selva_rt.runtime.media import resample
from selva_rt.runtime.pipeline import GenerationResult
from wavinfo import WavInfoReader

torch.set_num_threads(1)

NTSC = Fraction(30000, 1001)
NTSC60 = Fraction(60000, 1001)
FILM = Fraction(24000, 1001)


def timecoded(path: Path, fps, timecode: str | None, frames: int = 30) -> Path:
    """An H.264 clip remuxed with a `timecode` on its video stream: MOV/MP4 muxers turn it into
    a tmcd track, Matroska into a TIMECODE tag."""
    path.parent.mkdir(parents=True, exist_ok=True)
    source = make_clip(path.with_name(f"plain_{path.stem}.mp4"), frames=frames, fps=fps)
    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        if timecode:
            stream.metadata["timecode"] = timecode
        for packet in src.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return path


def sine(rate: int, seconds: float, rms_dbfs: float, hz: float = 997.0) -> np.ndarray:
    """[T] float64: a sine whose RMS is rms_dbfs (peak 3.01 dB higher)."""
    t = np.arange(round(rate * seconds)) / rate
    return math.sqrt(2) * 10 ** (rms_dbfs / 20) * np.sin(2 * np.pi * hz * t)


def stereo(*parts: tuple[float, float], rate: int = 48000) -> np.ndarray:
    """[2, T]: 1 kHz sine segments (seconds, dBFS per channel, as EBU Tech 3341 states them:
    the level of a sine is its peak) in both channels."""
    x = np.concatenate([sine(rate, s, db - 3.0103, 1000.0) for s, db in parts])
    return np.stack([x, x])


# ---------------------------------------------------------------------------------------------
# Timecode


@pytest.mark.parametrize(
    "label, rate, frames, seconds",
    [
        ("01:00:00:00", Fraction(25), 90000, Fraction(3600)),
        ("01:00:00:00", NTSC, 108000, Fraction(108000 * 1001, 30000)),  # 3603.6 s
        ("01:00:00;00", NTSC, 107892, Fraction(107892 * 1001, 30000)),  # 3599.9964 s
        ("00:10:00;00", NTSC60, 35964, Fraction(35964 * 1001, 60000)),
        ("00:01:00;04", NTSC60, 3600, Fraction(3600 * 1001, 60000)),
        ("00:00:01:00", FILM, 24, Fraction(1001, 1000)),
        ("23:59:59:29", Fraction(30), 2591999, Fraction(2591999, 30)),
    ],
)
def test_timecode_frame_count_is_exact(label, rate, frames, seconds):
    tc = Timecode.parse(label, rate)
    assert (tc.frames, tc.seconds, str(tc)) == (frames, seconds, label)
    assert tc.samples(48000, offset=0.5) == round((seconds + Fraction(1, 2)) * 48000)


@pytest.mark.parametrize(
    "rate, drop",
    [
        (Fraction(25), False),
        (FILM, False),
        (NTSC, False),
        (NTSC, True),
        (NTSC60, True),
        (50, False),
    ],
)
def test_timecode_labels_agree_with_opentimelineio(rate, drop):
    rate = Fraction(rate)
    n = round(rate)
    # Every frame around minute and ten-minute boundaries, and strides over a day (up to 24 h
    # of wall-clock time, where OTIO wraps, short of the 24 h of labels at 29.97 non-drop).
    frames = [f for m in (1, 2, 9, 10, 11, 59, 60) for f in range(m * 60 * n - 8, m * 60 * n + 8)]
    frames += list(range(0, math.floor(86400 * rate) - 10 * n, 7919))
    for count in frames:
        tc = Timecode(count, rate, drop)
        label = otio.opentime.RationalTime(count, float(rate)).to_timecode(float(rate), drop)
        assert str(tc) == label, count
        assert Timecode.parse(label, rate) == tc


@pytest.mark.parametrize(
    "label, rate",
    [
        ("00:01:00;00", NTSC),  # dropped label
        ("00:01:00;03", NTSC60),  # dropped label
        ("01:00:00;00", Fraction(25)),  # no drop-frame at 25
        ("00:00:00:25", Fraction(25)),
        ("24:00:00:00", Fraction(25)),
        ("1:00", Fraction(25)),
    ],
)
def test_bad_timecode_labels(label, rate):
    with pytest.raises(ValueError):
        Timecode.parse(label, rate)
    assert Timecode.parse("00:10:00;00", NTSC).frames == 17982


def test_timecode_rate_of_picture_rates():
    assert timecode_rate(Fraction(30000, 1001)) == NTSC
    assert timecode_rate(Fraction(2997, 100)) == NTSC
    assert timecode_rate(Fraction(24000, 1001)) == FILM
    assert timecode_rate(Fraction(25)) == 25
    assert timecode_rate(Fraction(60)) == 60


@pytest.mark.parametrize(
    "suffix, fps, label, frames",
    [
        (".mp4", 25, "01:00:00:00", 90000),
        (".mov", NTSC, "01:00:00;00", 107892),
        (".mov", NTSC, "01:00:00:00", 108000),
        (".mkv", NTSC60, "00:10:00;00", 35964),
        (".mp4", FILM, "10:00:00:00", 864000),
    ],
)
def test_clip_timecode(tmp_path, suffix, fps, label, frames):
    clip = timecoded(tmp_path / f"tc{suffix}", fps, label)
    tc = clip_timecode(clip)
    assert (tc.frames, tc.rate, tc.drop_frame, str(tc)) == (frames, fps, ";" in label, label)
    if suffix != ".mkv":  # the tmcd track's own sample: the frame number, 32-bit big-endian
        with av.open(str(clip)) as container:
            (data,) = container.streams.data
            packet = next(p for p in container.demux(data) if p.size)
            assert int.from_bytes(bytes(packet), "big") == frames


def test_clip_without_timecode_starts_at_zero(tmp_path):
    tc = clip_timecode(make_clip(tmp_path / "plain.mp4", frames=20, fps=NTSC))
    assert (tc.frames, tc.rate, tc.drop_frame) == (0, NTSC, False)


def test_unusable_timecode_is_one_line(tmp_path):
    clip = timecoded(tmp_path / "bad.mkv", 25, "01:00:00;00")  # drop-frame at 25 fps
    with pytest.raises(MediaError, match="bad.mkv has an unusable timecode"):
        clip_timecode(clip)


# ---------------------------------------------------------------------------------------------
# Loudness


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_sine_calibration(rate):
    """BS.1770: a 997 Hz sine reads its RMS level per channel, -0.691 dB offset included."""
    mono = sine(rate, 5, -20.0)[None]
    assert loudness.integrated(mono, rate) == pytest.approx(-20.0, abs=0.01)
    assert loudness.integrated(np.concatenate([mono, mono]), rate) == pytest.approx(
        -20.0 + 10 * math.log10(2), abs=0.01
    )
    full = sine(rate, 5, -3.0103)[None]  # 0 dBFS peak: -3.01 LUFS mono
    assert loudness.measure(full, rate).integrated == pytest.approx(-3.01, abs=0.01)


def test_integrated_matches_pyloudnorm_with_gating():
    """pyloudnorm's De Man filters are the BS.1770 ones at 48 kHz; a signal with quiet and
    silent stretches exercises both gates."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 48000 * 20)) * 0.1
    x[:, : 48000 * 4] *= 0.05  # -26 dB: under the relative gate
    x[:, 48000 * 8 : 48000 * 10] = 0  # silence: under the absolute gate
    ours = loudness.integrated(x, 48000)
    theirs = pyloudnorm.Meter(48000, filter_class="DeMan").integrated_loudness(x.T)
    assert ours == pytest.approx(theirs, abs=0.01)
    # The gates removed the quiet and silent 6 s: the loud 14 s alone read within the blocks
    # that straddle the edges (0.14 LU), where their mean power over all 20 s is 1.5 dB lower.
    loud = np.concatenate([x[:, 48000 * 4 : 48000 * 8], x[:, 48000 * 10 :]], axis=1)
    assert ours == pytest.approx(loudness.integrated(loud, 48000), abs=0.2)


@pytest.mark.parametrize(
    "parts, expected",
    [
        ([(20, -23)], -23.0),  # EBU Tech 3341 case 1
        ([(20, -33)], -33.0),  # case 2
        ([(10, -36), (60, -23), (10, -36)], -23.0),  # case 3
        ([(10, -72), (10, -36), (60, -23), (10, -36), (10, -72)], -23.0),  # case 4
        ([(20, -26), (20.1, -20), (20, -26)], -23.0),  # case 5
    ],
)
def test_ebu_tech_3341_integrated(parts, expected):
    m = loudness.measure(stereo(*parts), 48000)
    assert m.integrated == pytest.approx(expected, abs=0.1)
    if len(parts) == 1:
        assert m.max_momentary == pytest.approx(expected, abs=0.1)
        assert m.max_short_term == pytest.approx(expected, abs=0.1)


@pytest.mark.parametrize(
    "parts, expected",
    [
        ([(20, -20), (20, -30)], 10),  # EBU Tech 3342 case 1
        ([(20, -20), (20, -15)], 5),  # case 2
        ([(20, -40), (20, -20)], 20),  # case 3
        ([(20, -50), (20, -35), (20, -20), (20, -35), (20, -50)], 15),  # case 4
    ],
)
def test_ebu_tech_3342_loudness_range(parts, expected):
    assert loudness.measure(stereo(*parts), 48000).range == pytest.approx(expected, abs=1)


def test_max_momentary_and_short_term_of_a_burst():
    """1 s at -20 LUFS in 10 s of silence: a whole 400 ms window lies inside it; a 3 s window
    holds all of it plus 2 s of silence."""
    x = np.zeros((1, 48000 * 10))
    x[0, 48000 * 3 : 48000 * 4] = sine(48000, 1, -20.0)
    m = loudness.measure(x, 48000)
    assert m.max_momentary == pytest.approx(-20.0, abs=0.02)
    assert m.max_short_term == pytest.approx(-20.0 + 10 * math.log10(1 / 3), abs=0.02)
    # Gated blocks: 7 inside the burst, and on each side 3 holding 3/4, 1/2 and 1/4 of it.
    assert m.integrated == pytest.approx(-20.0 + 10 * math.log10(10 / 13), abs=0.02)


def test_short_signal_reads_as_one_window():
    x = sine(16000, 1.5, -20.0)[None]
    m = loudness.measure(x, 16000)
    assert m.max_short_term == pytest.approx(-20.0 + 10 * math.log10(1.5 / 3), abs=0.02)
    assert m.range == 0.0


@pytest.mark.parametrize("rate", [16000, 48000])
def test_true_peak_between_samples(rate):
    """A full-scale sine at rate/4 sampled 45 degrees off its peaks: every sample is at
    -3.01 dBFS, the waveform reaches 0 dBTP."""
    n = np.arange(rate * 2)
    x = np.sin(np.pi * n / 2 + np.pi / 4) * np.hanning(len(n)) ** 0.05  # soft ends, no ringing
    m = loudness.measure(x[None], rate)
    assert 20 * np.log10(np.abs(x).max()) == pytest.approx(-3.01, abs=0.01)
    assert m.true_peak == pytest.approx(0.0, abs=0.05)


def test_true_peak_of_a_full_scale_tone_is_above_its_sample_peak():
    x = sine(48000, 2, -3.0103)[None]
    sample_peak = 20 * np.log10(np.abs(x).max())
    assert sample_peak < loudness.measure(x, 48000).true_peak <= 0.01


def test_true_peak_never_reads_below_the_samples():
    """A 7.9 kHz tone at 16 kHz lies above the oversampler's pass band (95% of Nyquist), which
    keeps a tenth of it; the true peak is still at least the sample peak."""
    x = sine(16000, 1, -3.0103 - 0.9151, hz=7900.0)[None]  # peak 0.9
    assert loudness.true_peak(x, 16000) == pytest.approx(np.abs(x).max(), rel=1e-6)


def test_silence():
    m = loudness.measure(np.zeros((1, 16000)), 16000)
    assert m.integrated == m.max_momentary == m.true_peak == -math.inf
    assert m.as_dict()["integrated_lufs"] is None
    assert loudness.normalising_gain(np.zeros((1, 16000)), 16000, -23) == (0.0, False)


def test_chunked_resampling_equals_whole(monkeypatch):
    monkeypatch.setattr(loudness, "CHUNK", 0.3)
    x = np.random.default_rng(1).standard_normal((2, 37931)).astype(np.float32)
    for rate, new in ((16000, 48000), (16000, 192000), (44100, 48000), (44100, 192000)):
        chunks = np.concatenate(list(loudness._resampled(x, rate, new)), axis=1)
        whole = resample(torch.from_numpy(x), rate, new).numpy()
        assert chunks.shape == whole.shape
        np.testing.assert_allclose(chunks, whole, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Broadcast WAV, OTIO and the outputs that carry them


def result_of(audio: np.ndarray, rate: int, start: float = 0.0, prompts=None) -> GenerationResult:
    """A GenerationResult holding known signals ([P, T]) instead of a model's output."""
    prompts = prompts or [f"prompt {i}" for i in range(len(audio))]
    return GenerationResult(
        audio=audio.astype(np.float32),
        sample_rate=rate,
        prompts=prompts,
        duration=audio.shape[1] / rate,
        start=start,
        seed=7,
        steps=25,
        cfg=4.5,
    )


class FakePipe:  # what report() reads from a Pipeline
    class variant:
        name = "tiny"

    device, precision = "cpu", "fp32"


def test_bwf_chunks_read_back_with_wavinfo(tmp_path):
    clip = timecoded(tmp_path / "scene.mp4", 25, "01:00:00:00", frames=60)
    x = sine(16000, 2.0, -20.0)
    prompts = ["sheep bleating", "café ambience"]
    result = result_of(np.stack([x, 0.5 * x]), 16000, start=0.4, prompts=prompts)
    plan = plan_outputs(clip, prompts, tmp_path / "out", video=False)
    delivered = write_outputs(plan, result, variant="tiny")
    entries = report(plan, result, FakePipe, delivered=delivered)["outputs"]

    for done, entry, prompt, level in zip(
        delivered, entries, prompts, (-20.0, -26.02), strict=True
    ):
        info = WavInfoReader(str(done.stem.audio))
        bext = info.bext
        assert bext.time_reference == 16000 * 3600 + round(0.4 * 16000) == done.time_reference
        assert entry["time_reference"] == bext.time_reference
        with av.open(str(done.stem.audio)) as container:  # ffmpeg's reader agrees
            assert container.metadata["time_reference"] == str(bext.time_reference)
            assert container.metadata["comment"] == bext.description
        assert bext.version == 2
        assert bext.description == prompt.replace("é", "e")
        assert bext.originator.startswith("selva-rt ")
        assert len(bext.originator_ref) == 32
        assert "A=PCM,F=16000,W=32,M=mono,T=selva-rt" in bext.coding_history
        assert "tiny seed 7" in bext.coding_history
        assert bext.coding_history.endswith("A=PCM,F=16000,W=24,M=mono\r\n")
        assert bext.loudness_value == pytest.approx(level, abs=0.011)
        figures = entry["loudness"]
        assert figures["integrated_lufs"] == pytest.approx(level, abs=0.01)
        for field, key in (
            ("loudness_value", "integrated_lufs"),
            ("loudness_range", "range_lu"),
            ("max_true_peak", "true_peak_dbtp"),
            ("max_momentary_loudness", "max_momentary_lufs"),
            ("max_shortterm_loudness", "max_short_term_lufs"),
        ):
            assert getattr(bext, field) == pytest.approx(figures[key], abs=0.006)

        speed = info.ixml.raw_xml.find("SPEED")
        assert speed.findtext("TIMECODE_RATE") == "25/1"
        assert speed.findtext("TIMECODE_FLAG") == "NDF"
        hi = int(speed.findtext("TIMESTAMP_SAMPLES_SINCE_MIDNIGHT_HI"))
        lo = int(speed.findtext("TIMESTAMP_SAMPLES_SINCE_MIDNIGHT_LO"))
        assert (hi << 32) + lo == bext.time_reference
        assert speed.findtext("TIMESTAMP_SAMPLE_RATE") == "16000"
        assert info.ixml.raw_xml.findtext("NOTE") == prompt  # UTF-8 keeps the accent
        assert [t.name for t in info.ixml.track_list] == [prompt]

        # The PCM is what soundfile wrote: 24-bit, the signal quantised.
        assert (info.fmt.bits_per_sample, info.fmt.sample_rate) == (24, 16000)
        wav, rate = soundfile.read(done.stem.audio, dtype="float64")
        level_x = x if level == -20.0 else 0.5 * x
        np.testing.assert_allclose(wav, level_x, atol=2**-23)


def test_flac_stems_carry_vorbis_comments(tmp_path):
    """FLAC has no BWF chunks: the prompt, model, seed and timecode position go into Vorbis
    comments, read back here by ffmpeg (PyAV); the audio is untouched."""
    clip = timecoded(tmp_path / "scene.mov", Fraction(30000, 1001), "01:00:00;00", frames=60)
    x = sine(16000, 1.0, -20.0)
    result = result_of(x[None], 16000, start=0.5, prompts=["door slam"])
    plan = plan_outputs(clip, ["door slam"], tmp_path / "out", fmt="flac", video=False)
    (done,) = write_outputs(plan, result, variant="tiny")
    with av.open(str(done.stem.audio)) as container:
        tags = {k.upper(): v for k, v in container.metadata.items()}
    assert tags["TITLE"] == "door slam" and tags["COMMENT"] == "door slam"
    assert tags["ENCODER"].startswith("selva-rt ") and tags["SELVA_VARIANT"] == "tiny"
    assert tags["SELVA_SEED"] == str(result.seed) and tags["SELVA_STEPS"] == str(result.steps)
    # 01:00:00;00 plus 0.5 s at 29.97 DF: frame 14 (15 frames are 0.5005 s)
    assert tags["TIMECODE"] == "01:00:00;14" and tags["TIMECODE_RATE"] == "30000/1001"
    assert int(tags["TIME_REFERENCE"]) == done.time_reference
    assert done.time_reference == round((Fraction(107892, 1) * 1001 / 30000 + 0.5) * 16000)
    wav, rate = soundfile.read(done.stem.audio, dtype="float64")
    np.testing.assert_allclose(wav, x, atol=2**-23)


def test_riff_layout(tmp_path):
    path = tmp_path / "a.wav"
    soundfile.write(path, np.zeros(101, np.float32), 16000, subtype="PCM_24")
    before = soundfile.read(path)[0]
    old = os.umask(0o027)
    try:
        bwf.add_chunks(path, [(b"odd ", b"abc"), (b"iXML", b"<x/>")])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # a new file: the umask's mode
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and int.from_bytes(data[4:8], "little") == len(data) - 8
    ids, at = [], 12
    while at < len(data):
        ids.append(data[at : at + 4])
        size = int.from_bytes(data[at + 4 : at + 8], "little")
        at += 8 + size + size % 2
    assert ids == [b"fmt ", b"odd ", b"iXML", b"data"]
    np.testing.assert_array_equal(soundfile.read(path)[0], before)


@pytest.mark.parametrize(
    "label, drop, frames",
    [("01:00:00;00", True, 107892), ("01:00:00:00", False, 108000)],
)
def test_ntsc_timecode_in_bext_and_otio(tmp_path, label, drop, frames):
    clip = timecoded(tmp_path / "ntsc.mov", NTSC, label, frames=60)
    result = result_of(sine(16000, 1.5, -30.0)[None], 16000, start=0.25)
    plan = plan_outputs(clip, ["rain"], tmp_path, otio=True, sample_rate=48000)
    (done,) = write_outputs(plan, result)

    seconds = Fraction(frames * 1001, 30000)
    expected = round((seconds + Fraction(0.25)) * 48000)
    bext = WavInfoReader(str(done.stem.audio)).bext
    assert bext.time_reference == expected
    speed = WavInfoReader(str(done.stem.audio)).ixml.raw_xml.find("SPEED")
    assert speed.findtext("TIMECODE_RATE") == "30000/1001"
    assert speed.findtext("TIMECODE_FLAG") == ("DF" if drop else "NDF")

    timeline = otio.adapters.read_from_file(str(plan.otio))
    start = timeline.global_start_time
    assert start.rate == pytest.approx(30000 / 1001, rel=1e-15)
    assert start.to_timecode(start.rate, drop) == label
    assert start.to_seconds() == pytest.approx(float(seconds), abs=1e-9)
    (audio,) = timeline.audio_tracks()
    (clip_item,) = [c for c in audio.find_clips()]
    record = start.to_seconds() + clip_item.range_in_parent().start_time.to_seconds()
    assert record == pytest.approx(float(seconds) + 0.25, abs=1e-9)
    assert clip_item.source_range.start_time.to_seconds() == pytest.approx(record, abs=1e-9)
    # To the sample: frame times (what other hosts' adapters take) at the exact position.
    assert round(clip_item.source_range.start_time.to_seconds() * 48000) == expected
    assert clip_item.source_range.start_time.rate == start.rate


def test_otio_places_picture_and_every_stem(tmp_path):
    """The done-when case: 25 fps, timecode 01:00:00:00, two stems from 0.4 s."""
    clip = timecoded(tmp_path / "media" / "my clip.mp4", 25, "01:00:00:00", frames=60)
    x = sine(16000, 1.6, -20.0)
    result = result_of(np.stack([x, x]), 16000, start=0.4, prompts=["a", "b"])
    out = tmp_path / "out"
    plan = plan_outputs(clip, ["a", "b"], out, otio=True)
    delivered = write_outputs(plan, result)
    assert plan.otio == out / "my clip.otio" and plan.otio.exists()

    timeline = otio.adapters.read_from_file(str(plan.otio))
    assert timeline.global_start_time.to_timecode(25) == "01:00:00:00"
    assert timeline.metadata["selva_rt"]["timecode_rate"] == "25/1"
    (picture,) = timeline.video_tracks()
    gap, shot = picture
    assert isinstance(gap, otio.schema.Gap)
    assert gap.duration() == otio.opentime.RationalTime(10, 25)  # 0.4 s
    assert shot.range_in_parent() == otio.opentime.TimeRange(
        otio.opentime.RationalTime(10, 25), otio.opentime.RationalTime(40, 25)
    )
    assert shot.source_range.start_time == otio.opentime.RationalTime(90010, 25)
    assert shot.media_reference.available_range == otio.opentime.TimeRange(
        otio.opentime.RationalTime(90000, 25), otio.opentime.RationalTime(60, 25)
    )
    assert (out / unquote(shot.media_reference.target_url)).resolve() == clip.resolve()

    tracks = timeline.audio_tracks()
    assert [t.name for t in tracks] == ["a", "b"]
    for track, done in zip(tracks, delivered, strict=True):
        gap, stem = track
        frames = otio.opentime.RationalTime
        assert gap.duration() == frames(10, 25)  # 0.4 s
        assert stem.range_in_parent().start_time.to_seconds() == pytest.approx(0.4)
        assert stem.source_range == stem.media_reference.available_range
        assert stem.source_range.start_time == frames(90010, 25)
        assert round(stem.source_range.start_time.to_seconds() * 16000) == done.time_reference
        assert stem.source_range.duration == frames(done.samples * 25 / 16000, 25)
        assert done.samples == len(x)
        target = out / unquote(stem.media_reference.target_url)
        assert target.resolve() == done.stem.audio.resolve() and target.exists()
        # source timecode == record timecode
        record = timeline.global_start_time + otio.opentime.RationalTime(
            stem.range_in_parent().start_time.to_seconds() * 16000, 16000
        )
        assert record.to_seconds() == pytest.approx(stem.source_range.start_time.to_seconds())


def test_loudness_normalisation(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", frames=60)
    x = sine(16000, 2.0, -30.0)
    loud = np.where(np.arange(len(x)) % 4000 < 2, 0.9, 0.0) + sine(16000, 2.0, -40.0)
    result = result_of(np.stack([x, loud]), 16000)
    plan = plan_outputs(clip, ["quiet", "peaky"], tmp_path / "o", loudness=-23.0, sample_rate=48000)
    quiet, peaky = write_outputs(plan, result)
    assert quiet.gain_db == pytest.approx(7.0, abs=0.02) and not quiet.peak_limited
    assert quiet.loudness.integrated == pytest.approx(-23.0, abs=0.01)
    wav, rate = soundfile.read(quiet.stem.audio)
    assert rate == 48000
    meter = pyloudnorm.Meter(48000, filter_class="DeMan")
    assert meter.integrated_loudness(wav) == pytest.approx(-23.0, abs=0.02)
    assert WavInfoReader(str(quiet.stem.audio)).bext.loudness_value == pytest.approx(-23.0)
    assert "gain +7.00 dB to -23 LUFS" in WavInfoReader(str(quiet.stem.audio)).bext.coding_history
    # Clicks at 0.9 under a quiet tone: the gain stops where the peaks reach full scale.
    assert peaky.peak_limited and peaky.loudness.integrated < -23.0
    wav, _ = soundfile.read(peaky.stem.audio)
    assert np.abs(wav).max() == pytest.approx(1.0, abs=1e-4)


def test_plan_refuses_bad_loudness_and_existing_timeline(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", frames=20)
    with pytest.raises(UsageError, match="loudness 5.0 is out of range"):
        plan_outputs(clip, ["x"], tmp_path, loudness=5.0)
    (tmp_path / "c.otio").write_text("{}")
    with pytest.raises(Exception, match="c.otio already exists"):
        plan_outputs(clip, ["x"], tmp_path, otio=True)
    plan_outputs(clip, ["x"], tmp_path)  # no timeline asked for: no conflict


def test_otio_without_opentimelineio_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "opentimelineio", None)  # as if not installed
    clip = make_clip(tmp_path / "c.mp4", frames=20)
    with pytest.raises(UsageError, match=r"--otio needs OpenTimelineIO; install it: pip install"):
        plan_outputs(clip, ["x"], tmp_path / "o", otio=True)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "name, fps, label, extra, time_reference",
    [
        # The done-when case: 25 fps at 01:00:00:00 -> 3600 s of samples.
        ("shot.mp4", 25, "01:00:00:00", [], 3600 * 16000),
        (
            "shot.mov",
            NTSC,
            "01:00:00;00",
            ["--start", "0.2", "--sample-rate", "48000"],
            round((Fraction(107892 * 1001, 30000) + Fraction(0.2)) * 48000),
        ),
    ],
)
def test_cli_otio_and_loudness_with_tiny(tmp_path, capsys, name, fps, label, extra, time_reference):
    """The flags through `selva-rt generate`, on the tiny model's real output."""
    clip = timecoded(tmp_path / name, fps, label, frames=40)
    args = ["generate", str(clip), "sheep bleating", "--variant", "tiny", "--steps", "2", *extra]
    args += ["--out", str(tmp_path / "o"), "--otio", "--loudness", "-20", "--json", "--quiet"]
    assert cli.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    (entry,) = out["outputs"]
    rate = timecode_rate(Fraction(fps))
    assert out["timecode"] == {
        "start": label,
        "rate": f"{rate.numerator}/{rate.denominator}",
        "drop_frame": ";" in label,
    }
    assert entry["loudness"]["integrated_lufs"] == pytest.approx(-20.0, abs=0.01)
    info = WavInfoReader(entry["audio"])
    assert info.bext.time_reference == entry["time_reference"] == time_reference
    assert info.bext.description == "sheep bleating" and "tiny" in info.bext.coding_history
    assert info.bext.loudness_value == pytest.approx(-20.0, abs=0.011)
    timeline = otio.adapters.read_from_file(out["otio"])
    start = timeline.global_start_time
    assert start.to_timecode(float(rate), ";" in label) == label
    (audio,) = timeline.audio_tracks()
    (stem,) = audio.find_clips()
    assert stem.source_range.start_time.rate == start.rate  # frames, as other hosts take them
    rate = info.fmt.sample_rate
    assert stem.source_range.start_time.to_seconds() * rate == pytest.approx(
        time_reference, abs=0.5
    )
    record = start.to_seconds() + stem.range_in_parent().start_time.to_seconds()
    assert record == pytest.approx(stem.source_range.start_time.to_seconds(), abs=1e-9)
    assert len(timeline.video_tracks()) == 1
