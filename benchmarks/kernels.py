"""Microbenchmark of the Triton kernels against the best torch alternative (needs a CUDA GPU).

    python -m selva_rt.benchmarks.kernels [--output FILE]

For every case it reports medians of triton.testing.do_bench:

  kernel      the kernel as the runtime calls it (sup: raw q, the q RMSNorm fused; per-prompt K/V)
  torch       the official way, all inside the timed region. sup: q RMSNorm, K/V repeated per
              segment, the boolean mask materialised as [n, 1, Lq, Lk]. psca: the [La, Lv] bias
              repeated per batch row and head. SDPA runs on the fastest backend that accepts it.
  sdpa        the SDPA call alone with everything prepared beforehand: a lower bound for any
              path through torch's attention.
  floor       max(bytes / bandwidth, FLOPs / matmul throughput), both measured on this GPU (a
              1 GiB device copy; an 8192^3 matmul in the case's dtype, fp32 without TF32 like
              the kernel's IEEE fp32 dots). Bytes: q read, output written, K/V read once; FLOPs:
              the two matmuls over the valid keys. With d = 64 the softmax exponentials (one per
              logit) cost about as much as the matmuls on the SFUs, so expect at most ~50% of
              the FLOP floor where that term dominates.

It also records the kernel's relative error against the torch reference and the time of each
tile config (BLOCK_M, BLOCK_N, num_warps), so the defaults in kernels/ can be revisited. Results
(device, versions, date) are written to benchmarks/results/kernels-<gpu>-<date>.json.
"""

import argparse
import datetime
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from selva_rt.kernels import psca_attention as psca
from selva_rt.kernels import sup_cross_attention as sup
from selva_rt.runtime.models.layers import RMS_EPS
from torch.nn.attention import SDPBackend, sdpa_kernel

RESULTS = Path(__file__).resolve().parent / "results"
SDPA_BACKENDS = [
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.MATH,
]
SUP_CONFIGS = {
    torch.bfloat16: [(128, 64, 8), (64, 64, 4), (64, 32, 4), (128, 32, 4), (128, 128, 8)],
    torch.float32: [(64, 32, 8), (32, 32, 4), (64, 16, 4)],
}
PSCA_CONFIGS = {
    torch.bfloat16: [(32, 64, 4), (64, 64, 8), (16, 64, 4), (64, 64, 4)],
    torch.float32: [(32, 32, 4), (64, 32, 8), (16, 64, 4)],
}

# SELVA small, 8 s: 24 segments of 8 x 14 x 14 video tokens, 12 heads of 64; keys = 5 [SUP] + L
# T5 tokens. name: (clips, T5 lengths of the prompts, stems, dtype). stems: one clip's queries
# shared by all prompts; otherwise every clip has its own prompt.
SUP_CASES = {
    "short_prompt": (1, [16], False, torch.bfloat16),
    "long_prompt": (1, [512], False, torch.bfloat16),
    "stems_4_prompts": (1, [12, 20, 33, 60], True, torch.bfloat16),
    "batch_4_clips": (4, [12, 20, 33, 60], False, torch.bfloat16),
    "short_prompt_fp32": (1, [16], False, torch.float32),
}
SEGMENTS, VIDEO_TOKENS, HEADS, HEAD_DIM, SUP_TOKENS = 24, 1568, 12, 64, 5

# Flowley, 8 s: 250 audio latents attend to 64 video frames, 8 heads of 64, at layer 4 of 10.
# name: (batch, dtype); batch 2 is one clip's conditional + unconditional pass.
PSCA_CASES = {
    "cfg_pair": (2, torch.bfloat16),
    "16_clips": (32, torch.bfloat16),
    "cfg_pair_fp32": (2, torch.float32),
}
AUDIO_LEN, VIDEO_LEN, PSCA_HEADS, PSCA_LAYER = 250, 64, 8, psca.PSCALayer(4)


def bench(fn: Callable[[], object]) -> float:
    """Median milliseconds per call."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def best_sdpa(fn: Callable[[], object]) -> tuple[float, str]:
    """(ms, backend name) of the fastest SDPA backend that runs fn."""
    best = (math.inf, "none")
    for backend in SDPA_BACKENDS:
        with sdpa_kernel([backend]):
            try:
                fn()
            except RuntimeError:
                continue
            best = min(best, (bench(fn), backend.name))
    return best


def measure_peaks(device: torch.device) -> dict[str, float]:
    src = torch.empty(1 << 28, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return {
        "bandwidth_GBps": 2 * src.nbytes / bench(lambda: dst.copy_(src)) / 1e6,
        "bf16_TFLOPs": matmul_tflops(torch.bfloat16, device),
        "fp32_TFLOPs": matmul_tflops(torch.float32, device),
    }


def matmul_tflops(dtype: torch.dtype, device: torch.device) -> float:
    a = torch.randn(8192, 8192, device=device, dtype=dtype)
    b = torch.randn(8192, 8192, device=device, dtype=dtype)
    return 2 * 8192**3 / bench(lambda: a @ b) / 1e9


def floor_ms(nbytes: int, flops: int, dtype: torch.dtype, peaks: dict[str, float]) -> float:
    tflops = peaks["fp32_TFLOPs" if dtype == torch.float32 else "bf16_TFLOPs"]
    return max(nbytes / peaks["bandwidth_GBps"] / 1e6, flops / tflops / 1e9)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def sup_case(name: str, device: torch.device, peaks: dict[str, float]) -> dict:
    clips, t5_lengths, stems, dtype = SUP_CASES[name]
    prompts = len(t5_lengths)
    valid = torch.tensor(t5_lengths) + SUP_TOKENS
    lk = int(valid.max())
    q_rows = SEGMENTS if stems else clips * SEGMENTS
    n_out = prompts * SEGMENTS
    q = torch.randn(q_rows, VIDEO_TOKENS, HEADS, HEAD_DIM, device=device, dtype=dtype)
    q = q.transpose(1, 2)  # the head-split view of q_proj's output, as the encoder passes it
    k = torch.randn(prompts, HEADS, lk, HEAD_DIM, device=device, dtype=dtype)
    v = torch.randn(prompts, HEADS, lk, HEAD_DIM, device=device, dtype=dtype)
    key_mask = (torch.arange(lk)[None, :] < valid[:, None]).to(device)
    weight = 0.5 + torch.rand(HEAD_DIM, device=device)

    def official():
        qf = q.float()
        qn = (qf * torch.rsqrt(qf.pow(2).mean(-1, keepdim=True) + RMS_EPS) * weight).to(dtype)
        qn = qn.repeat(n_out // q_rows, 1, 1, 1)
        mask = key_mask.repeat_interleave(SEGMENTS, dim=0)[:, None, None, :]
        mask = mask.expand(n_out, 1, VIDEO_TOKENS, lk).contiguous()
        kr = k.repeat_interleave(SEGMENTS, dim=0)
        vr = v.repeat_interleave(SEGMENTS, dim=0)
        return F.scaled_dot_product_attention(qn, kr, vr, attn_mask=mask)

    qf = q.float()
    qn = (qf * torch.rsqrt(qf.pow(2).mean(-1, keepdim=True) + RMS_EPS) * weight).to(dtype)
    qn = qn.repeat(n_out // q_rows, 1, 1, 1).contiguous()
    mask = key_mask.repeat_interleave(SEGMENTS, dim=0)[:, None, None, :]
    mask = mask.expand(n_out, 1, VIDEO_TOKENS, lk).contiguous()
    kr, vr = k.repeat_interleave(SEGMENTS, dim=0), v.repeat_interleave(SEGMENTS, dim=0)

    def sdpa_only():
        return F.scaled_dot_product_attention(qn, kr, vr, attn_mask=mask)

    def kernel(config=None):
        return sup.sup_cross_attention_triton(q, k, v, key_mask, SEGMENTS, weight, config)

    esize = q.element_size()
    nbytes = (q_rows + n_out) * HEADS * VIDEO_TOKENS * HEAD_DIM * esize
    nbytes += 2 * k.numel() * esize + key_mask.numel()
    flops = 4 * SEGMENTS * HEADS * VIDEO_TOKENS * HEAD_DIM * int(valid.sum())
    expected = sup.sup_cross_attention_reference(q, k, v, key_mask, SEGMENTS, weight)
    return {
        "kernel": "sup_cross_attention",
        "case": name,
        "dtype": str(dtype).removeprefix("torch."),
        "shape": dict(q=list(q.shape), kv=list(k.shape), valid_keys=valid.tolist()),
        **timings(kernel, official, sdpa_only, SUP_CONFIGS[dtype], sup.DEFAULT_CONFIGS[dtype]),
        "floor_ms": floor_ms(nbytes, flops, dtype, peaks),
        "bytes": nbytes,
        "flops": flops,
        "rel_err_vs_reference": rel_err(kernel(), expected),
    }


def psca_case(name: str, device: torch.device, peaks: dict[str, float]) -> dict:
    batch, dtype = PSCA_CASES[name]
    shape = (batch, PSCA_HEADS)
    q = torch.randn(*shape, AUDIO_LEN, HEAD_DIM, device=device, dtype=dtype)
    k = torch.randn(*shape, VIDEO_LEN, HEAD_DIM, device=device, dtype=dtype)
    v = torch.randn(*shape, VIDEO_LEN, HEAD_DIM, device=device, dtype=dtype)
    bias = (psca.psca_mask(PSCA_LAYER, AUDIO_LEN, VIDEO_LEN) + PSCA_LAYER.eps).log()
    bias = bias.to(device, dtype)  # registered once as a buffer in the official model
    repeated = bias.repeat(*shape, 1, 1)

    def official():
        mask = bias.repeat(*shape, 1, 1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def sdpa_only():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=repeated)

    def kernel(config=None):
        return psca.psca_attention_triton(q, k, v, PSCA_LAYER, config)

    nbytes = (2 * q.numel() + 2 * k.numel()) * q.element_size()
    flops = 4 * batch * PSCA_HEADS * AUDIO_LEN * VIDEO_LEN * HEAD_DIM
    expected = psca.psca_attention_reference(q, k, v, PSCA_LAYER)
    return {
        "kernel": "psca_attention",
        "case": name,
        "dtype": str(dtype).removeprefix("torch."),
        "shape": dict(q=list(q.shape), kv=list(k.shape), layer=PSCA_LAYER.layer),
        **timings(kernel, official, sdpa_only, PSCA_CONFIGS[dtype], psca.DEFAULT_CONFIGS[dtype]),
        "floor_ms": floor_ms(nbytes, flops, dtype, peaks),
        "bytes": nbytes,
        "flops": flops,
        "rel_err_vs_reference": rel_err(kernel(), expected),
    }


def timings(kernel, official, sdpa_only, configs, default) -> dict:
    torch_ms, torch_backend = best_sdpa(official)
    sdpa_ms, sdpa_backend = best_sdpa(sdpa_only)
    sweep = {"x".join(map(str, c)): bench(lambda c=c: kernel(c)) for c in configs}
    return {
        "kernel_ms": bench(kernel),
        "default_config": "x".join(map(str, default)),
        "config_sweep_ms": sweep,
        "torch_ms": torch_ms,
        "torch_backend": torch_backend,
        "sdpa_ms": sdpa_ms,
        "sdpa_backend": sdpa_backend,
    }


def environment(device: torch.device) -> dict:
    import triton

    props = torch.cuda.get_device_properties(device)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": props.name,
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "memory_GiB": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="JSON file (default: benchmarks/results/)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit(
            "benchmarks/kernels.py times the Triton kernels on a CUDA GPU, and none is visible "
            "(torch.cuda.is_available() is False); run it on a machine with one"
        )
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 cases compare IEEE fp32 paths
    result = environment(device)
    print(f"{result['device']}  torch {result['torch']}  triton {result['triton']}")
    result["peaks"] = measure_peaks(device)
    print("  ".join(f"{k} {v:.0f}" for k, v in result["peaks"].items()))
    result["cases"] = []
    header = f"{'kernel':20s}{'case':20s}{'dtype':9s}{'kernel':>9s}{'torch':>9s}{'sdpa':>9s}"
    print(header + f"{'floor':>9s}{'speedup':>9s}{'rel err':>10s}   (ms)")
    for case in [sup_case(n, device, result["peaks"]) for n in SUP_CASES] + [
        psca_case(n, device, result["peaks"]) for n in PSCA_CASES
    ]:
        result["cases"].append(case)
        print(
            f"{case['kernel']:20s}{case['case']:20s}{case['dtype']:9s}{case['kernel_ms']:9.4f}"
            f"{case['torch_ms']:9.4f}{case['sdpa_ms']:9.4f}{case['floor_ms']:9.4f}"
            f"{case['torch_ms'] / case['kernel_ms']:8.2f}x{case['rel_err_vs_reference']:10.1e}"
        )
    slug = re.sub(r"[^a-z0-9]+", "-", result["device"].lower()).strip("-")
    output = args.output or RESULTS / f"kernels-{slug}-{result['date'][:10]}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
