"""VATT on ONNX Runtime: the eva02 tower, VATT Audio's step and the Encodec decoder from the
graphs `selva-rt export --variant VATT_VARIANT --onnx-only` built (export/vatt_onnx.py); the
same methods and results as `VattTorchParts`.

The LLM converter stays on torch: it runs once per prompt and window (not in the sampling loop),
its 7B weights exceed protobuf's 2 GiB (a graph of external data per prompt length), and on a
small GPU it is staged in and out (`VattTorchParts`' low-memory mode). The MaskGIT sampler stays
on torch too (the families' sampler), for the official CPU generator's draws.
"""

from pathlib import Path

import numpy as np
import torch

from ..device import precision_name
from ..errors import UsageError
from ..models.vatt_networks import VattNetworks
from ..variants import Variant
from .graphs import Manifest
from .ort_parts import open_sessions
from .vatt_parts import converter_states

PARTS = ("eva02", "vatt_step", "encodec_decoder")
_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider"]}


class VattOrtParts:
    def __init__(
        self,
        variant: Variant,
        nets: VattNetworks,
        manifest: Manifest,
        graphs: dict[str, Path],
        device: torch.device,
        threads: int = 0,
    ):

        if manifest.precision != "fp32":
            raise UsageError(f"VATT graphs are fp32; {manifest.precision} graphs cannot run")
        self.variant, self.device = variant, device
        self.dtype, self.precision = torch.float32, precision_name(torch.float32)
        self.reference = False
        self.tokenizer = nets.tokenizer
        self.converter = nets.converter.to(device, self.dtype).eval()
        self.sessions, _ = open_sessions(graphs, device, _PROVIDERS[device.type], None, threads)

    @classmethod
    def load(
        cls,
        engines_dir: str | Path,
        variant: Variant,
        nets: VattNetworks,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> "VattOrtParts":
        """The graphs of `engines_dir` (every VATT part must be there) and the converter of
        `nets` (the other networks are dropped)."""
        if dtype != torch.float32:
            raise UsageError("VATT's ONNX graphs run in fp32: use --precision fp32 (or auto)")
        manifest = Manifest.read(engines_dir, variant.name)
        missing = [p for p in PARTS if p not in manifest.parts]
        if missing:
            raise UsageError(
                f"{engines_dir} has no {', '.join(missing)} graph; export them: selva-rt export "
                f"--variant {variant.name} --out {engines_dir} --onnx-only --force"
            )
        graphs = {p: manifest.graph(Path(engines_dir), p) for p in PARTS}
        return cls(variant, nets, manifest, graphs, torch.device(device))

    def _run(self, part: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        arrays = {k: np.ascontiguousarray(v.cpu().numpy()) for k, v in feeds.items()}
        return [torch.from_numpy(a).to(self.device) for a in self.sessions[part].run(None, arrays)]

    @torch.inference_mode()
    def image_features(self, pictures: torch.Tensor) -> torch.Tensor:
        return self._run("eva02", {"crops": pictures})[0]

    def conditions(
        self, ids: list[torch.Tensor], video: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return converter_states(self.converter, ids, video, self.device, self.dtype, False)

    @torch.inference_mode()
    def logits(
        self, tokens: torch.Tensor, cond: torch.Tensor, pad_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feeds = {"tokens": tokens.long(), "cond": cond.float(), "pad_mask": pad_mask > 0}
        c, u = self._run("vatt_step", feeds)
        return c, u

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._run("encodec_decoder", {"tokens": tokens.long()})[0]
