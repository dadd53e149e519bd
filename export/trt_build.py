"""TensorRT engines from the exported ONNX graphs, with the TensorRT Python API.

Every decision (profiles, cache keys, folders, precision) is made in `plan`; this module only
drives TensorRT, which is imported lazily: nothing else in selva-rt needs it installed.

Engines go to `<out>/<engine_dir_name(gpu, sm, version)>/<engine_key(...)>.plan`: an
engine only loads on the TensorRT version and GPU model it was built for, so one engines
directory can hold builds for several machines. The networks are strongly typed: TensorRT keeps
the dtypes of the graph, which `plan.graph_precision` chose at export (fp32 RoPE tables and
norm statistics inside fp16/bf16 graphs included), instead of picking per-layer precisions
itself. One timing cache per folder makes rebuilds fast.
"""

import sys
import time
from pathlib import Path

from ..runtime.backends.graphs import Manifest, engine_dir_name, engine_key
from ..runtime.errors import SelvaError
from ..runtime.variants import Variant
from . import plan


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt.__version__


def require() -> None:
    """Fail in one line, before any work, where TensorRT or a CUDA GPU is missing."""
    if tensorrt_version() is None:
        raise SelvaError(
            "TensorRT is not installed here (its pip wheels come from NVIDIA's package index); "
            "rerun with --onnx-only for the ONNX graphs alone"
        )
    import torch

    if not torch.cuda.is_available():
        raise SelvaError("building TensorRT engines needs a CUDA GPU; rerun with --onnx-only")


def gpu_identity() -> tuple[str, tuple[int, int]]:
    import torch

    return torch.cuda.get_device_name(), torch.cuda.get_device_capability()


def build_engine(onnx_path: Path, shapes: dict, timing_cache: Path) -> bytes:
    """One serialized engine of the graph at `onnx_path` with the optimization profile
    `shapes` (input -> (min, opt, max)), reading and updating `timing_cache`."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external weights beside the file
        first = parser.get_error(0) if parser.num_errors else "unknown error"
        raise SelvaError(f"TensorRT cannot parse {onnx_path}: {first}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SelvaError(f"TensorRT could not build an engine from {onnx_path} (see its log)")
    timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return bytes(serialized)


def dynamic_shapes(part: str, variant: Variant, limits: dict) -> dict:
    """The profile of `part` restricted to the inputs with a dynamic axis (TensorRT takes the
    others, e.g. the 0-d cfg, from the graph)."""
    inputs, _ = plan.part_io(part, variant)
    dynamic = {s.name for s in inputs if any(isinstance(n, str) for n in s.shape)}
    shapes = plan.profile(
        part, variant, limits["max_batch"], limits["max_duration"], limits["max_tokens"]
    )
    return {k: v for k, v in shapes.items() if k in dynamic}


def build_engines(
    out: Path, manifest: Manifest, variant: Variant, parts: list[str], quiet: bool = False
) -> dict[str, dict]:
    """Engines of `parts` for this GPU: part -> {folder: entry} for the manifest."""
    gpu, sm = gpu_identity()
    version = tensorrt_version()
    folder = out / engine_dir_name(gpu, sm, version)
    folder.mkdir(exist_ok=True)
    built = {}
    for part in parts:
        entry = manifest.parts[part]
        shapes = dynamic_shapes(part, variant, manifest.limits)
        key = engine_key(
            model_hash=manifest.model_hash,
            part=part,
            precision=entry.precision,
            onnx_sha256=entry.sha256,
            shapes=shapes,
            gpu=gpu,
            compute_capability=sm,
            trt_version=version,
        )
        t0 = time.perf_counter()
        engine = build_engine(out / entry.onnx, shapes, folder / plan.TIMING_CACHE)
        (folder / f"{key}.plan").write_bytes(engine)
        seconds = time.perf_counter() - t0
        built[part] = {
            folder.name: {
                "engine": f"{folder.name}/{key}.plan",
                "key": key,
                "gpu": gpu,
                "sm": list(sm),
                "tensorrt": version,
                "profile": {k: [list(s) for s in v] for k, v in shapes.items()},
                "build_s": round(seconds, 1),
            }
        }
        if not quiet:
            print(f"  {part}: TensorRT engine in {seconds:.1f} s", file=sys.stderr, flush=True)
    return built
