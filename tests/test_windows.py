"""Long clips in windows: the layout, the lockstep sampler against velocity fields whose exact
answer is known, the joined decode, and reproducibility on the tiny variant."""

import math

import pytest
import torch
from selva_rt.runtime import windows
from selva_rt.runtime.families.family import Run
from selva_rt.runtime.pipeline import Pipeline
from selva_rt.runtime.variants import (
    AUDIO_16K,
    AUDIO_44K,
    DEFAULT_DURATION,
    SYNC_FPS,
    SYNC_HOP,
    WINDOW_OVERLAP,
)
from selva_rt.runtime.windows import Layout, blend_weights, plan_windows

torch.set_num_threads(1)


@pytest.mark.parametrize("audio", [AUDIO_16K, AUDIO_44K], ids=["16k", "44k"])
@pytest.mark.parametrize("duration", [8.04, 13.333, 19.96, 20.0, 65.0, 600.0])
def test_layout(audio, duration):
    layout = plan_windows(duration, audio)
    latent_rate = audio.sample_rate / audio.hop / 2
    assert DEFAULT_DURATION - SYNC_HOP / SYNC_FPS < layout.window <= DEFAULT_DURATION
    assert all(f % SYNC_HOP == 0 for f in layout.frames) and layout.frames[0] == 0
    # The last window ends with the picture: its frames are the clip's last ones.
    assert layout.frames[-1] + int(SYNC_FPS * layout.window) == int(SYNC_FPS * duration)
    overlaps = [
        a + SYNC_FPS * layout.window - b
        for a, b in zip(layout.frames, layout.frames[1:], strict=False)
    ]
    assert min(overlaps) >= WINDOW_OVERLAP * SYNC_FPS - 1e-9
    assert layout.total == math.ceil(duration * latent_rate)
    assert layout.offsets[-1] + layout.latent == layout.total
    for frame, offset in zip(layout.frames, layout.offsets, strict=True):
        exact = frame / SYNC_FPS * latent_rate
        assert abs(offset - exact) < (1e-9 if audio is AUDIO_16K else 1)  # 16k: on the grid
    # No more windows than needed: one fewer could not cover the clip at the least overlap.
    max_hop = int((layout.window - WINDOW_OVERLAP) * SYNC_FPS + 1e-9) // SYNC_HOP * SYNC_HOP
    assert (len(layout) - 2) * max_hop < layout.frames[-1] <= (len(layout) - 1) * max_hop


def test_a_clip_within_the_trained_length_is_one_window():
    layout = plan_windows(7.96, AUDIO_16K)
    assert layout == Layout(7.96, 7.96, (0,), (0,), 249, 249)


def test_blend_weights_are_complementary_ramps():
    w = blend_weights((0, 10, 20), 15)
    cover = torch.zeros(35, dtype=torch.float64)
    for j, s in enumerate((0, 10, 20)):
        cover[s : s + 15] += w[j]
    torch.testing.assert_close(cover, torch.ones(35, dtype=torch.float64))
    assert w[0, :10].eq(1).all() and w[2, 5:].eq(1).all()
    assert torch.all(w[1, :5].diff() > 0) and torch.all(w[1, 10:].diff() < 0)


class FieldParts:
    """Parts whose velocity is the rectified flow towards a known target:
    v(t, x) = (y - x) / (1 - t), with y in the conditions. Euler reaches y exactly at t = 1,
    whatever the noise, so the windowed sampler's answer is known in closed form."""

    device = torch.device("cpu")
    dtype = torch.float32

    def dit_step(self, latent, t, conditions, cfg):
        y = conditions["y"][: latent.shape[0]]  # conditional rows
        return (y - latent) / (1 - t)[:, None, None]

    def decoder(self, latent):
        """Each latent frame's first channel held for 512 samples: a waveform whose exact join
        is known."""
        return None, latent[..., 0].repeat_interleave(512, dim=1)


def field_conditions(targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """targets [W, P, n, E] -> conditions with rows window-major, conditional then
    unconditional (the Parts contract)."""
    rows = targets.flatten(0, 1)
    return {"y": torch.cat([rows, rows])}


def smooth_target(prompts: int, total: int, channels: int) -> torch.Tensor:
    t = torch.arange(total, dtype=torch.float32)[None, :, None]
    phase = torch.arange(prompts * channels, dtype=torch.float32).view(prompts, 1, channels)
    return torch.sin(0.05 * t + phase)


@pytest.mark.parametrize("duration", [8.04, 20.0, 65.0])
def test_windows_agreeing_on_a_field_give_its_exact_answer(duration):
    layout = plan_windows(duration, AUDIO_16K)
    y = smooth_target(2, layout.total, 20)
    targets = windows.window_rows(y, layout).view(len(layout), 2, layout.latent, 20)
    x0 = torch.randn(2, layout.total, 20, generator=torch.Generator().manual_seed(0))
    x1 = windows.sample_windows(FieldParts(), x0, field_conditions(targets), layout, 25, 4.5)
    torch.testing.assert_close(x1, y, rtol=0, atol=1e-5)
    audio = windows.decode_windows(FieldParts(), x1, layout, rows=3)
    torch.testing.assert_close(audio, y[..., 0].repeat_interleave(512, dim=1), rtol=0, atol=1e-5)


def test_windows_that_disagree_join_without_a_seam():
    """Each window's target is offset by its own constant (as each window's content differs):
    lockstep gives the ramp-weighted mean of the targets exactly, and no step between latent
    frames is larger than the ramp's slope, where splicing the windows jumps by the offsets."""
    layout = plan_windows(20.0, AUDIO_16K)
    y = smooth_target(1, layout.total, 4)
    offsets = torch.tensor([0.0, 1.0, -0.5])[:, None, None, None]  # one per window
    targets = windows.window_rows(y, layout).view(3, 1, layout.latent, 4) + offsets
    x0 = torch.randn(1, layout.total, 4, generator=torch.Generator().manual_seed(1))
    x1 = windows.sample_windows(FieldParts(), x0, field_conditions(targets), layout, 10, 1.0)

    w = blend_weights(layout.offsets, layout.latent).float()
    expected = torch.zeros_like(y)
    for j, o in enumerate(layout.offsets):
        expected[:, o : o + layout.latent] += w[j][None, :, None] * targets[j]
    torch.testing.assert_close(x1, expected, rtol=0, atol=1e-5)

    residual = (x1 - y)[0, :, 0]
    overlap = min(
        a + layout.latent - b for a, b in zip(layout.offsets, layout.offsets[1:], strict=False)
    )
    slope = 1.5 / overlap  # the largest offset difference, spread over the shortest overlap
    assert residual.diff().abs().max() <= slope * 1.001
    assert slope < 0.05  # a splice would jump by 1.0 and 1.5


@pytest.fixture(scope="module")
def tiny():
    return Pipeline.from_pretrained("tiny", device="cpu", precision="fp32")


def test_long_clip_sampling_is_reproducible_from_the_seed(tiny):
    layout = plan_windows(9.0, tiny.variant.audio)  # two windows
    prompts = ["rain", "thunder"]
    text = tiny.family.encode_text(prompts)
    seq = tiny.variant.sequence_lengths(layout.window)
    sync = torch.randn(len(layout) * 2, seq.sync, tiny.variant.video_encoder.embed_dim)
    conditions = tiny.parts.dit_conditions(
        None, sync, text.clip.repeat(2, 1, 1), text.negative.expand(4, -1, -1), seq.latent, seq.clip
    )

    def run(seed):
        x0 = tiny.family.noise(2, layout, Run(tiny.device, torch.Generator().manual_seed(seed)))
        return windows.sample_windows(tiny.parts, x0, conditions, layout, 3, 4.5, rows=3)

    first = run(7)
    assert torch.equal(first, run(7)) and not torch.equal(first, run(8))
