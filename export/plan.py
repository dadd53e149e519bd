"""Every export and TensorRT decision that needs neither torch tracing nor TensorRT itself.

Plain functions over the variant table: the parts' graph inputs and outputs with their symbolic
and concrete shapes, the precision each part's graph is exported in, TensorRT optimization
profiles, engine cache keys, output binding plans, and the TensorRT-readiness check of an ONNX
graph against the operators TensorRT's ONNX parser documents.
"""

from dataclasses import dataclass

from ..runtime.backends.graphs import PARTS as PARTS  # the parts a build may hold
from ..runtime.backends.graphs import io_precision
from ..runtime.backends.graphs import part_names as part_names  # the parts of a variant
from ..runtime.variants import (
    MIN_DURATION,
    SEGMENT_TOKENS,
    SYNC_SIZE,
    T5_MAX_TOKENS,
    Variant,
    sequence_lengths,
)

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEFAULT_MAX_DURATION = 10.0
DEFAULT_MAX_BATCH = 4
DEFAULT_OPT_DURATION = 8.0  # the trained duration
OPT_TOKENS = 16


# -- precision --------------------------------------------------------------------------------

# Parts kept in fp32 in an fp16 build: fp16's range (max 65504) is the problem, not its precision.
# Flan-T5's feed-forward activations overflow fp16 (the reason transformers keeps `wo` in fp32),
# and the vocoder's unbounded residual stack and SnakeBeta's 1 / (exp(beta) + 1e-9) (1e-9 is 0 in
# fp16) have no headroom guarantee. bf16 has fp32's range and is what the reference runs.
FP16_KEEP_FP32 = {"t5": "Flan-T5 activations overflow fp16", "decoder": "vocoder overflow"}


# int8 (ONNX Runtime, CPU): dynamic quantisation of the linear layers, the MatMul/Gemm nodes
# whose weight is a constant: weights int8 (symmetric, per tensor), activations uint8 per tensor,
# scaled at every call; everything else, inputs and outputs included, stays fp32. Chosen by
# measurement on full-size selva-small-16k weights, 2 threads, against ONNX Runtime fp32 on
# identical inputs (benchmarks/results/cpu-parts-selva-small-16k.md):
#   video_trunk   2.2x faster, rel L2 3.3e-2   quantised (the clip-length part, 8.9 TFLOP / 8 s)
#   video_select  1.5x faster, rel L2 2.9e-2   quantised
#   dit_step      1.13x faster, rel L2 4.7e-2 (1.0e-1 on the check's random conditions), read
#                 25 times per generation: kept fp32
#   t5, clip_text 2.3x, 3.0x faster (tens of ms, once per prompt), rel L2 5.6e-2, 3.9e-2: fp32
#   decoder       convolutions, no linear layer (ConvInteger cannot take its computed weights)
#   dit_conditions once per generation: fp32
# Per channel measured a lower error (trunk 2.5e-2) but ran the trunk 1.7x slower.
INT8_PARTS = ("video_trunk", "video_select")
INT8_OPS = ("MatMul", "Gemm")
INT8_PER_CHANNEL = False


def graph_precision(part: str, precision: str) -> str:
    """The precision part `part`'s graph is exported (and its TensorRT engine typed) in: "int8"
    for a quantised part of an int8 build (its float tensors are fp32: `io_precision`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}")
    if precision == "fp16" and part in FP16_KEEP_FP32:
        return "fp32"
    if precision == "int8" and part not in INT8_PARTS:
        return "fp32"
    return precision


# -- shapes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: dtype is "float" (the graph's precision), "float32" (always
    fp32: RoPE tables and cfg), "int64" or "bool"; shape entries are ints or dim names."""

    name: str
    dtype: str
    shape: tuple


SYMBOLS = (
    "prompts",
    "2*prompts",
    "tokens",
    "frames",
    "segments",
    "8*segments",
    "latent",
    "clip_frames",
    "mel_frames",
    "samples",
)


def dims(variant: Variant, prompts: int, tokens: int, duration: float) -> dict[str, int]:
    """Concrete sizes of every dim name for P prompts of `tokens` T5 tokens over `duration` s."""
    seq = sequence_lengths(duration, variant.audio)
    return {
        "prompts": prompts,
        "2*prompts": 2 * prompts,
        "tokens": tokens,
        "frames": seq.sync_frames,
        "segments": seq.sync_segments,
        "8*segments": seq.sync,
        "latent": seq.latent,
        "clip_frames": seq.clip,
        "mel_frames": 2 * seq.latent,
        "samples": seq.audio_samples,
    }


def symbolic_dims() -> dict[str, str]:
    return {s: s for s in SYMBOLS}


def part_io(part: str, variant: Variant, d: dict | None = None):
    """(inputs, outputs) of part `part` as TensorSpec lists, shapes resolved with `d` (dim name ->
    size; symbolic names when None)."""
    d = symbolic_dims() if d is None else d
    T = TensorSpec
    if part in _SHARED_IO:
        return _SHARED_IO[part](variant, d)
    if variant.flowley:
        return _flowley_io(part, variant, d)
    g, enc = variant.generator, variant.video_encoder
    H, P, P2 = g.hidden_dim, d["prompts"], d["2*prompts"]
    head_dim = H // g.num_heads
    cond = [
        T("clip_f", "float", (P2, d["clip_frames"], H)),
        T("sync_f", "float", (P2, d["latent"], H)),
        T("text_f", "float", (P2, g.text_seq_len, H)),
        T("clip_f_c", "float", (P2, H)),
        T("text_f_c", "float", (P2, H)),
    ]
    if part == "clip_text":
        clip = variant.clip
        return (
            [T("tokens", "int64", (P, clip.context_length))],
            [T("clip_text_features", "float", (P, clip.context_length, clip.text_width))],
        )
    if part == "video_trunk":
        return (
            [T("frames", "float", (1, d["frames"], 3, SYNC_SIZE, SYNC_SIZE))],
            [T("trunk_tokens", "float", (d["segments"], SEGMENT_TOKENS, enc.embed_dim))],
        )
    if part == "video_select":
        inputs = [T("trunk_tokens", "float", (d["segments"], SEGMENT_TOKENS, enc.embed_dim))]
        rows = P
        if variant.selective:
            inputs += [
                T("t5_features", "float", (P, d["tokens"], enc.text_dim)),
                T("t5_mask", "bool", (P, d["tokens"])),
            ]
        else:
            rows = 1  # the pooled features do not depend on a prompt
        return inputs, [T("sync_features", "float", (rows, d["8*segments"], enc.embed_dim))]
    if part == "dit_conditions":
        return (
            [
                T("clip_features", "float", (P, d["clip_frames"], g.clip_dim)),
                T("sync_features", "float", (P, d["8*segments"], g.sync_dim)),
                T("text_features", "float", (P, g.text_seq_len, g.text_dim)),
                T("negative_text_features", "float", (P, g.text_seq_len, g.text_dim)),
                T("sync_index", "int64", (d["latent"],)),
            ],
            cond,
        )
    if part == "mixture_encoder":  # the host makes the mel (graphs.GraphInputs.mixture_encoder)
        return (
            [T("mel", "float", (1, variant.vae.data_dim, d["mel_frames"]))],
            [
                T("mixture_mean", "float", (1, g.latent_dim, d["latent"])),
                T("mixture_std", "float", (1, g.latent_dim, d["latent"])),
            ],
        )
    if part == "dit_step":
        # Separation: the mixture's share of the input convolution, P rows for both branches.
        mixture = [T("mixture_bias", "float", (P, d["latent"], H))] if variant.separation else []
        return (
            [
                T("latent", "float", (P, d["latent"], g.latent_dim)),
                T("t", "float", (P,)),
                *cond,
                T("latent_rot", "float32", (1, d["latent"], head_dim // 2, 2, 2)),
                T("clip_rot", "float32", (1, d["clip_frames"], head_dim // 2, 2, 2)),
                T("cfg", "float32", ()),
                *mixture,
            ],
            [T("velocity", "float", (P, d["latent"], g.latent_dim))],
        )
    raise ValueError(f"{variant.name} has no part {part!r}")


def _t5_io(variant: Variant, d: dict):
    P, tokens, T = d["prompts"], d["tokens"], TensorSpec
    return (
        [T("input_ids", "int64", (P, tokens)), T("attention_mask", "int64", (P, tokens))],
        [T("t5_features", "float", (P, tokens, variant.t5.d_model))],
    )


def _clip_image_io(variant: Variant, d: dict):
    Nc, S, T = d["clip_frames"], variant.clip.frame_size, TensorSpec
    return (
        [T("frames", "float", (Nc, 3, S, S))],
        [T("clip_image_features", "float", (Nc, variant.clip.embed_dim))],
    )


def _decoder_io(variant: Variant, d: dict):
    P, T = d["prompts"], TensorSpec
    return (
        [T("latent", "float", (P, d["latent"], variant.generator.latent_dim))],
        [
            T("mel", "float", (P, variant.vae.data_dim, d["mel_frames"])),
            T("waveform", "float", (P, d["samples"])),
        ],
    )


# The parts every flow family has in the same form.
_SHARED_IO = {"t5": _t5_io, "clip_image": _clip_image_io, "decoder": _decoder_io}


def _flowley_io(part: str, variant: Variant, d: dict):
    """Flowley's conditions and step. Conditions are [cond; uncond] rows (text_len: the real
    tokens of each row's prompt, from the mask); the step's RoPE tables and its N PSCA biases
    are fp32 inputs of one duration, made on the host."""
    g, T = variant.generator, TensorSpec
    P, P2, N, Nv = d["prompts"], d["2*prompts"], d["latent"], d["clip_frames"]
    H, Lt = g.hidden_dim, g.text_seq_len
    multi, single = H // g.multi_heads // 2, H // g.single_heads // 2
    cond = [
        T("text_f", "float", (P2, Lt, H)),
        T("visual_f", "float", (P2, Nv, H)),
        T("global_c", "float", (P2, H)),
        T("text_len", "int64", (P2,)),
    ]
    if part == "dit_conditions":
        return (
            [
                T("clip_features", "float", (P, Nv, g.video_dim)),
                T("text_features", "float", (P, Lt, g.text_dim)),
                T("text_mask", "bool", (P, Lt)),
            ],
            cond,
        )
    if part == "dit_step":
        return (
            [
                T("latent", "float", (P, N, g.latent_dim)),
                T("t", "float", (P,)),
                *cond,
                T("multi_audio_rot", "float32", (1, N, multi, 2, 2)),
                T("multi_visual_rot", "float32", (1, Nv, multi, 2, 2)),
                T("single_audio_rot", "float32", (1, N, single, 2, 2)),
                T("psca_bias", "float32", (g.single_depth, N, Nv)),
                T("cfg", "float32", ()),
            ],
            [T("velocity", "float", (P, N, g.latent_dim))],
        )
    raise ValueError(f"{variant.name} has no part {part!r}")


def resolve_dtype(spec: TensorSpec, precision: str) -> str:
    """The concrete dtype name of a TensorSpec in a graph of `precision` (fp32/fp16/bf16/int8)."""
    if spec.dtype == "float":
        return {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[io_precision(precision)]
    return spec.dtype


# -- TensorRT optimization profiles -------------------------------------------------------------


def profile(
    part: str,
    variant: Variant,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_duration: float = DEFAULT_MAX_DURATION,
    max_tokens: int = T5_MAX_TOKENS,
) -> dict[str, tuple[tuple, tuple, tuple]]:
    """TensorRT profile of part `part`: input name -> (min, opt, max) shapes, for 1..max_batch
    prompts, 1..max_tokens T5 tokens and MIN_DURATION..max_duration seconds. opt is one prompt
    of OPT_TOKENS tokens at the trained 8 s (or max_duration when shorter). A tokenizer that
    pads to a fixed length (Flowley's, `T5Config.pad_to`) gives that many tokens at every
    corner."""
    if not MIN_DURATION <= max_duration:
        raise ValueError(f"max duration {max_duration} s is below {MIN_DURATION} s")
    opt_duration = min(DEFAULT_OPT_DURATION, max_duration)
    tokens = (1, min(OPT_TOKENS, max_tokens), max_tokens)
    if variant.t5 is not None and variant.t5.pad_to:
        tokens = (variant.t5.pad_to,) * 3
    corners = [
        part_io(part, variant, dims(variant, 1, tokens[0], MIN_DURATION))[0],
        part_io(part, variant, dims(variant, 1, tokens[1], opt_duration))[0],
        part_io(part, variant, dims(variant, max_batch, tokens[2], max_duration))[0],
    ]
    return {lo.name: (lo.shape, opt.shape, hi.shape) for lo, opt, hi in zip(*corners, strict=True)}


# -- engine cache -------------------------------------------------------------------------------

TIMING_CACHE = "timing.cache"  # one per engine folder (graphs.engine_dir_name), shared by all parts


# -- TensorRT readiness -------------------------------------------------------------------------

# The operators TensorRT's ONNX parser supports, with the opset range it takes: onnx-tensorrt
# docs/operators.md for TensorRT 10.15 ("supports operators in the inclusive range of opset 9 to
# opset 24"; every row marked Y). github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md
TRT_OPSET_RANGE = (9, 24)
TRT_ONNX_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
    BatchNormalization BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape
    Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum
    Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
    GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
    GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If
    ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual
    Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
    MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
    ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
    ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence
    RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter
    ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
    Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter ThresholdedRelu Tile
    TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)
# Output shapes that depend on tensor values, not shapes: TensorRT handles some of them, but
# they defeat static per-duration buffers and CUDA graphs, so the graphs must have none.
DATA_DEPENDENT_OPS = frozenset({"NonZero", "Unique", "Compress", "NonMaxSuppression"})
CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})
# Inputs the parser needs as build-time constants (the docs' Restrictions column).
CONSTANT_INPUTS = {
    **{
        op: 1
        for op in (
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceMax",
            "ReduceMean",
            "ReduceMin",
            "ReduceProd",
            "ReduceSum",
            "ReduceSumSquare",
        )
    },
    "Squeeze": 1,
    "Unsqueeze": 1,
    "CumSum": 1,
    "TopK": 1,
    "OneHot": 1,
}


def trt_problems(model) -> list[str]:
    """Why TensorRT's ONNX parser would reject `model` (an onnx.ModelProto) or build it with
    data-dependent shapes; empty when the graph is TensorRT-ready."""
    problems = []
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    opset = opsets.get("ai.onnx")
    lo, hi = TRT_OPSET_RANGE
    if opset is None or not lo <= opset <= hi:
        problems.append(f"opset {opset} is outside TensorRT's {lo}..{hi}")
    if len(model.functions):
        problems.append(f"{len(model.functions)} local functions (not inlined)")
    graph = model.graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    for node in graph.node:
        where = f"{node.op_type} node {node.name!r}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where} is in domain {node.domain!r}")
        elif node.op_type not in TRT_ONNX_OPS:
            problems.append(f"{where} is not supported by TensorRT's ONNX parser")
        if node.op_type in DATA_DEPENDENT_OPS:
            problems.append(f"{where} has a data-dependent output shape")
        if node.op_type in CONTROL_FLOW_OPS:
            problems.append(f"{where} is control flow")
        index = CONSTANT_INPUTS.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index]:
            if node.input[index] not in constants:
                problems.append(f"{where} takes input {index} from a computed tensor")
    for value in [*graph.input, *graph.output]:
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            if not (dim.HasField("dim_value") or dim.HasField("dim_param")):
                problems.append(f"{value.name} dim {i} has no static size or symbolic name")
    return problems
