"""The `onnxruntime` backend: every part runs from the ONNX graphs `selva-rt export` wrote.

    parts = OrtParts.load("engines/tiny", get_variant("tiny"), device="cpu")
    parts.dit_step(latent, t, conditions, cfg)   # same arguments and results as TorchParts

Tensors cross into ONNX Runtime by pointer (IOBinding) and come back through DLPack, on the CPU
or, with the CUDA or TensorRT execution provider, on the GPU, without host copies.
"""

from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from ..variants import Variant
from .graphs import GraphParts, Manifest, read_engines

# torch dtype -> what IOBinding takes: a numpy dtype, or the ONNX enum where numpy has none.
_ORT_TYPES = {
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.bfloat16: 16,
    torch.int64: np.int64,
    torch.bool: np.bool_,
}
_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
}


def open_sessions(
    graphs: dict[str, Path],
    device: torch.device,
    wanted: list[str],
    providers: list | None = None,
    threads: int = 0,
) -> tuple[dict, list]:
    """ONNX Runtime sessions over `graphs` (part -> file) on `device`, and the execution
    providers they use: `providers`, or those of `wanted` this onnxruntime has."""
    import onnxruntime as ort

    if providers is None:
        have = ort.get_available_providers()
        providers = [p for p in wanted if p in have]
        if not providers:
            raise UsageError(
                f"this onnxruntime ({ort.__version__}) has no {device.type.upper()} "
                "execution provider; install onnxruntime-gpu or use --device cpu"
            )
        if device.type == "cuda":
            providers = [(p, {"device_id": device.index or 0}) for p in providers]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # per-node shape-merge warnings of dynamic graphs are noise
    if threads:
        opts.intra_op_num_threads = threads
    sessions = {
        part: ort.InferenceSession(str(path), opts, providers=providers)
        for part, path in graphs.items()
    }
    return sessions, providers


class OrtParts(GraphParts):
    """The parts, run by ONNX Runtime sessions over the graphs of an engines directory."""

    def __init__(
        self,
        variant: Variant,
        manifest: Manifest,
        graphs: dict[str, Path],
        constants: dict[str, torch.Tensor],
        device: str | torch.device = "cpu",
        providers: list[str] | None = None,
        threads: int = 0,
    ):

        device = torch.device(device)
        if manifest.precision == "bf16" and device.type == "cpu":
            raise UsageError(
                "ONNX Runtime's CPU execution provider has no bfloat16 kernels; run these bf16 "
                "graphs with --device cuda, or export with --precision fp32 or fp16 for the CPU"
            )
        if manifest.precision == "int8" and device.type != "cpu":
            raise UsageError(
                "int8 graphs are dynamically quantised for ONNX Runtime's CPU execution "
                "provider; run them with --device cpu"
            )
        # Sessions first: a missing execution provider is the one-line error, before the
        # constants move to a device this torch may not have.
        self.sessions, self.providers = open_sessions(
            graphs, device, _PROVIDERS[device.type], providers, threads
        )
        super().__init__(variant, manifest, constants, device)

    @classmethod
    def load(
        cls,
        engines_dir: str | Path,
        variant: Variant,
        device: str | torch.device = "cpu",
        providers: list[str] | None = None,
        threads: int = 0,
        parts: tuple[str, ...] | None = None,
    ) -> "OrtParts":
        """The parts of `variant` from the ONNX files and manifest in `engines_dir` (only
        `parts`, when given)."""
        manifest, constants = read_engines(engines_dir, variant)
        for part in parts or ():
            if part not in manifest.parts:
                raise UsageError(
                    f"{engines_dir} has no {part!r} graph; export it: selva-rt export "
                    f"--variant {variant.name} --out {engines_dir} --parts {part} --force"
                )
        graphs = {p: manifest.graph(Path(engines_dir), p) for p in parts or manifest.parts}
        return cls(variant, manifest, graphs, constants, device, providers, threads)

    def _run(self, part: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        sess = self.sessions[part]
        binding = sess.io_binding()
        keep = []  # the bound buffers must outlive the run
        for name, t in feeds.items():
            t = t.contiguous()
            keep.append(t)
            kind = "cuda" if t.is_cuda else "cpu"
            binding.bind_input(
                name, kind, t.device.index or 0, _ORT_TYPES[t.dtype], tuple(t.shape), t.data_ptr()
            )
        for out in sess.get_outputs():
            binding.bind_output(out.name, self.device.type, self.device.index or 0)
        sess.run_with_iobinding(binding)
        return [torch.from_dlpack(v) for v in binding.get_outputs()]
