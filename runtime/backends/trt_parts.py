"""The `tensorrt` backend: every part runs a TensorRT engine that `selva-rt export` built.

    parts = TrtParts.load("engines/selva", "selva-small-16k", device="cuda")

Engines read and write torch's CUDA buffers directly (their addresses are bound to the execution
context; nothing is staged), on torch's current stream. The whole Euler loop is captured once per
request shape as one CUDA graph and replayed, by the same mechanism as the torch backend's
(`cuda_graph.EulerGraphs`).

TensorRT is imported lazily; without it (or without a GPU) `load` fails with one line.
"""

from pathlib import Path

import torch

from ..errors import CheckpointError, UsageError
from ..variants import Variant
from . import Progress
from .cuda_graph import EulerGraphs
from .graphs import GraphParts, Manifest, engine_dir_name, read_engines


def _tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise UsageError(
            "the tensorrt backend needs TensorRT (pip wheels from NVIDIA's package index); "
            "use --backend onnxruntime or torch"
        ) from None
    return tensorrt


class TrtParts(GraphParts):
    """The parts, run by TensorRT engines (one execution context per part)."""

    def __init__(
        self,
        variant: Variant,
        manifest: Manifest,
        engines: dict[str, bytes],
        constants: dict[str, torch.Tensor],
        device: torch.device,
    ):
        trt = _tensorrt()
        super().__init__(variant, manifest, constants, device)
        self.trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines = {
            part: runtime.deserialize_cuda_engine(blob) for part, blob in engines.items()
        }
        self.contexts = {part: e.create_execution_context() for part, e in self.engines.items()}
        self.graphs = EulerGraphs()

    @classmethod
    def load(
        cls, engines_dir: str | Path, variant: Variant, device: str | torch.device = "cuda"
    ) -> "TrtParts":
        """The engines of this GPU and TensorRT version from `engines_dir`."""
        trt = _tensorrt()
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            raise UsageError("the tensorrt backend runs on a CUDA device; pass --device cuda")
        v = variant
        engines_dir = Path(engines_dir)
        manifest, constants = read_engines(engines_dir, v)
        if manifest.precision == "int8":
            raise UsageError(
                f"{engines_dir} is an int8 build, for ONNX Runtime on the CPU only; use "
                "--backend onnxruntime --device cpu"
            )
        with torch.cuda.device(device):
            gpu, sm = torch.cuda.get_device_name(), torch.cuda.get_device_capability()
        folder = engine_dir_name(gpu, sm, trt.__version__)
        engines = {}
        for part, entry in manifest.parts.items():
            built = entry.tensorrt.get(folder)
            if built is None:
                raise UsageError(
                    f"{engines_dir} has no TensorRT engine of {part!r} for {gpu} and TensorRT "
                    f"{trt.__version__}; build them here: selva-rt export --variant {v.name} "
                    f"--out {engines_dir} --force"
                )
            path = engines_dir / built["engine"]
            if not path.is_file():
                raise CheckpointError(f"{path} is listed in the manifest but missing; rebuild")
            engines[part] = path.read_bytes()
        return cls(v, manifest, engines, constants, device)

    def _bind(self, part: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Bind inputs and freshly allocated outputs of `part`'s context; return the outputs."""
        engine, ctx, trt = self.engines[part], self.contexts[part], self.trt
        for name, t in feeds.items():
            ctx.set_input_shape(name, tuple(t.shape))
            ctx.set_tensor_address(name, t.data_ptr())
        outputs = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) != trt.TensorIOMode.OUTPUT:
                continue
            dtype = _torch_dtype(trt, engine.get_tensor_dtype(name))
            out = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=dtype, device=self.device)
            ctx.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        return outputs

    def _run(self, part: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        feeds = {k: v.contiguous() for k, v in feeds.items()}
        outputs = self._bind(part, feeds)
        stream = torch.cuda.current_stream(self.device)
        if not self.contexts[part].execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run {part}")
        return outputs

    def sample(
        self,
        x0: torch.Tensor,
        conditions: dict[str, torch.Tensor],
        steps: int,
        cfg: float,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """The Euler loop over the dit_step engine, captured once per shape as one CUDA graph
        (the warm-up runs before capture let TensorRT allocate lazily) and replayed."""
        x1 = self.graphs.sample(self.dit_step, x0, conditions, steps, cfg)
        if progress is not None:
            progress(steps)
        return x1


def _torch_dtype(trt, dtype) -> torch.dtype:
    return {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int64: torch.int64,
        trt.int32: torch.int32,
        trt.bool: torch.bool,
    }[dtype]
