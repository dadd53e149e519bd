"""The `tensorrt` backend: every part runs a TensorRT engine that `selva-rt export` built.

    parts = TrtParts.load("engines/selva", "selva-small-16k", device="cuda")

Engines read and write torch's CUDA buffers directly (their addresses are bound to the execution
context; nothing is staged), on torch's current stream. The flow step, called 25 times per
request with the same conditions, is captured once per request shape as a CUDA graph and
replayed: each step copies the latent and t into the graph's static inputs and launches once.

TensorRT is imported lazily; without it (or without a GPU) `load` fails with one line.
"""

from pathlib import Path

import torch

from ..export import plan
from .errors import CheckpointError, UsageError
from .ort_backend import CONSTANTS, GraphParts, read_manifest
from .variants import Variant, get_variant


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
    """TorchParts' parts, run by TensorRT engines (one execution context per part)."""

    def __init__(
        self,
        variant: Variant,
        manifest: dict,
        engines: dict[str, bytes],
        empty_clip_feat: torch.Tensor,
        device: torch.device,
    ):
        from .ort_backend import PRECISION_DTYPES

        trt = _tensorrt()
        super().__init__(
            variant, manifest, empty_clip_feat, device, PRECISION_DTYPES[manifest["precision"]]
        )
        self.trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines = {
            part: runtime.deserialize_cuda_engine(blob) for part, blob in engines.items()
        }
        self.contexts = {part: e.create_execution_context() for part, e in self.engines.items()}
        self._step = None  # (signature, CUDA graph, static inputs, output)

    @classmethod
    def load(
        cls, engines_dir: str | Path, variant: str | Variant, device: str | torch.device = "cuda"
    ) -> "TrtParts":
        """The engines of this GPU and TensorRT version from `engines_dir`."""
        from safetensors.torch import load_file

        trt = _tensorrt()
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            raise UsageError("the tensorrt backend runs on a CUDA device; pass --device cuda")
        v = get_variant(variant) if isinstance(variant, str) else variant
        engines_dir = Path(engines_dir)
        manifest = read_manifest(engines_dir, v.name)
        with torch.cuda.device(device):
            gpu, sm = torch.cuda.get_device_name(), torch.cuda.get_device_capability()
        folder = plan.engine_dir_name(gpu, sm, trt.__version__)
        engines = {}
        for part, entry in manifest["parts"].items():
            built = entry.get("tensorrt", {}).get(folder)
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
        constants = load_file(str(engines_dir / CONSTANTS))
        return cls(v, manifest, engines, constants["empty_clip_feat"], device)

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

    @torch.inference_mode()
    def dit_step(self, latent, t, conditions: dict[str, torch.Tensor], cfg: float):
        """One CFG velocity, replaying a CUDA graph captured for these conditions and shapes."""
        signature = (
            tuple(latent.shape),
            float(cfg),
            tuple(conditions[k].data_ptr() for k in sorted(conditions)),
        )
        if self._step is None or self._step[0] != signature:
            self._step = (signature, *self._capture(latent, t, conditions, cfg))
        _, graph, static, out = self._step
        static["latent"].copy_(latent)
        static["t"].copy_(t)
        graph.replay()
        return out.clone()  # the graph overwrites `out` on the next step

    def _capture(self, latent, t, conditions, cfg):
        types = self.graph_dtypes["dit_step"]
        feeds = self.inputs.dit_step(latent, t, conditions, cfg)
        static = {k: v.to(self.device, types[k]).contiguous().clone() for k, v in feeds.items()}
        (out,) = self._bind("dit_step", static)
        ctx, stream = self.contexts["dit_step"], torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            ctx.execute_async_v3(stream.cuda_stream)  # warm-up: TensorRT allocates lazily here
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            ctx.execute_async_v3(stream.cuda_stream)
        return graph, static, out


def _torch_dtype(trt, dtype) -> torch.dtype:
    return {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int64: torch.int64,
        trt.int32: torch.int32,
        trt.bool: torch.bool,
    }[dtype]
