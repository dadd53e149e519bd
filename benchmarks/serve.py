"""Throughput and latency of `selva-rt serve`: jobs per minute and p50/p90 job latency (submit ->
done, files written) at several numbers of concurrent clients, each client submitting its next
job when the last one is done.

    python -m selva_rt.benchmarks.serve --variant tiny --clients 1,4,16

The server is `selva-rt serve` in its own process on a free loopback port (so the clients do
not share its interpreter), over one warm pipeline; clients poll a job's state every 0.2 s.
Results go to benchmarks/results/ as JSON and markdown.
"""

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m selva_rt.benchmarks.serve")
    p.add_argument("--variant", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--clients", default="1,4,16", help="comma list of concurrent clients")
    p.add_argument("--jobs-per-client", type=int, default=2)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--name", default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    import signal
    import subprocess
    import sys

    import httpx
    import torch

    args = parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    sample = Path(__file__).resolve().parents[1] / "runtime" / "assets" / "sample.mp4"
    work = Path(tempfile.mkdtemp(prefix="selva-serve-bench-"))
    (work / "clips").mkdir()
    clip = work / "clips" / "sample.mp4"
    clip.write_bytes(sample.read_bytes())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["serve", "--variant", args.variant, "--device", args.device, "--port", str(port)]
    argv += ["--root", str(work / "clips"), "--out", str(work / "out"), "--quiet"]
    argv += ["--max-queue", "10000"]
    code = "import sys; from selva_rt.__main__ import main; sys.exit(main(sys.argv[1:]))"
    server = subprocess.Popen([sys.executable, "-c", code, *argv])
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=5) as probe:
        while True:
            if server.poll() is not None:
                raise SystemExit("the server exited before it came up")
            try:
                if probe.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)

    def one_job(c: httpx.Client, seed: int) -> float:
        t0 = time.perf_counter()
        body = {"clip": str(clip), "prompts": ["dog barking"], "seed": seed, "steps": args.steps}
        job_id = c.post("/v1/jobs", json=body).json()["id"]
        while (state := c.get(f"/v1/jobs/{job_id}").json()["state"]) not in ("done", "failed"):
            time.sleep(0.2)
        if state != "done":
            raise RuntimeError(f"job {job_id} failed")
        return time.perf_counter() - t0

    rows = []
    with httpx.Client(base_url=base, timeout=600) as warm:
        one_job(warm, 0)  # first call: lazy initialisation, not timed

    def client(k: int, latencies: list[float]) -> None:
        with httpx.Client(base_url=base, timeout=600) as c:
            for j in range(args.jobs_per_client):
                latencies.append(one_job(c, seed=1000 * k + j))  # list.append is atomic

    for n in clients:
        latencies: list[float] = []
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k, latencies)) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        q = statistics.quantiles(latencies, n=10) if len(latencies) > 1 else latencies * 9
        rows.append(
            {
                "clients": n,
                "jobs": len(latencies),
                "jobs_per_minute": round(60 * len(latencies) / wall, 2),
                "p50_s": round(statistics.median(latencies), 3),
                "p90_s": round(q[8], 3),
                "wall_s": round(wall, 2),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=120)

    now = datetime.datetime.now(datetime.timezone.utc)
    report = {
        "date": now.isoformat(timespec="seconds"),
        "variant": args.variant,
        "device": args.device,
        "steps": args.steps,
        "clip": "runtime/assets/sample.mp4 (2.96 s, one prompt a job)",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "load_average": os.getloadavg(),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "results": rows,
    }
    name = args.name or f"serve-{args.device}-{now:%Y%m%d}"
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# selva-rt serve: {args.variant} on {args.device}, {args.steps} steps ({report['date']})",
        "",
        "| clients | jobs | jobs/min | p50 s | p90 s |",
        "|---|---|---|---|---|",
        *(
            f"| {r['clients']} | {r['jobs']} | {r['jobs_per_minute']} | {r['p50_s']} | "
            f"{r['p90_s']} |"
            for r in rows
        ),
    ]
    (args.output / f"{name}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
