"""Separation (tiny-sep) and Flowley (tiny-flowley) on the ONNX Runtime backend: `selva-rt export`
builds every part of each, every graph is TensorRT-ready, each graph matches the torch backend's
part on fresh inputs (run here, not read from the build's own check), and `separate` /
`generate` through the graphs give the torch backend's stems (fp32, same seed) within the
tolerance tests/test_ort_backend.py holds the tiny variant to."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile
import torch
from cligenerate import cli_generate
from selva_rt.export import onnx_export, plan
from selva_rt.runtime.backends import load_parts, torch_parts_class
from selva_rt.runtime.backends.graphs import CONSTANTS, constant_names
from selva_rt.runtime.backends.mixed import MixedParts
from selva_rt.runtime.backends.ort_parts import OrtParts
from selva_rt.runtime.backends.torch_parts import TorchParts
from selva_rt.runtime.errors import UsageError
from selva_rt.runtime.families import family_of
from selva_rt.runtime.families.flow import Tokenizers
from selva_rt.runtime.models.networks import Networks, build_networks
from selva_rt.runtime.pipeline import Pipeline
from selva_rt.runtime.variants import TINY_FLOWLEY, TINY_SEP, Variant

torch.set_num_threads(2)

RTOL = 1e-4  # fp32 graphs against the fp32 torch backend, as for the tiny variant
VARIANTS = {"tiny-sep": TINY_SEP, "tiny-flowley": TINY_FLOWLEY}
ENGINES = {"tiny-sep": "tiny_sep_engines", "tiny-flowley": "tiny_flowley_engines"}
# Sizes neither traced at export nor used by the build's own check. Flowley's tokenizer pads
# every prompt to 77 tokens, so its T5 graph runs at that length.
SIZES = {
    "tiny-sep": onnx_export.Sizes(prompts=2, tokens=9, duration=1.28),
    "tiny-flowley": onnx_export.Sizes(prompts=2, tokens=77, duration=1.28),
}
PARTS = [(name, part) for name, v in VARIANTS.items() for part in plan.part_names(v)]


@dataclass
class Built:
    variant: Variant
    engines: Path
    ort: OrtParts
    torch: TorchParts
    nets: Networks


@pytest.fixture(scope="module")
def built(request):
    """name -> the session's build of that variant, its ONNX Runtime parts and the fp32 torch
    parts over the same (random, seeded) networks; each made on first use."""
    cache = {}

    def get(name: str) -> Built:
        if name not in cache:
            variant, engines = VARIANTS[name], request.getfixturevalue(ENGINES[name])
            nets = build_networks(variant, {})
            parts = torch_parts_class(variant)(variant, nets, torch.device("cpu"), torch.float32)
            ort = OrtParts.load(engines, variant, threads=2)
            cache[name] = Built(variant, engines, ort, parts, nets)
        return cache[name]

    return get


def close(actual, expected, rtol=RTOL):
    actual, expected = onnx_export._outputs(actual), onnx_export._outputs(expected)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype
        if a.dtype.is_floating_point:
            assert onnx_export.errors(a, e)["rel_l2"] <= rtol
        else:
            assert torch.equal(a, e)


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name", VARIANTS)
def test_build_holds_every_part_ready_for_tensorrt(name, built):
    b = built(name)
    assert set(b.ort.manifest.parts) == set(plan.part_names(b.variant))
    assert set(b.ort.inputs.constants) == set(constant_names(b.variant))
    assert (b.engines / CONSTANTS).is_file()
    for part, entry in b.ort.manifest.parts.items():
        model = onnx.load(str(b.engines / entry.onnx))
        onnx.checker.check_model(model, full_check=True)
        assert plan.trt_problems(model) == [], part
        graph_inputs = {v.name: v for v in model.graph.input}
        inputs, outputs = plan.part_io(part, b.variant)
        assert list(graph_inputs) == [s.name for s in inputs]
        assert [o.name for o in model.graph.output] == [s.name for s in outputs]
        for spec in inputs:
            dims = graph_inputs[spec.name].type.tensor_type.shape.dim
            for axis, want in enumerate(spec.shape):
                got = dims[axis].dim_param if isinstance(want, str) else dims[axis].dim_value
                assert got == want, (part, spec.name, axis)
        if part == "dit_step" and b.variant.flowley:
            # The tied block's weights are in the file once, not once per application.
            g = b.variant.generator
            linear1 = [
                i for i in model.graph.initializer if tuple(i.dims) == (g.hidden_dim,) * 2 + (3,)
            ]
            assert len(linear1) == 2 * g.multi_depth + 1  # audio+visual per joint block, tied


@pytest.mark.parametrize("name, part", PARTS)
def test_part_matches_torch(name, part, built):
    b = built(name)
    args = onnx_export.sample_args(part, b.variant, SIZES[name], seed=11)
    if part == "dit_step":  # the torch step reads the lengths its dit_conditions set
        onnx_export.set_lengths(b.nets, b.variant, SIZES[name])
    close(getattr(b.ort, part)(*args), getattr(b.torch, part)(*args))


def test_mixture_encoder_takes_any_length(built):
    """A waveform that is not a whole number of latent frames, tone plus noise: the host's mel
    and the graph compute what the torch part computes (samples // (2 hop) latents)."""
    b = built("tiny-sep")
    g = torch.Generator().manual_seed(3)
    n = 40 * 2 * TINY_SEP.audio.hop + 300
    tone = 0.4 * torch.sin(2 * torch.pi * 440 * torch.arange(n) / TINY_SEP.audio.sample_rate)
    wav = (tone + 0.05 * torch.randn(n, generator=g))[None]
    mean, std = b.ort.mixture_encoder(wav)
    assert mean.shape == (1, TINY_SEP.generator.latent_dim, 40)
    close((mean, std), b.torch.mixture_encoder(wav))


@pytest.mark.parametrize("normalize", [False, True])
def test_mixture_conditions_are_the_torch_backends(normalize, built):
    """The host computes the mixture's share of the input convolution with the torch backend's
    own function, on the build's copy of the weights: the same numbers, bit for bit."""
    b = built("tiny-sep")
    gen = torch.Generator().manual_seed(4)
    x_cond = torch.randn(1, 80, TINY_SEP.generator.latent_dim, generator=gen)
    ours = b.ort.mixture_conditions(x_cond, 3, normalize)
    theirs = b.torch.mixture_conditions(x_cond, 3, normalize)
    assert list(ours) == list(theirs) == ["mixture_bias"]
    assert ours["mixture_bias"].shape == (3, 80, TINY_SEP.generator.hidden_dim)
    assert torch.equal(ours["mixture_bias"], theirs["mixture_bias"])


def test_flowley_step_below_cfg_1_is_the_conditional_velocity(built):
    b = built("tiny-flowley")
    latent, t, conditions, _ = onnx_export.sample_args(
        "dit_step", TINY_FLOWLEY, SIZES["tiny-flowley"], seed=5
    )
    onnx_export.set_lengths(b.nets, TINY_FLOWLEY, SIZES["tiny-flowley"])
    ours = b.ort.dit_step(latent, t, conditions, 0.5)
    close(ours, b.torch.dit_step(latent, t, conditions, 0.5))
    close(ours, b.ort.dit_step(latent, t, conditions, 1.0), rtol=0)


def pipelines(b: Built) -> tuple[Pipeline, Pipeline]:
    """(ONNX Runtime, torch) pipelines of one variant, sharing its tokenizers."""
    tokenizers = Tokenizers.load(b.variant)
    return (
        Pipeline(family_of(b.variant, b.ort, tokenizers)),
        Pipeline(family_of(b.variant, b.torch, tokenizers)),
    )


def test_separate_matches_torch_end_to_end(built, sample_clip, tmp_path):
    """Two stems out of the sample clip's own audio with its picture as the query, and one
    out of an audio file by text alone (the learned empty CLIP and sync features): mixture
    encoder, conditions, mixture bias, Euler steps with CFG and decoder through the graphs."""
    ours, theirs = pipelines(built("tiny-sep"))
    kwargs = dict(steps=3, duration=1.2, seed=7)
    prompts = ["dog barking", "rain on a tin roof"]
    a, b = (
        ours.separate(sample_clip, prompts, **kwargs),
        theirs.separate(sample_clip, prompts, **kwargs),
    )
    assert a.audio.shape == b.audio.shape and a.audio.shape[0] == 2
    assert rel_l2(a.audio, b.audio) <= RTOL
    mix = tmp_path / "mix.wav"
    t = np.arange(16000) / 16000
    soundfile.write(mix, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 16000)
    a, b = ours.separate(mix, ["rain"], **kwargs), theirs.separate(mix, ["rain"], **kwargs)
    assert a.audio.shape == b.audio.shape and rel_l2(a.audio, b.audio) <= RTOL


def test_flowley_generate_matches_torch_end_to_end(built, sample_clip):
    ours, theirs = pipelines(built("tiny-flowley"))
    kwargs = dict(steps=3, duration=1.2, seed=7)
    prompts = ["dog barking", "rain on a tin roof"]
    a, b = (
        ours.generate(sample_clip, prompts, **kwargs),
        theirs.generate(sample_clip, prompts, **kwargs),
    )
    assert a.audio.shape == b.audio.shape and a.audio.shape[0] == 2
    assert rel_l2(a.audio, b.audio) <= RTOL


@pytest.mark.parametrize("name, command", [("tiny-sep", "separate"), ("tiny-flowley", "generate")])
def test_cli_with_onnxruntime_backend(name, command, request, sample_clip, tmp_path):
    engines = request.getfixturevalue(ENGINES[name])

    def run(*extra: str) -> np.ndarray:
        out = tmp_path / ("ort" if extra else "torch")
        return cli_generate(sample_clip, out, *extra, command=command, variant=name)[0]

    ours = run("--backend", "onnxruntime", "--engines", str(engines))
    theirs = run()
    # Stems are 24-bit files: compare at their resolution.
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-4 + 2e-3 * np.abs(theirs).max()


def test_graph_parts_mix_separation(built, sample_clip):
    """--graph-parts with the new parts: the mixture encoder and the step from the graphs, the
    rest (mixture_conditions included) on torch, give the torch backend's stems."""
    b = built("tiny-sep")
    parts = load_parts(
        TINY_SEP, "torch", device="cpu", engines=b.engines, graph_parts="mixture_encoder,dit_step"
    )
    assert isinstance(parts, MixedParts) and set(parts.graphs.sessions) == {
        "mixture_encoder",
        "dit_step",
    }
    assert isinstance(parts.mixture_encoder.__self__, OrtParts)
    assert isinstance(parts.mixture_conditions.__self__, TorchParts)
    kwargs = dict(steps=3, duration=0.64, seed=7)
    mixed = Pipeline(family_of(TINY_SEP, parts)).separate(sample_clip, ["dog barking"], **kwargs)
    alone = pipelines(b)[1].separate(sample_clip, ["dog barking"], **kwargs)
    assert rel_l2(mixed.audio, alone.audio) <= RTOL


def test_graph_parts_the_variant_lacks_fail_in_one_line(tmp_path):
    with pytest.raises(UsageError, match="tiny-flowley has no 'video_select' part"):
        load_parts(
            TINY_FLOWLEY, "torch", device="cpu", engines=tmp_path, graph_parts="video_select"
        )
