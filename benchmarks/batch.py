"""Clips per hour of `selva-rt batch`, in process against a local Ray cluster, same job list.

    python -m selva_rt.benchmarks.batch [--variant tiny] [--jobs 8] [--steps 10] [--duration 3]

Each mode runs the CLI in a fresh process on the same JSONL (the bundled sample clip, one prompt,
a different seed per job) into a fresh folder, so start-up (model load; cluster start and actor
load for Ray) counts. Reported per mode: wall seconds of the command, clips per hour over that
wall time, and the steady rate (clips per hour between the first and the last job's record,
start-up excluded). Results go to benchmarks/results/batch-<variant>.json and .md.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime as dt
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SAMPLE = Path(__file__).parents[1] / "runtime" / "assets" / "sample.mp4"


def run_mode(jobs: Path, out: Path, args, ray: bool) -> dict:
    cmd = [sys.executable, "-m", "selva_rt.runtime.cli", "batch", str(jobs), "--out", str(out)]
    cmd += ["--variant", args.variant, "--device", "cpu", "--quiet", "--json"]
    cmd += ["--steps", str(args.steps), "--duration", str(args.duration)]
    cmd += ["--ray", "local"] if ray else []
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"batch failed ({'ray' if ray else 'local'}): {proc.stderr.strip()}")
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    done = sorted(dt.fromisoformat(r["time"].rstrip("Z")) for r in records if r["status"] == "ok")
    span = (done[-1] - done[0]).total_seconds()
    return {
        "mode": "ray local" if ray else "in process",
        "jobs": len(done),
        "wall_s": round(wall, 1),
        "clips_per_hour": round(len(done) / wall * 3600),
        # n jobs finish n-1 intervals after the first one finished
        "steady_clips_per_hour": round((len(done) - 1) / span * 3600) if span else None,
        "workers": sorted({r["worker"] for r in records if r["status"] == "ok"}),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m selva_rt.benchmarks.batch", description=__doc__)
    p.add_argument("--variant", default="tiny")
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per mode")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        jobs = Path(tmp) / "jobs.jsonl"
        lines = [
            {"clip": str(SAMPLE), "prompts": ["sheep bleating"], "seed": i, "name": f"job{i}"}
            for i in range(args.jobs)
        ]
        jobs.write_text("".join(json.dumps(j) + "\n" for j in lines))
        rows = [run_mode(jobs, Path(tmp) / mode, args, mode == "ray") for mode in ("local", "ray")]
    load = os.getloadavg()
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {load[0]:.1f} at the end",
        "variant": args.variant,
        "steps": args.steps,
        "duration_s": args.duration,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    name = f"batch-{args.variant}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    md = [
        f"# selva-rt batch: {args.variant}, {args.jobs} jobs of {args.duration:g} s, "
        f"{args.steps} steps, CPU",
        "",
        f"{result['date']}, {result['machine']}",
        "",
        "| mode | wall s | clips/hour (wall) | clips/hour (steady) | workers |",
        "|---|---|---|---|---|",
        *(
            f"| {r['mode']} | {r['wall_s']} | {r['clips_per_hour']} | "
            f"{r['steady_clips_per_hour']} | {len(r['workers'])} |"
            for r in rows
        ),
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
