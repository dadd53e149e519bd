"""How long clips are joined: the measurement behind runtime/windows.py.

    python -m selva_rt.benchmarks.seams            # tiny variant, 20 s: about a minute on 2 cores

Two ways of generating a clip longer than the trained 8 s in overlapping windows:

  lockstep      all windows denoised together on one latent; at every Euler step the windows'
                velocities are averaged on the shared frames with linear ramps (runtime/windows)
  continuation  windows one after another; each one's overlap with the previous window is held
                at the previous window's result re-noised to the current step (x_t =
                (1 - t) x0 + t x1_prev), and the windows are joined with an equal-power crossfade

measured three ways:

  known field   v = (y_j - x) / (1 - t), the rectified flow to a target y_j. Windows that agree
                (y_j = y) have an exact answer, y: the error of each method's latent and joined
                waveform. Windows that disagree (y_j = y + a_j, a per-window offset, as windows
                of a real clip differ in content): the largest jump between adjacent frames of
                the result minus y, which is 0.5 / overlap for a ramp and |a_j - a_j+1| for a cut.
  tiny network  the tiny variant (random weights) on random conditions: discontinuity at the
                joins = the largest frame-to-frame change of the latent and of the VAE's mel
                within 3 frames of a join, over the 99th percentile of the change elsewhere;
                level = mean mel energy in the overlaps minus elsewhere (dB).
  time          seconds of sampling for each method (same number of network rows).

Writes benchmarks/results/seams-tiny.json and prints a markdown table.
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch

from ..runtime import windows
from ..runtime.families.family import Run
from ..runtime.pipeline import Pipeline
from ..runtime.sampler import time_grid
from ..runtime.variants import AUDIO_16K
from ..runtime.windows import Layout, plan_windows

RESULTS = Path(__file__).parent / "results"


class FieldParts:
    """Parts with the rectified-flow velocity to the target in conditions["y"] (see the module
    docstring); the 'decoder' holds each latent frame's first channel for 512 samples."""

    device = torch.device("cpu")
    dtype = torch.float32

    def dit_step(self, latent, t, conditions, cfg):
        y = conditions["y"][: latent.shape[0]]
        return (y - latent) / (1 - t)[:, None, None]

    def decoder(self, latent):
        return None, latent[..., 0].repeat_interleave(512, dim=1)


def continuation(parts, x0, conditions, layout: Layout, steps: int, cfg: float) -> list:
    """Windows one after another, each overlap held at the previous result re-noised to the
    current step; returns each window's latent [P, n, E]."""
    prompts, n = x0.shape[0], layout.latent
    rows = len(layout) * prompts
    times = time_grid(steps)
    out = []
    for j, offset in enumerate(layout.offsets):
        own = slice(j * prompts, (j + 1) * prompts)
        cond = {k: torch.cat([v[own], v[rows + own.start : rows + own.stop]]) for k, v in
                conditions.items()}  # fmt: skip
        noise = x0[:, offset : offset + n]
        held = 0 if j == 0 else layout.offsets[j - 1] + n - offset
        x = noise.clone()
        for i in range(steps):
            t = times[i]
            if held:
                x[:, :held] = (1 - t) * noise[:, :held] + t * out[-1][:, n - held :]
            v = parts.dit_step(x, t * torch.ones(prompts), cond, cfg)
            x = x + (times[i + 1] - t) * v
        out.append(x)
    return out


def equal_power_join(pieces: list, starts: list[int], total: int) -> torch.Tensor:
    """Pieces [P, L, ...] at `starts` joined with cos/sin fades across each overlap."""
    length = pieces[0].shape[1]
    out = torch.zeros(pieces[0].shape[0], total, *pieces[0].shape[2:])
    for j, (piece, s) in enumerate(zip(pieces, starts, strict=True)):
        g = torch.ones(length)
        i = torch.arange(length) + 0.5
        if j > 0:
            up = starts[j - 1] + length - s
            g = torch.where(i < up, torch.sin(0.5 * math.pi * i / up), g)
        if j + 1 < len(pieces):
            down = s + length - starts[j + 1]
            g = torch.where(i > length - down, g * torch.cos(0.5 * math.pi * (i - length + down)
                                                             / down), g)  # fmt: skip
        out[:, s : s + length] += piece * g.view(1, -1, *([1] * (piece.dim() - 2)))
    return out


def field_case(layout: Layout, agree: bool) -> dict:
    """Both methods on the known field; errors against the exact answer or seam jumps."""
    prompts, channels = 1, 4
    t = torch.arange(layout.total, dtype=torch.float32)[None, :, None]
    y = torch.sin(0.05 * t + torch.arange(channels).view(1, 1, -1))
    offsets = torch.zeros(len(layout)) if agree else torch.tensor([0.0, 1.0, -0.5] * 40)
    targets = windows.window_rows(y, layout).view(len(layout), 1, layout.latent, channels)
    targets = targets + offsets[: len(layout)].view(-1, 1, 1, 1)
    rows = targets.flatten(0, 1)
    cond = {"y": torch.cat([rows, rows])}
    x0 = torch.randn(prompts, layout.total, channels, generator=torch.Generator().manual_seed(0))
    parts = FieldParts()
    lock = windows.sample_windows(parts, x0, cond, layout, 25, 1.0)
    lock_audio = windows.decode_windows(parts, lock, layout)
    pieces = continuation(parts, x0, cond, layout, 25, 1.0)
    cont = equal_power_join(pieces, list(layout.offsets), layout.total)
    cont_audio = equal_power_join(
        [parts.decoder(p)[1] for p in pieces], [o * 512 for o in layout.offsets], layout.total * 512
    )
    exact_audio = y[..., 0].repeat_interleave(512, dim=1)
    if agree:
        return {
            "lockstep": {
                "latent_max_error": (lock - y).abs().max().item(),
                "audio_max_error": (lock_audio - exact_audio).abs().max().item(),
            },
            "continuation": {
                "latent_max_error": (cont - y).abs().max().item(),
                "audio_max_error": (cont_audio - exact_audio).abs().max().item(),
            },
        }
    return {
        "lockstep": {"max_jump": (lock - y)[0, :, 0].diff().abs().max().item()},
        "continuation": {"max_jump": (cont - y)[0, :, 0].diff().abs().max().item()},
    }


def discontinuity(x: torch.Tensor, joins: list[int], margin: int = 3) -> float:
    """x [L, C]: largest frame-to-frame change within `margin` of a join over the 99th
    percentile of the change elsewhere."""
    change = x.diff(dim=0).norm(dim=1)
    near = torch.zeros(len(change), dtype=torch.bool)
    for j in joins:
        near[max(0, j - margin) : j + margin] = True
    return (change[near].max() / change[~near].quantile(0.99)).item()


def overlap_level_db(mel: torch.Tensor, overlaps: list[tuple[int, int]]) -> float:
    """mel [M, F] log-mel: mean energy in the overlaps minus elsewhere, in dB."""
    power = (10**mel).mean(dim=1)  # 16k mels are log10 magnitudes
    inside = torch.zeros(len(power), dtype=torch.bool)
    for a, b in overlaps:
        inside[a:b] = True
    return (10 * torch.log10(power[inside].mean() / power[~inside].mean())).item()


def network_case(pipe: Pipeline, layout: Layout, steps: int) -> dict:
    """Both methods on the tiny network with random video features for every window."""
    variant, parts = pipe.variant, pipe.parts
    text = pipe.family.encode_text(["rain on a tin roof"])
    seq = variant.sequence_lengths(layout.window)
    gen = torch.Generator().manual_seed(0)
    sync = torch.randn(len(layout), seq.sync, variant.video_encoder.embed_dim, generator=gen)
    w = len(layout)
    cond = parts.dit_conditions(
        None, sync, text.clip.repeat(w, 1, 1), text.negative.expand(w, -1, -1), seq.latent, seq.clip
    )
    x0 = pipe.family.noise(1, layout, Run(pipe.device, torch.Generator().manual_seed(42)))
    t0 = time.perf_counter()
    lock = windows.sample_windows(parts, x0, cond, layout, steps, 4.5)
    t1 = time.perf_counter()
    pieces = continuation(parts, x0, cond, layout, steps, 4.5)
    t2 = time.perf_counter()
    cont = equal_power_join(pieces, list(layout.offsets), layout.total)

    def mel_of(x):  # the VAE decoder per window, joined as each method joins its audio
        nets = parts.nets
        return [nets.vae.decode(nets.generator.unnormalize(p).transpose(1, 2))[0].T for p in x]

    lock_mel = windows.blend_weights(tuple(2 * o for o in layout.offsets), 2 * layout.latent)
    lock_mel = lock_mel.float()
    mel_rows = mel_of(windows.window_rows(lock, layout).split(1))
    lock_mel_joined = torch.zeros(2 * layout.total, mel_rows[0].shape[1])
    for j, (m, o) in enumerate(zip(mel_rows, layout.offsets, strict=True)):
        lock_mel_joined[2 * o : 2 * o + 2 * layout.latent] += lock_mel[j][:, None] * m
    cont_mel = equal_power_join(
        [m[None] for m in mel_of(pieces)], [2 * o for o in layout.offsets], 2 * layout.total
    )[0]
    joins = [o + layout.latent for o in layout.offsets[:-1]] + list(layout.offsets[1:])
    overlaps = [
        (2 * b, 2 * (a + layout.latent))
        for a, b in zip(layout.offsets, layout.offsets[1:], strict=False)
    ]
    return {
        "lockstep": {
            "latent_discontinuity": discontinuity(lock[0], joins),
            "mel_discontinuity": discontinuity(lock_mel_joined, [2 * j for j in joins]),
            "overlap_level_db": overlap_level_db(lock_mel_joined, overlaps),
            "sampling_s": t1 - t0,
        },
        "continuation": {
            "latent_discontinuity": discontinuity(cont[0], joins),
            "mel_discontinuity": discontinuity(cont_mel, [2 * j for j in joins]),
            "overlap_level_db": overlap_level_db(cont_mel, overlaps),
            "sampling_s": t2 - t1,
        },
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--output", type=Path, default=RESULTS / "seams-tiny.json")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    layout = plan_windows(args.duration, AUDIO_16K)
    with torch.inference_mode():
        pipe = Pipeline.from_pretrained("tiny", device="cpu")
        report = {
            "duration": args.duration,
            "windows": len(layout),
            "window_s": layout.window,
            "latent_offsets": layout.offsets,
            "steps": args.steps,
            "known_field_agreeing": field_case(layout, agree=True),
            "known_field_disagreeing": field_case(layout, agree=False),
            "tiny_network": network_case(pipe, layout, args.steps),
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.duration:g} s, {len(layout)} windows of {layout.window:.2f} s\n")
    print("| measure | lockstep | continuation |\n|---|---|---|")
    for case in ("known_field_agreeing", "known_field_disagreeing", "tiny_network"):
        for key, value in report[case]["lockstep"].items():
            other = report[case]["continuation"][key]
            print(f"| {case}: {key} | {value:.3g} | {other:.3g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
