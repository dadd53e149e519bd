"""Whole clips end to end on the tiny variant: stems as long as the picture, the video copied
packet for packet, and clips within the trained 8 s generated as before."""

import av
import numpy as np
import pytest
import soundfile
import torch
from clips import make_clip
from selva_rt.runtime.cli import main
from selva_rt.runtime.pipeline import Pipeline

torch.set_num_threads(1)


def packets(path) -> list[tuple[int | None, int | None, bytes]]:
    with av.open(str(path)) as c:
        return [(p.pts, p.dts, bytes(p)) for p in c.demux(video=0) if p.size]


@pytest.mark.slow
@pytest.mark.parametrize("seconds", [20, 65])
def test_a_whole_clip_gives_a_stem_as_long_as_the_picture(tmp_path, seconds):
    clip = make_clip(tmp_path / "long.mp4", frames=25 * seconds, gop=50)
    out = tmp_path / "out"
    args = ["generate", str(clip), "rain", "--variant", "tiny", "--out", str(out), "--quiet"]
    args += ["--precision", "fp32"]
    assert main([*args, "--steps", "1", "--seed", "3"]) == 0
    stem, muxed = out / "long_rain.wav", out / "long_rain.mp4"
    audio, rate = soundfile.read(stem, dtype="float32")
    assert rate == 16000 and len(audio) == seconds * 16000  # exactly the picture's length
    assert np.abs(audio).max() > 0
    assert packets(muxed) == packets(clip)  # every video packet, unchanged
    with av.open(str(muxed)) as c:
        sound = c.streams.audio[0]
        assert abs(float(sound.duration * sound.time_base) - seconds) < 0.05


def test_a_clip_within_8_s_is_generated_as_before(tmp_path):
    clip = make_clip(tmp_path / "short.mp4", frames=60)
    pipe = Pipeline.from_pretrained("tiny", device="cpu", precision="fp32")
    whole = pipe.generate(clip, "rain", steps=2, seed=5)  # the new default: to the clip's end
    before = pipe.generate(clip, "rain", steps=2, seed=5, duration=8.0)  # the old default
    assert whole.duration == before.duration and 2.3 < whole.duration <= 2.4
    np.testing.assert_array_equal(whole.audio, before.audio)
