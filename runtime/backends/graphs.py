"""What the two graph backends (ONNX Runtime, TensorRT) share: the manifest of an engines
directory and its one reader, the engine cache key, and the mapping of part arguments to graph
inputs (`GraphInputs`, `GraphParts`).

The host computes what depends on the duration and not on the weights, with the same functions
the torch backend uses: the RoPE tables (generator.rope_table) and the nearest-exact sync index
(generator.nearest_exact_index). They are made on the device and cached, so a captured CUDA graph
replays without host copies.
"""

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..device import DTYPES as PRECISION_DTYPES
from ..errors import CheckpointError, UsageError
from ..models.generator import nearest_exact_index, rope_table
from ..sampler import euler_loop
from ..variants import Variant
from . import Progress

# The parts a build may hold, in build order: `selva-rt export --parts`, `--graph-parts`.
PARTS = (
    "t5",
    "clip_text",
    "clip_image",
    "video_trunk",
    "video_select",
    "dit_conditions",
    "dit_step",
    "decoder",
)

MANIFEST = "manifest.json"
CONSTANTS = "constants.safetensors"
MANIFEST_FORMAT = 1
GRAPH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "bool": torch.bool,
}
CONDITIONS = ("clip_f", "sync_f", "text_f", "clip_f_c", "text_f_c")


def io_precision(precision: str) -> str:
    """The precision of a build's float inputs and outputs: an int8 build quantises weights
    (and activations inside the graph) only, so its graphs take and return fp32."""
    return "fp32" if precision == "int8" else precision


# -- manifest -----------------------------------------------------------------------------------


@dataclass
class PartEntry:
    """One exported part: its graph file, hash, precision, graph inputs/outputs ({name, dtype,
    shape}), why TensorRT's parser would reject it (empty: ready), the ONNX Runtime check against
    torch, TensorRT engines by engine folder, and what int8 quantisation changed (empty when
    none: `onnx_export.quantize_int8`)."""

    onnx: str
    sha256: str
    precision: str
    inputs: list[dict]
    outputs: list[dict]
    export_s: float = 0.0
    trt_problems: list[str] = field(default_factory=list)
    check: dict = field(default_factory=dict)
    tensorrt: dict[str, dict] = field(default_factory=dict)
    quantized: dict = field(default_factory=dict)

    def input_dtypes(self) -> dict[str, torch.dtype]:
        return {i["name"]: GRAPH_DTYPES[i["dtype"]] for i in self.inputs}


@dataclass
class Manifest:
    """`manifest.json` of an engines directory, as `selva-rt export` writes it."""

    variant: str
    precision: str
    model_hash: str
    opset: int
    limits: dict
    tools: dict
    created: str
    parts: dict[str, PartEntry]
    format: int = MANIFEST_FORMAT

    @classmethod
    def read(cls, engines_dir: str | Path, variant: str | None = None) -> "Manifest":
        """The manifest of `engines_dir`; one-line errors when it is missing, unreadable, of
        another format, or built for another variant than `variant`."""
        path = Path(engines_dir) / MANIFEST
        if not path.is_file():
            raise UsageError(
                f"{engines_dir} has no {MANIFEST}; build it first: python export/build_engines.py"
                f" --variant {variant or 'VARIANT'} --out {engines_dir}"
            )
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, expected {MANIFEST_FORMAT}")
            raw["parts"] = {k: PartEntry(**v) for k, v in raw["parts"].items()}
            manifest = cls(**raw)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise CheckpointError(f"cannot read {path}: {e}; rebuild with --force") from e
        if variant is not None and manifest.variant != variant:
            raise UsageError(
                f"{engines_dir} holds engines for variant {manifest.variant!r}, not {variant!r}; "
                f"pass --variant {manifest.variant} or another --engines"
            )
        return manifest

    def write(self, engines_dir: str | Path) -> None:
        """Atomically (temporary file, then rename)."""
        path = Path(engines_dir) / MANIFEST
        tmp = path.with_name(f".{MANIFEST}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    def graph(self, engines_dir: Path, part: str) -> Path:
        path = Path(engines_dir) / self.parts[part].onnx
        if not path.is_file():
            raise CheckpointError(f"{path} is listed in the manifest but missing; rebuild")
        return path


# -- engine cache -------------------------------------------------------------------------------


def engine_key(
    *,
    model_hash: str,
    part: str,
    precision: str,
    onnx_sha256: str,
    shapes: dict,
    gpu: str,
    compute_capability: tuple[int, int],
    trt_version: str,
) -> str:
    """Cache key of one engine: everything that makes a serialized engine valid or not. An
    engine only loads on the TensorRT version and GPU model it was built with."""
    fields = {
        "model": model_hash,
        "part": part,
        "precision": precision,
        "onnx": onnx_sha256,
        "profile": {k: [list(s) for s in v] for k, v in sorted(shapes.items())},
        "gpu": gpu,
        "sm": list(compute_capability),
        "tensorrt": trt_version,
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]
    return f"{part}-{precision}-{digest}"


def engine_dir_name(gpu: str, compute_capability: tuple[int, int], trt_version: str) -> str:
    """Folder of one GPU model and TensorRT version inside an engines directory."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-") or "gpu"
    return f"trt-{trt_version}-sm{compute_capability[0]}{compute_capability[1]}-{slug}"


# -- part arguments -> graph inputs -------------------------------------------------------------


class GraphInputs:
    """Part arguments (as `backends.Parts` takes them) -> graph inputs (names as the exported
    graphs), with the duration tables made on `device`.

    `empty_clip_feat` [1, clip_dim]: the generator's learned empty CLIP feature, fed in place of
    CLIP video features when a part gets None (SELVA).
    """

    def __init__(self, variant: Variant, empty_clip_feat: torch.Tensor, device: torch.device):
        self.variant, self.device = variant, device
        self.empty_clip_feat = empty_clip_feat.to(device)
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
            "sync_index": nearest_exact_index(sync_features.shape[1], latent_len, self.device),
        }

    def dit_step(self, latent, t, conditions, cfg) -> dict[str, torch.Tensor]:
        tables = self.step_tables(latent.shape[1], conditions["clip_f"].shape[1], cfg)
        return {"latent": latent, "t": t, **{k: conditions[k] for k in CONDITIONS}, **tables}

    def step_tables(self, latent_len: int, clip_len: int, cfg: float) -> dict[str, torch.Tensor]:
        """fp32 RoPE tables of one duration and the 0-d cfg, on the device (cached: the 25
        steps share them, and a CUDA graph replay may not copy from the host)."""
        key = (latent_len, clip_len, float(cfg))
        if key not in self._tables:
            self._tables[key] = {
                "latent_rot": rope_table(latent_len, self.head_dim, 1.0, self.device),
                "clip_rot": rope_table(clip_len, self.head_dim, latent_len / clip_len, self.device),
                "cfg": torch.tensor(float(cfg), dtype=torch.float32, device=self.device),
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
        manifest: Manifest,
        empty_clip_feat: torch.Tensor,
        device: torch.device,
    ):
        self.variant, self.manifest = variant, manifest
        self.device = torch.device(device)
        self.dtype = PRECISION_DTYPES[io_precision(manifest.precision)]
        self.precision = manifest.precision
        self.inputs = GraphInputs(variant, empty_clip_feat, self.device)
        self.graph_dtypes = {part: e.input_dtypes() for part, e in manifest.parts.items()}

    @property
    def identity(self) -> dict:
        """How the feature cache (runtime/cache.py) tells these graphs' features apart."""
        m = self.manifest
        graphs = {part: entry.sha256 for part, entry in m.parts.items()}
        return {"backend": type(self).__name__, "precision": m.precision, "graphs": graphs}

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
    def video_trunk(self, frames: torch.Tensor, prompts: int = 1) -> torch.Tensor:
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
        text_mask: torch.Tensor | None = None,
        sync_len: int | None = None,
    ) -> dict[str, torch.Tensor]:
        if text_mask is not None or sync_features is None:
            raise UsageError(
                "Flowley and queries without video run on --backend torch only (no graphs yet)"
            )
        feeds = self.inputs.dit_conditions(
            clip_features,
            sync_features,
            text_features,
            negative_text_features,
            latent_len,
            clip_len,
        )
        return dict(zip(CONDITIONS, self._call("dit_conditions", feeds), strict=True))

    def mixture_encoder(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise UsageError("separation runs on --backend torch only (no graphs of it yet)")

    def mixture_conditions(
        self, x_cond: torch.Tensor, prompts: int, normalize: bool = False
    ) -> dict[str, torch.Tensor]:
        raise UsageError("separation runs on --backend torch only (no graphs of it yet)")

    @torch.inference_mode()
    def dit_step(self, latent, t, conditions: dict[str, torch.Tensor], cfg: float):
        return self._call("dit_step", self.inputs.dit_step(latent, t, conditions, cfg))[0]

    def sample(
        self,
        x0: torch.Tensor,
        conditions: dict[str, torch.Tensor],
        steps: int,
        cfg: float,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        return euler_loop(self.dit_step, x0, conditions, steps, cfg, progress)

    @torch.inference_mode()
    def decoder(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mel, waveform = self._call("decoder", self.inputs.decoder(latent))
        return mel, waveform


def read_engines(engines_dir: str | Path, variant: Variant) -> tuple[Manifest, torch.Tensor]:
    """The manifest and the constants (the learned empty CLIP feature) of an engines directory."""
    from safetensors.torch import load_file

    manifest = Manifest.read(engines_dir, variant.name)
    path = Path(engines_dir) / CONSTANTS
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; rebuild the engines directory with --force")
    return manifest, load_file(str(path))["empty_clip_feat"]
