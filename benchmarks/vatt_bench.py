"""VATT's latency, per part and end to end, fast mode against reference mode (`selva-rt bench
--variant tiny-vatt`; `selva-rt bench` hands VATT variants here).

    selva-rt bench --variant tiny-vatt [--prompts 1,4] [--steps 16] [--repeat 3] ...
    selva-rt bench --variant vatt-llama --weights random-audio --steps 2 --prompts 1,2

Modes (`VattTorchParts`): reference runs the official way (the converter and VATT Audio once
per prompt, B=1, VATT Audio's CFG pair one batch of 2; eva02 one frame at a time); fast batches
the prompts (converter calls per prompt length, VATT Audio once per step for all prompts) and
eva02 frames. `--backends torch,onnxruntime` adds the ONNX Runtime backend (`VattOrtParts`:
graphs exported here from the same networks into a temporary folder), fp32 only.

Each run is `family.encode_text` + `Pipeline.synthesize` of one 10 s window (50 eva02 crops ->
features -> converter -> MaskGIT -> Encodec), configurations round-robin in one process on the
same weights and inputs. Reported per configuration: median and min seconds per part and
frames -> waveform, real-time factor, the process's peak resident memory above what it held
before the run, the speedup over reference mode (same precision and prompts), and the outputs'
distance from it (token agreement; audio relative L2 where every token agrees).

Weights: `random` is the variant's own random weights (tiny-vatt). `random-audio` (for
vatt-llama / vatt-gemma) is VATT Audio and Encodec at full size with random weights in the
official layout, with tiny-vatt's eva02 and converter (the 7B LLM does not fit this machine and
runs once per window, not in the sampling loop; VATT Audio's condition width follows the small
converter: its img_linear is 64 -> 1024, a negligible part of a step). `local`: the downloaded
files. Results go to benchmarks/results/<name>.json and .md.
"""

import argparse
import dataclasses
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..runtime.backends.vatt_parts import VattTorchParts
from ..runtime.device import DTYPES, resolve_device, resolve_precision
from ..runtime.families import family_of
from ..runtime.families.vatt import FRAMES
from ..runtime.models.vatt_networks import VattNetworks, build_vatt_networks
from ..runtime.pipeline import Pipeline
from ..runtime.variants import TINY_VATT, VARIANTS, Variant, get_variant
from .bench import RESULTS, PeakMemory, environment, stats, write_report

PROMPTS = ("dog barking", "car horn honking", "sheep bleating", "rain on a window")


def handles(argv: Sequence[str]) -> bool:
    """Whether `selva-rt bench ARGV` names a VATT variant (this benchmark's)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--variant", default="selva-small-16k")
    known, _ = p.parse_known_args(list(argv))
    return known.variant in VARIANTS and VARIANTS[known.variant].vatt


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="selva-rt bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="tiny-vatt")
    p.add_argument("--weights", choices=("random", "random-audio", "local"), default="random")
    p.add_argument("--device", default="auto")
    p.add_argument("--backends", default="torch", help="comma list of torch,onnxruntime")
    p.add_argument("--modes", default="reference,fast")
    p.add_argument("--precisions", default="auto", help="comma list of fp32, bf16, fp16")
    p.add_argument("--prompts", default="1,4")
    p.add_argument("--steps", type=int, default=None, help="default: the variant's (16)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--name", default=None)
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    variant = get_variant(args.variant)
    if not variant.vatt:
        raise SystemExit(f"{args.variant} is not a VATT variant")
    if (args.weights == "random") != variant.random_weights and args.weights != "local":
        raise SystemExit("--weights random is tiny-vatt's; full-size variants: random-audio")
    args.steps = args.steps or variant.steps
    return args


def bench_variant(args) -> Variant:
    """The variant timed: tiny-vatt, the named one (local files), or full-size VATT Audio and
    Encodec around tiny-vatt's eva02 and converter (random-audio)."""
    variant = get_variant(args.variant)
    if args.weights != "random-audio":
        return variant
    tiny = TINY_VATT.generator
    full = variant.generator
    audio = dataclasses.replace(full.audio, encoder_dim=tiny.converter.hidden)
    config = dataclasses.replace(tiny, audio=audio, encodec=full.encodec)
    name = f"{variant.name} (random full-size VATT Audio + Encodec)"
    return dataclasses.replace(TINY_VATT, name=name, generator=config)


def networks(variant: Variant) -> VattNetworks:
    from ..runtime import weights

    paths = {} if variant.random_weights else weights.resolve(variant)
    return build_vatt_networks(variant, paths)


def pipelines(args, variant: Variant, device: torch.device, tmp: Path) -> dict[str, Pipeline]:
    """name -> Pipeline, each over its own copy of the networks (modes and dtypes differ)."""
    precisions = (
        [resolve_precision("auto", device)] if args.precisions == "auto"
        else args.precisions.split(",")
    )  # fmt: skip
    out = {}
    for backend in args.backends.split(","):
        if backend == "onnxruntime":
            out["onnxruntime/fp32"] = ort_pipeline(variant, device, tmp)
            continue
        for precision in precisions:
            for mode in args.modes.split(","):
                nets = networks(variant)
                parts = VattTorchParts(
                    variant, nets, device, DTYPES[precision], reference=mode == "reference"
                )
                out[f"{mode}/{precision}"] = Pipeline(family_of(variant, parts))
    return out


def ort_pipeline(variant: Variant, device: torch.device, tmp: Path) -> Pipeline:
    from ..export import vatt_onnx
    from ..runtime.backends.graphs import Manifest, PartEntry
    from ..runtime.backends.vatt_ort_parts import PARTS, VattOrtParts

    nets = networks(variant)
    entries = {}
    for part in PARTS:
        sha, _ = vatt_onnx.export_part(part, variant, nets, tmp / f"{part}.onnx")
        entries[part] = PartEntry(
            f"{part}.onnx", sha, "fp32", **vatt_onnx.io_entries(part, variant)
        )
    digest = vatt_onnx.model_hash(nets)
    manifest = Manifest(variant.name, "fp32", digest, vatt_onnx.OPSET, {}, {}, "", entries)
    graphs = {p: tmp / e.onnx for p, e in entries.items()}
    return Pipeline(family_of(variant, VattOrtParts(variant, nets, manifest, graphs, device)))


def run_once(pipe: Pipeline, crops: torch.Tensor, prompts: list[str], args) -> dict:
    timings: dict[str, float] = {}
    cpu0 = time.process_time()
    with PeakMemory(pipe.device) as peak:
        t0 = time.perf_counter()
        text = pipe.family.encode_text(prompts)
        timings["text"] = time.perf_counter() - t0
        layout = pipe.family.plan(pipe.variant.generator.window)
        out = pipe.synthesize(
            [{FRAMES: crops}], text, layout, seed=args.seed, steps=args.steps, timings=timings
        )
        timings["frames_to_waveform"] = time.perf_counter() - t0
    return {
        "timings": timings,
        "cpu_s": time.process_time() - cpu0,
        "peak_memory": peak.peak,
        "tokens": out.latent,
        "audio": out.audio,
    }


def summarise(name: str, runs: list[dict], prompts: int, window: float) -> dict:
    parts = [k for k in runs[0]["timings"] if k != "frames_to_waveform"]
    f2w = stats([r["timings"]["frames_to_waveform"] for r in runs])
    peak = max((r["peak_memory"] or 0) for r in runs) or None
    return {
        "name": f"{name}/p{prompts}",
        "config": name,
        "prompts": prompts,
        "frames_to_waveform_s": f2w,
        "frames_to_waveform_cpu_s": stats([r["cpu_s"] for r in runs]),
        "parts_s": {p: stats([r["timings"][p] for r in runs]) for p in parts},
        "rtf": f2w["median"] / window,
        "peak_memory_mb": None if peak is None else round(peak / 2**20, 1),
    }


def compare(results: list[dict], last: dict[str, dict]) -> None:
    """Speedup over reference (same precision, prompts) and the outputs' distance from it."""
    by_name = {r["name"]: r for r in results}
    for r in results:
        precision = r["config"].split("/")[1]
        ref = by_name.get(f"reference/{precision}/p{r['prompts']}")
        if r["config"].startswith("onnxruntime"):
            ref = by_name.get(f"reference/fp32/p{r['prompts']}")
        if ref is None or ref is r:
            continue
        r["reference"] = ref["name"]
        r["speedup_vs_reference"] = (
            ref["frames_to_waveform_s"]["median"] / r["frames_to_waveform_s"]["median"]
        )
        r["parts_speedup_vs_reference"] = {
            p: ref["parts_s"][p]["median"] / v["median"]
            for p, v in r["parts_s"].items()
            if p in ref["parts_s"] and v["median"] > 0
        }
        mine, theirs = last[r["name"]], last[ref["name"]]
        equal = (mine["tokens"] == theirs["tokens"]).float().mean().item()
        r["tokens_equal_to_reference"] = equal
        a, b = mine["audio"].double(), theirs["audio"].double()
        r["audio_rel_l2_vs_reference"] = ((a - b).norm() / b.norm()).item()


def markdown(report: dict) -> str:
    env, s = report["environment"], report["setup"]
    lines = [
        f"# selva-rt bench: {s['variant']} on {env['device']['name']}",
        "",
        f"{env['date']}, commit {(env['commit'] or '?')[:10]}{' (dirty)' if env['dirty'] else ''}"
        f", torch {env['versions']['torch']}, {env['cpu']['threads']} CPU threads; load average "
        f"(1, 5, 15 min) {env['load_average_start']} at the start, {report['load_average_end']} "
        f"at the end. Weights: {s['weights']}. One 10 s window, {s['steps']} MaskGIT steps, "
        f"cfg {s['cfg']}; {s['warmup']} warm-up + {s['repeat']} timed rounds, round-robin; "
        "medians (min in brackets).",
    ]
    if s.get("note"):
        lines += ["", s["note"]]
    parts = list(report["results"][0]["parts_s"])
    lines += [
        "",
        "| configuration | frames→waveform s | speedup vs reference | RTF | CPU s | "
        + " | ".join(parts)
        + " | peak MB | tokens = reference | audio rel L2 vs reference |",
        "|---" * (8 + len(parts)) + "|",
    ]
    for r in report["results"]:
        f2w = r["frames_to_waveform_s"]
        speed = r.get("speedup_vs_reference")
        cells = [
            r["name"],
            f"{f2w['median']:.3g} ({f2w['min']:.3g})",
            "—" if speed is None else f"{speed:.2f}×",
            f"{r['rtf']:.3g}",
            f"{r['frames_to_waveform_cpu_s']['median']:.3g}",
            *(f"{r['parts_s'][p]['median']:.3g}" for p in parts),
            "—" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}",
            "—"
            if "tokens_equal_to_reference" not in r
            else f"{r['tokens_equal_to_reference']:.2%}",
            "—"
            if "audio_rel_l2_vs_reference" not in r
            else f"{r['audio_rel_l2_vs_reference']:.2e}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    variant = bench_variant(args)
    env = environment(device)
    prompt_counts = [int(n) for n in args.prompts.split(",")]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        pipes = pipelines(args, variant, device, Path(tmp))
        load_s = time.perf_counter() - t0
        c = variant.generator
        s = c.image.image_size
        gen = torch.Generator().manual_seed(args.seed)
        crops = torch.randint(0, 256, (c.converter.video_frames, 3, s, s), generator=gen).byte()
        configs = [(name, n) for n in prompt_counts for name in pipes]
        print(f"selva-rt bench: {len(configs)} configurations of {variant.name}", flush=True)
        runs: dict[str, list[dict]] = {f"{n}/p{p}": [] for n, p in configs}
        last: dict[str, dict] = {}
        for round_ in range(args.warmup + args.repeat):
            for name, n in configs:
                run = run_once(pipes[name], crops, list(PROMPTS[:n]), args)
                key = f"{name}/p{n}"
                timed = round_ >= args.warmup
                print(
                    f"  round {round_ + 1} {key:<22s} {run['timings']['frames_to_waveform']:8.2f} s"
                    f"{'' if timed else ' (warm-up)'}",
                    flush=True,
                )
                if timed:
                    runs[key].append(run)
                last[key] = run
    window = variant.generator.window
    results = [summarise(name, runs[f"{name}/p{n}"], n, window) for name, n in configs]
    compare(results, last)
    report = {
        "environment": env,
        "setup": {
            "variant": variant.name,
            "weights": args.weights,
            "steps": args.steps,
            "cfg": variant.cfg,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "load_s": round(load_s, 1),
            "note": args.note,
        },
        "results": results,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }
    write_report(report, markdown(report), args, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
