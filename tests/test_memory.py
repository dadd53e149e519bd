""" "Frames are decoded in one pass, window by window, so memory does not grow with the clip's
length beyond its features": the peak resident memory of `Pipeline.generate` on a 40 s clip
against a 10 s one, each in a process of its own.

The pipeline, its media decoding and its windows are the real ones; the family's networks are
replaced by stand-ins that take each window's model inputs and keep nothing of them, so what is
measured is what the pipeline and media hold of the picture (the networks' own memory is per
window; running them on 50 s of tiny clips takes minutes: measured once with the real networks,
`selva-rt generate --variant tiny --steps 1` peaked at 979 MiB for 10 s and 1102 MiB for 60 s).
Holding the decoded picture would grow by 30 s of Synchformer frames (25 fps, 3 x 224 x 224
float32): 430 MiB."""

import subprocess
import sys

from clips import make_clip

GROWTH_MB = 100  # allowed peak growth for 30 s more
FRAME_MB = 224 * 224 * 3 * 4 / 2**20

CODE = """
import resource, sys
import torch
from selva_rt.runtime.pipeline import Pipeline

pipe = Pipeline.from_pretrained("tiny", device="cpu", precision="fp32")
family, seen = pipe.family, []

def features(window, prompts, run):
    seen.append(tuple(window["sync"].shape))  # the window's frames, decoded and then let go
    return None

family.features = features
family.conditions = lambda text, features, layout, run: len(features)
family.sample = lambda x0, conditions, layout, steps, cfg, update, run: x0
rate = pipe.variant.audio.sample_rate
family.decode = lambda x1, layout, run: torch.zeros(x1.shape[0], round(layout.duration * rate) + 1)
result = pipe.generate(sys.argv[1], "rain", steps=1)
assert len(seen) > 1 and result.duration > 9, (seen, result.duration)
print(len(seen), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)  # windows, MiB
"""


def peak_mb(clip) -> tuple[int, int]:
    """(windows, peak MiB) of one generate over `clip` in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-c", CODE, str(clip)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    windows, peak = result.stdout.split()[-2:]
    return int(windows), int(peak)


def test_peak_memory_does_not_grow_with_the_clip(tmp_path):
    runs = {}
    for seconds in (10, 40):
        clip = make_clip(tmp_path / f"c{seconds}.mp4", frames=25 * seconds, size=(64, 48), gop=50)
        runs[seconds] = peak_mb(clip)
    assert runs[10][0] == 2 and runs[40][0] >= 6, runs  # windows of 8 s, overlapping
    growth = runs[40][1] - runs[10][1]
    assert growth < GROWTH_MB, f"(windows, peak MiB) {runs}: {growth} MiB more for 30 s more"
    assert GROWTH_MB < 30 * 25 * FRAME_MB / 4  # the bound is far below holding the frames
