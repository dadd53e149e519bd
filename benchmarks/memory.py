"""Low-memory mode against the default, each run in a process of its own (a peak is a process's
whole resident set: two pipelines in one process would count each other's weights).

    selva-rt bench --variant mmaudio-large-44k-v2 --modes none --low-memory --steps 5

`compare` saves the benchmark's networks (random full-size weights) to a temporary file once; each
child loads them (default: into ordinary memory; low-memory: mapped from the file, then put out to
its own stage files as `selva-rt --low-memory` does with a checkpoint), builds the pipeline,
and times one request of synthetic frames to waveform with the peak memory per part and end to
end (`runtime/memory.py`: RSS high-water mark on the CPU, the allocator's peak on CUDA). Rounds
alternate the two modes. The children write their stems, so the parent can tell how far the
modes' audio is apart.
"""

import argparse
import ctypes
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MODES = ("default", "low-memory")


def compare(args: argparse.Namespace, weights: Path, device: torch.device) -> dict:
    """Rows for the default and the low-memory pipeline of args.variant over the networks saved
    in `weights` (`torch.save(nets)`), `args.repeat` rounds (after `args.warmup` untimed ones),
    each run in a child process."""
    precision = _precision(args, device)
    with tempfile.TemporaryDirectory(prefix="selva-rt-lowmem-") as tmp:
        rows: dict[str, list[dict]] = {m: [] for m in MODES}
        for round_ in range(args.warmup + args.repeat):
            for mode in MODES:
                got = _child(args, mode, precision, weights, Path(tmp), device)
                timed = round_ >= args.warmup
                print(
                    f"  low-memory round {round_ + 1}: {mode:<10s} {got['total_s']:8.1f} s, "
                    f"peak {got['peak_total_mb']:.0f} MB {'' if timed else '(warm-up)'}",
                    flush=True,
                )
                if timed:
                    rows[mode].append(got)
        stems = {m: np.load(Path(tmp) / f"{m}.npy") for m in MODES}
    a, b = stems["low-memory"].astype(np.float64), stems["default"].astype(np.float64)
    return {
        "precision": precision,
        "steps": args.steps,
        "duration": args.duration,
        "rows": {m: _summary(rows[m]) for m in MODES},
        "audio_rel_l2_low_vs_default": float(np.linalg.norm(a - b) / np.linalg.norm(b)),
    }


def _precision(args: argparse.Namespace, device: torch.device) -> str:
    from ..runtime.device import resolve_precision

    auto = args.precisions == "auto"
    return resolve_precision("auto", device) if auto else args.precisions.split(",")[0]


def _child(args, mode: str, precision: str, weights: Path, tmp: Path, device) -> dict:
    spec = {
        "variant": args.variant,
        "mode": mode,
        "precision": precision,
        "weights": str(weights),
        "stem": str(tmp / f"{mode}.npy"),
        "device": str(device),
        "duration": args.duration,
        "steps": args.steps,
        "cfg": args.cfg,
        "seed": args.seed,
        "threads": args.threads,
    }
    # The low-memory stage files go to the temporary folder, not the user's $SELVA_RT_HOME.
    env = {**os.environ, "SELVA_RT_HOME": str(tmp / "home")}
    cmd = [sys.executable, "-m", "selva_rt.benchmarks.memory", json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"the {mode} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summary(runs: list[dict]) -> dict:
    def med(key):
        return statistics.median(r[key] for r in runs)

    parts = {
        p: statistics.median(r["peak_parts_mb"][p] for r in runs) for p in runs[0]["peak_parts_mb"]
    }
    return {
        "total_s": {"median": med("total_s"), "runs": [r["total_s"] for r in runs]},
        "setup_s": {"median": med("setup_s"), "runs": [r["setup_s"] for r in runs]},
        "peak_total_mb": med("peak_total_mb"),
        "peak_setup_mb": med("peak_setup_mb"),
        "peak_parts_mb": parts,
        "timings_s": {
            p: statistics.median(r["timings_s"][p] for r in runs) for p in runs[0]["timings_s"]
        },
        "resident_weights_mb": runs[0]["resident_weights_mb"],
    }


def markdown(report: dict) -> list[str]:
    lm = report.get("low_memory")
    if not lm:
        return []
    rows = lm["rows"]
    default, low = rows["default"], rows["low-memory"]
    parts = list(default["peak_parts_mb"])
    peak_cut = 1 - low["peak_total_mb"] / default["peak_total_mb"]
    cost = low["total_s"]["median"] - default["total_s"]["median"]
    lines = [
        "",
        f"Low-memory mode ({lm['precision']}, {lm['duration']} s, {lm['steps']} steps, one prompt, "
        f"each run a process of its own; medians of {len(default['total_s']['runs'])} runs): "
        f"peak {peak_cut:.0%} below the default; request time {cost:+.1f} s "
        f"({low['total_s']['median'] / default['total_s']['median']:.2f}×); audio rel L2 "
        f"{lm['audio_rel_l2_low_vs_default']:.1e} from the default's.",
        "",
        "| mode | request s | peak MB (whole request) | weights resident after setup MB | "
        "setup s | setup peak MB | " + " | ".join(f"peak {p}" for p in parts) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(parts),
    ]
    for name, r in rows.items():
        cells = [f"{r['peak_parts_mb'][p]:.0f}" for p in parts]
        lines.append(
            f"| {name} | {r['total_s']['median']:.1f} | {r['peak_total_mb']:.0f} "
            f"| {r['resident_weights_mb']:.0f} | {r['setup_s']['median']:.1f} "
            f"| {r['peak_setup_mb']:.0f} | " + " | ".join(cells) + " |"
        )
    return lines


# -- the child ---------------------------------------------------------------------------------


def child(spec: dict) -> dict:
    from ..runtime.backends import torch_parts_class
    from ..runtime.device import DTYPES, use_physical_cores
    from ..runtime.families import family_of
    from ..runtime.families.flow import Tokenizers
    from ..runtime.memory import PeakMeter, peak_rss
    from ..runtime.pipeline import Pipeline
    from ..runtime.variants import get_variant
    from .inputs import PROMPTS, synthetic_extras, synthetic_frames

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    else:
        use_physical_cores()
    device = torch.device(spec["device"])
    variant = dataclasses.replace(get_variant(spec["variant"]), random_weights=True)
    low = spec["mode"] == "low-memory"
    t0 = time.perf_counter()
    # Low memory maps the file (its pages leave with the networks); the default reads the
    # weights into ordinary memory, as loading a checkpoint does.
    nets = torch.load(spec["weights"], mmap=low, weights_only=False)
    parts = torch_parts_class(variant)(
        variant, nets, device, DTYPES[spec["precision"]], low_memory=low
    )
    pipe = Pipeline(family_of(variant, parts, Tokenizers.load(variant)))
    del nets
    _trim()
    setup_s = time.perf_counter() - t0
    setup_peak = peak_rss() if device.type == "cpu" else torch.cuda.max_memory_allocated(device)
    resident = sum(
        t.numel() * t.element_size()
        for m in parts.modules()
        for t in (*m.parameters(), *m.buffers())
        if not t.is_meta
    )
    frames = synthetic_frames(spec["duration"], spec["seed"]).to(device)
    extras = synthetic_extras(variant, spec["duration"], spec["seed"])
    meter = PeakMeter(device)
    pipe.meter = meter
    timings: dict[str, float] = {}
    meter.start()
    t1 = time.perf_counter()
    with meter.part("text"):
        text = pipe.encode_text(list(PROMPTS[:1]))
    out = pipe.synthesize(
        [{"sync": frames, **extras}],
        text,
        pipe.family.plan(spec["duration"]),
        seed=spec["seed"],
        steps=spec["steps"],
        cfg=spec["cfg"],
        timings=timings,
    )
    total_s = time.perf_counter() - t1
    total = meter.stop()
    np.save(spec["stem"], out.audio.float().cpu().numpy())
    mb = 2**20
    return {
        "mode": spec["mode"],
        "total_s": total_s,
        "setup_s": setup_s,
        "timings_s": timings,
        "peak_total_mb": total / mb,
        "peak_setup_mb": setup_peak / mb,
        "peak_parts_mb": {k: v / mb for k, v in meter.parts.items()},
        "resident_weights_mb": resident / mb,
    }


def _trim() -> None:
    """Pages glibc keeps after frees back to the OS, so the resident set is what is live."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))), flush=True)
