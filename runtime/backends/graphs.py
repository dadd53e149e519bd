"""What the two graph backends (ONNX Runtime, TensorRT) share: the graph parts of a variant,
the manifest of an engines directory and its one reader, the engine cache key, and the mapping
of part arguments to graph inputs (`GraphInputs`, `FlowleyGraphInputs`, `GraphParts`).

The host computes what depends on the duration and not on the weights, with the same functions
the torch backend uses: the RoPE tables (generator.rope_table, flowley.rope_tables), the
nearest-exact sync index (generator.nearest_exact_index) and Flowley's PSCA biases
(flowley.psca_biases). They are made on the device and cached, so a captured CUDA graph
replays without host copies. Besides, the host feeds the learned empty features where a part
gets None, makes MMAudioSep's mixture mel (mel.MelConverter, torch.stft in fp32: ONNX has no
complex tensors) and computes its `mixture_conditions` itself: the mixture latent's share of
the DiT's input convolution (generator.mixture_bias_of), one small linear convolution per
window and request, the torch backend's own function on its weights from the constants, so it
adds no graph rounding (see `GraphParts.mixture_conditions`).
"""

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..device import DTYPES as PRECISION_DTYPES
from ..errors import CheckpointError, UsageError
from ..models.flowley import FlowleyConditions, psca_biases, rope_tables
from ..models.generator import mixture_bias_of, nearest_exact_index, rope_table
from ..models.mel import MelConverter
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
    "mixture_encoder",
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


def part_names(variant: Variant) -> tuple[str, ...]:
    """The graph parts `variant` has, in build order: t5 where it reads Flan-T5, clip_image
    where it reads CLIP video, the CLIP text and video encoder parts for MMAudio's family (not
    Flowley), mixture_encoder for separation; none for VATT (torch backend only)."""
    if variant.vatt:
        return ()
    skip = set()
    if variant.t5 is None:
        skip.add("t5")
    if not variant.uses_clip_video:
        skip.add("clip_image")
    if variant.flowley:
        skip |= {"clip_text", "video_trunk", "video_select"}
    if not variant.separation:
        skip.add("mixture_encoder")
    return tuple(p for p in PARTS if p not in skip)


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

# What a build keeps beside its graphs in CONSTANTS, by name (`constant_names`): the generator's
# learned empty features, fed where a part gets None, and for MMAudioSep the input convolution's
# weights over the mixture channels and the latent statistics (`GraphParts.mixture_conditions`).
EMPTY_FEATURES = ("empty_clip_feat", "empty_sync_feat")
MIXTURE_CONSTANTS = ("mixture_weight", "latent_mean", "latent_std")


def constant_names(variant: Variant) -> tuple[str, ...]:
    """The tensors of `variant` an engines directory keeps in CONSTANTS (none for Flowley: its
    host tables need no weights)."""
    if variant.flowley:
        return ()
    return EMPTY_FEATURES + (MIXTURE_CONSTANTS if variant.separation else ())


class GraphInputs:
    """Part arguments (as `backends.Parts` takes them) -> graph inputs (names as the exported
    graphs) for MMAudio's family, with the duration tables made on `device`.

    `constants` (CONSTANTS, `constant_names`): empty_clip_feat [1, clip_dim] and empty_sync_feat
    [1, sync_dim], fed in place of CLIP video features (SELVA) and of sync features (a query
    without video) when a part gets None; for separation also mixture_weight [H, E, 7],
    latent_mean and latent_std [1, 1, E].
    """

    def __init__(self, variant: Variant, constants: dict[str, torch.Tensor], device: torch.device):
        self.variant, self.device = variant, device
        self.constants = {k: v.to(device) for k, v in constants.items()}
        self._tables: dict[tuple, dict[str, torch.Tensor]] = {}
        # Separation: the mixture's mel, fp32, by the torch backend's own module (torch.stft).
        self.mel = MelConverter(variant.audio).to(device) if variant.separation else None

    def constant(self, name: str) -> torch.Tensor:
        if name not in self.constants:
            raise CheckpointError(
                f"the engines directory's {CONSTANTS} has no {name!r} (an older build); "
                "rebuild it with --force"
            )
        return self.constants[name]

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

    def mixture_encoder(self, waveform) -> dict[str, torch.Tensor]:
        return {"mel": self.mel(waveform.to(self.device).float())}

    def dit_conditions(
        self,
        clip_features,
        sync_features,
        text_features,
        negative_text_features,
        latent_len,
        clip_len,
        text_mask=None,
        sync_len=None,
    ) -> dict[str, torch.Tensor]:
        prompts = text_features.shape[0]
        if clip_features is None:
            clip_features = self.constant("empty_clip_feat")[None].expand(prompts, clip_len, -1)
        if sync_features is None:
            sync_features = self.constant("empty_sync_feat")[None].expand(prompts, sync_len, -1)
        return {
            "clip_features": clip_features,
            "sync_features": sync_features,
            "text_features": text_features,
            "negative_text_features": negative_text_features,
            "sync_index": nearest_exact_index(sync_features.shape[1], latent_len, self.device),
        }

    def dit_step(self, latent, t, conditions, cfg) -> dict[str, torch.Tensor]:
        tables = self.step_tables(latent.shape[1], conditions["clip_f"].shape[1], cfg)
        feeds = {"latent": latent, "t": t, **{k: conditions[k] for k in CONDITIONS}, **tables}
        if self.variant.separation:  # P rows, read by both CFG branches
            feeds["mixture_bias"] = conditions["mixture_bias"]
        return feeds

    def step_tables(self, latent_len: int, clip_len: int, cfg: float) -> dict[str, torch.Tensor]:
        """fp32 RoPE tables of one duration and the 0-d cfg, on the device (cached: the 25
        steps share them, and a CUDA graph replay may not copy from the host)."""
        key = (latent_len, clip_len, float(cfg))
        if key not in self._tables:
            g = self.variant.generator
            head_dim = g.hidden_dim // g.num_heads
            self._tables[key] = {
                "latent_rot": rope_table(latent_len, head_dim, 1.0, self.device),
                "clip_rot": rope_table(clip_len, head_dim, latent_len / clip_len, self.device),
                "cfg": torch.tensor(float(cfg), dtype=torch.float32, device=self.device),
            }
        return self._tables[key]

    def decoder(self, latent) -> dict[str, torch.Tensor]:
        return {"latent": latent}


class FlowleyGraphInputs(GraphInputs):
    """Flowley's own conditions and step: CLIP image features and Flan-T5 states with their
    mask in; its step takes the RoPE tables and every application's PSCA bias as inputs."""

    def dit_conditions(
        self,
        clip_features,
        sync_features,
        text_features,
        negative_text_features,
        latent_len,
        clip_len,
        text_mask=None,
        sync_len=None,
    ) -> dict[str, torch.Tensor]:
        """No sync or negative features (Flowley's unconditional branch is zero features)."""
        return {
            "clip_features": clip_features,
            "text_features": text_features,
            "text_mask": text_mask.bool(),
        }

    def dit_step(self, latent, t, conditions, cfg) -> dict[str, torch.Tensor]:
        tables = self.step_tables(latent.shape[1], conditions["visual_f"].shape[1], cfg)
        fields = {k: conditions[k] for k in FlowleyConditions._fields}
        return {"latent": latent, "t": t, **fields, **tables}

    def step_tables(self, latent_len: int, clip_len: int, cfg: float) -> dict[str, torch.Tensor]:
        """The three fp32 RoPE tables, the PSCA biases [layers, La, Lv] fp32 and the 0-d cfg,
        on the device (cached, as `GraphInputs.step_tables`)."""
        key = (latent_len, clip_len, float(cfg))
        if key not in self._tables:
            g = self.variant.generator
            self._tables[key] = {
                **rope_tables(g, latent_len, clip_len, self.device),
                "psca_bias": psca_biases(g, latent_len, clip_len, self.device),
                "cfg": torch.tensor(float(cfg), dtype=torch.float32, device=self.device),
            }
        return self._tables[key]


def graph_inputs_of(
    variant: Variant, constants: dict[str, torch.Tensor], device: torch.device
) -> GraphInputs:
    """The mapping of `variant`'s family (MMAudio's or Flowley's)."""
    cls = FlowleyGraphInputs if variant.flowley else GraphInputs
    return cls(variant, constants, device)


class GraphParts:
    """The parts over exported graphs, for any engine that can run a part's graph on named
    tensors (`_run`). Inputs go to the device and, when floating point, to each graph's input
    dtypes (an fp16 build keeps t5 and the decoder in fp32); outputs come in the graph's dtypes,
    so an fp32 decoder's waveform is not rounded to fp16. Every family runs on it: the mapping of
    its part arguments is `graph_inputs_of(variant)`.
    """

    def __init__(
        self,
        variant: Variant,
        manifest: Manifest,
        constants: dict[str, torch.Tensor],
        device: torch.device,
    ):
        self.variant, self.manifest = variant, manifest
        self.device = torch.device(device)
        self.dtype = PRECISION_DTYPES[io_precision(manifest.precision)]
        self.precision = manifest.precision
        self.inputs = graph_inputs_of(variant, constants, self.device)
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

    def _separating(self) -> None:
        if not self.variant.separation:
            raise UsageError(f"{self.variant.name} does not separate a mixture")

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
        feeds = self.inputs.dit_conditions(
            clip_features,
            sync_features,
            text_features,
            negative_text_features,
            latent_len,
            clip_len,
            text_mask,
            sync_len,
        )
        outputs = self._call("dit_conditions", feeds)
        names = [o["name"] for o in self.manifest.parts["dit_conditions"].outputs]
        return dict(zip(names, outputs, strict=True))

    @torch.inference_mode()
    def mixture_encoder(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._separating()
        mean, std = self._call("mixture_encoder", self.inputs.mixture_encoder(waveform))
        return mean, std

    @torch.inference_mode()
    def mixture_conditions(
        self, x_cond: torch.Tensor, prompts: int, normalize: bool = False
    ) -> dict[str, torch.Tensor]:
        """Separation: mixture_bias [P, N, H], the mixture latent x_cond [1, N, E]'s share of
        the DiT's input convolution, computed here rather than by a graph: one linear
        convolution per window and request (not per step), by the torch backend's own function
        on the build's copy of its weights, in fp32 (the step graph rounds it to its dtype).
        `normalize`: the generator's latent statistics first, as the torch backend's option."""
        self._separating()
        x = x_cond.to(self.device, torch.float32)
        if normalize:
            x = (x - self.inputs.constant("latent_mean")) / self.inputs.constant("latent_std")
        bias = mixture_bias_of(x, self.inputs.constant("mixture_weight"))
        return {"mixture_bias": bias.expand(prompts, -1, -1)}

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


def read_engines(
    engines_dir: str | Path, variant: Variant
) -> tuple[Manifest, dict[str, torch.Tensor]]:
    """The manifest and the constants (`constant_names`) of an engines directory."""
    from safetensors.torch import load_file

    manifest = Manifest.read(engines_dir, variant.name)
    path = Path(engines_dir) / CONSTANTS
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; rebuild the engines directory with --force")
    return manifest, load_file(str(path))
