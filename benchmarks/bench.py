"""Latency of selva-rt, per part and end to end, each fast configuration against reference mode.

    selva-rt bench [--variant selva-small-16k] [--device auto] [--modes reference,fast]
                   [--precisions auto] [--prompts 1,4] [--warmup 1] [--repeat 3] ...
    python -m selva_rt.benchmarks.bench ...

A configuration is (mode, precision, number of prompts over one clip). Modes:

  reference  the official way (TorchParts(reference=True)): the trunk once per prompt with
             einsum attention, [SUP] K/V per segment, full pooling layer, CFG as two passes
  fast       CFG as one batched pass, the trunk once per clip, K/V once per prompt
  graphs     fast, with the 25-step Euler loop replayed as one CUDA graph (CUDA only)

Every configuration runs on the same weights and inputs in the same process, round-robin (one
run of each configuration per round), so a change in machine load hits all of them alike. Each
run is `family.encode_text` + `Pipeline.synthesize` (frames to waveform) with per-part times
(CUDA synchronised around each part, CUDA events end to end). Reported: median and p90 over the
timed rounds, real-time factor (latency / audio seconds), peak memory, the speedup against the
reference configuration of the same precision and prompts, and how far the outputs are from it
(relative L2; fp32 vs fp32 should sit within the golden tolerances).

Separation variants (`--variant tiny-sep`, `mmaudiosep-*`) time `selva-rt separate`'s work:
the same parts plus the mixture encoder (mel + VAE encoder), on a noise mixture; in fast mode the
mixture enters the DiT as a bias computed once, in reference mode as the official concatenation
at every step.

`--backends torch,onnxruntime` adds ONNX Runtime configurations, `onnxruntime/fp32/pN` and
`onnxruntime/int8/pN` (`--ort-precisions`; int8: the linear layers dynamically quantised, see
export/plan.py): graphs exported once per run from the same networks into a temporary folder
(or `--engines DIR`, reused while the weights match), run round-robin beside the torch ones on
the same inputs, compared with reference/fp32 (speed) and the torch fp32 output (distance).

Every configuration that is not torch fp32 also gets a single-pass error per part: each part
fed the fp32 configuration's inputs of that part (not its own upstream outputs), its output
against the fp32 part's (relative L2; dit_step: one step at mid-trajectory).

Weights default to random full-size ones (`--weights random`): the FLOPs and the code paths are
the real ones, the audio is noise. `--weights local` loads the downloaded checkpoints.
`--file-to-file [CLIP]` also times decode -> generate -> write -> remux on a clip (default: a
synthetic 8 s 1080p H.264 clip made here). `--long-clip SECONDS` (e.g. 60) generates a whole
synthetic clip of that length file to file (in 8 s windows, runtime/windows.py), one prompt, in
each mode: seconds of compute per minute of audio and peak memory.

Results go to benchmarks/results/<name>.json and .md; the markdown is printed.
"""

import argparse
import copy
import ctypes
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..runtime import media
from ..runtime.backends import torch_parts_class
from ..runtime.cli import Parser
from ..runtime.delivery.outputs import plan_outputs, write_outputs
from ..runtime.device import DTYPES, cpu_has_native_bf16, resolve_device, resolve_precision
from ..runtime.families import family_of
from ..runtime.families.flow import Tokenizers
from ..runtime.memory import PeakMeter
from ..runtime.models.networks import Networks, build_networks
from ..runtime.pipeline import Pipeline
from ..runtime.variants import DEFAULT_SEED, DEFAULT_STEPS, get_variant
from ..runtime.windows import plan_windows
from . import limits, memory
from .inputs import PROMPTS, synthetic_extras, synthetic_frames

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MODES = ("reference", "fast", "graphs")
SCHEMA = 1


@dataclasses.dataclass(frozen=True)
class Config:
    mode: str
    precision: str  # fp32 | bf16 | fp16, optionally "+fp32dec": VAE and vocoder kept in fp32
    prompts: int

    @property
    def name(self) -> str:
        return f"{self.mode}/{self.precision}/p{self.prompts}"

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision.split("+")[0]]

    @property
    def decoder_dtype(self) -> torch.dtype:
        return torch.float32 if self.precision.endswith("+fp32dec") else self.dtype


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = Parser(prog="selva-rt bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="selva-small-16k")
    p.add_argument("--weights", choices=("random", "local"), default="random")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument(
        "--backends",
        default="torch",
        help="comma list of torch,onnxruntime (onnxruntime: the --ort-precisions graphs)",
    )
    p.add_argument("--ort-precisions", default="fp32,int8", help="comma list of fp32,int8")
    p.add_argument(
        "--engines",
        type=Path,
        default=None,
        metavar="DIR",
        help="ONNX builds in DIR/<precision>, reused while the weights match (default: a "
        "temporary folder, exported every run)",
    )
    p.add_argument(
        "--modes",
        default="auto",
        help="comma list of reference,fast,graphs (auto: all usable; none: no such rows)",
    )
    p.add_argument(
        "--precisions",
        default="auto",
        help="comma list of fp32, bf16, fp16, bf16+fp32dec (auto: what `generate` picks here)",
    )
    p.add_argument("--prompts", default="1,4", help="comma list of prompt counts over one clip")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--cfg", type=float, help="default: the variant's (4.5; Flowley 7.5)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--repeat", type=int, default=3, help="timed rounds")
    p.add_argument("--step-repeat", type=int, default=10, help="timed calls of one dit_step")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: physical cores)"
    )
    p.add_argument(
        "--file-to-file",
        nargs="?",
        const="synthetic",
        default=None,
        metavar="CLIP",
        help="also time decode, generate, write and remux (default clip: synthetic 8 s 1080p)",
    )
    p.add_argument(
        "--long-clip",
        type=float,
        default=None,
        metavar="SECONDS",
        help="also generate a whole synthetic clip this long (e.g. 60) in each mode, one prompt",
    )
    p.add_argument(
        "--long-clip-size", default="1280x720", help="picture size of that clip (WxH, 25 fps)"
    )
    p.add_argument(
        "--cached-prompt",
        action="store_true",
        help="also time, file to file on a synthetic 8 s clip (or --file-to-file CLIP), the first "
        "prompt on a clip (feature cache empty) against a new prompt on it (features found)",
    )
    p.add_argument(
        "--low-memory",
        action="store_true",
        help="also compare --low-memory with the default, each run in a process of its own: "
        "time and peak memory per part (--modes none: only this)",
    )
    p.add_argument(
        "--jobs-together",
        type=int,
        default=None,
        metavar="N",
        help="also time the sampler and decoder of N one-prompt jobs one after another against "
        "all N in one call (what a batch or server does with --jobs-per-call N)",
    )
    p.add_argument(
        "--no-limits",
        dest="limits",
        action="store_false",
        help="skip counting each part's FLOPs against this machine's matmul throughput",
    )
    p.add_argument("--output", type=Path, default=RESULTS, help="folder for the JSON and MD")
    p.add_argument("--name", default=None, help="file stem (default: bench-<device>-<date>)")
    p.add_argument("--note", default="", help="free text kept in the results")
    args = p.parse_args(argv)
    if args.cfg is None:
        args.cfg = get_variant(args.variant).cfg
    return args


def configs_of(args: argparse.Namespace, device: torch.device) -> list[Config]:
    if args.modes == "none":
        return []
    cuda = device.type == "cuda"
    modes = list(MODES if args.modes == "auto" else args.modes.split(","))
    if args.modes == "auto" and not cuda:
        modes.remove("graphs")
    for mode in modes:
        if mode not in MODES:
            raise SystemExit(f"unknown mode {mode!r}; use {', '.join(MODES)}")
        if mode == "graphs" and not cuda:
            raise SystemExit("mode graphs needs a CUDA device")
    auto = args.precisions == "auto"
    precisions = [resolve_precision("auto", device)] if auto else args.precisions.split(",")
    for prec in precisions:
        if prec.split("+")[0] not in DTYPES or prec.split("+")[1:] not in ([], ["fp32dec"]):
            raise SystemExit(f"unknown precision {prec!r}; use fp32, bf16, fp16, bf16+fp32dec")
    prompts = [int(n) for n in args.prompts.split(",")]
    return [Config(m, pr, n) for pr in precisions for n in prompts for m in modes]


GRAPH_BACKENDS = ("onnxruntime",)
GRAPH_PRECISIONS = ("fp32", "int8")


def graph_configs(args: argparse.Namespace, device: torch.device) -> list[Config]:
    """The ONNX Runtime configurations: mode "onnxruntime", one per ORT precision and prompts."""
    backends = args.backends.split(",")
    for b in backends:
        if b not in ("torch", *GRAPH_BACKENDS):
            raise SystemExit(f"unknown backend {b!r}; use torch, {', '.join(GRAPH_BACKENDS)}")
    if "onnxruntime" not in backends:
        return []
    if device.type != "cpu":
        raise SystemExit("the onnxruntime configurations run on the CPU; pass --device cpu")
    precisions = args.ort_precisions.split(",")
    for prec in precisions:
        if prec not in GRAPH_PRECISIONS:
            raise SystemExit(f"unknown ONNX Runtime precision {prec!r}; use fp32, int8")
    prompts = [int(n) for n in args.prompts.split(",")]
    return [Config("onnxruntime", pr, n) for pr in precisions for n in prompts]


# -- the environment -------------------------------------------------------------------------


def environment(device: torch.device) -> dict:
    """Device, versions, commit, load: what a reader needs to compare two result files."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "device": {"type": device.type, "name": _device_name(device)},
        "cpu": {
            "name": _cpu_name(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "native_bf16": cpu_has_native_bf16(),
        },
        "auto_precision": resolve_precision("auto", device),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        },
        "load_average_start": _loadavg(),
    }
    try:
        import triton

        env["versions"]["triton"] = triton.__version__
    except ImportError:
        pass
    return env


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


class PeakMemory:
    """Peak memory a region adds to what was in use when it began (so the weights, and other
    configurations' copies of them, are not counted): the CUDA allocator's peak on CUDA, else
    the process's resident set sampled every 10 ms from /proc (None where /proc is missing)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        _trim_heap()
        self._stop = threading.Event()
        self._start = self._max = _rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            rss = _rss()
            if rss is not None and self._max is not None:
                self._max = max(self._max, rss)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self._stop.set()
            self._thread.join()
            if self._start is not None:
                self.peak = self._max - self._start


def _trim_heap() -> None:
    """Hand the pages glibc keeps after frees back to the OS, so the resident set at the start
    of a run is what is live (else an earlier, larger run's freed pages hide this run's peak)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figure may then read low
        pass


def _rss() -> int | None:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


# -- one configuration -----------------------------------------------------------------------


def random_networks(variant_name: str) -> Networks:
    """A full-size variant's networks with deterministic random weights in the official
    layout, loaded through the real loaders (timing only: the output is noise)."""
    variant = get_variant(variant_name)
    return build_networks(dataclasses.replace(variant, random_weights=True), {})


def local_networks(variant_name: str) -> Networks:
    from ..runtime import weights

    variant = get_variant(variant_name)
    return build_networks(variant, weights.resolve(variant, quiet=True))


def setup_record(args: argparse.Namespace, load_s: float, note: str) -> dict:
    """The `setup` of a results JSON: what was run and how often."""
    return {
        "variant": args.variant,
        "weights": weights_note(args),
        "duration": args.duration,
        "steps": args.steps,
        "cfg": args.cfg,
        "seed": args.seed,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "step_repeat": args.step_repeat,
        "load_s": load_s,
        "note": note,
    }


def weights_note(args: argparse.Namespace) -> str:
    if args.weights == "local":
        return "the downloaded official checkpoints"
    size = "tiny" if get_variant(args.variant).random_weights else "full-size"
    return f"random {size} weights in the official layout (timing only; the audio is noise)"


def make_pipelines(
    variant_name: str,
    nets: Networks,
    configs: list[Config],
    device: torch.device,
    random_weights: bool = True,
) -> dict[Config, Pipeline]:
    """One Pipeline per configuration; configurations of one precision share its networks (an
    fp32 master is kept on the CPU so no cast is ever made from an already rounded copy).
    Random weights come with the locally made tokenizers, so nothing needs downloading."""
    variant = get_variant(variant_name)
    shared: dict[str, Networks] = {}
    random_weights = random_weights or variant.random_weights
    tokenizers = Tokenizers.load(dataclasses.replace(variant, random_weights=random_weights))
    pipes = {}
    for c in configs:
        if c.precision not in shared:
            in_place = device.type == "cpu" and c.dtype == c.decoder_dtype == torch.float32
            shared[c.precision] = nets if in_place else copy.deepcopy(nets)
        n = shared[c.precision]
        parts = torch_parts_class(variant)(
            variant,
            n,
            device,
            c.dtype,
            reference=c.mode == "reference",
            decoder_dtype=c.decoder_dtype,
            cuda_graphs=c.mode == "graphs",
        )
        pipes[c] = Pipeline(family_of(variant, parts, tokenizers))
    return pipes


def make_graph_pipelines(
    args: argparse.Namespace,
    nets: Networks,
    configs: list[Config],
    device: torch.device,
    folder: Path,
) -> dict[Config, Pipeline]:
    """One Pipeline per ONNX Runtime configuration, over graphs exported from `nets` (the
    networks the torch configurations run) once per precision into `folder`/<precision>; an
    --engines build there is reused while its variant, precision, weights and parts match."""
    from ..export import build_engines
    from ..export.onnx_export import model_hash
    from ..runtime.backends.ort_parts import OrtParts

    variant = get_variant(args.variant)
    random_weights = args.weights == "random" or variant.random_weights
    tokenizers = Tokenizers.load(dataclasses.replace(variant, random_weights=random_weights))
    digest = model_hash(nets) if args.engines else None
    loaded, pipes = {}, {}
    for c in configs:
        if c.precision not in loaded:
            out = folder / c.precision
            if not _reusable(out, variant, c.precision, digest):
                print(f"  exporting the {c.precision} graphs to {out}", flush=True)
                argv = ["--variant", variant.name, "--out", str(out), "--precision", c.precision]
                argv += ["--onnx-only", "--force", "--quiet", "--threads", str(args.threads or 0)]
                build_engines.build(build_engines.build_parser().parse_args(argv), nets)
            loaded[c.precision] = OrtParts.load(out, variant, device, threads=args.threads or 0)
        pipes[c] = Pipeline(family_of(variant, loaded[c.precision], tokenizers))
    return pipes


def _reusable(out: Path, variant, precision: str, digest: str | None) -> bool:
    from ..export import plan
    from ..runtime.backends.graphs import Manifest
    from ..runtime.errors import SelvaError

    if digest is None or not out.is_dir():
        return False
    try:
        m = Manifest.read(out, variant.name)
    except SelvaError:
        return False
    have = set(m.parts) >= set(plan.part_names(variant))
    return have and (m.precision, m.model_hash) == (precision, digest)


def run_once(
    pipe: Pipeline, frames: torch.Tensor, prompts: list[str], args, extras: dict | None = None
) -> dict:
    """One timed run: text encoding, then frames (and for separation the mixture) to waveform.
    Seconds per part."""
    dev = pipe.device
    cuda = dev.type == "cuda"
    frames = frames.to(dev)
    extras = {k: v.to(dev) for k, v in (extras or {}).items()}
    timings: dict[str, float] = {}
    meter = PeakMeter(dev)
    pipe.meter = meter
    with PeakMemory(dev) as mem:
        meter.start()
        _sync(dev)
        t0 = time.perf_counter()
        with meter.part("text"):
            text = pipe.encode_text(prompts)
        _sync(dev)
        timings["text"] = time.perf_counter() - t0
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t1, cpu1 = time.perf_counter(), time.process_time()
        out = pipe.synthesize(
            [{"sync": frames, **extras}],
            text,
            pipe.family.plan(args.duration),
            seed=args.seed,
            steps=args.steps,
            cfg=args.cfg,
            timings=timings,
        )
        if cuda:
            end.record()
            end.synchronize()
            timings["frames_to_waveform"] = start.elapsed_time(end) / 1000
        else:
            timings["frames_to_waveform"] = time.perf_counter() - t1
        peak = meter.stop()
    pipe.meter = None
    timings["total"] = timings["text"] + timings["frames_to_waveform"]
    # CPU seconds of all threads: on a shared machine, less inflated by others' load than wall
    # time (a descheduled thread does not count; a spinning one does).
    cpu_s = time.process_time() - cpu1
    return {
        "timings": timings,
        "cpu_s": cpu_s,
        "peak_memory": mem.peak,
        "peak_total": peak,
        "peak_parts": dict(meter.parts),
        "out": out,
        "text": text,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_dit_step(pipe: Pipeline, run: dict, args) -> list[float]:
    """Seconds of single `dit_step` calls (CFG included) at mid-trajectory, P prompts."""
    parts, text, out = pipe.parts, run["text"], run["out"]
    prompts, conditions = text.prompts, out.conditions
    x = out.noise
    t = torch.full((prompts,), 0.48, dtype=x.dtype, device=x.device)
    times = []
    for i in range(args.step_repeat + 2):  # two untimed calls first
        _sync(pipe.device)
        t0 = time.perf_counter()
        parts.dit_step(x, t, conditions, args.cfg)
        _sync(pipe.device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return times


def machine_limits(pipes, configs, frames, last, results, args) -> list[dict]:
    """`limits.limits` of every configuration: FLOPs counted once per (mode, prompts) (they do
    not depend on the precision), matmul throughput once per precision."""
    flops, peaks = {}, {}
    torch_configs = [c for c in configs if c.mode in MODES]  # graphs' FLOPs are not countable
    for c in sorted(torch_configs, key=lambda c: c.dtype != torch.bfloat16):  # quicker first
        pipe = pipes[c]
        if (c.mode, c.prompts) not in flops:
            text = last[c.name]["text"]
            flops[c.mode, c.prompts] = limits.part_flops(
                pipe, frames, text, args.duration, args.steps, args.cfg
            )
        if c.precision not in peaks:
            peaks[c.precision] = limits.gemm_peak(c.precision, pipe.device)
    return limits.limits(results, flops, peaks)


# -- statistics and the report ---------------------------------------------------------------


def stats(values: list[float]) -> dict:
    """median, p90 (nearest rank) and min of seconds; `runs` keeps every value. The min is the
    best estimate of the unloaded time on a shared machine."""
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(np.ceil(0.9 * len(ordered))) - 1)]
    return {"median": statistics.median(ordered), "p90": p90, "min": ordered[0], "runs": values}


def rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, b = actual.detach().double().cpu(), expected.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def compare_outputs(out, ref) -> dict[str, float]:
    """Relative L2 distance of a configuration's outputs from another's (same seed, inputs)."""

    def outputs(o) -> dict:  # sync_features: none for Flowley
        traced = {f: o.trace.get(f) for f in ("sync_features", "mel")}
        return {**traced, "latent": o.latent, "audio": o.audio}

    mine, theirs = outputs(out), outputs(ref)
    return {f: rel_l2(mine[f], theirs[f]) for f in mine if theirs[f] is not None}


def summarise(c: Config, runs: list[dict], step_times: list[float], args) -> dict:
    parts = [k for k in runs[0]["timings"] if k not in ("frames_to_waveform", "total")]
    f2w = stats([r["timings"]["frames_to_waveform"] for r in runs])
    peak = max((r["peak_memory"] or 0) for r in runs) or None
    return {
        "name": c.name,
        "mode": c.mode,
        "backend": "onnxruntime" if c.mode == "onnxruntime" else "torch",
        "precision": c.precision,
        "prompts": c.prompts,
        "clips": 1,
        "frames_to_waveform_s": f2w,
        "total_s": stats([r["timings"]["total"] for r in runs]),
        "frames_to_waveform_cpu_s": stats([r["cpu_s"] for r in runs]),
        "parts_s": {p: stats([r["timings"][p] for r in runs]) for p in parts},
        "sampling_per_step_ms": 1000
        * statistics.median(r["timings"]["sampling"] for r in runs)
        / args.steps,
        "dit_step_ms": {k: 1000 * v for k, v in stats(step_times).items() if k != "runs"},
        "rtf": f2w["median"] / args.duration,
        "peak_memory_mb": None if peak is None else round(peak / 2**20, 1),
        "peak_rss_mb": _mb(max((r["peak_total"] or 0) for r in runs)),
        "peak_rss_parts_mb": {
            p: _mb(max(r["peak_parts"].get(p, 0) for r in runs)) for p in runs[0]["peak_parts"]
        },
    }


def _mb(n: int | None) -> float | None:
    return round(n / 2**20, 1) if n else None


def add_comparisons(results: list[dict], outputs: dict[str, object]) -> None:
    """speedup_vs_reference and output distance against the reference of the same precision
    and prompts; for reduced precisions also speedup_vs_reference_fp32, and rel_l2_vs_fp32
    against the fp32 configuration of the same mode and prompts."""
    by_key = {(r["mode"], r["precision"], r["prompts"]): r for r in results}
    for r in results:
        ref = by_key.get(("reference", r["precision"], r["prompts"]))
        if ref is not None and r is not ref:
            r["speedup_vs_reference"] = (
                ref["frames_to_waveform_s"]["median"] / r["frames_to_waveform_s"]["median"]
            )
            r["speedup_vs_reference_min"] = (
                ref["frames_to_waveform_s"]["min"] / r["frames_to_waveform_s"]["min"]
            )
            r["parts_speedup_vs_reference"] = {
                p: ref["parts_s"][p]["median"] / v["median"]
                for p, v in r["parts_s"].items()
                if v["median"] > 0
            }
            r["rel_l2_vs_reference"] = compare_outputs(outputs[r["name"]], outputs[ref["name"]])
        else:
            r["speedup_vs_reference"] = None
        # What a reduced precision buys over the official fp32 run.
        ref32 = by_key.get(("reference", "fp32", r["prompts"]))
        if ref32 is not None and not r["precision"].startswith("fp32"):
            r["speedup_vs_reference_fp32"] = (
                ref32["frames_to_waveform_s"]["median"] / r["frames_to_waveform_s"]["median"]
            )
        fp32 = by_key.get((r["mode"], "fp32", r["prompts"])) or by_key.get(
            ("reference", "fp32", r["prompts"])
        )
        if fp32 is not None and not r["precision"].startswith("fp32"):
            r["rel_l2_vs_fp32"] = compare_outputs(outputs[r["name"]], outputs[fp32["name"]])
    # Sharing the trunk: what P prompts cost relative to one, per mode and precision.
    for r in results:
        one = by_key.get((r["mode"], r["precision"], 1))
        if one is not None and r["prompts"] > 1:
            r["cost_vs_one_prompt"] = (
                r["frames_to_waveform_s"]["median"] / one["frames_to_waveform_s"]["median"]
            )


def add_backend_comparisons(results: list[dict], outputs: dict[str, object]) -> None:
    """For the ONNX Runtime rows: speedup over reference/fp32 with the same prompts (whole and
    per part) and the outputs' distance from torch fp32 (fast mode, else reference)."""
    by_key = {(r["mode"], r["precision"], r["prompts"]): r for r in results}
    for r in results:
        if r["mode"] not in GRAPH_BACKENDS:
            continue
        ref32 = by_key.get(("reference", "fp32", r["prompts"]))
        torch32 = by_key.get(("fast", "fp32", r["prompts"])) or ref32
        if ref32 is not None:
            r["speedup_vs_reference_fp32"] = (
                ref32["frames_to_waveform_s"]["median"] / r["frames_to_waveform_s"]["median"]
            )
            r["parts_speedup_vs_reference_fp32"] = {
                p: ref32["parts_s"][p]["median"] / v["median"]
                for p, v in r["parts_s"].items()
                if v["median"] > 0 and p in ref32["parts_s"]
            }
        if torch32 is not None:
            r["torch_fp32"] = torch32["name"]
            r["rel_l2_vs_torch_fp32"] = compare_outputs(
                outputs[r["name"]], outputs[torch32["name"]]
            )


# -- single-pass error per part --------------------------------------------------------------

SINGLE_PASS_PARTS = ("t5", "clip_text", "video_trunk", "video_select", "dit_step", "decoder")
MID_TRAJECTORY = 0.5  # the dit_step's t: halfway between noise and the fp32 result


def single_pass_errors(
    pipes: dict[Config, Pipeline], last: dict[str, dict], frames: torch.Tensor, args
) -> dict | None:
    """Each part of each configuration that is not torch fp32, run once on the inputs the torch
    fp32 configuration gives that part (one prompt), against the fp32 part's output: relative
    L2 per part (decoder: the waveform; its mel as decoder_mel). Rounding of one part, not its
    accumulation through the pipeline. None for Flowley and separation variants, and without
    a torch fp32 configuration."""
    variant = next(iter(pipes.values())).variant
    torch32 = [c for c in pipes if c.mode in MODES and c.precision == "fp32"]
    if variant.flowley or variant.separation or not torch32:
        return None
    base = min(torch32, key=lambda c: (c.mode != "fast", c.prompts))
    inputs = part_inputs(pipes[base], last[base.name], frames, args)
    expected = {name: _part_outputs(pipes[base].parts, name, a) for name, a in inputs.items()}
    rows, seen = [], set()
    for c, pipe in pipes.items():
        key = (c.mode, c.precision)
        if key in seen or (c.mode in MODES and c.precision == "fp32"):
            continue
        seen.add(key)
        errors = {}
        for name, a in inputs.items():
            got = _part_outputs(pipe.parts, name, _cast(a, pipe.parts.dtype))
            errors[name] = rel_l2(got[-1], expected[name][-1])  # the decoder's: waveform
            if name == "decoder":
                errors["decoder_mel"] = rel_l2(got[0], expected[name][0])
        rows.append({"config": f"{c.mode}/{c.precision}", "rel_l2": errors})
    return {
        "against": f"{base.mode}/{base.precision} (torch)",
        "prompts": 1,
        "dit_step_t": MID_TRAJECTORY,
        "rows": rows,
    }


@torch.inference_mode()
def part_inputs(pipe: Pipeline, run: dict, frames: torch.Tensor, args) -> dict[str, tuple]:
    """The arguments of each of SINGLE_PASS_PARTS the variant has, for the first prompt, as
    the fp32 `pipe` computes them (its last benchmark `run` gives the noise and the result)."""
    parts, prompt = pipe.parts, list(PROMPTS[:1])
    inputs: dict[str, tuple] = {}
    text = pipe.family.encode_text(prompt)
    if pipe.variant.t5 is not None:
        ids, mask = pipe.family.tokenizers.t5(prompt)
        inputs["t5"] = (ids, mask.long())
    inputs["clip_text"] = (pipe.family.tokenizers.clip([*prompt, ""]),)
    frames = frames.to(pipe.device)
    inputs["video_trunk"] = (frames, 1)
    trunk = parts.video_trunk(frames, 1)
    inputs["video_select"] = (trunk, text.t5, text.t5_mask, 1)
    sync = parts.video_select(trunk, text.t5, text.t5_mask, 1)
    seq = pipe.variant.sequence_lengths(args.duration)
    conditions = parts.dit_conditions(None, sync, text.clip, text.negative, seq.latent, seq.clip)
    out = run["out"]
    t = MID_TRAJECTORY
    x = (1 - t) * out.noise[:1] + t * out.latent[:1]
    inputs["dit_step"] = (x, torch.full((1,), t, device=x.device), conditions, args.cfg)
    inputs["decoder"] = (out.latent[:1],)
    return {k: v for k, v in inputs.items() if k in SINGLE_PASS_PARTS}


def _part_outputs(parts, name: str, args: tuple) -> list[torch.Tensor]:
    with torch.inference_mode():
        out = getattr(parts, name)(*args)
    return [o.float() for o in (out if isinstance(out, tuple) else (out,))]


def _cast(args, dtype: torch.dtype):
    """Floating-point tensors (also inside dicts) to `dtype`; the rest unchanged."""
    if isinstance(args, tuple):
        return tuple(_cast(a, dtype) for a in args)
    if isinstance(args, dict):
        return {k: _cast(v, dtype) for k, v in args.items()}
    if isinstance(args, torch.Tensor) and args.is_floating_point():
        return args.to(dtype)
    return args


def markdown(report: dict) -> str:
    env, setup = report["environment"], report["setup"]
    lines = [
        f"# selva-rt bench: {setup['variant']} on {env['device']['name']}",
        "",
        f"{env['date']}, commit {(env['commit'] or 'unknown')[:10]}"
        f"{' (dirty)' if env['dirty'] else ''}, torch {env['versions']['torch']}, "
        f"{env['cpu']['threads']} CPU threads, `--precision auto` here: "
        f"{env.get('auto_precision', '?')}; load average (1, 5, 15 min) "
        f"{env['load_average_start']} at the start, {report.get('load_average_end')} at the end "
        f"(1-min after each round: {[x[0] for x in report.get('load_average_rounds', []) if x]}).",
        f"Weights: {setup['weights']}. {setup['duration']} s clip, {setup['steps']} Euler "
        f"steps, cfg {setup['cfg']}; {setup['warmup']} warm-up + {setup['repeat']} timed rounds "
        "(round-robin over configurations); times are medians (p90 in brackets).",
    ]
    if setup.get("note"):
        lines += ["", setup["note"]]
    if report["results"]:
        lines += results_markdown(report["results"])
    lines += cached_markdown(report) + jobs_markdown(report) + memory.markdown(report)
    errs = [r for r in report["results"] if "rel_l2_vs_fp32" in r]
    if errs:
        lines += [
            "",
            "Reduced precision: speedup over reference/fp32 with the same prompts, and distance "
            "from fp32 of the same mode (relative L2, same inputs and seed):",
            "",
            "| configuration | speedup vs reference/fp32 | sync_features | latent | mel | audio |",
            "|---|---|---|---|---|---|",
        ]
        for r in errs:
            e, speed = r["rel_l2_vs_fp32"], r.get("speedup_vs_reference_fp32")
            lines.append(
                f"| {r['name']} | {'—' if speed is None else f'{speed:.2f}×'} "
                f"| {e['sync_features']:.2e} | {e['latent']:.2e} | {e['mel']:.2e} "
                f"| {e['audio']:.2e} |"
            )
    lines += backend_markdown(report)
    lines += limits.markdown(report)
    f2f = report.get("file_to_file")
    if f2f:
        lines += [
            "",
            f"File to file ({f2f['config']}, {f2f['clip']}): {_fmt(f2f['total_s'])} s in all",
            "",
            "| " + " | ".join(f2f["timings_s"]) + " |",
            "|" + "---|" * len(f2f["timings_s"]),
            "| " + " | ".join(_fmt(v) for v in f2f["timings_s"].values()) + " |",
        ]
    long = report.get("long_clip")
    if long:
        lines += [
            "",
            f"Long clip: {long['seconds']:g} s of picture ({long['clip']}), whole, file to file, "
            "one prompt, in overlapping 8 s windows:",
            "",
            "| configuration | windows | s per minute of audio | CPU s per minute of audio "
            "| total s | peak MB above weights |",
            "|---|---|---|---|---|---|",
        ]
        for r in long["rows"]:
            lines.append(
                f"| {r['config']} | {r['windows']} | {_fmt(r['s_per_audio_minute'])} "
                f"| {_fmt(r['cpu_s_per_audio_minute'])} | {_fmt(r['total_s'])} "
                f"| {'—' if r['peak_memory_mb'] is None else r['peak_memory_mb']} |"
            )
    return "\n".join(lines) + "\n"


def results_markdown(results: list[dict]) -> list[str]:
    """The configurations' tables: end to end, per part, peak memory per part."""
    lines = [
        "",
        "| configuration | frames→waveform s: median (p90) min | speedup vs reference: "
        "median (min) | RTF | CPU s | text s | one dit_step ms | per step in loop ms "
        "| P prompts / 1 prompt | peak MB above weights | audio rel L2 vs reference |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        f2w = r["frames_to_waveform_s"]
        speed = r.get("speedup_vs_reference")
        speed = "—" if speed is None else f"{speed:.2f}× ({r['speedup_vs_reference_min']:.2f}×)"
        err = r.get("rel_l2_vs_reference", {}).get("audio")
        cost = r.get("cost_vs_one_prompt")
        peak = r["peak_memory_mb"]
        lines.append(
            f"| {r['name']} | {_fmt(f2w['median'])} ({_fmt(f2w['p90'])}) {_fmt(f2w['min'])} "
            f"| {speed} | {r['rtf']:.3g} | {_fmt(r['frames_to_waveform_cpu_s']['median'])} "
            f"| {_fmt(r['parts_s']['text']['median'])} | {_fmt(r['dit_step_ms']['median'])} "
            f"| {_fmt(r['sampling_per_step_ms'])} | {'—' if cost is None else f'{cost:.2f}×'} "
            f"| {'—' if peak is None else peak} | {'—' if err is None else f'{err:.2e}'} |"
        )
    parts = [p for p in results[0]["parts_s"] if p != "text"]
    lines += [
        "",
        "Per part (median seconds; speedup vs reference in brackets):",
        "",
        "| configuration | " + " | ".join(parts) + " |",
        "|---|" + "---|" * len(parts),
    ]
    for r in results:
        ps = r.get("parts_speedup_vs_reference", {})
        cells = [
            _fmt(r["parts_s"][p]["median"]) + (f" ({ps[p]:.2f}×)" if p in ps else "") for p in parts
        ]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    parts = list(results[0]["peak_rss_parts_mb"])
    if any(r["peak_rss_mb"] for r in results):
        lines += [
            "",
            "Peak memory of the whole process, weights included (MB; RSS high-water mark on the "
            "CPU, the allocator's peak on CUDA), per part and end to end:",
            "",
            "| configuration | end to end | " + " | ".join(parts) + " |",
            "|---|---|" + "---|" * len(parts),
        ]
        for r in results:
            cells = [str(r["peak_rss_parts_mb"].get(p, "—")) for p in parts]
            lines.append(f"| {r['name']} | {r['peak_rss_mb']} | " + " | ".join(cells) + " |")
    return lines


def backend_markdown(report: dict) -> list[str]:
    """The ONNX Runtime table and the single-pass error table (empty when neither was run)."""
    lines = []
    rows = [r for r in report["results"] if r["mode"] in GRAPH_BACKENDS]
    if rows:
        parts = [p for p in rows[0]["parts_s"] if p != "text"]
        lines += [
            "",
            "Other backends: speedup over reference/fp32 with the same prompts (frames→waveform "
            "and per part), and the audio's distance from torch fp32 (relative L2, same inputs "
            "and seed):",
            "",
            "| configuration | frames→waveform | " + " | ".join(parts) + " | audio rel L2 |",
            "|---|---|" + "---|" * len(parts) + "---|",
        ]
        for r in rows:
            ps = r.get("parts_speedup_vs_reference_fp32", {})
            speed = r.get("speedup_vs_reference_fp32")
            err = r.get("rel_l2_vs_torch_fp32", {}).get("audio")
            cells = [f"{ps[p]:.2f}×" if p in ps else "—" for p in parts]
            lines.append(
                f"| {r['name']} | {'—' if speed is None else f'{speed:.2f}×'} | "
                + " | ".join(cells)
                + f" | {'—' if err is None else f'{err:.2e}'} |"
            )
    single = report.get("single_pass_rel_l2")
    if single and single["rows"]:
        names = list(single["rows"][0]["rel_l2"])
        lines += [
            "",
            f"Single pass per part: relative L2 against the {single['against']} part on its "
            f"inputs (one prompt; dit_step one step at t = {single['dit_step_t']}):",
            "",
            "| configuration | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for row in single["rows"]:
            cells = [f"{row['rel_l2'][n]:.2e}" for n in names]
            lines.append(f"| {row['config']} | " + " | ".join(cells) + " |")
    return lines


def _fmt(seconds: float) -> str:
    return f"{seconds:.3g}" if seconds < 100 else f"{seconds:.0f}"


# -- a new prompt on a clip seen before ---------------------------------------------------------


def cached_prompt(pipe: Pipeline, clip: Path, args) -> dict:
    """`selva-rt generate CLIP PROMPT` minus model loading (decode, text, the parts, writing the
    stem and the remux) with an empty feature cache (the first prompt on the clip: features
    made and kept) and then, from a fresh view of the same folder as the next command has, a
    new prompt (the window's features found on disk). Rounds alternate which of two prompts
    comes first, so each prompt's stem from found features is compared with the same prompt's
    stem from features made afresh, bit for bit."""
    from ..runtime.cache import FeatureCache

    prompts, seen = PROMPTS[:2], {}
    runs: dict[str, list[dict]] = {"first": [], "new": []}
    for round_ in range(args.warmup + args.repeat):
        order = prompts if round_ % 2 == 0 else prompts[::-1]
        with tempfile.TemporaryDirectory(prefix="selva-rt-cache-") as folder:
            for kind, prompt in zip(("first", "new"), order, strict=True):
                pipe.cache = FeatureCache.open(folder)
                got = _file_to_file_run(pipe, clip, prompt, Path(folder) / kind, args)
                pipe.cache = None
                seen[prompt, kind] = got.pop("audio")
                print(
                    f"  cache round {round_ + 1}: {kind} prompt {prompt!r} "
                    f"{got['total_s']:8.2f} s {'' if round_ >= args.warmup else '(warm-up)'}",
                    flush=True,
                )
                if round_ >= args.warmup:
                    runs[kind].append(got)
    identical = {
        p: bool(np.array_equal(seen[p, "first"], seen[p, "new"]))
        for p in prompts
        if (p, "first") in seen and (p, "new") in seen
    }
    rows = {k: _cache_summary(v) for k, v in runs.items()}
    return {
        "config": f"fast/{pipe.precision}/p1",
        "clip": media.probe(clip).codec + f" {clip.name}",
        "duration": args.duration,
        "rows": rows,
        "speedup_new_vs_first": rows["first"]["total_s"]["median"]
        / rows["new"]["total_s"]["median"],
        "speedup_new_vs_first_min": rows["first"]["total_s"]["min"] / rows["new"]["total_s"]["min"],
        "bit_identical": identical,
    }


def _file_to_file_run(pipe: Pipeline, clip: Path, prompt: str, out_dir: Path, args) -> dict:
    meter = PeakMeter(pipe.device)
    pipe.meter = meter
    meter.start()
    t0 = time.perf_counter()
    result = pipe.generate(
        clip, prompt, seed=args.seed, steps=args.steps, cfg=args.cfg, duration=args.duration
    )
    t1 = time.perf_counter()
    write_outputs(plan_outputs(clip, result.prompts, out_dir, force=True), result)
    total = time.perf_counter() - t0
    peak = meter.stop()
    pipe.meter = None
    return {
        "total_s": total,
        "timings_s": {**result.timings, "write": time.perf_counter() - t1},
        "peak_rss_mb": _mb(peak),
        "cache_hits": dict(pipe.cache.stats.hits),
        "audio": result.audio,
    }


def _cache_summary(runs: list[dict]) -> dict:
    parts = list(dict.fromkeys(p for r in runs for p in r["timings_s"]))
    return {
        "total_s": stats([r["total_s"] for r in runs]),
        "parts_s": {p: statistics.median(r["timings_s"].get(p, 0.0) for r in runs) for p in parts},
        "peak_rss_mb": max((r["peak_rss_mb"] or 0) for r in runs) or None,
    }


def cached_markdown(report: dict) -> list[str]:
    c = report.get("cached_prompt")
    if not c:
        return []
    first, new = c["rows"]["first"], c["rows"]["new"]
    parts = list(dict.fromkeys([*first["parts_s"], *new["parts_s"]]))
    same = c["bit_identical"]
    lines = [
        "",
        f"A new prompt on a clip seen before ({c['config']}, {c['clip']}, {c['duration']} s, "
        f"file to file minus model loading; rounds alternate the two prompts): "
        f"**{c['speedup_new_vs_first']:.2f}×** faster than the first prompt on the clip "
        f"(medians; {c['speedup_new_vs_first_min']:.2f}× on the fastest runs). Stems from "
        f"found features equal the same prompt's from features made afresh, bit for bit: "
        f"{', '.join(f'{p!r}: {v}' for p, v in same.items()) or 'not compared (one round)'}.",
        "",
        "| run | total s: median (p90) min | peak MB | " + " | ".join(parts) + " |",
        "|---|---|---|" + "---|" * len(parts),
    ]
    for name, r in (("first prompt (features made, kept)", first), ("new prompt (found)", new)):
        t = r["total_s"]
        cells = [_fmt(r["parts_s"][p]) if p in r["parts_s"] else "—" for p in parts]
        lines.append(
            f"| {name} | {_fmt(t['median'])} ({_fmt(t['p90'])}) {_fmt(t['min'])} "
            f"| {r['peak_rss_mb']} | " + " | ".join(cells) + " |"
        )
    return lines


CACHED_PROMPT_TARGET = 2.5  # a new prompt on a cached clip over the first (issue 25)
LOW_MEMORY_PEAK_CUT = 0.30  # --low-memory's peak below the default's (issue 25)


def reuse_targets(report: dict) -> list[dict]:
    """The targets of the cached-prompt and low-memory sections, where they ran."""
    out = []
    c = report.get("cached_prompt")
    if c:
        ratio = c["speedup_new_vs_first"]
        same = bool(c["bit_identical"]) and all(c["bit_identical"].values())
        out.append(
            {
                "what": f"new prompt on a cached clip over the first prompt ({c['config']}), "
                "bit-identical stems",
                "target": f">= {CACHED_PROMPT_TARGET:g}x",
                "measured": ratio,
                "met": ratio >= CACHED_PROMPT_TARGET and same,
            }
        )
    lm = report.get("low_memory")
    if lm:
        rows = lm["rows"]
        ratio = rows["default"]["peak_total_mb"] / rows["low-memory"]["peak_total_mb"]
        least = 1 / (1 - LOW_MEMORY_PEAK_CUT)
        out.append(
            {
                "what": f"default peak over --low-memory peak ({report['setup']['variant']}; "
                f"{LOW_MEMORY_PEAK_CUT:.0%} lower)",
                "target": f">= {least:.2f}x",
                "measured": ratio,
                "met": ratio >= least,
            }
        )
    return out


# -- several jobs' rows in one call -------------------------------------------------------------


@torch.inference_mode()
def jobs_together(pipe: Pipeline, frames, extras, args, n: int) -> dict:
    """The sampler and decoder of `n` one-prompt jobs (same picture, other prompts and seeds:
    the cost does not depend on the content) one after another, against all in one call with
    their conditions joined (`Pipeline.generate_many`'s way), round-robin; and how far the
    joined stems are from the single ones."""
    from ..runtime.families.family import Run

    family, dev = pipe.family, pipe.device
    layout = family.plan(args.duration)
    run = Run(dev, torch.Generator(dev).manual_seed(args.seed))
    features = [family.features({"sync": frames.to(dev), **extras}, 1, run)]
    jobs = []
    for i in range(n):
        r = Run(dev, torch.Generator(dev).manual_seed(args.seed + i))
        text = pipe.encode_text([PROMPTS[i % len(PROMPTS)]])
        jobs.append((family.conditions(text, features, layout, r), family.noise(1, layout, r)))
    times: dict[str, list[float]] = {"one after another": [], "together": []}
    outs = {}
    for round_ in range(args.warmup + args.repeat):
        for mode in times:
            _sync(dev)
            t0 = time.perf_counter()
            if mode == "together":
                cond = family.join_conditions([c for c, _ in jobs], [1] * n)
                x0 = torch.cat([x for _, x in jobs])
                x1 = family.sample(x0, cond, layout, args.steps, args.cfg, None, run)
                audio = family.decode(x1, layout, run)
            else:
                audio = torch.cat(
                    [
                        family.decode(
                            family.sample(x, c, layout, args.steps, args.cfg, None, run),
                            layout,
                            run,
                        )
                        for c, x in jobs
                    ]
                )
            _sync(dev)
            seconds = time.perf_counter() - t0
            print(f"  jobs round {round_ + 1}: {n} jobs {mode:<18s} {seconds:8.2f} s", flush=True)
            if round_ >= args.warmup:
                times[mode].append(seconds)
            outs[mode] = audio
    rows = {k: stats(v) for k, v in times.items()}
    return {
        "config": f"fast/{pipe.precision}",
        "jobs": n,
        "rows": rows,
        "speedup_together": rows["one after another"]["median"] / rows["together"]["median"],
        "audio_rel_l2": rel_l2(outs["together"], outs["one after another"]),
    }


def jobs_markdown(report: dict) -> list[str]:
    j = report.get("jobs_together")
    if not j:
        return []
    lines = [
        "",
        f"{j['jobs']} one-prompt jobs' sampler ({report['setup']['steps']} steps) and decoder "
        f"({j['config']}): one after another against all in one call: "
        f"**{j['speedup_together']:.2f}×** (above 1: together is faster); stems "
        f"{j['audio_rel_l2']:.1e} apart (relative L2).",
        "",
        "| how | s: median (p90) min |",
        "|---|---|",
    ]
    for name, t in j["rows"].items():
        lines.append(f"| {name} | {_fmt(t['median'])} ({_fmt(t['p90'])}) {_fmt(t['min'])} |")
    return lines


# -- file to file ----------------------------------------------------------------------------


def long_clip(pipes: dict[Config, Pipeline], configs: list[Config], args) -> dict:
    """Each mode (first precision, one prompt) on a whole synthetic clip of args.long_clip
    seconds, file to file (decode, generate in windows, write the stem and the remux)."""
    width, height = (int(n) for n in args.long_clip_size.split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = synthetic_clip(Path(tmp) / "long.mp4", args.long_clip, (width, height), fps=25)
        for c in configs:
            if c.prompts != 1 or c.precision != configs[0].precision:
                continue
            pipe = pipes[c]
            with PeakMemory(pipe.device) as mem:
                t0, cpu0 = time.perf_counter(), time.process_time()
                result = pipe.generate(clip, PROMPTS[0], seed=args.seed, steps=args.steps)
                t1 = time.perf_counter()
                write_outputs(plan_outputs(clip, result.prompts, Path(tmp) / c.name), result)
                wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            minutes = result.duration / 60
            rows.append(
                {
                    "config": c.name,
                    "audio_s": result.duration,
                    "windows": len(plan_windows(result.duration, pipe.variant.audio)),
                    "total_s": wall,
                    "cpu_s": cpu,
                    "s_per_audio_minute": wall / minutes,
                    "cpu_s_per_audio_minute": cpu / minutes,
                    "peak_memory_mb": None if mem.peak is None else round(mem.peak / 2**20, 1),
                    "timings_s": {**result.timings, "write": time.perf_counter() - t1},
                }
            )
    return {
        "clip": f"synthetic H.264 {width}x{height} 25 fps",
        "seconds": args.long_clip,
        "rows": rows,
    }


def synthetic_clip(path: Path, seconds: float = 8.0, size=(1920, 1080), fps: int = 30) -> Path:
    """An H.264 (yuv420p, High profile defaults) clip with moving texture and an AAC track."""
    import av

    width, height = size
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 48, (height, width, 3), dtype=np.uint8)
    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = out.add_stream("aac", rate=48000, layout="stereo")
        for i in range(int(seconds * fps)):
            img = np.stack(
                [(x + 7 * i) % 256, (y + 3 * i) % 256, ((x + y) // 4 + 5 * i) % 256], axis=-1
            ).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img + np.roll(noise, 9 * i, axis=1), format="rgb24")
            out.mux(video.encode(frame))
        out.mux(video.encode())
        samples = int(seconds * 48000)
        tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(samples) / 48000)).astype(np.float32)
        for start in range(0, samples, 1024):
            chunk = np.tile(tone[start : start + 1024], (2, 1))
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate = 48000
            out.mux(audio.encode(frame))
        out.mux(audio.encode())
    return path


def file_to_file(pipe: Pipeline, clip: Path, out_dir: Path, args) -> dict:
    """Seconds of each stage of `selva-rt generate CLIP PROMPT` (`separate` for a separation
    variant: the clip's audio track is the mixture) minus model loading."""
    t0 = time.perf_counter()
    info = media.probe(clip)
    probe_s = time.perf_counter() - t0
    run = pipe.separate if pipe.variant.separation else pipe.generate
    result = run(
        clip, PROMPTS[0], seed=args.seed, steps=args.steps, cfg=args.cfg, duration=args.duration
    )
    timings = {"probe": probe_s, **result.timings}
    t1 = time.perf_counter()
    write_outputs(plan_outputs(clip, result.prompts, out_dir, force=True), result)
    timings["write"] = time.perf_counter() - t1  # the WAV stem and the remux
    return {
        "clip": f"{clip.name}: {info.codec} {info.size[0]}x{info.size[1]}, {float(info.fps):g} fps",
        "timings_s": timings,
        "total_s": sum(timings.values()),
    }


# -- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    configs = configs_of(args, device) if "torch" in args.backends.split(",") else []
    graph = graph_configs(args, device)
    env = environment(device)
    n = len(configs) + len(graph)
    print(f"selva-rt bench: {n} configurations on {env['device']['name']}", flush=True)

    t0 = time.perf_counter()
    nets = (
        random_networks(args.variant) if args.weights == "random" else local_networks(args.variant)
    )
    tmp_weights = None
    if args.low_memory:  # saved now: the children load them, each in a process of its own
        tmp_weights = tempfile.TemporaryDirectory(prefix="selva-rt-networks-")
        weights_file = Path(tmp_weights.name) / "networks.pt"
        torch.save(nets, weights_file)
    with tempfile.TemporaryDirectory() as tmp:  # the sessions hold the graphs once loaded
        # Exported before the torch pipelines take the networks (fp32 shares them in place).
        pipes = make_graph_pipelines(args, nets, graph, device, args.engines or Path(tmp))
    pipes = {
        **make_pipelines(args.variant, nets, configs, device, args.weights == "random"),
        **pipes,
    }
    configs += graph
    load_s = time.perf_counter() - t0
    frames = synthetic_frames(args.duration, args.seed)
    extras = synthetic_extras(get_variant(args.variant), args.duration, args.seed)

    runs: dict[Config, list[dict]] = {c: [] for c in configs}
    last: dict[str, object] = {}
    load: list[list[float] | None] = []  # 1-minute load average after each round
    for round_ in range(args.warmup + args.repeat):
        timed = round_ >= args.warmup
        for c in configs:
            run = run_once(pipes[c], frames, list(PROMPTS[: c.prompts]), args, extras)
            f2w = run["timings"]["frames_to_waveform"]
            print(
                f"  round {round_ + 1}/{args.warmup + args.repeat} {c.name:<22s} "
                f"{f2w:9.3f} s {'' if timed else '(warm-up)'}",
                flush=True,
            )
            if timed:
                runs[c].append(run)
            last[c.name] = run
        load.append(_loadavg())
        print(f"  load average after round {round_ + 1}: {load[-1]}", flush=True)
    results = []
    for c in configs:
        step_times = time_dit_step(pipes[c], last[c.name], args)
        results.append(summarise(c, runs[c] or [last[c.name]], step_times, args))
    add_comparisons(results, {name: run["out"] for name, run in last.items()})
    add_backend_comparisons(results, {name: run["out"] for name, run in last.items()})

    report = {
        "schema": SCHEMA,
        "environment": env,
        "setup": setup_record(args, load_s, args.note),
        "results": results,
        "single_pass_rel_l2": single_pass_errors(pipes, last, frames, args) if pipes else None,
    }
    if device.type == "cpu" and results:
        report["targets"] = limits.targets(results)
    variant = get_variant(args.variant)
    if args.limits and results and variant.video_encoder is not None and not variant.separation:
        report["limits"] = machine_limits(pipes, configs, frames, last, results, args)
    if args.file_to_file:
        fast = next((c for c in configs if c.mode != "reference" and c.prompts == 1), configs[0])
        with tempfile.TemporaryDirectory() as tmp:
            clip = (
                synthetic_clip(Path(tmp) / "clip_1080p.mp4")
                if args.file_to_file == "synthetic"
                else Path(args.file_to_file)
            )
            report["file_to_file"] = {
                "config": fast.name,
                **file_to_file(pipes[fast], clip, Path(tmp), args),
            }
    if args.long_clip:
        report["long_clip"] = long_clip(pipes, configs, args)
    if args.cached_prompt or args.jobs_together:
        fast = next((c for c in configs if c.mode == "fast" and c.prompts == 1), None)
        if fast is None:
            raise SystemExit("--cached-prompt and --jobs-together run on a fast/*/p1 configuration")
        if args.jobs_together:
            report["jobs_together"] = jobs_together(
                pipes[fast], frames, extras, args, args.jobs_together
            )
        if args.cached_prompt:
            with tempfile.TemporaryDirectory() as tmp:
                clip = (
                    synthetic_clip(Path(tmp) / "clip_1080p.mp4")
                    if args.file_to_file in (None, "synthetic")
                    else Path(args.file_to_file)
                )
                report["cached_prompt"] = cached_prompt(pipes[fast], clip, args)
    if args.low_memory:
        del nets, pipes
        _trim_heap()
        report["low_memory"] = memory.compare(args, weights_file, device)
        tmp_weights.cleanup()
    report["targets"] = report.get("targets", []) + reuse_targets(report)
    report["load_average_rounds"] = load
    report["load_average_end"] = _loadavg()

    write_report(report, markdown(report), args, device)
    return 0


def write_report(report: dict, md: str, args: argparse.Namespace, device: torch.device) -> None:
    """The report as args.output/<stem>.json and .md (stem: --name, or the device, variant and
    date), the tables printed too."""
    date = report["environment"]["date"][:10]
    stem = args.name or f"bench-{device.type}-{args.variant}-{date}"
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.output / f"{stem}.md").write_text(md)
    print(md)
    print(f"wrote {args.output / stem}.json and .md", flush=True)


if __name__ == "__main__":
    sys.exit(main())
