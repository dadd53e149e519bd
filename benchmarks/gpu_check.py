"""One command that proves selva-rt on a GPU machine, in under 8 minutes.

    python benchmarks/gpu_check.py --out DIR            # from a plain checkout, nothing installed
    python benchmarks/gpu_check.py --dry-run            # the plan and its time budget, any machine

Written for the machines GPUs come on: air-gapped, with their own CUDA torch and Triton, without
PyAV or soundfile, and often lent for one run of a few minutes. The checkout's root is imported
as the package `selva_rt`, whatever its folder is called; nothing is installed or downloaded.

Sections run in order of value, each in a process of its own with a time box, so a hang, a
crash or a poisoned CUDA context costs that section alone, and what it finished before is kept:

  correctness  both Triton kernels against their torch references at the real shapes in fp32,
               bf16 and fp16; the CUDA-graph 25-step Euler loop against the eager loop; the tiny
               pipeline on CUDA against the CPU and the golden e2e_tiny case on CUDA (fast,
               reference and CUDA-graph modes), within the golden tolerances; bf16 against fp32
               per part and end to end
  latency      `selva-rt bench` on selva-small-16k with random full-size weights: reference
               fp32 and bf16, fast bf16 with and without CUDA graphs, 1 and 4 prompts; per part,
               frames -> waveform and one CFG step, against the latency targets
  kernels      the kernel microbenchmark (benchmarks/kernels.py) against SDPA
  engines      ONNX Runtime's CUDA provider and TensorRT on the tiny variant, each only if it can
               be imported (else skipped, with why)

Progress lines carry the seconds since the start. DIR gets gpu_check.json and gpu_check.md
(device, driver, versions, date, commit, every figure, every failure with its message) and the
raw files of each section.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# name: (time box in seconds on an H100-class GPU, warm-up and compilation included; what runs)
SECTIONS = {
    "correctness": (150, "kernels vs references (fp32/bf16/fp16), CUDA-graph loop vs eager, tiny "
                    "and golden pipelines on CUDA fp32, bf16 vs fp32 per part and end to end"),
    "latency": (210, "selva-rt bench, selva-small-16k random full-size weights: reference "
                "fp32/bf16, fast bf16 with and without CUDA graphs, 1 and 4 prompts"),
    "kernels": (80, "Triton kernels vs SDPA microbenchmark (benchmarks/kernels.py)"),
    "engines": (30, "ONNX Runtime CUDA provider and TensorRT on the tiny variant, if importable"),
}  # fmt: skip
LIMIT_S = 480  # the whole run, the budget
STARTUP_S = 10  # the parent's own work: imports, environment, report
PROMPTS = ("dog barking", "car horn honking", "sheep bleating", "rain on a window")
# Golden tolerances (golden README): relative L2 and max abs per output.
GOLDEN_TOL = {
    "sync_features": (1e-4, 1e-3),
    "x1": (5e-4, 5e-3),
    "x1_unnorm": (5e-4, 5e-3),
    "mel": (1e-4, 5e-3),
    "audio": (2e-3, 2e-2),
}
KERNEL_TOL = {"fp32": 1e-5, "bf16": 1e-2, "fp16": 1e-2}  # rel L2 vs the reference, same dtype
BF16_PART_TOL = 2e-2  # one pass in bf16 vs fp32 (the golden README: "around 1e-2")
BF16_E2E_TOL = 1e-1  # 25 Euler steps and the decoder: loose, catches garbage, not drift
GRAPH_TOL = {"fp32": 1e-5, "bf16": 1e-3}  # the captured loop runs the eager loop's kernels
# Another seed or prompt moves the audio by far more than this (random tiny weights: ~1e-1 and
# more); the same ones again give it back within REPEAT (replays are deterministic).
DISTINCT = 1e-3
REPEAT = 1e-5
TINY_DURATION = 2.0  # seconds: the CPU side of the tiny check is the slow one
# Where the pipeline checks run: CUDA here; the CPU tests run the same checks on "cpu" to prove
# this script's own logic (tests/test_gpu_check.py).
DEVICE = "cuda"
TARGETS = (  # (what, configuration, figure, limit, unit): the targets, H100-class GPU
    ("frames -> waveform, bf16, 8 s, 1 prompt", "graphs/bf16/p1", "f2w_ms", 50.0, "ms"),
    ("speedup over reference mode, same precision", "graphs/bf16/p1", "speedup", 20.0, "x"),
    ("one CFG step in the loop", "graphs/bf16/p1", "step_ms", 0.6, "ms"),
    ("4 prompts vs 1 prompt", "graphs/bf16/p4", "cost_vs_one", 2.0, "x"),
)


# -- the package from the checkout ------------------------------------------------------------


def import_checkout() -> None:
    """Register the checkout's root as the package `selva_rt` (the folder may have any name), so
    nothing needs installing; a `selva_rt` already imported (python -m) is kept."""
    if "selva_rt" in sys.modules:
        return
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # no bare `kernels`
    spec = importlib.util.spec_from_file_location(
        "selva_rt", REPO / "__init__.py", submodule_search_locations=[str(REPO)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["selva_rt"] = module
    spec.loader.exec_module(module)


# -- recording --------------------------------------------------------------------------------


class Recorder:
    """The checks of one section: printed as they finish, written to DIR/sections/NAME.json
    after each one, so a section killed at its time box keeps what it finished."""

    def __init__(self, section: str, out: Path, t0: float):
        self.section, self.t0 = section, t0
        self.path = out / "sections" / f"{section}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.data: dict = {"section": section, "checks": [], "extra": {}}
        self.save()

    def log(self, message: str) -> None:
        print(f"[{time.time() - self.t0:6.1f} s] {self.section}: {message}", flush=True)

    @contextlib.contextmanager
    def check(self, name: str) -> Iterator[dict]:
        """`with rec.check(name) as r: r["figure"] = ...; r["ok"] = ...`. An exception marks the
        check failed with its message; the section goes on with the next check."""
        entry: dict = {"name": name}
        start = time.perf_counter()
        try:
            yield entry
            entry.setdefault("ok", True)
            if not entry["ok"] and "error" not in entry and "bound" in entry:
                entry["error"] = (
                    f"rel L2 {entry.get('rel_l2', float('nan')):.3g} > {entry['bound']}"
                )
        except Exception as err:  # reported; the next check still runs
            entry["ok"] = False
            entry["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:500]
            entry["traceback"] = traceback.format_exc()[-3000:]
        entry["seconds"] = round(time.perf_counter() - start, 2)
        self.data["checks"].append(entry)
        self.save()
        verdict = "ok" if entry["ok"] else f"FAILED {entry.get('error', '')}"
        self.log(f"{name}: {verdict}{_figures(entry)} ({entry['seconds']:.1f} s)")

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        tmp.replace(self.path)


def _figures(entry: dict) -> str:
    shown = []
    for key in ("rel_l2", "worst_rel_l2", "f2w_ms", "median_ms", "skipped"):
        if key in entry:
            value = entry[key]
            shown.append(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}")
    return f" [{', '.join(shown)}]" if shown else ""


def rel_l2(actual, expected) -> float:
    a, b = actual.detach().double().cpu(), expected.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def compare(entry: dict, outputs: dict, expected: dict, tol: dict) -> None:
    """entry[name] = (rel L2, max abs) per output; ok when every one is within tol[name]."""
    worst = 0.0
    for name, value in outputs.items():
        if name not in expected:
            continue
        rel = rel_l2(value, expected[name])
        mx = (value.detach().double().cpu() - expected[name].double().cpu()).abs().max().item()
        rtol, maxabs = tol[name] if isinstance(tol, dict) else (tol, float("inf"))
        entry[name] = {"rel_l2": rel, "max_abs": mx, "rtol": rtol, "max_abs_bound": maxabs}
        worst = max(worst, rel)
        if not (rel <= rtol and mx <= maxabs):  # NaN fails too
            entry["ok"] = False
            entry.setdefault("error", f"{name}: rel L2 {rel:.3g} (<= {rtol}), max abs {mx:.3g}")
    entry["worst_rel_l2"] = worst
    entry.setdefault("ok", True)


# -- shared by the sections -------------------------------------------------------------------


def golden_dir() -> Path:
    """SELVA_RT_GOLDEN, else the suite's copy (tests/data/golden), else ../shared/golden."""
    if os.environ.get("SELVA_RT_GOLDEN"):
        return Path(os.environ["SELVA_RT_GOLDEN"])
    for path in (REPO / "tests" / "data" / "golden", REPO.parent / "shared" / "golden"):
        if (path / "e2e_tiny.json").is_file():
            return path
    raise FileNotFoundError(
        "golden data not found in tests/data/golden or ../shared/golden; set SELVA_RT_GOLDEN"
    )


def run_parts(pipe, frames, text, duration: float, x0, steps: int, cfg: float) -> dict:
    """Pipeline.synthesize's parts in its order, from a given noise x0 [P, N, E] (the golden
    draw, or one shared by two devices: CUDA's generator draws other numbers than the CPU's)."""
    import torch

    parts, seq = pipe.parts, pipe.variant.sequence_lengths(duration)
    prompts = text.clip.shape[0]
    with torch.inference_mode():
        trunk = parts.video_trunk(frames, prompts)
        sync_f = parts.video_select(trunk, text.t5, text.t5_mask, prompts)
        negative = text.negative.expand(prompts, -1, -1)
        conditions = parts.dit_conditions(None, sync_f, text.clip, negative, seq.latent, seq.clip)
        x1 = parts.sample(x0.to(parts.device, parts.dtype), conditions, steps, cfg)
        mel, audio = parts.decoder(x1)
        x1_unnorm = parts.nets.generator.unnormalize(x1) if hasattr(parts, "nets") else None
    out = {"sync_features": sync_f, "x1": x1, "mel": mel, "audio": audio}
    if x1_unnorm is not None:
        out["x1_unnorm"] = x1_unnorm
    return out


def tiny_inputs(prompts: int, seed: int = 0):
    """Synthetic frames [1, 25 * TINY_DURATION, 3, 224, 224] and noise [P, N, 20] for tiny."""
    import torch
    from selva_rt.benchmarks.inputs import synthetic_frames
    from selva_rt.runtime.variants import TINY

    seq = TINY.sequence_lengths(TINY_DURATION)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(prompts, seq.latent, TINY.generator.latent_dim, generator=g)
    return synthetic_frames(TINY_DURATION, seed), x0


def tiny_pipeline(device, dtype, nets=None, **options):
    import torch
    from selva_rt.runtime.backends.torch_parts import TorchParts
    from selva_rt.runtime.families import family_of
    from selva_rt.runtime.models.networks import build_networks
    from selva_rt.runtime.pipeline import Pipeline
    from selva_rt.runtime.variants import TINY

    nets = nets if nets is not None else build_networks(TINY, {})
    parts = TorchParts(TINY, nets, torch.device(device), dtype, **options)
    return Pipeline(family_of(TINY, parts))


def text_to(text, device):
    from selva_rt.runtime.families.flow import TextFeatures

    return TextFeatures(*(None if t is None else t.to(device) for t in dataclasses.astuple(text)))


def distinct_outputs(r: dict, pipe, frames, seconds: float) -> None:
    """Guard against a capture or engine that returns one audio for every input (a CUDA-graph
    pipeline can, with exit 0): `pipe.synthesize` for (prompt A, seed 7), (A, 8), (B, 7), then
    (A, 7) again. Each new seed or prompt must move the audio by more than DISTINCT, and the
    repeat must give the first audio back (within REPEAT): both together rule out stale
    buffers."""
    import torch
    from selva_rt.runtime.windows import plan_windows

    layout = plan_windows(seconds, pipe.variant.audio)
    texts = [pipe.family.encode_text([p]) for p in PROMPTS[:2]]
    runs = {}
    for name, text, seed in (("A7", 0, 7), ("A8", 0, 8), ("B7", 1, 7), ("A7 again", 0, 7)):
        out = pipe.synthesize([{"sync": frames}], texts[text], layout, seed=seed)
        runs[name] = out.audio.float().cpu()
    r["finite"] = all(bool(torch.isfinite(a).all()) for a in runs.values())
    r["other seed rel_l2"] = rel_l2(runs["A8"], runs["A7"])
    r["other prompt rel_l2"] = rel_l2(runs["B7"], runs["A7"])
    r["repeat rel_l2"] = rel_l2(runs["A7 again"], runs["A7"])
    r["bound"] = f"others > {DISTINCT:g}, repeat <= {REPEAT:g}"
    r["ok"] = (
        r["finite"]
        and min(r["other seed rel_l2"], r["other prompt rel_l2"]) > DISTINCT
        and r["repeat rel_l2"] <= REPEAT
    )


# -- section 1: correctness -------------------------------------------------------------------


def section_correctness(rec: Recorder) -> None:
    import torch

    # The pipelines run with torch's defaults, as users get them: recorded, not changed.
    rec.data["extra"]["tf32"] = {
        "matmul": torch.backends.cuda.matmul.allow_tf32,
        "cudnn": torch.backends.cudnn.allow_tf32,
    }
    check_kernels(rec)
    check_cuda_graphs(rec)
    check_tiny_pipeline(rec)
    check_golden(rec)
    check_bf16(rec)


def check_kernels(rec: Recorder) -> None:
    """Both kernels as the runtime calls them, at SELVA small's 8 s shapes."""
    import torch
    from selva_rt.kernels import psca_attention as psca
    from selva_rt.kernels import sup_cross_attention as sup
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if sup.triton is None:
        with rec.check("Triton kernels"):
            raise RuntimeError(_importable("triton") or "Triton cannot be imported")
        return
    dev = torch.device("cuda")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    # 24 segments of 1568 video tokens, 12 heads of 64; keys: 5 [SUP] + the T5 tokens.
    sup_cases = {"1 prompt": ([16], 1), "4 prompts, one clip": ([12, 20, 33, 60], 1)}
    sup_cases["4 clips, 4 prompts"] = ([12, 20, 33, 60], 4)
    for name, dtype in dtypes.items():
        for case, (lengths, clips) in sup_cases.items():
            with rec.check(f"sup_cross_attention {name} {case}") as r:
                g = torch.Generator(dev).manual_seed(0)
                prompts, valid = len(lengths), torch.tensor(lengths) + 5
                lk = int(valid.max())
                q = torch.randn(clips * 24, 1568, 12, 64, device=dev, generator=g).to(dtype)
                q = q.transpose(1, 2)  # the head-split view the encoder passes
                k, v = (
                    torch.randn(prompts, 12, lk, 64, device=dev, generator=g).to(dtype)
                    for _ in "kv"
                )
                mask = (torch.arange(lk)[None, :] < valid[:, None]).to(dev)
                weight = 0.5 + torch.rand(64, device=dev, generator=g)
                out = sup.sup_cross_attention_triton(q, k, v, mask, 24, weight)
                torch.cuda.synchronize()
                with sdpa_kernel([SDPBackend.MATH]) if name == "fp32" else contextlib.nullcontext():
                    ref = sup.sup_cross_attention_reference(q, k, v, mask, 24, weight)
                r["shape"] = {"q": list(q.shape), "kv": list(k.shape)}
                r["rel_l2"] = rel_l2(out, ref)
                r["bound"] = KERNEL_TOL[name]
                r["ok"] = bool(torch.isfinite(out).all()) and r["rel_l2"] <= r["bound"]
    for name, dtype in dtypes.items():
        for layer in (0, 4, 9):
            with rec.check(f"psca_attention {name} layer {layer}") as r:
                g = torch.Generator(dev).manual_seed(layer)
                q = (2 * torch.randn(2, 8, 250, 64, device=dev, generator=g)).to(dtype)
                k, v = (torch.randn(2, 8, 64, 64, device=dev, generator=g).to(dtype) for _ in "kv")
                params = psca.PSCALayer(layer)
                out = psca.psca_attention_triton(q, k, v, params)
                torch.cuda.synchronize()
                with sdpa_kernel([SDPBackend.MATH]) if name == "fp32" else contextlib.nullcontext():
                    ref = psca.psca_attention_reference(q, k, v, params)
                r["rel_l2"] = rel_l2(out, ref)
                r["bound"] = KERNEL_TOL[name]
                r["ok"] = bool(torch.isfinite(out).all()) and r["rel_l2"] <= r["bound"]


def check_cuda_graphs(rec: Recorder) -> None:
    """The 25-step loop captured as one CUDA graph equals the eager loop, on the first call and
    on a replay with new inputs of the same shapes (what the static buffers must take in)."""
    import torch
    from selva_rt.runtime.backends.torch_parts import TorchParts

    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        with rec.check(f"CUDA-graph Euler loop vs eager, tiny {name}, 2 prompts") as r:
            eager = tiny_pipeline("cuda", dtype)
            graphs = TorchParts(
                eager.variant, eager.parts.nets, eager.device, dtype, cuda_graphs=True
            )
            frames, x0 = tiny_inputs(2)
            seq = eager.variant.sequence_lengths(TINY_DURATION)
            for call, prompts in enumerate((PROMPTS[:2], PROMPTS[2:4])):
                text = eager.family.encode_text(list(prompts))
                with torch.inference_mode():
                    trunk = eager.parts.video_trunk(frames, 2)
                    sync_f = eager.parts.video_select(trunk, text.t5, text.t5_mask, 2)
                    cond = eager.parts.dit_conditions(
                        None,
                        sync_f,
                        text.clip,
                        text.negative.expand(2, -1, -1),
                        seq.latent,
                        seq.clip,
                    )
                    noise = (x0 if call == 0 else x0.flip(0) * 0.5).to("cuda", dtype)
                    expected = eager.parts.sample(noise, cond, 25, 4.5)
                    actual = graphs.sample(noise, cond, 25, 4.5)
                r[f"call {call + 1} rel_l2"] = rel_l2(actual, expected)
            r["graphs_captured"] = len(graphs.graphs.graphs)
            r["rel_l2"] = max(r["call 1 rel_l2"], r["call 2 rel_l2"])
            r["bound"] = GRAPH_TOL[name]
            r["ok"] = r["rel_l2"] <= r["bound"] and r["graphs_captured"] == 1


def check_tiny_pipeline(rec: Recorder) -> None:
    """The tiny variant (random weights, every real code path) on CUDA fp32 against the CPU:
    text encoders, then frames -> waveform from the same noise; and Pipeline.synthesize as
    users run it on CUDA (CUDA graphs on), twice with one seed."""
    import torch
    from selva_rt.runtime.models.networks import build_networks
    from selva_rt.runtime.variants import TINY
    from selva_rt.runtime.windows import plan_windows

    nets = build_networks(TINY, {})
    cpu = tiny_pipeline("cpu", torch.float32, copy.deepcopy(nets))
    cuda = tiny_pipeline(DEVICE, torch.float32, nets)
    frames, x0 = tiny_inputs(1)
    with rec.check(f"tiny text encoders, {DEVICE} fp32 vs CPU") as r:
        text_cpu = cpu.family.encode_text(list(PROMPTS[:2]))
        text_cuda = cuda.family.encode_text(list(PROMPTS[:2]))
        compare(
            r,
            {k: getattr(text_cuda, k) for k in ("clip", "negative", "t5")},
            {k: getattr(text_cpu, k) for k in ("clip", "negative", "t5")},
            1e-4,
        )
    with rec.check(f"tiny frames -> waveform, {DEVICE} fp32 vs CPU") as r:
        one = cpu.family.encode_text([PROMPTS[0]])  # one prompt: the CPU side is the slow one
        expected = run_parts(cpu, frames, one, TINY_DURATION, x0, 25, 4.5)
        actual = run_parts(cuda, frames, text_to(one, DEVICE), TINY_DURATION, x0, 25, 4.5)
        compare(r, actual, expected, GOLDEN_TOL)
    with rec.check(f"tiny Pipeline.synthesize on {DEVICE} as users run it, same seed twice") as r:
        graphs = tiny_pipeline(DEVICE, torch.float32, nets, cuda_graphs=DEVICE == "cuda")
        layout = plan_windows(TINY_DURATION, graphs.variant.audio)
        runs = [graphs.synthesize([{"sync": frames}], text_cuda, layout, seed=7) for _ in range(2)]
        r["finite"] = bool(torch.isfinite(runs[0].audio).all())
        r["rel_l2"] = rel_l2(runs[1].audio, runs[0].audio)
        r["bound"] = 1e-6
        r["ok"] = r["finite"] and r["rel_l2"] <= r["bound"]
    with rec.check(
        f"tiny Pipeline.synthesize on {DEVICE}: other seeds and prompts, other audio"
    ) as r:
        distinct_outputs(r, graphs, frames, TINY_DURATION)


def check_golden(rec: Recorder) -> None:
    """e2e_tiny (the official code's output) through the parts on CUDA in fp32, from the
    golden noise, in every torch mode."""
    import torch
    from selva_rt.benchmarks.golden_e2e import e2e_pipeline, read_e2e

    case = read_e2e(golden_dir())
    tensors, args = case.tensors, case.meta["args"]
    expected = {
        "sync_features": tensors["out.sync_features"],
        "x1": tensors["out.x1"],
        "x1_unnorm": tensors["out.x1_unnorm"],
        "mel": tensors["out.mel"],
        "audio": tensors["out.audio"][:, 0],
    }
    rec.data["extra"]["golden"] = str(golden_dir())
    modes = {"fast": {}}
    if DEVICE == "cuda":  # the CPU tests cover the reference mode already
        modes |= {"reference": {"reference": True}, "fast + CUDA graphs": {"cuda_graphs": True}}
    for mode, options in modes.items():
        with rec.check(f"golden e2e_tiny on {DEVICE} fp32, {mode}") as r:
            pipe = e2e_pipeline(case, DEVICE, torch.float32, **options)
            out = run_parts(
                pipe,
                case.frames,
                text_to(case.text, DEVICE),
                case.duration,
                tensors["out.x0"],
                args["num_steps"],
                args["cfg_strength"],
            )
            compare(r, out, expected, GOLDEN_TOL)


def check_bf16(rec: Recorder) -> None:
    """bf16 against fp32 on CUDA with e2e_tiny's golden networks: each part fed the same fp32
    inputs, then the whole chain."""
    import torch
    from selva_rt.benchmarks.golden_e2e import e2e_pipeline, read_e2e

    case = read_e2e(golden_dir())
    tensors, duration, frames = case.tensors, case.duration, case.frames
    text = text_to(case.text, DEVICE)
    pipes = {
        name: e2e_pipeline(case, DEVICE, dtype)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    p32, p16 = pipes["fp32"].parts, pipes["bf16"].parts
    seq = pipes["fp32"].variant.sequence_lengths(duration)
    with torch.inference_mode():
        trunk = p32.video_trunk(frames)
        sync_f = p32.video_select(trunk, text.t5, text.t5_mask)
        cond = p32.dit_conditions(None, sync_f, text.clip, text.negative, seq.latent, seq.clip)
        x0 = tensors["out.x0"].to(DEVICE)
        t = torch.full((1,), 0.48, device=DEVICE)
        x1 = p32.sample(x0, cond, 25, 4.5)
        half = {k: v.to(torch.bfloat16) for k, v in cond.items()}
        per_part = {
            "video_trunk": (lambda: p16.video_trunk(frames), trunk),
            "video_select": (
                lambda: p16.video_select(trunk.bfloat16(), text.t5, text.t5_mask),
                sync_f,
            ),
            "dit_conditions": (
                lambda: p16.dit_conditions(
                    None, sync_f, text.clip, text.negative, seq.latent, seq.clip
                )["sync_f"],
                cond["sync_f"],
            ),
            "dit_step (one CFG step)": (
                lambda: p16.dit_step(x0.bfloat16(), t.bfloat16(), half, 4.5),
                p32.dit_step(x0, t, cond, 4.5),
            ),
            "decoder (audio)": (lambda: p16.decoder(x1.bfloat16())[1], p32.decoder(x1)[1]),
        }
        for part, (run16, expected) in per_part.items():
            with rec.check(f"bf16 vs fp32 on {DEVICE}, {part}") as r:
                r["rel_l2"] = rel_l2(run16(), expected)
                # VAE + BigVGAN are ~100 layers deep: 5e-2 in bf16 on the CPU (why
                # bench has bf16+fp32dec); a single pass elsewhere.
                r["bound"] = BF16_E2E_TOL if part.startswith("decoder") else BF16_PART_TOL
                r["ok"] = r["rel_l2"] <= r["bound"]
    with rec.check(f"bf16 vs fp32 on {DEVICE}, frames -> waveform (golden networks)") as r:
        args = (frames, text, duration, tensors["out.x0"], 25, 4.5)
        out32, out16 = run_parts(pipes["fp32"], *args), run_parts(pipes["bf16"], *args)
        keys = ("sync_features", "x1", "mel", "audio")
        compare(r, {k: out16[k] for k in keys}, {k: out32[k] for k in keys}, BF16_E2E_TOL)


# -- section 2: latency -----------------------------------------------------------------------


def section_latency(rec: Recorder, deadline: float) -> None:
    """bench.py's measurement (same helpers, same report) on the issue's configurations, with
    rounds cut short rather than the section lost when time runs out."""
    import torch
    from selva_rt.benchmarks import bench

    dev = torch.device("cuda")
    args = bench.parse_args(["--device", "cuda", "--warmup", "1", "--repeat", "3"])
    configs = [bench.Config("reference", p, n) for p in ("fp32", "bf16") for n in (1, 4)]
    configs += [bench.Config(m, "bf16", n) for m in ("fast", "graphs") for n in (1, 4)]
    env = bench.environment(dev)
    pipes: dict = {}
    with rec.check(f"load {args.variant}, {bench.weights_note(args)}") as r:
        t0 = time.perf_counter()
        nets = bench.random_networks(args.variant)
        pipes = bench.make_pipelines(args.variant, nets, configs, dev, random_weights=True)
        frames = bench.synthetic_frames(args.duration, args.seed)
        load_s = r["load_s"] = time.perf_counter() - t0
    if not pipes:
        return
    runs: dict = {c: [] for c in configs}
    last: dict = {}
    for round_ in range(args.warmup + args.repeat):
        # Rounds stop 40 s before the time box: the step timings and the report still fit.
        if round_ > args.warmup and time.time() > deadline - 40:
            rec.log(f"time box: stopping after {round_ - args.warmup} timed rounds")
            break
        for c in configs:
            with rec.check(f"round {round_ + 1} {c.name}") as r:
                run = bench.run_once(pipes[c], frames, list(PROMPTS[: c.prompts]), args)
                r["f2w_ms"] = 1000 * run["timings"]["frames_to_waveform"]
                if round_ >= args.warmup:
                    runs[c].append(run)
                last[c.name] = run
    results = []
    for c in configs:
        if c.name not in last:
            continue
        with rec.check(f"one CFG step {c.name}") as r:
            step_times = bench.time_dit_step(pipes[c], last[c.name], args)
            results.append(bench.summarise(c, runs[c] or [last[c.name]], step_times, args))
            r["median_ms"] = results[-1]["dit_step_ms"]["median"]
    bench.add_comparisons(results, {name: run["out"] for name, run in last.items()})
    report = {
        "schema": bench.SCHEMA,
        "environment": env,
        "setup": bench.setup_record(args, load_s, "benchmarks/gpu_check.py"),
        "results": results,
        "load_average_end": bench._loadavg(),
    }
    rec.data["extra"]["bench"] = report
    rec.data["extra"]["bench_markdown"] = bench.markdown(report) if results else ""
    rec.data["extra"]["targets"] = targets(results)
    rec.save()


def targets(results: list[dict]) -> list[dict]:
    by_name = {r["name"]: r for r in results}
    rows = []
    for what, name, figure, limit, unit in TARGETS:
        r = by_name.get(name)
        value = None
        if r is not None:
            value = {
                "f2w_ms": 1000 * r["frames_to_waveform_s"]["median"],
                "speedup": r.get("speedup_vs_reference"),
                "step_ms": r["sampling_per_step_ms"],
                "cost_vs_one": r.get("cost_vs_one_prompt"),
            }[figure]
        met = None if value is None else (value >= limit if figure == "speedup" else value <= limit)
        rows.append(dict(target=what, config=name, value=value, limit=limit, unit=unit, met=met))
    return rows


# -- section 3: kernel microbenchmark ---------------------------------------------------------


def section_kernels(rec: Recorder) -> None:
    import torch
    from selva_rt.benchmarks import kernels as kb

    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 cases compare IEEE fp32 paths
    rec.data["extra"]["environment"] = kb.environment(dev)
    with rec.check("peaks (bandwidth, matmul throughput)") as r:
        peaks = kb.measure_peaks(dev)
        r.update(peaks)
    cases = [(kb.sup_case, n) for n in kb.SUP_CASES] + [(kb.psca_case, n) for n in kb.PSCA_CASES]
    for fn, name in cases:
        with rec.check(f"{fn.__name__.removesuffix('_case')} {name}") as r:
            result = fn(name, dev, peaks)
            r.update(result)
            r["median_ms"] = result["kernel_ms"]
            r["speedup_vs_torch"] = result["torch_ms"] / result["kernel_ms"]
            r["speedup_vs_sdpa_alone"] = result["sdpa_ms"] / result["kernel_ms"]


# -- section 4: ONNX Runtime (CUDA provider) and TensorRT --------------------------------------


def section_engines(rec: Recorder) -> None:
    """Both engine backends on the tiny variant against torch on CUDA (fp32, same noise)."""
    import tempfile

    import torch
    from selva_rt.runtime.backends import load_parts
    from selva_rt.runtime.families import family_of
    from selva_rt.runtime.pipeline import Pipeline
    from selva_rt.runtime.variants import TINY

    ort_why = _ort_unusable()
    trt_why = _importable("tensorrt")
    onnx_why = _importable("onnxscript") or _importable("onnx")
    if ort_why or onnx_why:
        with rec.check("onnxruntime CUDA provider") as r:
            r["skipped"] = ort_why or f"cannot export the ONNX graphs: {onnx_why}"
    if trt_why or onnx_why:
        with rec.check("tensorrt") as r:
            r["skipped"] = trt_why or f"cannot export the ONNX graphs: {onnx_why}"
    backends = [b for b, why in (("onnxruntime", ort_why), ("tensorrt", trt_why)) if not why]
    if onnx_why or not backends:
        return
    from selva_rt.export import build_engines

    torch_pipe = tiny_pipeline(DEVICE, torch.float32)
    frames, x0 = tiny_inputs(1)
    text = torch_pipe.family.encode_text([PROMPTS[0]])
    expected = run_parts(torch_pipe, frames, text, TINY_DURATION, x0, 25, 4.5)
    with tempfile.TemporaryDirectory() as tmp:
        engines = Path(tmp) / "tiny"
        with rec.check("export tiny" + (" (ONNX only)" if trt_why else " (ONNX + TensorRT)")) as r:
            argv = ["--variant", "tiny", "--out", str(engines), "--quiet"]
            r["exit"] = build_engines.main(argv + (["--onnx-only"] if trt_why else []))
            r["ok"] = r["exit"] == 0
        for backend in backends:
            with rec.check(f"{backend} on CUDA vs torch CUDA fp32, tiny frames -> waveform") as r:
                parts = load_parts(TINY, backend, device=DEVICE, engines=engines)
                r["providers"] = str(getattr(parts, "providers", ""))
                pipe = Pipeline(family_of(TINY, parts))
                out = run_parts(pipe, frames, text, TINY_DURATION, x0, 25, 4.5)
                compare(r, out, expected, GOLDEN_TOL)
            with rec.check(f"{backend} on CUDA: other seeds and prompts, other audio") as r:
                distinct_outputs(r, pipe, frames, TINY_DURATION)


def _importable(name: str) -> str | None:
    """None if `name` imports, else why not (one line)."""
    try:
        importlib.import_module(name)
    except Exception as err:
        return f"{name} cannot be imported ({type(err).__name__}: {err})".splitlines()[0]
    return None


def _ort_unusable() -> str | None:
    why = _importable("onnxruntime")
    if why:
        return why
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (has {providers})"
    return None


# -- the parent: environment, sections, report ------------------------------------------------


def environment() -> dict:
    import torch

    props = torch.cuda.get_device_properties(0)
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    versions |= {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    for name in ("triton", "numpy", "transformers", "tokenizers", "safetensors", "onnx"):
        versions[name] = _version(name)
    for name in ("onnxruntime", "tensorrt", "onnxscript", "av", "soundfile", "ftfy"):
        versions[name] = _version(name)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "checkout": str(REPO),
        "host": platform.node(),
        "device": {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "sm_count": props.multi_processor_count,
            "memory_GiB": round(props.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(),
        },
        "driver": _driver(),
        "cpu_cores": os.cpu_count(),
        "versions": versions,
    }


def _version(name: str) -> str | None:
    """The module's version, or None where it cannot be imported."""
    try:
        module = importlib.import_module(name)
    except Exception:
        return None
    return getattr(module, "__version__", "unknown")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _driver() -> str | None:
    query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None


def run_section(name: str, out: Path, t0: float, budget: float) -> dict:
    """The section in a child process, killed at its time box; its recorded checks either way."""
    deadline = time.time() + budget
    cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(out)]
    cmd += ["--section", name, "--t0", repr(t0), "--deadline", repr(deadline)]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # kernels compiled
    start = time.perf_counter()
    try:
        rc = subprocess.run(cmd, env=env, timeout=budget).returncode
        status = "done" if rc == 0 else f"crashed (exit {rc})"
    except subprocess.TimeoutExpired:
        status = f"timed out at its time box of {budget:.0f} s"
    path = out / "sections" / f"{name}.json"
    data = json.loads(path.read_text()) if path.is_file() else {"checks": [], "extra": {}}
    data |= {"status": status, "seconds": round(time.perf_counter() - start, 1), "budget_s": budget}
    return data


def child(args: argparse.Namespace) -> int:
    import_checkout()
    rec = Recorder(args.section, args.out, args.t0)
    rec.log("started")
    sections = {
        "correctness": lambda: section_correctness(rec),
        "latency": lambda: section_latency(rec, args.deadline),
        "kernels": lambda: section_kernels(rec),
        "engines": lambda: section_engines(rec),
    }
    try:
        sections[args.section]()
    except Exception as err:  # outside any check: recorded as one, with its message
        with rec.check(f"{args.section} (outside its checks)"):
            raise err
        return 1
    return 0


def dry_run(sections: list[str]) -> int:
    total = STARTUP_S + sum(SECTIONS[s][0] for s in sections)
    print(f"gpu_check plan: {len(sections)} sections, time budget {total} s of {LIMIT_S} s")
    print(
        f"  {'setup':12s} {STARTUP_S:4d} s  environment (device, driver, versions, commit), report"
    )
    for name in sections:
        budget, what = SECTIONS[name]
        print(f"  {name:12s} {budget:4d} s  {what}")
    import_checkout()
    modules = [
        "selva_rt.kernels.sup_cross_attention",
        "selva_rt.kernels.psca_attention",
        "selva_rt.runtime.pipeline",
        "selva_rt.runtime.backends.torch_parts",
        "selva_rt.runtime.backends.cuda_graph",
        "selva_rt.benchmarks.bench",
        "selva_rt.benchmarks.kernels",
    ]
    for name in modules:
        why = _importable(name)
        print(f"  import {name}: {why or 'ok'}")
    print(f"  selva_rt from {Path(sys.modules['selva_rt'].__file__).parent}")
    print(f"  golden data: {_golden_or_why()}")
    print("dry run: nothing ran")
    return 0


def _golden_or_why() -> str:
    try:
        return str(golden_dir())
    except FileNotFoundError as err:
        return str(err)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="folder for gpu_check.json, .md and raw results")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its budget")
    p.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}"
    )
    p.add_argument("--section", help=argparse.SUPPRESS)  # a child: run one section
    p.add_argument("--t0", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.sections = args.sections.split(",")
    for name in args.sections:
        if name not in SECTIONS:
            p.error(f"unknown section {name!r}; use {', '.join(SECTIONS)}")
    if not args.dry_run and args.out is None:
        p.error("--out DIR is required (or --dry-run)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.section:
        return child(args)
    if args.dry_run:
        return dry_run(args.sections)
    t0 = time.time()
    import torch

    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device is visible (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}); run it on a GPU machine, or use --dry-run for the plan",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"environment": environment(), "sections": {}}
    env = report["environment"]
    print(
        f"[{time.time() - t0:6.1f} s] gpu_check on {env['device']['name']} (driver "
        f"{env['driver']}), torch {env['versions']['torch']}, triton {env['versions']['triton']}",
        flush=True,
    )
    for name in args.sections:
        budget = SECTIONS[name][0]
        print(f"[{time.time() - t0:6.1f} s] {name}: start, time box {budget} s", flush=True)
        data = run_section(name, args.out, t0, budget)
        report["sections"][name] = data
        failed = sum(1 for c in data["checks"] if not c["ok"])
        print(
            f"[{time.time() - t0:6.1f} s] {name}: {data['status']}, {len(data['checks'])} checks, "
            f"{failed} failed, {data['seconds']:.0f} s",
            flush=True,
        )
        write_report(report, args.out, t0)
    report["wall_s"] = round(time.time() - t0, 1)
    write_report(report, args.out, t0)
    failures = [c for s in report["sections"].values() for c in s["checks"] if not c["ok"]]
    print(f"[{report['wall_s']:6.1f} s] wrote {args.out / 'gpu_check.json'} and .md", flush=True)
    return 1 if failures or any(s["status"] != "done" for s in report["sections"].values()) else 0


def write_report(report: dict, out: Path, t0: float) -> None:
    report["wall_s"] = round(time.time() - t0, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))


def markdown(report: dict) -> str:
    env = report["environment"]
    v = env["versions"]
    lines = [
        f"# gpu_check: {env['device']['name']}",
        "",
        f"{env['date']}, commit {(env['commit'] or 'unknown')[:10]}"
        f"{' (dirty)' if env['dirty'] else ''}; driver {env['driver']}, capability "
        f"{env['device']['capability']}, {env['device']['memory_GiB']} GiB; torch {v['torch']} "
        f"(CUDA {v['cuda']}, cuDNN {v['cudnn']}), triton {v['triton']}, python {v['python']}; "
        f"{report['wall_s']:.0f} s wall.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
    ]
    for name, data in report["sections"].items():
        checks = data["checks"]
        failed = [c for c in checks if not c["ok"]]
        lines += [
            "",
            f"## {name}: {data['status']}, {len(checks) - len(failed)}/{len(checks)} ok, "
            f"{data['seconds']:.0f} s of {data['budget_s']:.0f} s",
            "",
            "| check | result | figures | s |",
            "|---|---|---|---|",
        ]
        for c in checks:
            result = "skipped" if "skipped" in c else ("ok" if c["ok"] else "**FAILED**")
            figures = c.get("skipped") or c.get("error") or _figures(c).strip(" []")
            lines.append(f"| {c['name']} | {result} | {figures} | {c['seconds']} |")
        extra = data.get("extra", {})
        if extra.get("targets"):
            lines += [
                "",
                "| target | configuration | measured | limit | met |",
                "|---|---|---|---|---|",
            ]
            for t in extra["targets"]:
                value = "—" if t["value"] is None else f"{t['value']:.3g} {t['unit']}"
                met = "—" if t["met"] is None else ("yes" if t["met"] else "**no**")
                limit = f"{t['limit']} {t['unit']}"
                lines.append(f"| {t['target']} | {t['config']} | {value} | {limit} | {met} |")
        if extra.get("bench_markdown"):
            lines += ["", extra["bench_markdown"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
