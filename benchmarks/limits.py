"""Each part's time against what this machine can do at best, and the speed targets.

A part's floor is its FLOPs (matmuls, convolutions and attention, as torch's flop counter counts
them) over this machine's matmul throughput in the run's precision, measured here at the
shape of the trunk's MLP. Elementwise work and memory traffic are not counted, so the floor is
optimistic: no implementation of the same arithmetic runs a part faster. The best speedup a
configuration could show over reference mode is then the reference's measured time over that
configuration's floor.
"""

import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ..runtime.device import DTYPES
from ..runtime.models.video_encoder import num_segments
from ..runtime.variants import SYNC_SEGMENT

PARTS = ("video_trunk", "video_select", "sampling", "decoder")
GEMM_SHAPE = (1569, 768, 3072)  # the trunk's MLP over one segment's 1 + 1568 tokens
# Speed targets on the CPU (issue 15): fast over reference in each precision, one prompt, and
# what four prompts over one clip may cost against one.
SPEEDUP_TARGETS = {"bf16": 2.0, "fp32": 1.3}
PROMPTS_COST_TARGET = 2.0


def gemm_peak(precision: str, device: torch.device, repeat: int = 5) -> float:
    """GFLOP/s of one [M, K] @ [K, N] matmul at GEMM_SHAPE: the best of `repeat` calls."""
    m, k, n = GEMM_SHAPE
    dtype = DTYPES[precision.split("+")[0]]
    a = torch.randn(m, k, dtype=dtype, device=device)
    b = torch.randn(k, n, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(repeat + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best / 1e9


def _flops(fn) -> tuple[float, object]:
    """fn's FLOPs and its result."""
    # SDPA's math form and no fused nn.TransformerEncoderLayer (the reference's pooling layer),
    # so every product reaches the counter (a fused kernel's are not counted).
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            out = fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return float(counter.get_total_flops()), out


@torch.inference_mode()
def part_flops(pipe, frames: torch.Tensor, text, duration: float, steps: int, cfg: float) -> dict:
    """FLOPs of each part of one run of `pipe` (a SELVA pipeline) on frames [1, T, 3, 224,
    224] and P prompts: the trunk from one segment times the segments, the selection on tokens
    of the right shape, the Euler loop from one step times the steps."""
    parts, prompts = pipe.parts, text.prompts
    segments = num_segments(frames.shape[1])
    one = frames[:, :SYNC_SEGMENT].to(pipe.device)
    trunk, tokens = _flops(lambda: parts.video_trunk(one, prompts))
    # Per prompt (reference) or once (fast) the one segment's tokens, repeated for every segment.
    tokens = tokens.repeat_interleave(segments, 0)
    select, sync_f = _flops(lambda: parts.video_select(tokens, text.t5, text.t5_mask, prompts))
    seq = pipe.variant.sequence_lengths(duration)
    negative = text.negative.expand(prompts, -1, -1)
    conditions = parts.dit_conditions(None, sync_f, text.clip, negative, seq.latent, seq.clip)
    x = torch.randn(prompts, seq.latent, pipe.variant.generator.latent_dim, device=pipe.device)
    x = x.to(pipe.dtype)
    t = torch.full((prompts,), 0.5, dtype=x.dtype, device=x.device)
    step, _ = _flops(lambda: parts.dit_step(x, t, conditions, cfg))
    decoder, _ = _flops(lambda: parts.decoder(x))
    return {
        "video_trunk": segments * trunk,
        "video_select": select,
        "sampling": steps * step,
        "decoder": decoder,
    }


def limits(results: list[dict], flops: dict[tuple[str, int], dict], peaks: dict) -> list[dict]:
    """Per configuration: each part's GFLOP, achieved GFLOP/s and floor (s), the floor of the
    whole run, and the best speedup over the reference of its precision and prompts."""
    by_name = {r["name"]: r for r in results}
    rows = []
    for r in results:
        counted = flops.get((r["mode"], r["prompts"]))
        if counted is None:
            continue
        peak = peaks[r["precision"]]
        row = {"name": r["name"], "gemm_peak_gflops": peak, "parts": {}}
        for part, f in counted.items():
            seconds = r["parts_s"][part]["median"]
            row["parts"][part] = {
                "gflop": f / 1e9,
                "s": seconds,
                "gflops": f / 1e9 / seconds if seconds > 0 else None,
                "floor_s": f / 1e9 / peak,
            }
        row["floor_s"] = sum(p["floor_s"] for p in row["parts"].values())
        ref = by_name.get(f"reference/{r['precision']}/p{r['prompts']}")
        if ref is not None:
            reference_s = ref["frames_to_waveform_s"]["median"]
            row["best_speedup_vs_reference"] = reference_s / row["floor_s"]
        rows.append(row)
    return rows


def targets(results: list[dict]) -> list[dict]:
    """The CPU targets, each with its measured ratio: fast over reference in bf16 and fp32 with
    one prompt, and four prompts against one in fast mode."""
    by_name = {r["name"]: r for r in results}
    out = []
    for precision, target in SPEEDUP_TARGETS.items():
        fast = by_name.get(f"fast/{precision}/p1")
        if fast is not None and fast.get("speedup_vs_reference"):
            out.append(
                {
                    "what": f"fast/{precision}/p1 over reference/{precision}/p1",
                    "target": f">= {target:g}x",
                    "measured": fast["speedup_vs_reference"],
                    "met": fast["speedup_vs_reference"] >= target,
                }
            )
    for r in results:
        if r["mode"] == "fast" and r["prompts"] == 4 and r.get("cost_vs_one_prompt"):
            out.append(
                {
                    "what": f"{r['name']} against fast/{r['precision']}/p1",
                    "target": f"<= {PROMPTS_COST_TARGET:g}x",
                    "measured": r["cost_vs_one_prompt"],
                    "met": r["cost_vs_one_prompt"] <= PROMPTS_COST_TARGET,
                }
            )
    return out


def markdown(report: dict) -> list[str]:
    """The targets table and the limits table, as markdown lines (empty without them)."""
    lines = []
    if report.get("targets"):
        lines += ["", "Targets:", "", "| ratio | target | measured | met |", "|---|---|---|---|"]
        for t in report["targets"]:
            met = "yes" if t["met"] else "**no**"
            lines.append(f"| {t['what']} | {t['target']} | {t['measured']:.2f}x | {met} |")
    rows = report.get("limits")
    if rows:
        peaks = {r["name"].split("/")[1]: r["gemm_peak_gflops"] for r in rows}
        m, k, n = GEMM_SHAPE
        lines += [
            "",
            f"Against this machine's limits: matmul throughput at [{m}, {k}] @ [{k}, {n}] "
            + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peaks.items())
            + ". Per part: GFLOP, achieved GFLOP/s (share of that peak); floor = FLOPs at the "
            "peak (elementwise work and memory traffic not counted), best speedup = the "
            "reference's time over this floor.",
            "",
            "| configuration | " + " | ".join(PARTS) + " | floor s | best speedup vs reference |",
            "|---|" + "---|" * (len(PARTS) + 2),
        ]
        for r in rows:
            cells = []
            for part in PARTS:
                p = r["parts"].get(part)
                if p is None or p["gflops"] is None:
                    cells.append("—")
                    continue
                share = p["gflops"] / r["gemm_peak_gflops"]
                cells.append(f"{p['gflop']:.0f}: {p['gflops']:.0f} ({share:.0%})")
            best = r.get("best_speedup_vs_reference")
            lines.append(
                f"| {r['name']} | " + " | ".join(cells) + f" | {r['floor_s']:.3g} "
                f"| {'—' if best is None else f'{best:.2f}x'} |"
            )
    return lines
