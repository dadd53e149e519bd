"""The `onnxruntime` backend: every part runs from the ONNX graphs `selva-rt export` wrote.

    parts = OrtParts.load("engines/tiny", "tiny", device="cpu")
    parts.dit_step(latent, t, conditions, cfg)   # same arguments and results as TorchParts

`GraphParts` maps the torch backend's part arguments to graph inputs and the graph outputs back
(it is shared with the TensorRT backend); `OrtParts` runs the graphs with ONNX Runtime. Tensors
cross into ONNX Runtime by pointer (IOBinding) and come back through DLPack, on the CPU or, with
the CUDA or TensorRT execution provider, on the GPU, without host copies.

The host computes what depends on the duration and not on the weights, with the same functions
the torch backend uses: the RoPE tables (generator.rope_table) and the nearest-exact sync index
(generator.nearest_exact_index).
"""

import json
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError, UsageError
from .models.generator import nearest_exact_index, rope_table
from .variants import Variant, get_variant

MANIFEST = "manifest.json"
CONSTANTS = "constants.safetensors"
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "bool": torch.bool,
}
PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CONDITIONS = ("clip_f", "sync_f", "text_f", "clip_f_c", "text_f_c")


def read_manifest(engines_dir: str | Path, variant: str | None = None) -> dict:
    """The manifest of an engines directory; one-line errors when it is missing or was built
    for another variant."""
    path = Path(engines_dir) / MANIFEST
    if not path.is_file():
        raise UsageError(
            f"{engines_dir} has no {MANIFEST}; build it first: "
            f"python export/build_engines.py --variant {variant or 'VARIANT'} --out {engines_dir}"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if variant is not None and manifest.get("variant") != variant:
        raise UsageError(
            f"{engines_dir} holds engines for variant {manifest.get('variant')!r}, not "
            f"{variant!r}; pass --variant {manifest.get('variant')} or another --engines"
        )
    return manifest


class GraphInputs:
    """Part arguments (as TorchParts takes them) -> graph inputs (names as the exported graphs).

    `empty_clip_feat` [1, clip_dim]: the generator's learned empty CLIP feature, fed in place of
    CLIP video features when a part gets None (SELVA).
    """

    def __init__(self, variant: Variant, empty_clip_feat: torch.Tensor):
        self.variant = variant
        self.empty_clip_feat = empty_clip_feat
        g = variant.generator
        self.head_dim = g.hidden_dim // g.num_heads
        self._tables: dict[tuple, dict[str, torch.Tensor]] = {}

    def t5(self, input_ids, attention_mask) -> dict[str, torch.Tensor]:
        return {"input_ids": input_ids.long(), "attention_mask": attention_mask.long()}

    def clip_text(self, tokens) -> dict[str, torch.Tensor]:
        return {"tokens": tokens.long()}

    def clip_image(self, frames) -> dict[str, torch.Tensor]:
        return {"frames": frames}

    def video_trunk(self, frames) -> dict[str, torch.Tensor]:
        return {"frames": frames}

    def video_select(self, trunk_tokens, t5_features, t5_mask) -> dict[str, torch.Tensor]:
        if not self.variant.selective:
            return {"trunk_tokens": trunk_tokens}
        return {"trunk_tokens": trunk_tokens, "t5_features": t5_features, "t5_mask": t5_mask.bool()}

    def dit_conditions(
        self,
        clip_features,
        sync_features,
        text_features,
        negative_text_features,
        latent_len,
        clip_len,
    ) -> dict[str, torch.Tensor]:
        if clip_features is None:
            clip_features = self.empty_clip_feat[None].expand(sync_features.shape[0], clip_len, -1)
        return {
            "clip_features": clip_features,
            "sync_features": sync_features,
            "text_features": text_features,
            "negative_text_features": negative_text_features,
            "sync_index": nearest_exact_index(sync_features.shape[1], latent_len),
        }

    def dit_step(self, latent, t, conditions, cfg) -> dict[str, torch.Tensor]:
        return {
            "latent": latent,
            "t": t,
            **{k: conditions[k] for k in CONDITIONS},
            **self.rope_tables(latent.shape[1], conditions["clip_f"].shape[1]),
            "cfg": torch.tensor(float(cfg), dtype=torch.float32),
        }

    def rope_tables(self, latent_len: int, clip_len: int) -> dict[str, torch.Tensor]:
        """fp32 RoPE tables for one duration (cached: the 25 steps share them)."""
        key = (latent_len, clip_len)
        if key not in self._tables:
            self._tables[key] = {
                "latent_rot": rope_table(latent_len, self.head_dim, 1.0),
                "clip_rot": rope_table(clip_len, self.head_dim, latent_len / clip_len),
            }
        return self._tables[key]

    def decoder(self, latent) -> dict[str, torch.Tensor]:
        return {"latent": latent}


class GraphParts:
    """The parts over exported graphs, for any engine that can run a part's graph on named
    tensors (`_run`). Inputs go to the device and, when floating point, to each graph's input
    dtypes (an fp16 build keeps t5 and the decoder in fp32); outputs come in the graph's dtypes,
    so an fp32 decoder's waveform is not rounded to fp16.
    """

    def __init__(
        self,
        variant: Variant,
        manifest: dict,
        empty_clip_feat: torch.Tensor,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.variant, self.manifest = variant, manifest
        self.device, self.dtype = torch.device(device), dtype
        self.inputs = GraphInputs(variant, empty_clip_feat)
        self.graph_dtypes = {
            part: {i["name"]: DTYPES[i["dtype"]] for i in entry["inputs"]}
            for part, entry in manifest["parts"].items()
        }

    def _run(self, part: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError

    def _call(self, part: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        if part not in self.graph_dtypes:
            raise UsageError(
                f"the engines directory has no {part!r} graph; rebuild it with that part"
            )
        types = self.graph_dtypes[part]
        feeds = {k: v.to(self.device, types[k]) for k, v in feeds.items()}
        return self._run(part, feeds)

    @torch.inference_mode()
    def t5(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._call("t5", self.inputs.t5(input_ids, attention_mask))[0]

    @torch.inference_mode()
    def clip_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._call("clip_text", self.inputs.clip_text(tokens))[0]

    @torch.inference_mode()
    def clip_image(self, frames: torch.Tensor) -> torch.Tensor:
        return self._call("clip_image", self.inputs.clip_image(frames))[0]

    @torch.inference_mode()
    def video_trunk(self, frames: torch.Tensor) -> torch.Tensor:
        return self._call("video_trunk", self.inputs.video_trunk(frames))[0]

    @torch.inference_mode()
    def video_select(self, trunk_tokens, t5_features, t5_mask, prompts: int = 1) -> torch.Tensor:
        feeds = self.inputs.video_select(trunk_tokens, t5_features, t5_mask)
        sync = self._call("video_select", feeds)[0]
        return sync if self.variant.selective else sync.expand(prompts, -1, -1)

    @torch.inference_mode()
    def dit_conditions(
        self,
        clip_features,
        sync_features,
        text_features,
        negative_text_features,
        latent_len: int,
        clip_len: int,
    ) -> dict[str, torch.Tensor]:
        feeds = self.inputs.dit_conditions(
            clip_features,
            sync_features,
            text_features,
            negative_text_features,
            latent_len,
            clip_len,
        )
        return dict(zip(CONDITIONS, self._call("dit_conditions", feeds), strict=True))

    @torch.inference_mode()
    def dit_step(self, latent, t, conditions: dict[str, torch.Tensor], cfg: float):
        return self._call("dit_step", self.inputs.dit_step(latent, t, conditions, cfg))[0]

    @torch.inference_mode()
    def decoder(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mel, waveform = self._call("decoder", self.inputs.decoder(latent))
        return mel, waveform


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


class OrtParts(GraphParts):
    """TorchParts' parts, run by ONNX Runtime sessions over the graphs of an engines directory."""

    def __init__(
        self,
        variant: Variant,
        manifest: dict,
        graphs: dict[str, Path],
        empty_clip_feat: torch.Tensor,
        device: str | torch.device = "cpu",
        providers: list[str] | None = None,
        threads: int = 0,
    ):
        import onnxruntime as ort

        device = torch.device(device)
        if manifest["precision"] == "bf16" and device.type == "cpu":
            raise UsageError(
                "ONNX Runtime's CPU execution provider has no bfloat16 kernels; run these bf16 "
                "graphs with --device cuda, or export with --precision fp32 or fp16 for the CPU"
            )
        super().__init__(
            variant, manifest, empty_clip_feat, device, PRECISION_DTYPES[manifest["precision"]]
        )
        if providers is None:
            have = ort.get_available_providers()
            providers = [p for p in _PROVIDERS[device.type] if p in have]
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
        self.providers = providers
        self.sessions = {
            part: ort.InferenceSession(str(path), opts, providers=providers)
            for part, path in graphs.items()
        }

    @classmethod
    def load(
        cls,
        engines_dir: str | Path,
        variant: str | Variant,
        device: str | torch.device = "cpu",
        providers: list[str] | None = None,
        threads: int = 0,
    ) -> "OrtParts":
        """The parts of `variant` from the ONNX files and manifest in `engines_dir`."""
        from safetensors.torch import load_file

        v = get_variant(variant) if isinstance(variant, str) else variant
        engines_dir = Path(engines_dir)
        manifest = read_manifest(engines_dir, v.name)
        graphs = {}
        for part, entry in manifest["parts"].items():
            path = engines_dir / entry["onnx"]
            if not path.is_file():
                raise CheckpointError(f"{path} is listed in the manifest but missing; rebuild")
            graphs[part] = path
        constants = load_file(str(engines_dir / CONSTANTS))
        return cls(v, manifest, graphs, constants["empty_clip_feat"], device, providers, threads)

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
