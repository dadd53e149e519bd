"""The TensorRT decisions that need no TensorRT: shapes, profiles, precisions, cache keys,
binding plans, and the readiness check of ONNX graphs against the parser's operator list."""

import onnx
import pytest
from onnx import TensorProto, helper
from selva_rt.export import plan
from selva_rt.runtime.backends import graphs
from selva_rt.runtime.variants import MIN_DURATION, VARIANTS, get_variant

SELVA = get_variant("selva-small-16k")
TINY = get_variant("tiny")
MMAUDIO_44K = get_variant("mmaudio-large-44k-v2")


def test_parts_per_variant():
    assert plan.part_names(SELVA) == (
        "t5",
        "clip_text",
        "video_trunk",
        "video_select",
        "dit_conditions",
        "dit_step",
        "decoder",
    )
    assert "clip_image" in plan.part_names(MMAUDIO_44K) and "t5" not in plan.part_names(MMAUDIO_44K)


def test_shapes_follow_the_duration_as_in_the_spec():
    """spec §1.4 at 8 s, 16 kHz: latent 250, clip 64, 24 segments, sync 192, 128000 samples."""
    d = plan.dims(SELVA, prompts=2, tokens=12, duration=8.0)
    io = {s.name: s.shape for specs in plan.part_io("dit_step", SELVA, d) for s in specs}
    assert io["latent"] == (2, 250, 20) and io["clip_f"] == (4, 64, 448)
    assert io["latent_rot"] == (1, 250, 32, 2, 2) and io["clip_rot"] == (1, 64, 32, 2, 2)
    assert plan.part_io("video_trunk", SELVA, d)[0][0].shape == (1, 200, 3, 224, 224)
    assert plan.part_io("video_trunk", SELVA, d)[1][0].shape == (24, 1568, 768)
    assert plan.part_io("video_select", SELVA, d)[1][0].shape == (2, 192, 768)
    mel, wav = plan.part_io("decoder", SELVA, d)[1]
    assert mel.shape == (2, 80, 500) and wav.shape == (2, 128000)
    d44 = plan.dims(MMAUDIO_44K, 1, 1, 8.0)
    assert plan.part_io("decoder", MMAUDIO_44K, d44)[1][1].shape == (1, 353280)
    assert plan.part_io("video_select", MMAUDIO_44K, d44)[1][0].shape == (1, 192, 768)


def test_symbolic_shapes_name_every_dynamic_axis():
    for name in plan.PARTS:
        inputs, outputs = plan.part_io(name, MMAUDIO_44K if name == "clip_image" else SELVA)
        for spec in inputs + outputs:
            assert all(isinstance(n, int) or n in plan.SYMBOLS for n in spec.shape), spec
    (latent,) = plan.part_io("decoder", SELVA)[0]
    assert latent.shape == ("prompts", "latent", 20)


def test_precision_choices():
    for part in plan.PARTS:
        assert plan.graph_precision(part, "fp32") == "fp32"
        assert plan.graph_precision(part, "bf16") == "bf16"
    kept = {p for p in plan.PARTS if plan.graph_precision(p, "fp16") == "fp32"}
    assert kept == {"t5", "decoder"}
    quantised = {p for p in plan.PARTS if plan.graph_precision(p, "int8") == "int8"}
    assert quantised == set(plan.INT8_PARTS) == {"video_trunk", "video_select"}
    assert {plan.graph_precision(p, "int8") for p in plan.PARTS} == {"int8", "fp32"}
    with pytest.raises(ValueError):
        plan.graph_precision("dit_step", "int4")


def io_types(part: str, precision: str, prompts: int, tokens: int, duration: float) -> dict:
    inputs, outputs = plan.part_io(part, SELVA, plan.dims(SELVA, prompts, tokens, duration))
    gp = plan.graph_precision(part, precision)
    return {s.name: (plan.resolve_dtype(s, gp), tuple(s.shape)) for s in inputs + outputs}


def test_graph_io_dtypes_and_shapes():
    step = io_types("dit_step", "bf16", 1, 8, 8.0)
    assert step["latent"][0] == "bfloat16"
    assert step["latent_rot"][0] == "float32"  # RoPE tables stay fp32, as the reference
    assert step["cfg"] == ("float32", ())
    assert step["velocity"] == ("bfloat16", (1, 250, 20))
    assert io_types("decoder", "fp16", 3, 8, 10.0)["waveform"] == ("float32", (3, 160256))
    select = io_types("video_select", "fp16", 2, 9, 8.0)
    assert select["t5_mask"][0] == "bool" and select["t5_features"][1] == (2, 9, 768)


@pytest.mark.parametrize("name", sorted(n for n, v in VARIANTS.items() if not v.vatt))
def test_profiles_cover_one_prompt_to_max_batch_and_min_to_max_duration(name):
    # VATT builds ONNX graphs only, no TensorRT engines (export/README.md)
    variant = get_variant(name)
    for part in plan.part_names(variant):
        prof = plan.profile(part, variant, max_batch=4, max_duration=10.0)
        assert set(prof) == {s.name for s in plan.part_io(part, variant)[0]}
        for lo, opt, hi in prof.values():
            assert len(lo) == len(opt) == len(hi)
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)), (part, lo, hi)
    step = plan.profile("dit_step", variant, max_batch=4, max_duration=10.0)
    seq10, seq_min = variant.sequence_lengths(10.0), variant.sequence_lengths(MIN_DURATION)
    assert step["latent"] == (
        (1, seq_min.latent, variant.generator.latent_dim),
        (1, variant.sequence_lengths(8.0).latent, variant.generator.latent_dim),
        (4, seq10.latent, variant.generator.latent_dim),
    )
    conditions = "visual_f" if variant.flowley else "clip_f"
    assert step[conditions][2][0] == 8  # two rows (conditional, unconditional) per prompt
    if variant.separation:  # one row per prompt, read by both branches
        assert step["mixture_bias"][2][:2] == (4, seq10.latent)
        mel = plan.profile("mixture_encoder", variant)["mel"]
        assert (mel[0][2], mel[2][2]) == (2 * seq_min.latent, 2 * seq10.latent)
    if variant.flowley:  # its tokenizer pads every prompt to one length
        pad = variant.t5.pad_to
        assert {s[1] for s in plan.profile("t5", variant)["input_ids"]} == {pad}
        bias = plan.profile("dit_step", variant)["psca_bias"]
        assert bias[2] == (variant.generator.single_depth, seq10.latent, seq10.clip)
    else:
        trunk = plan.profile("video_trunk", variant)["frames"]
        assert (trunk[0][1], trunk[2][1]) == (16, 250)  # 0.64 s to 10 s at 25 fps


def test_parts_of_separation_and_flowley():
    assert plan.part_names(get_variant("mmaudiosep-large-44k")) == (
        "clip_text",
        "clip_image",
        "video_trunk",
        "video_select",
        "mixture_encoder",
        "dit_conditions",
        "dit_step",
        "decoder",
    )
    assert plan.part_names(get_variant("flowley")) == (
        "t5",
        "clip_image",
        "dit_conditions",
        "dit_step",
        "decoder",
    )
    d = plan.dims(get_variant("flowley"), prompts=2, tokens=77, duration=8.0)
    frames = plan.part_io("clip_image", get_variant("flowley"), d)[0][0]
    assert frames.shape == (64, 3, 224, 224)  # DFN2B-CLIP ViT-L/14 frames
    io = {
        s.name: s
        for specs in plan.part_io("dit_conditions", get_variant("flowley"), d)
        for s in specs
    }
    assert io["text_mask"].dtype == "bool" and io["text_len"].shape == (4,)


def test_profile_rejects_a_duration_below_one_segment():
    with pytest.raises(ValueError):
        plan.profile("dit_step", SELVA, max_duration=0.5)


def test_engine_key_changes_with_everything_that_invalidates_an_engine():
    base = dict(
        model_hash="ab" * 32,
        part="dit_step",
        precision="bf16",
        onnx_sha256="cd" * 32,
        shapes=plan.profile("dit_step", SELVA),
        gpu="NVIDIA H100 80GB HBM3",
        compute_capability=(9, 0),
        trt_version="10.15.1",
    )
    key = graphs.engine_key(**base)
    assert key == graphs.engine_key(**base) and key.startswith("dit_step-bf16-")
    changes = dict(
        model_hash="ef" * 32,
        precision="fp16",
        onnx_sha256="00" * 32,
        shapes=plan.profile("dit_step", SELVA, max_batch=8),
        gpu="NVIDIA H200",
        compute_capability=(8, 9),
        trt_version="10.16.0",
    )
    for field, value in changes.items():
        assert graphs.engine_key(**{**base, field: value}) != key, field
    folder = graphs.engine_dir_name("NVIDIA H100 80GB HBM3", (9, 0), "10.15.1")
    assert folder == "trt-10.15.1-sm90-nvidia-h100-80gb-hbm3"


# -- TensorRT readiness of ONNX graphs ----------------------------------------------------------


def graph(nodes, opset=18, initializers=(), inputs=None, outputs=None):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])]
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_ready_graph_has_no_problems():
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    model = graph(
        [
            helper.make_node("ReduceMean", ["x", "axes"], ["m"]),
            helper.make_node("Sub", ["x", "m"], ["y"]),
        ],
        initializers=[axes],
    )
    onnx.checker.check_model(model)
    assert plan.trt_problems(model) == []


@pytest.mark.parametrize(
    "model, problem",
    [
        (graph([helper.make_node("Relu", ["x"], ["y"])], opset=25), "opset 25"),
        (graph([helper.make_node("NonZero", ["x"], ["y"])]), "data-dependent"),
        (graph([helper.make_node("Unique", ["x"], ["y"])]), "not supported"),
        (graph([helper.make_node("StringNormalizer", ["x"], ["y"])]), "not supported"),
        (graph([helper.make_node("Loop", ["x"], ["y"])]), "control flow"),
        (graph([helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")]), "domain"),
        (
            graph(
                [
                    helper.make_node("Shape", ["x"], ["s"]),
                    helper.make_node("ReduceSum", ["x", "s"], ["y"]),
                ]
            ),
            "computed tensor",
        ),
        (
            graph(
                [helper.make_node("Relu", ["x"], ["y"])],
                inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
            ),
            "no static size",
        ),
    ],
)
def test_unready_graphs_are_caught(model, problem):
    problems = plan.trt_problems(model)
    assert any(problem in p for p in problems), problems


def test_operator_list_is_the_documented_one():
    """Spot checks against onnx-tensorrt docs/operators.md (TensorRT 10.15)."""
    for op in ("LayerNormalization", "Attention", "RMSNormalization", "GatherND", "Selu", "Erf"):
        assert op in plan.TRT_ONNX_OPS
    for op in ("Unique", "Compress", "StringNormalizer", "DFT", "BitShift", "AffineGrid"):
        assert op not in plan.TRT_ONNX_OPS
    assert plan.TRT_OPSET_RANGE == (9, 24)
