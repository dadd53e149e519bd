"""Trace the parts of DESIGN.md to ONNX, and check each graph against the torch backend.

One thin adapter module per part gives the graph the named inputs and outputs of `plan.part_io`
and calls the faithful networks' own methods, which are written to export: there is one version
of each part's math, and the check against `TorchParts` (the same methods, eagerly) measures only
the runtimes' rounding. The traps those methods avoid:

* RoPE: `latent_rot` / `clip_rot` fp32 tables are inputs (the generator's methods take them as
  optional arguments), made on the host by `generator.rope_table`, applied with real arithmetic
  (no complex numbers). They stay fp32 in fp16/bf16 graphs, as in the reference, so no
  low-precision Sin/Cos of angles up to N rad. Length checks against module state run only with
  the module's own tables, so they specialise no dim.
* nearest-exact interpolation of the sync features to N rows: a Gather by the `sync_index`
  input, made by `generator.nearest_exact_index` with ATen's float32 formula (ONNX Resize has no
  nearest-exact mode, and its rounding modes pick other rows).
* [SUP] cross-attention with a key-padding mask: the bool mask is an input and masked logits are
  -inf. While tracing, `SupCrossBlock` takes `video_encoder.broadcast_attention` (each segment's
  queries meet each prompt's keys by broadcasting) in place of the Triton kernel / SDPA
  dispatcher, whose reference uses repeat_interleave (mistranslated for a dynamic count).
* cfg is a 0-d fp32 input: `cfg_velocity_batched` computes both branches and selects v_cond where
  cfg < 1; the doubled batch is cut by slices, not chunk (torch.export cannot prove two chunks).
* weight norm (vocoder) and the MPConv normalisation (VAE) are folded at load, so the graphs hold
  plain convolution weights; SnakeBeta is elementwise Exp/Sin/Mul with the alias-free filters as
  constant depthwise convolutions.
* fp16 overflow: `plan.graph_precision` keeps Flan-T5 and the decoder in fp32 in fp16 builds.
* int8: the fp32 graph is traced, then its linear layers are quantised by ONNX Runtime's
  dynamic quantiser (`quantize_int8`, parts and settings in `plan`).
* the joint attention output of the MM-DiT is cut by slicing, not `split` with dynamic sizes
  (exported as SplitToSequence/SequenceAt, which TensorRT's parser lacks).
* HF T5's SDPA attention decomposes into a view torch.export cannot prove valid for a dynamic
  token count; the eager attention (the same math) is traced instead.
* MMAudioSep's mixture encoder: the graph is the VAE encoder's posterior of a log-mel
  (`mixture_posterior`); the host makes the mel with the torch backend's `MelConverter` (ONNX
  has no complex tensors for torch.stft, and a DFT written as a convolution moved tiny-sep's
  separated stems by 1.2e-4 to 1.8e-4), and draws the posterior *sample* itself (eps comes
  from the request's seeded generator). The step takes the mixture's share of the input
  convolution, `mixture_bias`, as an input: the host computes it too
  (graphs.GraphParts.mixture_conditions).
* Flowley: its step is the network's `cfg_velocity_batched` with the RoPE tables and every
  application's PSCA bias [L, La, Lv] as fp32 inputs (`psca_from_biases`: SDPA with the bias as
  its mask, as the reference PSCA attention); the tied block runs N times on one set of weights,
  which the file holds once. Its conditions graph L2-normalises the Flan-T5 states as the torch
  backend does and counts each prompt's tokens from the mask (text_len, int64).

Dynamic axes: every dim named in `plan.part_io`. Tracing uses sizes >= 2, all distinct, so that
torch.export specialises on none of them; the checks run other sizes, one prompt among them.
"""

import copy
import hashlib
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..runtime.backends import torch_parts_class
from ..runtime.backends.graphs import constant_names, graph_inputs_of, io_precision
from ..runtime.backends.ort_parts import OrtParts
from ..runtime.device import DTYPES
from ..runtime.models.flowley import FlowleyConditions, normalize_text, psca_from_biases
from ..runtime.models.generator import Conditions
from ..runtime.models.mixture import mixture_posterior
from ..runtime.models.networks import Networks, decode_latent
from ..runtime.variants import SEGMENT_TOKENS, SYNC_SIZE, Variant
from . import plan

# Without torchvision the exporter logs a warning per torchvision op it cannot register.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

OPSET = 18  # LayerNormalization needs 17; TensorRT 10's parser takes 9..24


# -- wrappers -------------------------------------------------------------------------------


class T5Part(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class ClipTextPart(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encoder(tokens)


class ClipImagePart(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.encoder(frames)


class VideoTrunkPart(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.encoder.trunk(frames)


class VideoSelectPart(nn.Module):
    """One clip's trunk tokens [S, 1568, D] and P prompts -> sync features [P, 8S, D]
    (`VideoEncoder.select`). Plain Synchformer: the pooled features [1, 8S, D]."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, trunk_tokens, t5_features=None, t5_mask=None):
        enc, segments = self.encoder, trunk_tokens.shape[0]
        if not enc.selective:
            return enc.pool(trunk_tokens, segments)
        return enc.select(trunk_tokens, *enc.prepend_sup(t5_features, t5_mask), segments)


class DitConditionsPart(nn.Module):
    """`Generator.cfg_conditions`, with the nearest-exact index an input."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.g = generator

    def forward(
        self, clip_features, sync_features, text_features, negative_text_features, sync_index
    ):
        return tuple(
            self.g.cfg_conditions(
                clip_features, sync_features, text_features, negative_text_features, sync_index
            )
        )


class DitStepPart(nn.Module):
    """`Generator.cfg_velocity_batched`, with the RoPE tables and the cfg inputs; separation
    generators also take `mixture_bias` [P, N, H] (both branches read it)."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.g = generator

    def forward(
        self,
        latent,
        t,
        clip_f,
        sync_f,
        text_f,
        clip_f_c,
        text_f_c,
        latent_rot,
        clip_rot,
        cfg,
        mixture_bias=None,
    ):
        cond = Conditions(clip_f, sync_f, text_f, clip_f_c, text_f_c)
        mixture = {} if mixture_bias is None else {"mixture_bias": mixture_bias}
        return self.g.cfg_velocity_batched(latent, t, cond, cfg, latent_rot, clip_rot, **mixture)


class MixtureEncoderPart(nn.Module):
    """MMAudioSep: the mixture's log-mel [1, M, T] -> posterior mean, std [1, E, T // 2]."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mixture_posterior(self.vae, mel)


class FlowleyConditionsPart(nn.Module):
    """`Flowley.cfg_conditions` of the L2-normalised Flan-T5 states, CLIP image features and
    the real tokens per prompt (from the mask)."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.g = generator

    def forward(self, clip_features, text_features, text_mask):
        text = normalize_text(text_features, clip_features.dtype)
        return tuple(self.g.cfg_conditions(text, clip_features, text_mask.sum(1)))


class FlowleyStepPart(nn.Module):
    """`Flowley.cfg_velocity_batched` with the RoPE tables, the PSCA biases and cfg inputs."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.g = generator

    def forward(
        self,
        latent,
        t,
        text_f,
        visual_f,
        global_c,
        text_len,
        multi_audio_rot,
        multi_visual_rot,
        single_audio_rot,
        psca_bias,
        cfg,
    ):
        cond = FlowleyConditions(text_f, visual_f, global_c, text_len)
        tables = {
            "multi_audio_rot": multi_audio_rot,
            "multi_visual_rot": multi_visual_rot,
            "single_audio_rot": single_audio_rot,
        }
        psca = psca_from_biases(psca_bias)
        return self.g.cfg_velocity_batched(latent, t, cond, cfg, psca, tables)


class DecoderPart(nn.Module):
    """`networks.decode_latent`: normalised latent [P, N, E] -> (mel, waveform)."""

    def __init__(self, generator: nn.Module, vae: nn.Module, vocoder: nn.Module):
        super().__init__()
        self.g, self.vae, self.vocoder = generator, vae, vocoder

    def forward(self, latent: torch.Tensor):
        return decode_latent(self.g, self.vae, self.vocoder, latent)


def part_module(name: str, variant: Variant, nets: Networks) -> nn.Module:
    makers = {
        "t5": lambda: T5Part(nets.t5.model),
        "clip_text": lambda: ClipTextPart(nets.clip_text),
        "clip_image": lambda: ClipImagePart(nets.clip_image),
        "video_trunk": lambda: VideoTrunkPart(nets.video_encoder),
        "video_select": lambda: VideoSelectPart(nets.video_encoder),
        "mixture_encoder": lambda: MixtureEncoderPart(nets.vae),
        "dit_conditions": lambda: DitConditionsPart(nets.generator),
        "dit_step": lambda: DitStepPart(nets.generator),
        "decoder": lambda: DecoderPart(nets.generator, nets.vae, nets.vocoder),
    }
    if variant.flowley:
        makers["dit_conditions"] = lambda: FlowleyConditionsPart(nets.generator)
        makers["dit_step"] = lambda: FlowleyStepPart(nets.generator)
    return makers[name]().eval()


# -- part arguments -------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """The free sizes of one set of part arguments."""

    prompts: int
    tokens: int  # T5 tokens per prompt
    duration: float


# Traced sizes: all dynamic dims >= 2 and distinct (16 kHz: N 63, Nc 16, S 5, T 50).
EXPORT_SIZES = Sizes(prompts=2, tokens=7, duration=2.0)
CHECK_SIZES = (Sizes(prompts=1, tokens=11, duration=3.0), Sizes(prompts=3, tokens=4, duration=1.6))


def sample_args(name: str, variant: Variant, sizes: Sizes, seed: int) -> tuple:
    """Random arguments of the torch backend's part <name> in realistic ranges (fp32)."""
    gen = torch.Generator().manual_seed(seed)
    d = plan.dims(variant, sizes.prompts, sizes.tokens, sizes.duration)
    P, L = sizes.prompts, sizes.tokens
    g, enc = variant.generator, variant.video_encoder

    def randn(*shape):
        return torch.randn(shape, generator=gen)

    def padding_mask(length: int = L) -> torch.Tensor:
        lengths = torch.randint(1, length + 1, (P,), generator=gen)
        lengths[0] = length  # the tokenizer pads to the longest prompt
        return torch.arange(length)[None] < lengths[:, None]

    if name == "t5":
        return torch.randint(0, variant.t5.vocab_size, (P, L), generator=gen), padding_mask().long()
    if name == "clip_text":
        ctx = variant.clip.context_length
        return (torch.randint(0, variant.clip.vocab_size, (P, ctx), generator=gen),)
    if name == "clip_image":
        size = variant.clip.frame_size
        return (torch.rand(d["clip_frames"], 3, size, size, generator=gen),)
    if name == "mixture_encoder":
        return (0.3 * randn(1, d["samples"]),)
    if name == "decoder":
        return (randn(P, d["latent"], g.latent_dim),)
    if variant.flowley:
        return _flowley_args(name, variant, d, P, randn, padding_mask, gen)
    if name == "video_trunk":
        return (torch.rand(1, d["frames"], 3, SYNC_SIZE, SYNC_SIZE, generator=gen) * 2 - 1,)
    if name == "video_select":
        tokens = randn(d["segments"], SEGMENT_TOKENS, enc.embed_dim)
        if not variant.selective:
            return tokens, None, None, P
        return tokens, randn(P, L, enc.text_dim), padding_mask(), P
    if name == "dit_conditions":
        clip = randn(P, d["clip_frames"], g.clip_dim) if variant.uses_clip_video else None
        text = (randn(P, g.text_seq_len, g.text_dim) for _ in range(2))
        return (clip, randn(P, d["8*segments"], g.sync_dim), *text, d["latent"], d["clip_frames"])
    if name == "dit_step":
        H, N, Nc = g.hidden_dim, d["latent"], d["clip_frames"]
        conditions = {
            "clip_f": randn(2 * P, Nc, H),
            "sync_f": randn(2 * P, N, H),
            "text_f": randn(2 * P, g.text_seq_len, H),
            "clip_f_c": randn(2 * P, H),
            "text_f_c": randn(2 * P, H),
        }
        if variant.separation:  # P rows, both branches
            conditions["mixture_bias"] = randn(P, N, H)
        return randn(P, N, g.latent_dim), torch.rand(P, generator=gen), conditions, 4.5
    raise ValueError(f"unknown part {name!r}")


def _flowley_args(name: str, variant: Variant, d: dict, P: int, randn, padding_mask, gen) -> tuple:
    """Flowley's conditions and step arguments: CLIP image features, Flan-T5 states padded to
    the generator's text length with their mask; the step's [cond; uncond] conditions."""
    g = variant.generator
    N, Nv, Lt, H = d["latent"], d["clip_frames"], g.text_seq_len, g.hidden_dim
    if name == "dit_conditions":
        clip = torch.nn.functional.normalize(randn(P, Nv, g.video_dim), dim=-1)  # as CLIP's
        return clip, None, randn(P, Lt, g.text_dim), None, N, Nv, padding_mask(Lt)
    if name == "dit_step":
        text_len = torch.randint(1, Lt + 1, (P,), generator=gen)
        conditions = {
            "text_f": randn(2 * P, Lt, H),
            "visual_f": randn(2 * P, Nv, H),
            "global_c": randn(2 * P, H),
            "text_len": torch.cat([text_len, text_len]),
        }
        return randn(P, N, g.latent_dim), torch.rand(P, generator=gen), conditions, variant.cfg
    raise ValueError(f"{variant.name} has no part {name!r}")


def graph_constants(variant: Variant, nets: Networks) -> dict[str, torch.Tensor]:
    """What an engines directory keeps beside its graphs (`graphs.constant_names`), fp32 CPU."""
    g = nets.generator
    sources = {
        "empty_clip_feat": lambda: g.empty_clip_feat,
        "empty_sync_feat": lambda: g.empty_sync_feat,
        "mixture_weight": lambda: g.mixture_weight,
        "latent_mean": lambda: g.latent_mean,
        "latent_std": lambda: g.latent_std,
    }
    return {
        name: sources[name]().detach().float().cpu().contiguous()
        for name in constant_names(variant)
    }


def graph_inputs(name: str, variant: Variant, nets: Networks, args: tuple) -> dict:
    """The graph inputs the ONNX backends feed for torch-backend-form `args`."""
    inputs = graph_inputs_of(variant, graph_constants(variant, nets), torch.device("cpu"))
    if name == "video_select":
        args = args[:3]  # `prompts` only expands a prompt-independent result
    return getattr(inputs, name)(*args)


# -- export ---------------------------------------------------------------------------------


@dataclass
class Exported:
    path: Path
    sha256: str
    seconds: float
    quantized: dict


def export_part(
    name: str, variant: Variant, nets: Networks, path: Path, precision: str
) -> Exported:
    """Trace part `name` in `plan.graph_precision(name, precision)` to `path` (weights in the
    file, or beside it as external data past protobuf's 2 GiB limit); an int8 part is traced in
    fp32 and then quantised."""
    graph_precision = plan.graph_precision(name, precision)
    dtype = DTYPES[io_precision(graph_precision)]
    module = part_module(name, variant, nets)
    if dtype != torch.float32:  # a cast copy: the fp32 networks stay the checks' reference
        module = copy.deepcopy(module).to(dtype)
    inputs, _ = plan.part_io(name, variant)
    feeds = graph_inputs(name, variant, nets, sample_args(name, variant, EXPORT_SIZES, seed=0))
    feeds = {s.name: _cast(feeds[s.name], s.dtype, dtype) for s in inputs}
    dims = export_dims()
    dynamic = {
        s.name: {i: dims[n] for i, n in enumerate(s.shape) if isinstance(n, str)} or None
        for s in inputs
    }
    _, outputs = plan.part_io(name, variant)
    t0 = time.perf_counter()
    with torch.no_grad(), _eager_attention(module), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation chatter of the exporter's dependencies
        program = torch.onnx.export(
            module,
            kwargs=feeds,
            dynamic_shapes=dynamic,
            input_names=list(feeds),
            output_names=[s.name for s in outputs],
            opset_version=OPSET,
            dynamo=True,
            optimize=False,
            verbose=False,
        )
    clean_graph(program.model)
    big = sum(t.numel() * t.element_size() for t in module.state_dict().values()) > 1.8 * 2**30
    _check_dynamic(program.model, inputs)
    path.unlink(missing_ok=True)
    program.save(str(path), external_data=big)
    quantized = quantize_int8(path, big) if graph_precision == "int8" else {}
    return Exported(path, sha256_file(path), time.perf_counter() - t0, quantized)


def quantize_int8(path: Path, external_data: bool = False) -> dict:
    """Quantise the linear layers of the fp32 graph at `path` in place (`plan.INT8_OPS` nodes
    with a constant weight: int8 weights, uint8 activations scaled per call); what changed, for
    the manifest. ONNX Runtime fuses each quantise + integer MatMul + rescale into one kernel
    when it loads the graph."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = onnx.load(str(path))  # external data included; the quantised graph replaces it
    before = _count_ops(fp32, plan.INT8_OPS)
    logger = logging.getLogger()  # the quantiser warns about pre-processing on the root logger
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            fp32,
            path,
            op_types_to_quantize=list(plan.INT8_OPS),
            per_channel=plan.INT8_PER_CHANNEL,
            weight_type=QuantType.QInt8,
            use_external_data_format=external_data,
        )
    finally:
        logger.setLevel(level)
    after = onnx.load(str(path), load_external_data=False)
    left = _count_ops(after, plan.INT8_OPS)
    return {
        "ops": list(plan.INT8_OPS),
        "weights": "int8, symmetric, " + ("per channel" if plan.INT8_PER_CHANNEL else "per tensor"),
        "activations": "uint8, per tensor, scaled at every call",
        "quantized_nodes": before - left,
        "float_nodes": left,  # MatMuls of two activations (attention), kept fp32
    }


def _count_ops(model, ops: tuple[str, ...]) -> int:
    return sum(n.op_type in ops for n in model.graph.node)


def io_entries(name: str, variant: Variant, precision: str) -> dict[str, list[dict]]:
    """The manifest's description of part `name`'s graph inputs and outputs: name, dtype (as in
    the graph) and shape (ints and dim names)."""
    gp = io_precision(plan.graph_precision(name, precision))
    inputs, outputs = plan.part_io(name, variant)
    return {
        key: [
            {"name": s.name, "dtype": plan.resolve_dtype(s, gp), "shape": list(s.shape)}
            for s in specs
        ]
        for key, specs in (("inputs", inputs), ("outputs", outputs))
    }


def _check_dynamic(model, inputs: list[plan.TensorSpec]) -> None:
    """torch.onnx falls back to fixed sizes where torch.export cannot keep a dim dynamic; a
    graph that silently lost a dynamic axis is an export bug, not a result."""
    graph_inputs = {v.name: v for v in model.graph.inputs}
    for spec in inputs:
        got = graph_inputs[spec.name].shape
        for axis, want in enumerate(spec.shape):
            if isinstance(want, str) and isinstance(got[axis], int):
                raise RuntimeError(
                    f"export fixed {spec.name} axis {axis} ({want}) to {got[axis]}; the part's "
                    "code makes torch.export specialise it"
                )


def clean_graph(model) -> None:
    """Fold constants (e.g. the vocoder's filter taps and exp(alpha)), drop dead nodes, share
    equal initializers and subexpressions, and make every constant an initializer (TensorRT
    wants reduce/squeeze axes as initializers). The exporter's own optimize also runs pattern
    rewrites, which take minutes on the vocoder's thousands of nodes and change nothing here."""
    import onnx_ir.passes.common as passes
    import onnxscript.optimizer

    onnxscript.optimizer.fold_constants(model)
    passes.RemoveUnusedNodesPass()(model)
    passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    passes.DeduplicateInitializersPass()(model)
    passes.CommonSubexpressionEliminationPass()(model)


def _cast(t: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if kind == "float" else t


def export_dims() -> dict[str, torch.export.Dim]:
    # Lower bounds of 2: torch.export would specialise a size seen as 1 or 0 (the graphs still
    # hold for 1, which the checks run).
    prompts = torch.export.Dim("prompts", min=2, max=1024)
    segments = torch.export.Dim("segments", min=2, max=1024)
    return {
        "prompts": prompts,
        "2*prompts": 2 * prompts,
        "tokens": torch.export.Dim("tokens", min=2, max=4096),
        "frames": torch.export.Dim("frames", min=24, max=8192),
        "segments": segments,
        "8*segments": 8 * segments,
        "latent": torch.export.Dim("latent", min=2, max=8192),
        "clip_frames": torch.export.Dim("clip_frames", min=2, max=4096),
        # A mixture's mel of any length (the graph computes mel_frames // 2 latents).
        "mel_frames": torch.export.Dim("mel_frames", min=4, max=16384),
    }


class _eager_attention:
    """Trace HF T5 with its eager attention (see the module doc), restoring the setting after."""

    def __init__(self, module: nn.Module):
        self.model = module.model if isinstance(module, T5Part) else None
        self.saved = None

    def __enter__(self):
        if self.model is not None:
            self.saved = self.model.config._attn_implementation
            self.model.set_attn_implementation("eager")

    def __exit__(self, *exc):
        if self.saved is not None:
            self.model.set_attn_implementation(self.saved)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


# -- check ----------------------------------------------------------------------------------


def errors(actual: torch.Tensor, expected: torch.Tensor) -> dict[str, float]:
    """Relative L2 and max abs error of `actual` against `expected`, in float64."""
    a, b = actual.detach().double().cpu(), expected.detach().double().cpu()
    if a.shape != b.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != {tuple(b.shape)}")
    finite = bool(torch.isfinite(a).all())
    return {
        "rel_l2": ((a - b).norm() / b.norm().clamp_min(1e-30)).item() if finite else float("inf"),
        "max_abs": (a - b).abs().max().item() if finite else float("inf"),
    }


def _outputs(result) -> list[torch.Tensor]:
    if isinstance(result, dict):
        return list(result.values())
    return list(result) if isinstance(result, tuple) else [result]


def check_parts(
    names: list[str],
    variant: Variant,
    nets: Networks,
    ort_parts: OrtParts,
    sizes: tuple[Sizes, ...] = CHECK_SIZES,
) -> dict[str, dict[str, dict[str, float]]]:
    """Each part through ONNX Runtime (`ort_parts`) and through the fp32 torch backend on the
    same fresh random arguments, at sizes other than the traced ones (one prompt among them):
    part -> output -> worst {rel_l2, max_abs}."""
    torch_parts = torch_parts_class(variant)(variant, nets, torch.device("cpu"), torch.float32)
    report: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        _, outputs = plan.part_io(name, variant)
        worst: dict[str, dict[str, float]] = {}
        for i, s in enumerate(sizes):
            args = sample_args(name, variant, s, seed=100 + i)
            if name == "dit_step":  # the torch step takes the lengths of its last conditions
                set_lengths(nets, variant, s)
            expected = _outputs(getattr(torch_parts, name)(*args))
            actual = _outputs(getattr(ort_parts, name)(*args))
            for spec, a, e in zip(outputs, actual, expected, strict=True):
                err = errors(a, e)
                if spec.name not in worst or err["rel_l2"] > worst[spec.name]["rel_l2"]:
                    worst[spec.name] = err
        report[name] = worst
    return report


def set_lengths(nets: Networks, variant: Variant, sizes: Sizes) -> None:
    """Set the torch generator's sequence lengths to those of `sizes`, as the torch backend's
    `dit_conditions` does before its `dit_step` runs."""
    d = plan.dims(variant, sizes.prompts, sizes.tokens, sizes.duration)
    if variant.flowley:
        nets.generator.update_seq_lengths(d["latent"], d["clip_frames"])
    else:
        nets.generator.update_seq_lengths(d["latent"], d["clip_frames"], d["8*segments"])


def model_hash(nets: Networks) -> str:
    """sha256 over every weight of the variant as loaded (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    modules = {
        "generator": nets.generator,
        "video_encoder": nets.video_encoder,
        "vae": nets.vae,
        "vocoder": nets.vocoder,
        "clip_text": nets.clip_text,
        "clip_image": nets.clip_image,
        "t5": nets.t5.model if nets.t5 is not None else None,
    }
    for role, module in modules.items():
        if module is None:
            continue
        for key, t in sorted(module.state_dict().items()):
            shape = t.shape
            t = t.detach().cpu().contiguous().reshape(-1)
            h.update(f"{role}.{key}:{t.dtype}:{tuple(shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
