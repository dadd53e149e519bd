"""`--graph-parts`: some parts from the ONNX Runtime graphs, the others on torch, in one pipeline
(tiny variant, fp32 build): the chosen parts and only they run from the graphs, and generation
matches the torch backend within the fp32 export tolerance."""

import numpy as np
import pytest
import torch
from cligenerate import cli_generate
from selva_rt.runtime.backends import load_parts
from selva_rt.runtime.backends.mixed import MixedParts
from selva_rt.runtime.backends.ort_parts import OrtParts
from selva_rt.runtime.backends.torch_parts import TorchParts
from selva_rt.runtime.errors import UsageError
from selva_rt.runtime.families import family_of
from selva_rt.runtime.families.flow import Tokenizers
from selva_rt.runtime.pipeline import Pipeline
from selva_rt.runtime.variants import TINY

torch.set_num_threads(2)


def test_chosen_parts_run_from_the_graphs(tiny_engines, sample_clip):
    parts = load_parts(
        TINY, "torch", device="cpu", engines=tiny_engines, graph_parts="video_select,dit_step"
    )
    assert isinstance(parts, MixedParts) and parts.precision == "fp32"
    assert set(parts.graphs.sessions) == {"video_select", "dit_step"}  # nothing else loaded
    assert isinstance(parts.video_select.__self__, OrtParts)
    assert isinstance(parts.dit_step.__self__, OrtParts)
    assert isinstance(parts.sample.__self__, OrtParts)  # the loop goes with its step
    for name in ("t5", "clip_text", "video_trunk", "dit_conditions", "decoder"):
        assert isinstance(getattr(parts, name).__self__, TorchParts), name

    tokenizers = Tokenizers.load(TINY)
    torch_parts = load_parts(TINY, "torch", device="cpu", precision="fp32")  # the graphs' dtype
    kwargs = dict(steps=3, duration=1.2, seed=7)
    a = Pipeline(family_of(TINY, parts, tokenizers)).generate(
        sample_clip, ["dog barking"], **kwargs
    )
    b = Pipeline(family_of(TINY, torch_parts, tokenizers)).generate(
        sample_clip, ["dog barking"], **kwargs
    )
    assert np.linalg.norm(a.audio - b.audio) <= 1e-4 * np.linalg.norm(b.audio)


def test_cli_generate_with_graph_parts(tiny_engines, sample_clip, tmp_path):
    def generate(*extra: str) -> tuple[np.ndarray, dict]:
        return cli_generate(sample_clip, tmp_path / ("mixed" if extra else "torch"), *extra)

    ours, report = generate("--engines", str(tiny_engines), "--graph-parts", "video_trunk,dit_step")
    theirs, _ = generate()
    assert report["precision"] == "fp32" and ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-4 + 2e-3 * np.abs(theirs).max()  # 24-bit stems


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(graph_parts="dit_stepp"), "unknown part 'dit_stepp'"),
        (dict(graph_parts="dit_conditions"), "needs dit_step from the graphs too"),
        (dict(graph_parts="dit_step", engines=None), "needs --engines DIR"),
        (dict(graph_parts="dit_step", backend="onnxruntime"), "torch backend's fast mode"),
        (dict(graph_parts="dit_step", reference=True), "torch backend's fast mode"),
        (dict(graph_parts="dit_step", precision="bf16"), "same precision"),
    ],
)
def test_bad_mixes_fail_in_one_line(tiny_engines, kwargs, message):
    kwargs = {"backend": "torch", "engines": tiny_engines, **kwargs}
    with pytest.raises(UsageError, match=message):
        load_parts(TINY, device="cpu", **kwargs)
