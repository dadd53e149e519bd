"""`selva-rt separate` as a user runs it (tiny-sep: random weights, every code path real):
a stem and a muxed video from a clip's own audio, audio-only input, several prompts over one
mixture, unpublished weights, and every kind of bad or odd mixture."""

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch
from clips import make_clip
from selva_rt.runtime import cli, media
from selva_rt.runtime.pipeline import Pipeline

torch.set_num_threads(1)

SAMPLE = Path(cli.__file__).parent / "assets" / "sample.mp4"
SCRIPT = Path(sys.executable).parent / "selva-rt"
RATE = 16000  # tiny-sep's


@pytest.fixture(scope="module")
def tiny_sep() -> Pipeline:
    return Pipeline.from_pretrained("tiny-sep", device="cpu", precision="fp32")


def assert_clean_failure(code, capsys, message, out: Path):
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir()), "a failed run must not write anything"


def tone(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(
        np.float32
    )


def test_separate_subprocess_writes_stem_and_muxed_video(tmp_path):
    """The README's demo line: sample.mp4 has an AAC track, which is the mixture."""
    with av.open(str(SAMPLE)) as c:
        assert c.streams.audio, "the demo needs a clip with an audio track"
    out = tmp_path / "out"
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "selva_rt.runtime.cli"]
    args = [str(SAMPLE), "dog barking", "--variant", "tiny-sep", "--out", str(out), "--steps", "3"]
    result = subprocess.run([*cmd, "separate", *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    stem, video = out / "sample_dog_barking.wav", out / "sample_dog_barking.mp4"
    wav, rate = soundfile.read(stem, dtype="float32")
    assert rate == RATE and np.isfinite(wav).all() and wav.std() > 0
    with av.open(str(video)) as c:
        assert c.streams.video and c.streams.audio


def test_prompts_share_the_mixture_and_equal_single_calls(tiny_sep, tmp_path, monkeypatch):
    """Two prompts: the mixture is encoded once; each stem equals a one-prompt call."""
    mix = tmp_path / "mix.wav"
    soundfile.write(mix, tone(1.0, RATE), RATE)
    calls = []
    encode = tiny_sep.parts.mixture_encoder
    monkeypatch.setattr(tiny_sep.parts, "mixture_encoder", lambda w: calls.append(1) or encode(w))
    kw = dict(duration=1.0, steps=3)
    both = tiny_sep.separate(mix, ["dog barking", "car horn"], **kw)
    assert len(calls) == 1
    for i, prompt in enumerate(["dog barking", "car horn"]):
        alone = tiny_sep.separate(mix, [prompt], **kw)
        np.testing.assert_allclose(both.audio[i], alone.audio[0], atol=1e-4, rtol=0)
    assert np.abs(both.audio[0] - both.audio[1]).max() > 1e-3  # the prompt steers


def test_mixture_changes_the_stem_and_is_padded(tiny_sep, tmp_path):
    """A short mixture is zero-padded to the window and the stem cut back to its length;
    another mixture gives another stem (the mixture reaches the generator)."""
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    soundfile.write(a, tone(0.7, RATE), RATE)
    soundfile.write(b, tone(0.7, RATE, freq=2000.0), RATE)
    ra = tiny_sep.separate(a, ["rain"], duration=1.0, steps=3)
    rb = tiny_sep.separate(b, ["rain"], duration=1.0, steps=3)
    assert ra.audio.shape == (1, round(0.7 * RATE)) and ra.duration == pytest.approx(0.7)
    assert np.abs(ra.audio - rb.audio).max() > 1e-3


def test_clip_with_separate_mixture_file(tiny_sep, tmp_path):
    """A clip without audio separates a --mixture file, with its picture as the query."""
    clip = make_clip(tmp_path / "silent.mp4", frames=30)
    mix = tmp_path / "mix.wav"
    soundfile.write(mix, tone(2.0, 22050), 22050)
    r = tiny_sep.separate(clip, ["rain"], mixture=mix, steps=2)
    window = media.decode_video(clip, duration=8.0, sync_center_crop=True, to_end=True).duration
    assert r.duration == window == 1.2  # the picture's length (30 frames at 25 fps) sets it
    assert r.audio.shape == (1, round(window * RATE)) and np.isfinite(r.audio).all()


def write_odd(path: Path, kind: str) -> np.ndarray:
    """Odd mixtures that must work; returns the mono 16 kHz signal they should read as."""
    t = tone(1.0, RATE, amp=0.5)
    if kind == "silence":
        soundfile.write(path, np.zeros(RATE, np.float32), RATE)
        return np.zeros(RATE, np.float32)
    if kind == "clipping":  # float WAV far beyond full scale; the mel clamps to [-1, 1]
        soundfile.write(path, 6 * t, RATE, subtype="FLOAT")
        return 6 * t
    if kind == "stereo":  # the mean of the channels
        soundfile.write(path, np.stack([t, 0 * t], 1), RATE, subtype="FLOAT")
        return 0.5 * t
    if kind == "5.1":
        soundfile.write(path, np.stack([t] * 6, 1), RATE, subtype="FLOAT")
        return t
    rate = {"8 kHz": 8000, "96 kHz": 96000}[kind]
    soundfile.write(path, tone(1.0, rate, amp=0.5), rate, subtype="FLOAT")
    return t


@pytest.mark.parametrize("kind", ["silence", "clipping", "stereo", "5.1", "8 kHz", "96 kHz"])
def test_odd_mixtures_work(tiny_sep, tmp_path, kind):
    path = tmp_path / "mix.wav"
    expected = write_odd(path, kind)
    wav = media.read_audio(path, RATE, 0.0, 1.0)
    assert wav.shape == (RATE,)
    # A resampled 440 Hz tone stays that tone (the filter's edges aside).
    np.testing.assert_allclose(wav[200:-200], expected[200:-200], atol=2e-3)
    r = tiny_sep.separate(path, ["rain"], duration=1.0, steps=2)
    assert r.audio.shape == (1, RATE) and np.isfinite(r.audio).all()


def test_start_offsets_the_mixture(tmp_path):
    path = tmp_path / "ramp.wav"
    soundfile.write(path, np.arange(3 * RATE, dtype=np.float32) / (3 * RATE), RATE, "FLOAT")
    wav = media.read_audio(path, RATE, 1.5, 0.5)
    np.testing.assert_allclose(wav, np.arange(24000, 32000) / (3 * RATE), atol=1e-6)


def test_long_mixture_gives_a_stem_as_long_as_it(tiny_sep, tmp_path):
    """Separation covers the whole input, in windows like generation: a 20 s mixture (by text
    alone) gives a 20 s stem, and so does a 20 s clip (picture and its own audio); the stem
    follows the mixture across the windows (a tone that stops at 12 s)."""
    mix = tmp_path / "long.wav"
    x = tone(20.0, RATE)
    x[12 * RATE :] = 0
    soundfile.write(mix, x, RATE)
    r = tiny_sep.separate(mix, ["rain"], steps=2)
    assert r.audio.shape == (1, 20 * RATE) and r.duration == 20.0
    assert np.isfinite(r.audio).all() and r.audio[0, -RATE:].std() > 0
    clip = make_clip(tmp_path / "long.mp4", frames=500, fps=25, audio_rate=RATE)
    r = tiny_sep.separate(clip, ["rain"], steps=2)
    assert r.duration == pytest.approx(20.0) and r.audio.shape == (1, round(r.duration * RATE))


def nan_wav(path: Path) -> Path:
    x = tone(1.0, RATE)
    x[100] = np.nan
    soundfile.write(path, x, RATE, subtype="FLOAT")
    return path


BAD = {
    "clip without audio": (
        lambda p: make_clip(p / "silent.mp4", frames=30),
        [],
        "has no audio track to separate; give the mixture with --mixture FILE",
    ),
    "unreadable mixture": (
        lambda p: SAMPLE,
        ["--mixture", "GARBAGE"],
        "is not a media file ffmpeg can read",
    ),
    "missing mixture": (lambda p: SAMPLE, ["--mixture", "/nonexistent.wav"], "does not exist"),
    "mixture with NaN": (lambda p: SAMPLE, ["--mixture", "NAN"], "non-finite samples"),
    "generation variant": (lambda p: SAMPLE, ["--variant", "tiny"], "invalid choice"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_nothing_written(tmp_path, capsys, case):
    make, extra, message = BAD[case]
    (tmp_path / "in").mkdir()
    source = make(tmp_path / "in")
    garbage = tmp_path / "in" / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    extra = [
        {"GARBAGE": str(garbage), "NAN": str(nan_wav(tmp_path / "in" / "nan.wav"))}.get(a, a)
        for a in extra
    ]
    out = tmp_path / "out"
    args = ["separate", str(source), "rain", "--variant", "tiny-sep", "--out", str(out), *extra]
    try:
        code = cli.main(args)
    except SystemExit as e:  # argparse's own one-line usage error
        code = e.code
    if case == "generation variant":
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err
        return
    assert_clean_failure(code, capsys, message, out)


def test_generate_with_a_separation_variant_says_use_separate(tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["generate", str(SAMPLE), "rain", "--variant", "tiny-sep", "--out", str(out)])
    assert_clean_failure(code, capsys, "use selva-rt separate", out)


def test_unpublished_checkpoint_named_in_one_line(tmp_path):
    """No URL or MD5 exists: `weights download` and a run both say where the file goes."""
    env = {"SELVA_RT_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "selva_rt.runtime.cli"]
    expected_path = tmp_path / "home" / "sony/mmaudiosep/weights/mmaudiosep_large_44k.pth"
    for args in (
        ["weights", "download", "mmaudiosep-large-44k"],
        ["separate", str(SAMPLE), "dog", "--out", str(tmp_path / "out")],
    ):
        r = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
        assert "mmaudiosep_large_44k.pth is not published yet" in r.stderr
        assert str(expected_path) in r.stderr and "--checkpoint FILE" in r.stderr
    assert not (tmp_path / "out").exists()
