"""The onnxruntime backend is a drop-in for the torch backend: the same parts, arguments and
results (within fp32 kernel rounding), part by part and end to end through the Pipeline."""

import shutil

import numpy as np
import onnxruntime
import pytest
import torch
from cligenerate import cli_generate
from selva_rt.export import onnx_export, plan
from selva_rt.runtime.backends.ort_parts import OrtParts
from selva_rt.runtime.backends.torch_parts import TorchParts
from selva_rt.runtime.errors import CheckpointError, UsageError
from selva_rt.runtime.families import family_of
from selva_rt.runtime.families.flow import Tokenizers
from selva_rt.runtime.pipeline import Pipeline
from selva_rt.runtime.variants import get_variant

torch.set_num_threads(2)

TINY = get_variant("tiny")
# Sizes neither traced at export nor used by the build's own check.
SIZES = onnx_export.Sizes(prompts=2, tokens=9, duration=2.56)
RTOL = 1e-4


@pytest.fixture(scope="module")
def ort_parts(tiny_engines) -> OrtParts:
    return OrtParts.load(tiny_engines, TINY, device="cpu", threads=2)


@pytest.fixture(scope="module")
def torch_parts(tiny_nets) -> TorchParts:
    return TorchParts(TINY, tiny_nets, torch.device("cpu"), torch.float32)


def close(actual, expected, rtol=RTOL):
    actual, expected = onnx_export._outputs(actual), onnx_export._outputs(expected)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype
        assert onnx_export.errors(a, e)["rel_l2"] <= rtol


@pytest.mark.parametrize("part", plan.part_names(TINY))
def test_part_matches_torch(part, ort_parts, torch_parts, tiny_nets):
    args = onnx_export.sample_args(part, TINY, SIZES, seed=11)
    if part == "dit_step":  # the torch backend sets its lengths in dit_conditions
        d = plan.dims(TINY, SIZES.prompts, SIZES.tokens, SIZES.duration)
        tiny_nets.generator.update_seq_lengths(d["latent"], d["clip_frames"], d["8*segments"])
    close(getattr(ort_parts, part)(*args), getattr(torch_parts, part)(*args))


def test_conditions_from_given_clip_features(ort_parts, torch_parts):
    """CLIP video features given (plain MMAudio) instead of the learned empty feature."""
    clip, sync, text, negative, latent_len, clip_len = onnx_export.sample_args(
        "dit_conditions", TINY, SIZES, seed=3
    )
    clip = torch.randn(SIZES.prompts, clip_len, TINY.generator.clip_dim)
    args = (clip, sync, text, negative, latent_len, clip_len)
    ours = ort_parts.dit_conditions(*args)
    assert list(ours) == ["clip_f", "sync_f", "text_f", "clip_f_c", "text_f_c"]
    close(ours, torch_parts.dit_conditions(*args))


def test_step_below_cfg_1_is_the_conditional_velocity(ort_parts, torch_parts, tiny_nets):
    latent, t, conditions, _ = onnx_export.sample_args("dit_step", TINY, SIZES, seed=5)
    d = plan.dims(TINY, SIZES.prompts, SIZES.tokens, SIZES.duration)
    tiny_nets.generator.update_seq_lengths(d["latent"], d["clip_frames"], d["8*segments"])
    close(
        ort_parts.dit_step(latent, t, conditions, 0.5),
        torch_parts.dit_step(latent, t, conditions, 0.5),
    )
    uncond_free = ort_parts.dit_step(latent, t, conditions, 1.0)
    close(ort_parts.dit_step(latent, t, conditions, 0.5), uncond_free, rtol=0)


def test_generate_matches_torch_end_to_end(tiny_engines, tiny_nets, sample_clip):
    """Two stems over the sample clip: decode, text, trunk, selection, conditions, Euler steps
    with CFG, decoder, all through ONNX Runtime, against the torch backend."""
    tokenizers = Tokenizers.load(TINY)
    ours = Pipeline(family_of(TINY, OrtParts.load(tiny_engines, TINY, threads=2), tokenizers))
    theirs = Pipeline(
        family_of(TINY, TorchParts(TINY, tiny_nets, torch.device("cpu"), torch.float32), tokenizers)
    )
    kwargs = dict(steps=3, duration=1.2, seed=7)
    a = ours.generate(sample_clip, ["dog barking", "rain on a tin roof"], **kwargs)
    b = theirs.generate(sample_clip, ["dog barking", "rain on a tin roof"], **kwargs)
    assert a.audio.shape == b.audio.shape and a.sample_rate == b.sample_rate
    assert np.linalg.norm(a.audio - b.audio) <= RTOL * np.linalg.norm(b.audio)


def test_cli_generate_with_onnxruntime_backend(tiny_engines, sample_clip, tmp_path):
    def generate(*extra: str) -> np.ndarray:
        return cli_generate(sample_clip, tmp_path / (extra[1] if extra else "torch"), *extra)[0]

    ours = generate("--backend", "onnxruntime", "--engines", str(tiny_engines))
    theirs = generate()
    # Stems are 24-bit files: compare at their resolution.
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-4 + 2e-3 * np.abs(theirs).max()


def test_load_errors_are_one_line(tiny_engines, tmp_path):
    with pytest.raises(UsageError, match="no manifest.json; build it first"):
        OrtParts.load(tmp_path, TINY)
    with pytest.raises(UsageError, match="for variant 'tiny', not 'selva-small-16k'"):
        OrtParts.load(tiny_engines, get_variant("selva-small-16k"))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_engines, broken)
    (broken / "decoder.onnx").unlink()
    with pytest.raises(CheckpointError, match="decoder.onnx is listed in the manifest"):
        OrtParts.load(broken, TINY)
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(UsageError, match="no CUDA execution provider"):
            OrtParts.load(tiny_engines, TINY, device="cuda")
