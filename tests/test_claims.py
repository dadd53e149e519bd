"""README claims no other test held: `--debug` shows the traceback; every stem gets its own
OriginatorReference; MXF timecode; `--loudness` says when a gain would clip; `separate
--no-video` and `--normalize-mixture-latent` do what they say."""

import json
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import opentimelineio as otio
import pytest
import soundfile
import torch
from selva_rt.runtime import cli
from selva_rt.runtime.delivery.outputs import plan_outputs, write_outputs
from selva_rt.runtime.delivery.timecode import clip_timecode
from selva_rt.runtime.errors import MediaError
from selva_rt.runtime.pipeline import GenerationResult, Pipeline
from wavinfo import WavInfoReader

torch.set_num_threads(2)

RUN = ["--precision", "fp32", "--steps", "2", "--duration", "1", "--seed", "4"]


def test_debug_shows_the_traceback(tmp_path, capsys):
    argv = ["generate", str(tmp_path / "missing.mp4"), "rain", "--variant", "tiny"]
    assert cli.main(argv) == 1
    assert capsys.readouterr().err.startswith("selva-rt: error: ")
    with pytest.raises(MediaError, match="missing.mp4"):
        cli.main([*argv, "--debug"])


def result_of(audio: np.ndarray, rate: int, prompts: list[str]) -> GenerationResult:
    return GenerationResult(
        audio=audio.astype(np.float32),
        sample_rate=rate,
        prompts=prompts,
        duration=audio.shape[1] / rate,
        start=0.0,
        seed=7,
        steps=25,
        cfg=4.5,
    )


def tone(seconds: float, rate: int, amplitude: float) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * 440 * np.arange(round(seconds * rate)) / rate)


def test_originator_reference_is_unique_per_stem_and_run(tmp_path, sample_clip):
    prompts = ["rain", "wind", "dog"]
    result = result_of(np.stack([tone(1.0, 16000, 0.1)] * 3), 16000, prompts)
    refs = []
    for run in range(2):
        plan = plan_outputs(sample_clip, prompts, tmp_path / str(run), video=False)
        for done in write_outputs(plan, result):
            refs.append(WavInfoReader(str(done.stem.audio)).bext.originator_ref)
    assert all(re.fullmatch(r"[0-9a-f]{32}", r) for r in refs)
    assert len(set(refs)) == len(refs) == 6


def mxf_clip(path: Path, timecode: str, fps: Fraction) -> Path:
    """An MPEG-2 MXF (OP1a) clip whose material package carries `timecode`."""
    with av.open(str(path), "w", format="mxf") as out:
        out.metadata["timecode"] = timecode
        stream = out.add_stream("mpeg2video", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(12):
            frame = np.full((48, 64, 3), 20 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.mark.parametrize(
    "timecode, fps", [("10:00:00:00", Fraction(25)), ("01:00:00;02", Fraction(30000, 1001))]
)
def test_mxf_timecode(tmp_path, timecode, fps):
    clip = mxf_clip(tmp_path / "shot.mxf", timecode, fps)
    with av.open(str(clip)) as container:
        assert container.format.name == "mxf" and container.metadata["timecode"] == timecode
    tc = clip_timecode(clip)
    drop = ";" in timecode
    frames = otio.opentime.from_timecode(timecode, float(fps)).value  # OTIO's own counting
    assert (str(tc), tc.rate, tc.drop_frame, tc.frames) == (timecode, fps, drop, frames)
    # The stem is placed at that timecode (bext TimeReference, in samples at its rate).
    plan = plan_outputs(clip, ["rain"], tmp_path / "out", video=False, sample_rate=48000)
    (done,) = write_outputs(plan, result_of(tone(1.0, 16000, 0.1)[None], 16000, ["rain"]))
    seconds = Fraction(frames) / fps
    assert WavInfoReader(str(done.stem.audio)).bext.time_reference == round(seconds * 48000)


def test_loudness_says_when_the_gain_would_clip(tmp_path, sample_clip, capsys):
    """A target the stem cannot reach without clipping: the stem stops at full scale and the
    command says so in one line on stderr (the --json report has the same flag)."""
    argv = ["generate", str(sample_clip), "rain", "--variant", "tiny", *RUN, "--no-video"]
    assert cli.main([*argv, "--out", str(tmp_path / "a"), "--loudness", "0", "--json"]) == 0
    captured = capsys.readouterr()
    (entry,) = json.loads(captured.out)["outputs"]
    audio, _ = soundfile.read(entry["audio"])
    assert entry["loudness"]["peak_limited"]
    assert np.abs(audio).max() == pytest.approx(1.0, abs=1e-3)
    reached = entry["loudness"]["integrated_lufs"]
    assert reached < -0.5
    assert captured.err == (
        f"selva-rt: warning: {Path(entry['audio']).name} reaches {reached:.1f} LUFS, "
        "not 0: more gain would clip\n"
    )
    # A reachable target: no warning.
    assert cli.main([*argv, "--out", str(tmp_path / "b"), "--loudness", "-30", "--json"]) == 0
    captured = capsys.readouterr()
    (entry,) = json.loads(captured.out)["outputs"]
    assert captured.err == "" and not entry["loudness"]["peak_limited"]


@pytest.fixture(scope="module")
def tiny_sep() -> Pipeline:
    return Pipeline.from_pretrained("tiny-sep", device="cpu", precision="fp32")


def test_separate_no_video_and_normalized_mixture_latent(tiny_sep, sample_clip, tmp_path, capsys):
    """--no-video: the picture is left out (a text-only query: the stem equals the API's
    video=False call and differs from the one with the picture) and only stems are written.
    --normalize-mixture-latent: the posterior sample goes through the generator's latent
    statistics before the input convolution reads it, and the stem changes accordingly."""
    kwargs = dict(seed=4, steps=2, duration=1.0)
    text_only = tiny_sep.separate(sample_clip, ["rain"], video=False, **kwargs).audio
    with_picture = tiny_sep.separate(sample_clip, ["rain"], video=True, **kwargs).audio
    normalized = tiny_sep.separate(
        sample_clip, ["rain"], video=False, normalize_mixture_latent=True, **kwargs
    ).audio
    assert np.abs(text_only - with_picture).max() > 1e-3
    assert np.abs(text_only - normalized).max() > 1e-3

    argv = ["separate", str(sample_clip), "rain", "--variant", "tiny-sep", *RUN, "--no-video"]
    for extra, expected in (([], text_only), (["--normalize-mixture-latent"], normalized)):
        out = tmp_path / f"out{len(extra)}"
        assert cli.main([*argv, *extra, "--out", str(out), "--json", "--quiet"]) == 0
        (entry,) = json.loads(capsys.readouterr().out)["outputs"]
        assert entry.get("video") is None and [p.name for p in out.iterdir()] == ["sample_rain.wav"]
        stem, _ = soundfile.read(entry["audio"], dtype="float32")
        np.testing.assert_allclose(stem, expected[0], atol=2**-22)

    g = tiny_sep.parts.nets.generator
    x = torch.randn(1, 16, g.config.latent_dim)
    mean, std = g.latent_mean.reshape(1, 1, -1), g.latent_std.reshape(1, 1, -1)
    ours = tiny_sep.parts.mixture_conditions(x, 1, normalize=True)["mixture_bias"]
    by_hand = tiny_sep.parts.mixture_conditions((x - mean) / std, 1)["mixture_bias"]
    torch.testing.assert_close(ours, by_hand, rtol=1e-5, atol=1e-6)
