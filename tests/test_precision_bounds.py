"""bf16 (the default on CPUs with native bf16) against fp32, per part and end to end, with bounds
from measurement, as the fp32 tests are bounded: errors computed here, on the tiny variant's
networks, torch backend, fast mode.

Measured (2-core AMD EPYC with AVX-512 BF16, torch 2.13 CPU, three input seeds; relative L2 of
the bf16 part against the fp32 part on the same inputs, rounded to bf16 first):
t5 6.3-6.6e-3, clip_text 8.2-9.0e-3, video_trunk 6.9e-3, video_select 6.4-7.5e-3,
dit_conditions 5.2-7.5e-3, dit_step 2.0-2.2e-2, decoder mel 8.1-8.2e-3 and audio 6.7-6.8e-2;
end to end (2 prompts, 1 s, 2 steps, seed 1) 8.3e-2. Each bound is about twice the worst
measurement, and every error must exceed 1e-3, far above fp32's kernel rounding (1e-6): bf16
really ran. A CPU without native bf16 rounds the same way (fp32 accumulation)."""

import numpy as np
import pytest
import torch
from selva_rt.export import onnx_export, plan
from selva_rt.runtime.backends import load_parts
from selva_rt.runtime.families import family_of
from selva_rt.runtime.families.flow import Tokenizers
from selva_rt.runtime.pipeline import Pipeline
from selva_rt.runtime.variants import get_variant

torch.set_num_threads(2)

TINY = get_variant("tiny")
SIZES = onnx_export.Sizes(prompts=2, tokens=9, duration=2.56)
FLOOR = 1e-3  # below this bf16 did not round anything
BOUNDS = {  # per output, in part_io order
    "t5": (1.5e-2,),
    "clip_text": (2e-2,),
    "video_trunk": (1.5e-2,),
    "video_select": (1.5e-2,),
    "dit_conditions": (1.5e-2,) * 5,
    "dit_step": (5e-2,),
    "decoder": (2e-2, 0.15),  # mel, audio (the vocoder amplifies the mel's rounding)
}
END_TO_END = 0.2


def rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.detach().double(), expected.detach().double()
    assert a.shape == e.shape
    return float((a - e).norm() / e.norm())


def bf16(x):
    """Arguments as a bf16 pipeline hands them on: floating tensors rounded to bf16."""
    if isinstance(x, dict):
        return {k: bf16(v) for k, v in x.items()}
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.to(torch.bfloat16)
    return x


@pytest.fixture(scope="module")
def parts():
    return {p: load_parts(TINY, "torch", device="cpu", precision=p) for p in ("fp32", "bf16")}


@pytest.mark.parametrize("part", plan.part_names(TINY))
def test_bf16_part_against_fp32(parts, part):
    assert set(BOUNDS) == set(plan.part_names(TINY))
    args = onnx_export.sample_args(part, TINY, SIZES, seed=11)
    if part == "dit_step":  # the torch backend sets its lengths in dit_conditions
        d = plan.dims(TINY, SIZES.prompts, SIZES.tokens, SIZES.duration)
        for p in parts.values():
            p.nets.generator.update_seq_lengths(d["latent"], d["clip_frames"], d["8*segments"])
    ours = onnx_export._outputs(getattr(parts["bf16"], part)(*map(bf16, args)))
    theirs = onnx_export._outputs(getattr(parts["fp32"], part)(*args))
    assert len(ours) == len(theirs) == len(BOUNDS[part])
    for a, e, bound in zip(ours, theirs, BOUNDS[part], strict=True):
        assert a.dtype == torch.bfloat16 and e.dtype == torch.float32
        err = rel_l2(a.float(), e)
        assert FLOOR < err < bound, (part, err)


def test_bf16_end_to_end_against_fp32(parts, sample_clip):
    tokenizers = Tokenizers.load(TINY)
    pipes = {p: Pipeline(family_of(TINY, parts[p], tokenizers)) for p in parts}
    assert pipes["bf16"].precision == "bf16" and pipes["fp32"].precision == "fp32"
    kwargs = dict(seed=1, steps=2, duration=1.0)
    ours = pipes["bf16"].generate(sample_clip, ["dog barking", "rain"], **kwargs).audio
    theirs = pipes["fp32"].generate(sample_clip, ["dog barking", "rain"], **kwargs).audio
    assert ours.dtype == theirs.dtype == np.float32 and ours.shape == theirs.shape
    err = float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))
    assert 1e-2 < err < END_TO_END, err
