"""Properties that hold for every input, checked by hypothesis on generated ones: job parsing
(a job survives its canonical form; any JSON is a Job or one JobError), timecode arithmetic
(every label at every rate reads back; drop-frame labels track wall-clock time) and window
planning (any length is covered on the grid, overlapping enough, by as few windows as can)."""

from fractions import Fraction
from pathlib import Path

import pytest

pytest.importorskip("hypothesis", reason="hypothesis (dev extra) is not installed")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from selva_rt.runtime.delivery.timecode import DROPPED, Timecode  # noqa: E402
from selva_rt.runtime.errors import JobError, UsageError  # noqa: E402
from selva_rt.runtime.service.jobs import FIELDS, Job  # noqa: E402
from selva_rt.runtime.variants import (  # noqa: E402
    AUDIO_16K,
    AUDIO_44K,
    DEFAULT_DURATION,
    MIN_DURATION,
    SYNC_FPS,
    SYNC_HOP,
    WINDOW_OVERLAP,
)
from selva_rt.runtime.windows import plan_windows  # noqa: E402

RATES = [Fraction(24000, 1001), 24, 25, Fraction(30000, 1001), 30, 50, Fraction(60000, 1001), 60]
DAY = 24 * 3600

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
prompt = st.text(min_size=1, max_size=60).filter(lambda p: p.strip() and "\0" not in p)
valid_jobs = st.fixed_dictionaries(
    {"clip": st.just("/clips/a.mp4"), "prompts": st.lists(prompt, min_size=1, max_size=4)},
    optional={
        "negative_prompt": st.text(max_size=40),
        "seed": st.integers(0, 2**63 - 1),
        "steps": st.integers(1, 1000),
        "cfg": st.none() | st.floats(0, 20),
        "start": st.floats(0, 3600),
        "duration": st.none() | st.floats(0.05, 3600),
        "name": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 _-]{0,30}", fullmatch=True),
        "format": st.sampled_from(["wav", "flac"]),
        "sample_rate": st.sampled_from([None, 48000]),
        "loudness": st.none() | st.floats(-70, 0),
        "otio": st.booleans(),
        "no_video": st.booleans(),
    },
)


@settings(max_examples=300, deadline=None)
@given(valid_jobs)
def test_a_job_survives_its_canonical_form(data):
    try:
        job = Job.from_dict(data, base=Path("/"))
    except JobError as err:  # only prompts the checks refuse (e.g. control characters)
        assert "prompt" in str(err), err
        return
    again = Job.from_dict(job.to_dict(), base=Path("/"))
    assert again == job and again.to_dict() == job.to_dict()
    absent = {"timecode"} if job.timecode is None else set()  # absent, not null (ids stay)
    assert set(job.to_dict()) == FIELDS - absent


@settings(max_examples=500, deadline=None)
@given(json_values | st.dictionaries(st.sampled_from(sorted(FIELDS)), json_values))
def test_any_json_is_a_job_or_one_line_saying_why_not(data):
    try:
        job = Job.from_dict(data, base=Path("/clips"))
    except JobError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert job.clip.is_absolute() and job.prompts and 1 <= job.steps <= 1000


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(RATES), st.booleans(), st.data())
def test_every_timecode_label_reads_back(rate, drop, data):
    rate = Fraction(rate)
    drop = drop and rate in DROPPED
    n = round(rate)  # a day of labels; drop-frame skips numbers, so its day has fewer frames
    day = 144 * (600 * n - 9 * DROPPED[rate]) if drop else DAY * n
    frames = data.draw(st.integers(0, day - 1))
    tc = Timecode(frames, rate, drop)
    label = str(tc)
    assert Timecode.parse(label, rate) == tc
    assert (";" in label) == drop
    if drop:  # the labels track the clock: off by the numbers skipped in a minute at most,
        # plus what 1000/1001 leaves over a day (86.4 ms)
        h, m, s, f = map(int, label.replace(";", ":").split(":"))
        labelled = (h * 3600 + m * 60 + s) + Fraction(f, n)
        assert abs(labelled - tc.seconds) <= Fraction(DROPPED[rate], n) + Fraction(864, 10000)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(RATES),
    st.integers(0, DAY * 24),
    st.floats(0, 600),
    st.sampled_from([16000, 44100, 48000]),
)
def test_time_reference_is_the_timecode_plus_the_offset_in_samples(rate, frames, offset, sr):
    tc = Timecode(frames, Fraction(rate))
    exact = (Fraction(frames) / Fraction(rate) + Fraction(offset)) * sr
    assert abs(tc.samples(sr, offset) - exact) <= Fraction(1, 2)


@settings(max_examples=300, deadline=None)
@given(st.floats(DEFAULT_DURATION + 0.04, 1800), st.sampled_from([AUDIO_16K, AUDIO_44K]))
def test_windows_cover_any_clip_on_the_grid_with_enough_overlap(duration, audio):
    layout = plan_windows(duration, audio)
    assert DEFAULT_DURATION - SYNC_HOP / SYNC_FPS < layout.window <= DEFAULT_DURATION
    assert layout.frames[0] == 0 and all(f % SYNC_HOP == 0 for f in layout.frames)
    assert list(layout.frames) == sorted(set(layout.frames))
    assert layout.frames[-1] + int(SYNC_FPS * layout.window) == int(SYNC_FPS * duration)
    span = SYNC_FPS * layout.window
    for a, b in zip(layout.frames, layout.frames[1:], strict=False):
        assert a + span - b >= WINDOW_OVERLAP * SYNC_FPS - 1e-9
    assert layout.offsets[-1] + layout.latent == layout.total
    assert list(layout.offsets) == sorted(layout.offsets)
    max_hop = int((layout.window - WINDOW_OVERLAP) * SYNC_FPS + 1e-9) // SYNC_HOP * SYNC_HOP
    assert (len(layout) - 2) * max_hop < layout.frames[-1] <= (len(layout) - 1) * max_hop


@settings(max_examples=200, deadline=None)
@given(st.floats(MIN_DURATION, DEFAULT_DURATION), st.sampled_from([AUDIO_16K, AUDIO_44K]))
def test_a_clip_within_the_trained_length_is_one_window(duration, audio):
    try:
        layout = plan_windows(duration, audio)
    except UsageError as err:  # a length whose two official segment counts disagree
        assert "pick a duration like" in str(err)
        return
    assert layout.frames == (0,) and layout.offsets == (0,) and layout.latent == layout.total
