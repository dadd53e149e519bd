"""Lower both Triton kernels to cubins without a GPU (ptxas ships with Triton): what a GPU
machine's first launch would compile, checked on the CPU.

    python tests/compile_kernels.py --arch 80,90 --dtypes bf16,fp16,fp32

Runs in a process of its own, with whichever Triton comes first on sys.path (the installed one,
or another release put in front through PYTHONPATH) and without TRITON_INTERPRET, which would
turn the compiler off for the whole process (kernels/jit.py). Prints one JSON object: Triton's
version and, per "kernel/dtype/sm_XX", "ok" plus the PTX facts the tests check, or the error.
"""

import argparse
import json
import os
import sys

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def signature(fn, pointers: dict[str, str], scalars: dict[str, str], constexprs: dict) -> dict:
    types = {name: pointers.get(name) or scalars.get(name, "i32") for name in fn.arg_names}
    return types | dict.fromkeys(constexprs, "constexpr")


def compile_sup(arch: int, dtype: torch.dtype):
    from selva_rt.kernels import sup_cross_attention as sup

    ty = TRITON_TYPES[dtype]
    block_m, block_n, num_warps = sup.DEFAULT_CONFIGS[dtype]
    constexprs = dict(HEAD_DIM=64, BLOCK_M=block_m, BLOCK_N=block_n, NORM_Q=True)
    constexprs |= dict(DOT_PRECISION=dot_precision(dtype), DOT_UPCAST=False)
    pointers = dict.fromkeys("QKVO", f"*{ty}") | {"MASK": "*u8", "W": "*fp32"}
    scalars = {"rms_eps": "fp32", "qk_scale_log2": "fp32"}
    return lower(sup._kernel, pointers, scalars, constexprs, arch, num_warps, fp_fusion=True)


def compile_psca(arch: int, dtype: torch.dtype):
    from selva_rt.kernels import psca_attention as psca

    ty = TRITON_TYPES[dtype]
    block_m, block_n, num_warps = psca.DEFAULT_CONFIGS[dtype]
    constexprs = dict(HEAD_DIM=64, BLOCK_M=block_m, BLOCK_N=block_n, CENTER_CEIL=False)
    constexprs |= dict(DOT_PRECISION=dot_precision(dtype), DOT_UPCAST=False)
    pointers = dict.fromkeys(["Q", "K", "V", "O", "BIAS"], f"*{ty}")
    scalars = dict.fromkeys(["audio_fps", "video_fps", "qk_scale_log2"], "fp32")
    return lower(psca._kernel, pointers, scalars, constexprs, arch, num_warps, fp_fusion=False)


TRITON_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # as the launchers pass it


def lower(fn, pointers, scalars, constexprs, arch: int, num_warps: int, fp_fusion: bool):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    return triton.compile(
        ASTSource(fn, signature(fn, pointers, scalars, constexprs), constexprs=constexprs),
        target=GPUTarget("cuda", arch, 32),
        options=dict(num_warps=num_warps, num_stages=2, enable_fp_fusion=fp_fusion),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="80,90")
    parser.add_argument("--dtypes", default="bf16,fp16,fp32")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        sys.exit("TRITON_INTERPRET=1 turns Triton's compiler off: run without it")
    import triton

    report = {"triton": triton.__version__, "triton_path": triton.__file__, "results": {}}
    for kernel, build in (("sup", compile_sup), ("psca", compile_psca)):
        for name in args.dtypes.split(","):
            for arch in map(int, args.arch.split(",")):
                key = f"{kernel}/{name}/sm_{arch}"
                try:
                    compiled = build(arch, DTYPES[name])
                except Exception as err:  # reported, and the other combinations still compile
                    report["results"][key] = {"error": f"{type(err).__name__}: {err}"[:2000]}
                    continue
                ptx = compiled.asm["ptx"]
                report["results"][key] = {
                    "ok": bool(compiled.asm["cubin"]),
                    "div_rn": "div.rn.f32" in ptx,
                    "target": f"sm_{arch}" in ptx,
                }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
