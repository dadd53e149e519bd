"""How VATT's windows are joined: the measurement behind runtime/families/vatt.py.

    python -m selva_rt.benchmarks.vatt_seams --overlaps 1,2,4 --seeds 0,1,2   # the results

VATT fills 10 s of discrete Encodec tokens with MaskGIT; a longer clip runs in overlapping 10 s
windows, each conditioned on its own picture. Tokens cannot be averaged like latents, so the
candidates are:

  continuation  windows one after another; each starts from the tokens of its overlap with the
                stem so far and MaskGIT fills the rest (the schedule counts the MASK slots it
                starts from); one token sequence, decoded in one pass (runtime/families/vatt.py)
  cut           windows sampled independently from all-MASK; the tokens joined at the middle
                of each overlap; decoded in one pass
  crossfade     the same independent windows, each decoded on its own, the waveforms joined
                with an equal-power fade across each overlap (their content is independent)
  lockstep      one token state for the whole stem; at every step each window's CFG logits for
                its slots (row n of a window's flattened logits is its token slot n, the pairing
                the weights learned) are blended across each overlap with linear ramps, then one
                MaskGIT step runs over the stem (cosine schedule over all its slots)

measured on the tiny-vatt network (random weights) with a picture whose features change over
time (each window reads its own 10 s of them), averaged over seeds:

  seam NLL      the network's own judgement of the joined tokens: a 10 s scoring window centred
                on a join (a window no method sampled) with the 1 s around the join masked;
                the mean negative log-likelihood (CFG logits, as sampled) of the stem's tokens
                there, minus the same measured at the middle of each window (no join). Lower is
                better; ~0 means the seam is as plausible to the model as the rest (cut and
                continuation only: crossfade has no tokens at its seams)
  flux          the largest frame-to-frame change of the log spectrum (20 ms frames) within
                60 ms of a join over its 99th percentile elsewhere: a click or a jump is > 1
  level         mean energy of the overlaps minus elsewhere (dB): a dip or a bump at the seams
  time          seconds of sampling (the same number of network rows for every method)

Writes benchmarks/results/vatt-seams-tiny.json and prints a markdown table.
"""

import argparse
import dataclasses
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

from ..runtime import maskgit
from ..runtime.families.family import Run
from ..runtime.pipeline import Pipeline
from ..runtime.windows import Layout, blend_weights, plan_fixed_windows

RESULTS = Path(__file__).parent / "results"
METHODS = ("continuation", "cut", "crossfade", "lockstep")
PROMPT = "a dog barks while cars pass by"
SCORE_MASK = 1.0  # seconds masked around a scored position


@dataclasses.dataclass
class Clip:
    """One benchmark clip: its windows, each window's conditions, and the picture's features
    over time (50 per 10 s) to condition a scoring window anywhere."""

    layout: Layout
    features: torch.Tensor  # [5 fps frames of the whole stem, 768]
    conditions: dict


def make_clip(pipe: Pipeline, duration: float, overlap: float, seed: int) -> Clip:
    """Features drifting over time (a random walk of the frames' features, as a picture changes)
    and each window's converter states for PROMPT."""
    c = pipe.variant.generator
    layout = plan_fixed_windows(duration, c.window, 50, overlap)
    frames = math.ceil(layout.total / 10)  # 5 fps over 50 Hz tokens
    g = torch.Generator().manual_seed(1000 + seed)
    steps = torch.randn(frames, c.image.embed_dim, generator=g) * 0.3
    features = torch.randn(1, c.image.embed_dim, generator=g) + steps.cumsum(0)
    text = pipe.family.encode_text([PROMPT])
    windows = [{"video": window_features(features, o, c)} for o in layout.offsets]
    run = Run(pipe.device, torch.Generator().manual_seed(seed))
    return Clip(layout, features, pipe.family.conditions(text, windows, layout, run))


def window_features(features: torch.Tensor, offset: int, c) -> torch.Tensor:
    """The 50 frames of a window starting at token `offset` (10 tokens per frame)."""
    start = offset // 10
    return features[start : start + c.converter.video_frames]


def logits_of(pipe: Pipeline, clip: Clip, j: int):
    rows = slice(j, j + 1)
    s, m = clip.conditions["states"][rows], clip.conditions["masks"][rows]
    return maskgit.grouped_logits(pipe.parts.logits, s, m)


def independent(pipe: Pipeline, clip: Clip, steps: int, seed: int) -> list[torch.Tensor]:
    """Each window from all-MASK, one after another on one generator: [1, K, n] each."""
    c = pipe.variant.generator
    config = dataclasses.replace(c.sampler, steps=steps)
    gens = maskgit.generators_for([seed])
    shape = (c.audio.n_codebooks, clip.layout.latent)
    return [
        maskgit.generate(logits_of(pipe, clip, j), shape, c.audio.num_tokens, gens, config)
        for j in range(len(clip.layout))
    ]


def continuation(pipe: Pipeline, clip: Clip, steps: int, seed: int) -> torch.Tensor:
    """The family's own sampler."""
    run = Run(pipe.device, torch.Generator().manual_seed(seed))
    x0 = pipe.family.noise(1, clip.layout, run)
    cfg = pipe.variant.generator.sampler.cfg
    return pipe.family.sample(x0, clip.conditions, clip.layout, steps, cfg, None, run)


def cut(pieces: list[torch.Tensor], layout: Layout) -> torch.Tensor:
    """Independent windows' tokens joined at the middle of each overlap: [1, K, total]."""
    out = pieces[0].new_zeros(1, pieces[0].shape[1], layout.total)
    bounds = [0]
    for a, b in zip(layout.offsets, layout.offsets[1:], strict=False):
        bounds.append((b + a + layout.latent) // 2)
    bounds.append(layout.total)
    for j, piece in enumerate(pieces):
        lo, hi = bounds[j], bounds[j + 1]
        out[..., lo:hi] = piece[..., lo - layout.offsets[j] : hi - layout.offsets[j]]
    return out


def lockstep(pipe: Pipeline, clip: Clip, steps: int, seed: int) -> torch.Tensor:
    """One stem token state; each step the windows' CFG logits blended on shared slots."""
    c = pipe.variant.generator
    layout, k = clip.layout, c.audio.n_codebooks
    config = dataclasses.replace(c.sampler, steps=steps)
    gens = maskgit.generators_for([seed])
    mask_id = c.audio.num_tokens
    weights = blend_weights(layout.offsets, layout.latent).float()  # [W, n] per token time
    tokens = torch.full((1, k, layout.total), mask_id, dtype=torch.long)
    fns = [logits_of(pipe, clip, j) for j in range(len(layout))]
    at_start = torch.tensor([k * layout.total])
    for step in range(steps):
        blended = None
        for j, (fn, offset) in enumerate(zip(fns, layout.offsets, strict=True)):
            cond, uncond = fn(tokens[..., offset : offset + layout.latent])
            rows = maskgit.cfg_logits(cond, uncond, config.cfg)  # [1, K * n, V]
            if blended is None:
                blended = rows.new_zeros(1, k * layout.total, rows.shape[-1])
            w = weights[j].repeat_interleave(k)[None, :, None]  # slot 4t + c of window time t
            blended[:, k * offset : k * (offset + layout.latent)] += w * rows
        tokens = maskgit.maskgit_step(blended, tokens, step, mask_id, gens, config, at_start).tokens
    return tokens


def equal_power(waves: list[torch.Tensor], starts: list[int], total: int) -> torch.Tensor:
    """Waveforms [L] at `starts` joined with cos/sin fades across each overlap."""
    length = waves[0].shape[-1]
    out = torch.zeros(total)
    i = torch.arange(length) + 0.5
    for j, (w, s) in enumerate(zip(waves, starts, strict=True)):
        g = torch.ones(length)
        if j > 0:
            up = starts[j - 1] + length - s
            g = torch.where(i < up, torch.sin(0.5 * math.pi * i / up), g)
        if j + 1 < len(waves):
            down = s + length - starts[j + 1]
            fade = torch.cos(0.5 * math.pi * (i - length + down) / down)
            g = torch.where(i > length - down, g * fade, g)
        out[s : s + length] += w * g
    return out


def seam_nll(pipe: Pipeline, clip: Clip, tokens: torch.Tensor, centre: int) -> float:
    """Mean NLL of the stem's tokens within SCORE_MASK s of token time `centre`, masked, in a
    10 s window centred there, conditioned on that window's picture."""
    c = pipe.variant.generator
    layout, k, n = clip.layout, c.audio.n_codebooks, clip.layout.latent
    offset = min(max(0, centre - n // 2), layout.total - n)
    offset -= offset % 10  # on the 5 fps frame grid
    window = tokens[..., offset : offset + n].clone()
    half = round(SCORE_MASK * 25)
    lo, hi = centre - offset - half, centre - offset + half
    window[..., lo:hi] = c.audio.num_tokens
    text = pipe.family.encode_text([PROMPT])
    video = window_features(clip.features, offset, c)
    ((states, mask),) = pipe.parts.conditions(text.ids, video)
    cond, uncond = pipe.parts.logits(window, states[None], mask[None])
    logp = maskgit.cfg_logits(cond, uncond, c.sampler.cfg).log_softmax(-1)[0]  # [K * n, V]
    slots = torch.arange(lo * k, hi * k)  # time-major token slots 4t + c
    truth = tokens[0, :, offset : offset + n].T.reshape(-1)[slots]
    return -logp[slots, truth].mean().item()


def log_spectrum(wave: torch.Tensor, hop: int = 320) -> torch.Tensor:
    spec = torch.stft(wave, 1024, hop, window=torch.hann_window(1024), return_complex=True)
    return (spec.abs() + 1e-5).log().T  # [frames, bins]


def flux(wave: torch.Tensor, joins: list[int], margin: int = 3) -> float:
    """Largest log-spectral change within `margin` frames of a join over the 99th percentile
    of the change elsewhere (frames of 20 ms = one token)."""
    change = log_spectrum(wave).diff(dim=0).norm(dim=1)
    near = torch.zeros(len(change), dtype=torch.bool)
    for j in joins:
        near[max(0, j - margin) : j + margin] = True
    return (change[near].max() / change[~near].quantile(0.99)).item()


def level_db(wave: torch.Tensor, overlaps: list[tuple[int, int]], hop: int = 320) -> float:
    power = wave[: len(wave) // hop * hop].view(-1, hop).pow(2).mean(1)
    inside = torch.zeros(len(power), dtype=torch.bool)
    for a, b in overlaps:
        inside[a:b] = True
    return (10 * torch.log10(power[inside].mean() / power[~inside].mean())).item()


def measure(pipe: Pipeline, duration: float, overlap: float, steps: int, seed: int) -> dict:
    clip = make_clip(pipe, duration, overlap, seed)
    layout = clip.layout
    hop = pipe.variant.generator.encodec.hop
    t0 = time.perf_counter()
    cont = continuation(pipe, clip, steps, seed)
    t1 = time.perf_counter()
    pieces = independent(pipe, clip, steps, seed)
    t2 = time.perf_counter()
    lock = lockstep(pipe, clip, steps, seed)
    t3 = time.perf_counter()
    tokens = {"continuation": cont, "cut": cut(pieces, layout), "lockstep": lock}
    waves = {m: pipe.parts.decode(t)[0] for m, t in tokens.items()}
    waves["crossfade"] = equal_power(
        [pipe.parts.decode(p)[0] for p in pieces],
        [o * hop for o in layout.offsets],
        layout.total * hop,
    )
    seconds = {"continuation": t1 - t0, "cut": t2 - t1, "crossfade": t2 - t1, "lockstep": t3 - t2}
    pairs = list(zip(layout.offsets, layout.offsets[1:], strict=False))
    # Where each method joins: continuation at the end of the kept overlap (the new window's
    # first sampled token), cut at the overlap's middle, crossfade and lockstep across it.
    joins = {
        "continuation": [a + layout.latent for a, _ in pairs],
        "cut": [(b + a + layout.latent) // 2 for a, b in pairs],
        "lockstep": [(b + a + layout.latent) // 2 for a, b in pairs],
        "crossfade": [(b + a + layout.latent) // 2 for a, b in pairs],
    }
    middles = [o + layout.latent // 2 for o in layout.offsets]
    overlaps = [(b, a + layout.latent) for a, b in pairs]
    out = {}
    for m in METHODS:
        row = {
            "flux": flux(waves[m], joins[m]),
            "level_db": level_db(waves[m], overlaps),
            "sampling_s": seconds[m],
        }
        if m in tokens:
            seam = sum(seam_nll(pipe, clip, tokens[m], j) for j in joins[m]) / len(pairs)
            rest = sum(seam_nll(pipe, clip, tokens[m], j) for j in middles) / len(middles)
            row["seam_nll_excess"] = seam - rest
        out[m] = row
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=25.0)
    p.add_argument("--overlaps", default="2,4", help="comma list of least overlaps (s)")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--output", type=Path, default=RESULTS / "vatt-seams-tiny.json")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    report = {
        "variant": "tiny-vatt",
        "duration": args.duration,
        "steps": args.steps,
        "seeds": seeds,
        "machine": {"cpu": platform.machine(), "threads": torch.get_num_threads()},
        "load_average_start": list(os.getloadavg()),
        "overlaps": {},
    }
    with torch.inference_mode():
        pipe = Pipeline.from_pretrained("tiny-vatt", device="cpu", precision="fp32")
        for overlap in (float(o) for o in args.overlaps.split(",")):
            layout = plan_fixed_windows(args.duration, 10.0, 50, overlap)
            runs = [measure(pipe, args.duration, overlap, args.steps, s) for s in seeds]
            mean = {
                m: {k: sum(r[m][k] for r in runs) / len(runs) for k in runs[0][m]} for m in METHODS
            }
            report["overlaps"][str(overlap)] = {
                "windows": len(layout),
                "offsets": layout.offsets,
                "mean": mean,
                "runs": runs,
            }
    report["load_average_end"] = list(os.getloadavg())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    for overlap, r in report["overlaps"].items():
        print(f"\n{args.duration:g} s, least overlap {overlap} s, {r['windows']} windows\n")
        print(
            "| method | seam NLL excess | flux | level (dB) | sampling (s) |\n|---|---|---|---|---|"
        )
        for m, v in r["mean"].items():
            nll = f"{v['seam_nll_excess']:.3f}" if "seam_nll_excess" in v else "-"
            print(
                f"| {m} | {nll} | {v['flux']:.2f} | {v['level_db']:.2f} | {v['sampling_s']:.1f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
