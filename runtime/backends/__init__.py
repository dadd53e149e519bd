"""Backends: what runs the parts of DESIGN.md. One contract, `Parts`; one way in, `load_parts`.

    parts = load_parts(get_variant("tiny"), "torch", device="cpu")
    trunk = parts.video_trunk(frames, prompts=2)

Every backend (torch in fast or reference mode, ONNX Runtime, TensorRT) takes and returns the same
named tensors, so the pipeline composes parts without knowing which backend runs them.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from ..device import (
    DTYPES,
    precision_name,
    resolve_device,
    resolve_precision,
)
from ..errors import UsageError
from ..variants import Variant

BACKENDS = ("torch", "onnxruntime", "tensorrt")
Progress = Callable[[int], None]  # told how many Euler steps just finished


class Parts(Protocol):
    """The parts contract. Shapes: P prompts, T frames, S segments, L T5 tokens, N latent frames,
    Nc CLIP frames, E latent channels, W CLIP text width, D video width; `float` is the backend's
    dtype; conditions are conditional rows then unconditional rows ([2P, ...])."""

    device: torch.device
    dtype: torch.dtype
    precision: str  # fp32, bf16, fp16, or int8 (a graph build: int8 behind fp32 tensors)

    def t5(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids [P, L] int64, attention_mask [P, L] int64 -> t5_features [P, L, 768]."""

    def clip_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [P, 77] int64 -> clip_text_features [P, 77, W]."""

    def clip_image(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [Nc, 3, 384, 384] in [0, 1] -> clip_image_features [Nc, 1024] (plain MMAudio)."""

    def video_trunk(self, frames: torch.Tensor, prompts: int = 1) -> torch.Tensor:
        """frames [1, T, 3, 224, 224] in [-1, 1] -> trunk_tokens [S, 1568, D]; `prompts` is how
        many prompts will read them (reference mode runs the trunk once per prompt and returns
        [P*S, 1568, D], as the official batch holds the clip once per prompt)."""

    def video_select(
        self,
        trunk_tokens: torch.Tensor,
        t5_features: torch.Tensor | None,
        t5_mask: torch.Tensor | None,
        prompts: int = 1,
    ) -> torch.Tensor:
        """trunk_tokens (from `video_trunk`), t5_features [P, L, 768], t5_mask [P, L] bool ->
        sync_features [P, 8S, D]. Plain MMAudio (no T5): the pooled features, for `prompts`."""

    def dit_conditions(
        self,
        clip_features: torch.Tensor | None,
        sync_features: torch.Tensor | None,
        text_features: torch.Tensor,
        negative_text_features: torch.Tensor | None,
        latent_len: int,
        clip_len: int,
        text_mask: torch.Tensor | None = None,
        sync_len: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """clip_features [P, Nc, C] or None (the learned empty CLIP feature, SELVA),
        sync_features [P, 8S, D] (None: the learned empty feature for `sync_len` rows, a
        query without video), text and negative text features [P, 77, W] -> conditions
        clip_f [2P, Nc, H], sync_f [2P, N, H], text_f [2P, 77, H], clip_f_c and text_f_c [2P, H].

        Flowley (`variant.flowley`): CLIP image features [P, Nc, C], no sync or negative
        features, text_features the Flan-T5 states [P, L, W] with text_mask [P, L] bool ->
        its own conditions (see `flowley_parts`)."""

    def mixture_encoder(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Separation only: mixture [1, S] float32 -> posterior mean, std [1, E, N]."""

    def mixture_conditions(
        self, x_cond: torch.Tensor, prompts: int, normalize: bool = False
    ) -> dict[str, torch.Tensor]:
        """Separation only: sampled mixture latent [1, N, E] -> extra `dit_step` conditions
        with P rows, read by both CFG branches (e.g. mixture_bias [P, N, H])."""

    def dit_step(
        self, latent: torch.Tensor, t: torch.Tensor, conditions: dict[str, torch.Tensor], cfg: float
    ) -> torch.Tensor:
        """latent [P, N, E], t [P] -> CFG velocity [P, N, E]."""

    def sample(
        self,
        x0: torch.Tensor,
        conditions: dict[str, torch.Tensor],
        steps: int,
        cfg: float,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """The whole Euler loop over `dit_step`: noise x0 [P, N, E] -> x1 [P, N, E]."""

    def decoder(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised x1 [P, N, E] -> (mel [P, M, 2N], waveform [P, samples])."""


def torch_parts_class(variant: Variant) -> type:
    """The torch backend's parts of `variant`: Flowley has its own conditions and step."""
    if variant.flowley:
        from .flowley_parts import FlowleyTorchParts

        return FlowleyTorchParts
    from .torch_parts import TorchParts

    return TorchParts


def load_parts(
    variant: Variant,
    backend: str = "torch",
    *,
    device: str | torch.device = "auto",
    precision: str = "auto",
    reference: bool = False,
    cuda_graphs: bool | None = None,
    engines: str | Path | None = None,
    quiet: bool = True,
    checkpoint: str | Path | None = None,
    graph_parts: str | tuple[str, ...] | None = None,
    low_memory: bool = False,
) -> Parts:
    """The parts of `variant` on one backend. torch: the networks from the weights folder
    (`reference` runs them the official way; `cuda_graphs`, default on in fast mode on CUDA,
    replays the Euler loop as one graph). onnxruntime / tensorrt: the files `selva-rt export`
    built into `engines` (their precision is the build's). `checkpoint`: a generator file
    to load instead of the variant's (torch backend). `graph_parts` ("video_select,dit_step"):
    on the torch backend, these parts run from the ONNX Runtime graphs in `engines` instead
    (`mixed.MixedParts`). `low_memory` (torch): only the running stage's weights in memory
    (`torch_parts.STAGES`)."""
    dev = resolve_device(device)
    if low_memory and (backend != "torch" or graph_parts):
        raise UsageError("--low-memory is a mode of the torch backend; leave out --graph-parts")
    if variant.vatt:
        return _vatt_parts(variant, backend, dev, precision, reference, engines, quiet, checkpoint)
    if graph_parts:
        return _mixed_parts(variant, backend, dev, precision, reference, engines, graph_parts)
    if backend == "torch":
        from .. import weights
        from ..models.networks import build_networks

        dtype = DTYPES[resolve_precision(precision, dev)]
        if cuda_graphs is None:
            cuda_graphs = dev.type == "cuda" and not reference and not low_memory
        paths = weights.resolve(variant, quiet=quiet, checkpoint=checkpoint)
        nets = build_networks(variant, paths)
        parts = torch_parts_class(variant)
        return parts(
            variant,
            nets,
            dev,
            dtype,
            reference=reference,
            cuda_graphs=cuda_graphs,
            low_memory=low_memory,
        )
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; use {', '.join(BACKENDS)}")
    if reference:
        raise UsageError("reference mode is a torch-backend mode; use --backend torch")
    if checkpoint is not None:
        raise UsageError(
            "--checkpoint runs on --backend torch only (an engines folder holds the weights "
            "it was exported from)"
        )
    from .graphs import part_names

    if not part_names(variant):
        raise UsageError(f"{variant.name} runs on --backend torch only (it has no graph parts)")
    if engines is None:
        raise UsageError(f"the {backend} backend needs --engines DIR (see selva-rt export)")
    if backend == "onnxruntime":
        from .ort_parts import OrtParts

        return OrtParts.load(engines, variant, dev)
    from .trt_parts import TrtParts

    return TrtParts.load(engines, variant, dev)


def _vatt_parts(variant, backend, device, precision, reference, engines, quiet, checkpoint):
    """VATT's parts (`vatt_parts`): its networks on torch, or its graphs on ONNX Runtime with
    the LLM converter on torch (`vatt_ort_parts`)."""
    from .. import weights
    from ..models.vatt_networks import build_vatt_networks

    if checkpoint is not None:
        raise UsageError(f"--checkpoint replaces a generator file; {variant.name} has none")
    if backend not in ("torch", "onnxruntime"):
        raise UsageError(f"{variant.name} runs on --backend torch or onnxruntime")
    if backend == "onnxruntime" and (engines is None or reference):
        raise UsageError(
            "VATT on onnxruntime needs --engines DIR (see selva-rt export) and no reference mode"
        )
    dtype = DTYPES[resolve_precision(precision, device)]
    nets = build_vatt_networks(variant, weights.resolve(variant, quiet=quiet))
    if backend == "onnxruntime":
        from .vatt_ort_parts import VattOrtParts

        return VattOrtParts.load(engines, variant, nets, device, dtype)
    from .vatt_parts import VattTorchParts

    return VattTorchParts(variant, nets, device, dtype, reference=reference)


def _mixed_parts(variant, backend, device, precision, reference, engines, graph_parts) -> Parts:
    from .mixed import MixedParts, check_graph_parts, part_list
    from .ort_parts import OrtParts

    names = part_list(graph_parts)
    check_graph_parts(names, variant)
    if backend != "torch" or reference:
        raise UsageError("--graph-parts mixes graphs into the torch backend's fast mode only")
    if engines is None:
        raise UsageError("--graph-parts needs --engines DIR (see selva-rt export)")
    graphs = OrtParts.load(engines, variant, device, parts=names)
    if precision == "auto":  # the torch parts compute in the graphs' dtype
        precision = precision_name(graphs.dtype)
    base = load_parts(variant, "torch", device=device, precision=precision)
    return MixedParts(base, graphs, names)
