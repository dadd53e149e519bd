"""Per-part latency and single-pass error of the CPU engines: torch fp32 and bf16, ONNX Runtime
fp32 and int8, on the same networks and the same inputs, one part at a time.

    python -m selva_rt.benchmarks.cpu_parts [--variant selva-small-16k] [--engines DIR]
                                            [--repeat 5] [--threads N]

What the whole-pipeline benchmark (bench.py) costs too much to run at full size on a small CPU:
each part once per call with one prompt, at the sizes of one 8 s generation, except the video
trunk, which runs one 16-frame segment (an 8 s clip has 24; its cost is linear in them).
Inputs: text features of one prompt, the trunk tokens of the synthetic segment and the [SUP]
selection over them, tiled to 8 s for the DiT conditions; the dit_step at t = 0.5 on seeded
noise; the decoder on a seeded normalised latent. Each engine's output is compared with the
torch fp32 part's on these identical inputs (relative L2). Times are medians of `--repeat`
calls after one untimed call, round-robin over engines per part.

Results go to benchmarks/results/cpu-parts-<variant>.json and .md; the markdown is printed.
"""

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..runtime.variants import get_variant
from . import bench

PARTS = ("t5", "clip_text", "video_trunk", "video_select", "dit_step", "decoder")
DURATION = 8.0  # the trained duration: the DiT and decoder sizes of one generation
SEGMENT_FRAMES = 16


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cpu_parts", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="selva-small-16k")
    p.add_argument("--weights", choices=("random", "local"), default="random")
    p.add_argument("--engines", type=Path, default=None, metavar="DIR", help="as bench.py's")
    p.add_argument("--precisions", default="fp32,bf16", help="torch precisions")
    p.add_argument("--ort-precisions", default="fp32,int8")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="CPU threads of both engines")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=bench.RESULTS)
    p.add_argument("--name", default=None)
    return p.parse_args(argv)


@torch.inference_mode()
def part_inputs(pipe, seed: int) -> dict[str, tuple]:
    """fp32 arguments of each part (one prompt), computed by the torch fp32 `pipe`."""
    variant, parts = pipe.variant, pipe.parts
    prompt = list(bench.PROMPTS[:1])
    text = pipe.family.encode_text(prompt)
    inputs: dict[str, tuple] = {}
    if variant.t5 is not None:
        ids, mask = pipe.family.tokenizers.t5(prompt)
        inputs["t5"] = (ids, mask.long())
    inputs["clip_text"] = (pipe.family.tokenizers.clip([*prompt, ""]),)
    frames = bench.synthetic_frames(SEGMENT_FRAMES / 25, seed)
    inputs["video_trunk"] = (frames, 1)
    trunk = parts.video_trunk(frames, 1)
    inputs["video_select"] = (trunk, text.t5, text.t5_mask, 1)
    sync = parts.video_select(trunk, text.t5, text.t5_mask, 1)  # [1, 8, D]: one segment
    seq = variant.sequence_lengths(DURATION)
    sync = sync.repeat(1, math.ceil(seq.sync / sync.shape[1]), 1)[:, : seq.sync]
    conditions = parts.dit_conditions(None, sync, text.clip, text.negative, seq.latent, seq.clip)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, seq.latent, variant.generator.latent_dim, generator=g)
    t = bench.MID_TRAJECTORY
    inputs["dit_step"] = (noise, torch.full((1,), t), conditions, variant.cfg)
    inputs["decoder"] = (torch.randn(noise.shape, generator=g),)
    return inputs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    env = bench.environment(device)
    bench_args = bench.parse_args(
        [
            "--variant",
            args.variant,
            "--weights",
            args.weights,
            "--modes",
            "fast",
            "--precisions",
            args.precisions,
            "--prompts",
            "1",
            "--backends",
            "torch,onnxruntime",
            "--ort-precisions",
            args.ort_precisions,
            *(["--threads", str(args.threads)] if args.threads else []),
            *(["--engines", str(args.engines)] if args.engines else []),
        ]
    )
    torch_configs = bench.configs_of(bench_args, device)
    graph_configs = bench.graph_configs(bench_args, device)
    t0 = time.perf_counter()
    nets = (
        bench.random_networks(args.variant)
        if args.weights == "random"
        else bench.local_networks(args.variant)
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.engines or Path(tmp)
        graph = bench.make_graph_pipelines(bench_args, nets, graph_configs, device, folder)
    pipes = bench.make_pipelines(args.variant, nets, torch_configs, device, True)
    pipes.update(graph)
    load_s = time.perf_counter() - t0
    names = {c: c.name.removesuffix("/p1").replace("fast/", "torch/") for c in pipes}
    base = next(c for c in torch_configs if c.precision == "fp32")

    inputs = part_inputs(pipes[base], args.seed)
    rows = {names[c]: {"ms": {}, "rel_l2": {}} for c in pipes}
    for part, a in inputs.items():
        expected = bench._part_outputs(pipes[base].parts, part, a)
        times = {c: [] for c in pipes}
        for i in range(args.repeat + 1):  # round-robin; the first call of each is untimed
            for c, pipe in pipes.items():
                cast = bench._cast(a, pipe.parts.dtype)
                t1 = time.perf_counter()
                got = bench._part_outputs(pipe.parts, part, cast)
                if i:
                    times[c].append(time.perf_counter() - t1)
                else:
                    rows[names[c]]["rel_l2"][part] = bench.rel_l2(got[-1], expected[-1])
        for c in pipes:
            rows[names[c]]["ms"][part] = 1000 * bench.stats(times[c])["median"]
        print(
            f"  {part}: "
            + ", ".join(f"{names[c]} {rows[names[c]]['ms'][part]:.1f} ms" for c in pipes),
            flush=True,
        )

    variant = get_variant(args.variant)
    seq = variant.sequence_lengths(DURATION)
    report = {
        "environment": env,
        "load_average_end": bench._loadavg(),
        "setup": {
            "variant": args.variant,
            "weights": bench.weights_note(bench_args),
            "repeat": args.repeat,
            "load_s": load_s,
            "sizes": {
                "video_trunk": f"frames [1, {SEGMENT_FRAMES}, 3, 224, 224] (one segment)",
                "video_select": "one segment, one prompt",
                "dit_step": f"one prompt, {DURATION:g} s (latent {seq.latent}), CFG batched",
                "decoder": f"one prompt, {DURATION:g} s ({seq.audio_samples} samples)",
            },
            "int8": _int8_record(graph),
        },
        "against": names[base],
        "rows": rows,
    }
    stem = args.name or f"cpu-parts-{args.variant}"
    args.output.mkdir(parents=True, exist_ok=True)
    md = markdown(report)
    (args.output / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.output / f"{stem}.md").write_text(md)
    print(md)
    return 0


def _int8_record(graph: dict) -> dict:
    """What the int8 build quantised, per part (from its manifest)."""
    for pipe in graph.values():
        manifest = pipe.parts.manifest
        if manifest.precision == "int8":
            return {p: e.quantized or "fp32" for p, e in manifest.parts.items()}
    return {}


def markdown(report: dict) -> str:
    env, setup, rows = report["environment"], report["setup"], report["rows"]
    parts = list(next(iter(rows.values()))["ms"])
    base = rows[report["against"]]["ms"]
    lines = [
        f"# CPU engines per part: {setup['variant']} on {env['device']['name']}",
        "",
        f"{env['date']}, commit {(env['commit'] or 'unknown')[:10]}, torch "
        f"{env['versions']['torch']}, {env['cpu']['threads']} threads; load average at the "
        f"start {env['load_average_start']}, at the end {report['load_average_end']}. "
        f"Weights: {setup['weights']}. Median of "
        f"{setup['repeat']} calls per part, round-robin over engines.",
        "",
        "Sizes: " + "; ".join(f"{k}: {v}" for k, v in setup["sizes"].items()) + ".",
        "",
        f"Milliseconds per call (speedup over {report['against']} in brackets):",
        "",
        "| engine | " + " | ".join(parts) + " |",
        "|---|" + "---|" * len(parts),
    ]
    for name, r in rows.items():
        cells = [f"{r['ms'][p]:.1f} ({base[p] / r['ms'][p]:.2f}×)" for p in parts]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Single pass, relative L2 against {report['against']} on identical inputs "
        "(decoder: the waveform):",
        "",
        "| engine | " + " | ".join(parts) + " |",
        "|---|" + "---|" * len(parts),
    ]
    for name, r in rows.items():
        if name != report["against"]:
            lines.append(f"| {name} | " + " | ".join(f"{r['rel_l2'][p]:.2e}" for p in parts) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
