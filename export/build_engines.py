"""Build the deployable graphs of a variant once, to run them many times.

    python export/build_engines.py --variant selva-small-16k --out engines/selva   # or
    selva-rt export --variant selva-small-16k --out engines/selva
    selva-rt generate clip.mp4 "dog barking" --backend onnxruntime --engines engines/selva

Every part (plan.part_names) is traced to `<out>/<part>.onnx`, then run with ONNX Runtime
against the torch backend on fresh random inputs; the worst error per output goes into
`<out>/manifest.json` beside the files, with the variant, precision, shapes, model hash and tool
versions. Unless --onnx-only, TensorRT engines are then built from the graphs into
`<out>/trt-<version>-sm<cc>-<gpu>/` (see trt_build). An existing build is never overwritten
without --force.
"""

# Absolute imports: this file also runs as a script, with export/ (not the package) on sys.path.
import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from selva_rt.export import plan
from selva_rt.runtime.backends.graphs import CONSTANTS, MANIFEST, Manifest, PartEntry
from selva_rt.runtime.cli import Parser
from selva_rt.runtime.errors import OutputError, SelvaError, UsageError
from selva_rt.runtime.media.write import file_mode
from selva_rt.runtime.variants import MIN_DURATION, T5_MAX_TOKENS, VARIANTS, get_variant

# Worst relative L2 error per output the ONNX Runtime check accepts, against the fp32 torch
# backend. fp32: kernel rounding only (measured ~1e-6 on the tiny variant). fp16/bf16 graphs are
# held to the reduced-precision tolerances of the golden README. int8 (plan.INT8_PARTS):
# measured worst 3.7e-2 full size (video_select; trunk 3.4e-2), 2.5e-2 tiny; 0.1 leaves room for
# other weights while a broken quantisation (a wrong scale, a lost bias) errs by O(1).
CHECK_RTOL = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 5e-2, "int8": 1e-1}
TOOLS = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "tensorrt", "selva-rt")


def build_parser(prog: str = "selva-rt export") -> argparse.ArgumentParser:
    p = Parser(
        prog=prog,
        description="Export every part to ONNX (checked against torch with "
        "ONNX Runtime) and build TensorRT engines, with a manifest.",
    )
    p.add_argument(
        "--variant",
        default="selva-small-16k",
        choices=list(VARIANTS),
        metavar="VARIANT",
        help=f"one of {', '.join(VARIANTS)}",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="where the files go")
    p.add_argument(
        "--parts",
        nargs="+",
        metavar="PART",
        help=f"subset of {' '.join(plan.PARTS)} (default: all the variant has)",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=plan.PRECISIONS,
        help="graph and engine precision (fp16 keeps t5 and decoder in fp32; int8: ONNX "
        "Runtime on the CPU only, linear layers of the parts in plan.INT8_PARTS quantised)",
    )
    p.add_argument("--onnx-only", action="store_true", help="ONNX graphs only, no TensorRT")
    p.add_argument("--force", action="store_true", help="overwrite an existing build")
    p.add_argument(
        "--max-batch",
        type=int,
        default=plan.DEFAULT_MAX_BATCH,
        help="TensorRT profiles: most prompts per call",
    )
    p.add_argument(
        "--max-duration",
        type=float,
        default=plan.DEFAULT_MAX_DURATION,
        help="TensorRT profiles: longest clip in seconds",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return p


def resolve_parts(variant, asked: list[str] | None) -> list[str]:
    have = plan.part_names(variant)
    if not have:
        raise UsageError(f"{variant.name} has no graph parts; it runs on --backend torch only")
    if not asked:
        return list(have)
    asked = [p for item in asked for p in item.split(",") if p]
    for p in asked:
        if p not in plan.PARTS:
            raise UsageError(f"unknown part {p!r}; choose from {', '.join(plan.PARTS)}")
        if p not in have:
            raise UsageError(f"variant {variant.name} has no {p!r} part; it has {', '.join(have)}")
    return list(dict.fromkeys(asked))


def check_arguments(args) -> None:
    if args.precision == "int8" and not args.onnx_only:
        raise UsageError(
            "--precision int8 is ONNX Runtime's dynamic quantisation (CPU); TensorRT does not "
            "build it: add --onnx-only"
        )
    if args.max_batch < 1:
        raise UsageError(f"--max-batch {args.max_batch} must be at least 1")
    if not MIN_DURATION <= args.max_duration <= 60:
        raise UsageError(
            f"--max-duration {args.max_duration} is out of range; use {MIN_DURATION}..60 s"
        )
    if args.threads < 0:
        raise UsageError("--threads must be >= 0")


def plan_output(out: Path, parts: list[str], force: bool) -> Manifest | None:
    """Refuse (before any work) to overwrite a build or to write into a file; return the old
    manifest when --force may merge into it."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a directory")
    targets = [out / MANIFEST, *(out / f"{p}.onnx" for p in parts)]
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        raise OutputError(
            f"{existing[0]} already exists; pass --force to overwrite or --out to write elsewhere"
        )
    if (out / MANIFEST).is_file():
        try:
            return Manifest.read(out)
        except SelvaError:  # unreadable or of another format: rebuilt whole
            return None
    return None


def tool_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def build(args, nets=None) -> Manifest:
    """The whole build; returns the manifest it wrote. `nets`: the networks to export (default:
    the variant's from the weights folder; the benchmark passes its random full-size ones)."""
    import onnx
    import torch
    from safetensors.torch import save_file
    from selva_rt.export import onnx_export as ox
    from selva_rt.export import trt_build
    from selva_rt.runtime import weights
    from selva_rt.runtime.models.networks import build_networks

    check_arguments(args)
    variant = get_variant(args.variant)
    parts = resolve_parts(variant, args.parts)
    out = Path(args.out)
    previous = plan_output(out, parts, args.force)
    if not args.onnx_only:
        trt_build.require()  # fail before the long export, not after it
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    if nets is None:
        nets = build_networks(variant, weights.resolve(variant, quiet=args.quiet))
    model_hash = ox.model_hash(nets)
    _say(f"{variant.name}: networks loaded in {time.perf_counter() - t0:.1f} s", args.quiet)
    out.mkdir(parents=True, exist_ok=True)

    entries = {}
    for name in parts:
        exported = ox.export_part(name, variant, nets, out / f"{name}.onnx", args.precision)
        graph = onnx.load(str(exported.path), load_external_data=False)
        entries[name] = PartEntry(
            onnx=exported.path.name,
            sha256=exported.sha256,
            precision=plan.graph_precision(name, args.precision),
            **ox.io_entries(name, variant, args.precision),
            export_s=round(exported.seconds, 2),
            trt_problems=plan.trt_problems(graph),
            quantized=exported.quantized,
        )
        q = exported.quantized
        int8 = f", {q['quantized_nodes']} linear layers int8" if q else ""
        _say(f"  {name}: exported in {exported.seconds:.1f} s{int8}", args.quiet)
    constants = ox.graph_constants(variant, nets)
    save_file(constants, str(out / CONSTANTS))
    os.chmod(out / CONSTANTS, file_mode())  # safetensors writes 0600, unlike every other file

    manifest = Manifest(
        variant=variant.name,
        precision=args.precision,
        model_hash=model_hash,
        opset=ox.OPSET,
        limits={
            "max_batch": args.max_batch,
            "max_duration": args.max_duration,
            "max_tokens": T5_MAX_TOKENS,
        },
        tools=tool_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        parts=entries,
    )
    failed = check(args, variant, nets, manifest, out, constants)
    if not args.onnx_only:
        failed += [
            f"{n} (TensorRT: {e.trt_problems[0]})" for n, e in entries.items() if e.trt_problems
        ]
    if not args.onnx_only and not failed:
        engines = trt_build.build_engines(out, manifest, variant, parts, quiet=args.quiet)
        for name, engine in engines.items():
            entries[name].tensorrt = engine

    if previous and (previous.variant, previous.precision, previous.model_hash) == (
        manifest.variant,
        manifest.precision,
        manifest.model_hash,
    ):
        # A rebuild of some parts keeps the entries of the others.
        manifest.parts = {**previous.parts, **entries}
    manifest.write(out)
    if failed:
        raise SelvaError(f"parts not deployable: {', '.join(failed)}; see {out / MANIFEST}")
    _say(f"wrote {len(parts)} parts to {out} in {time.perf_counter() - t0:.1f} s", args.quiet)
    return manifest


def check(args, variant, nets, manifest: Manifest, out: Path, constants: dict) -> list[str]:
    """Run every exported part with ONNX Runtime against the fp32 torch backend and record the
    errors in the manifest's entries; the parts whose error exceeds CHECK_RTOL."""
    import onnxruntime as ort
    from selva_rt.export import onnx_export as ox
    from selva_rt.runtime.backends.ort_parts import OrtParts

    entries = manifest.parts
    device, provider = "cpu", "CPUExecutionProvider"
    if args.precision == "bf16":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            reason = (
                "not run: ONNX Runtime's CPU execution provider has no bfloat16 kernels and "
                "this onnxruntime has no CUDA provider"
            )
            for entry in entries.values():
                entry.check = {"skipped": reason}
            _say(f"  check {reason}", args.quiet)
            return []
        device, provider = "cuda", "CUDAExecutionProvider"
    graphs = {n: out / e.onnx for n, e in entries.items()}
    ort_parts = OrtParts(variant, manifest, graphs, constants, device, [provider], args.threads)
    rtol = CHECK_RTOL[args.precision]
    failed = []
    for name, outs in ox.check_parts(list(entries), variant, nets, ort_parts).items():
        entries[name].check = {
            "against": "torch backend, fp32, CPU",
            "provider": provider,
            "sizes": [vars(s) for s in ox.CHECK_SIZES],
            "rtol": rtol,
            "errors": {k: {m: float(f"{x:.3e}") for m, x in e.items()} for k, e in outs.items()},
        }
        worst = max(e["rel_l2"] for e in outs.values())
        _say(f"  {name}: ONNX Runtime vs torch, worst rel L2 {worst:.2e}", args.quiet)
        if not worst <= rtol:
            failed.append(f"{name} (rel L2 {worst:.2e} > {rtol})")
    return failed


def main(argv: list[str] | None = None, prog: str = "selva-rt export") -> int:
    """`selva-rt export ARGS` and `python export/build_engines.py ARGS`: 0 on success; a user
    error prints one line on stderr and returns non-zero."""
    args = build_parser(prog).parse_args(argv)
    try:
        build(args)
        return 0
    except SelvaError as e:
        if args.debug:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(prog="build_engines.py"))
