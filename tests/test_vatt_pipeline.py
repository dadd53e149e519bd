"""VATT through the runtime's one contract: the golden `vatt_e2e_tiny` case through the real
family and `Pipeline` (networks loaded from the official file layouts by `load_parts`' loader),
eva02 features from decoded crops, and tiny-vatt stems: batched prompts equal single-prompt
runs, clips longer than the 10 s window."""

import dataclasses

import numpy as np
import pytest
import torch
from golden import assert_close, load_case
from selva_rt.runtime import media
from selva_rt.runtime.backends.vatt_parts import VattTorchParts
from selva_rt.runtime.families import family_of
from selva_rt.runtime.families.vatt import FEATURES, FRAMES, VattText
from selva_rt.runtime.models.eva02 import resize_crop
from selva_rt.runtime.models.vatt_networks import build_vatt_networks
from selva_rt.runtime.pipeline import Pipeline
from selva_rt.runtime.windows import Layout
from vatt_cases import golden_install, sampler_config

CASE = "vatt_e2e_tiny"


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """`golden(reference)`: a Pipeline over the golden networks, loaded from files in the
    official layouts, with the sampler settings the cases record."""
    variant, paths = golden_install(tmp_path_factory.mktemp("vatt"))

    def make(reference: bool = False) -> Pipeline:
        nets = build_vatt_networks(variant, paths)
        parts = VattTorchParts(variant, nets, torch.device("cpu"), torch.float32, reference)
        return Pipeline(family_of(variant, parts))

    return make


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
def test_golden_e2e_through_the_pipeline(golden, reference):
    """States, seeded tokens (>= 99.9 % equal, golden README) and waveform of the official chain
    from its features and prompt ids, every setting from the cases."""
    pipe = golden(reference)
    meta, t = load_case(CASE)
    sampler = sampler_config(load_case("vatt_sampler_small")[0])
    encodec = pipe.variant.generator.encodec
    duration = t["out.audio"].shape[-1] / encodec.sample_rate
    layout = pipe.family.plan(duration)
    assert len(layout) == 1 and layout.latent == t["out.tokens"].shape[-1]
    out = pipe.synthesize(
        [{FEATURES: t["in.video_input"][0]}],
        VattText([t["in.input_ids"][0]]),
        layout,
        seed=int(t["in.seed"]),
        steps=sampler.steps,
        cfg=sampler.cfg,
    )
    states = out.conditions["states"][0]
    assert_close(f"{CASE}.hidden_states (pipeline)", states, t["out.hidden_states"][0], 1e-4, 1e-3)
    equal = (out.latent == t["out.tokens"]).sum().item()
    print(f"{CASE} through the pipeline: {equal} of {out.latent.numel()} tokens equal")
    assert equal >= 0.999 * out.latent.numel()
    if equal == out.latent.numel():
        assert_close(f"{CASE}.audio (pipeline)", out.audio, t["out.audio"][0], 1e-4, 2e-3)
    # The waveform of the official tokens through the family's decoder, whatever ours are.
    run = None  # decode takes no randomness
    audio = pipe.family.decode(t["out.tokens"], layout, run)
    assert_close(f"{CASE}.audio (family decode)", audio, t["out.audio"][0], 1e-4, 2e-3)


def test_features_from_decoded_crops(golden):
    """The family's features from the 5 fps crops media keeps (`eva02.resize_crop`): the golden
    eva02 case's features of its frames, the picture's last frame held to the window's end."""
    pipe = golden()
    meta, t = load_case("vatt_eva02_small")
    frames = t["in.frames_u8"]  # [50, H, W, 3]
    count = 20  # a picture of 4 s in a 10 s window
    crops = resize_crop(frames[:count].permute(0, 3, 1, 2), pipe.variant.generator.image)
    run = _run()
    video = pipe.family.features({FRAMES: crops}, 1, run)["video"]
    expected = t["out.features"][:count]
    assert_close("vatt_eva02_small.features (family)", video[:count], expected, 1e-4, 1e-3)
    assert video.shape[0] == pipe.variant.generator.converter.video_frames
    assert torch.equal(video[count:], video[count - 1 : count].expand(len(video) - count, -1))


def _run():
    from selva_rt.runtime.families.family import Run

    return Run(torch.device("cpu"), torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def tiny():
    return Pipeline.from_pretrained("tiny-vatt", device="cpu", precision="fp32")


def test_batched_prompts_equal_single_prompt_stems(tiny):
    """Two prompts (ids of different lengths, so two converter calls, and one of equal length)
    in one request: each stem is its single-prompt request's."""
    prompts = ["sheep bleating", "a dog barks while cars pass by", "rain on a roof"]
    clip = "runtime/assets/sample.mp4"
    both = tiny.generate(clip, prompts, seed=5, steps=2)
    lengths = {len(tiny.family.encode_text([p]).ids[0]) for p in prompts}
    assert len(lengths) > 1
    for i, p in enumerate(prompts):
        one = tiny.generate(clip, [p], seed=5, steps=2)
        assert torch.equal(torch.from_numpy(one.audio[0]), torch.from_numpy(both.audio[i])), p
    assert both.steps == 2 and both.cfg == tiny.variant.cfg == 5.0


def test_jobs_together_each_keep_their_own_draws(tiny):
    """`generate_many` (the server's and batch's worker with --jobs-per-call > 1) gives each
    VATT request the stem `generate` gives it: MaskGIT draws from each request's generators, so
    requests take one sampler call each instead of one shared call."""
    from selva_rt.runtime.pipeline import Request

    clip = "runtime/assets/sample.mp4"
    requests = [Request(clip, ["rain"], seed=3, steps=2), Request(clip, ["sheep"], seed=4, steps=2)]
    for req, got in zip(requests, tiny.generate_many(requests), strict=True):
        alone = tiny.generate(clip, req.prompts, seed=req.seed, steps=2)
        assert np.array_equal(got.audio, alone.audio), req.prompts


def test_defaults_are_the_variants(tiny):
    assert (tiny.variant.steps, tiny.variant.cfg) == (16, 5.0)
    assert tiny.family.sample_rate == 16000


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """12.4 s at 25 fps: two 10 s windows."""
    from clips import make_clip

    return make_clip(tmp_path_factory.mktemp("vatt_long") / "long.mp4", 310, 25, size=(48, 32))


def test_clip_longer_than_the_window(tiny, long_clip):
    """Two windows; the stem covers the whole picture; its first window is the 10 s request's
    (the continuation keeps what it sampled), so the stem's first 9.5 s are that request's."""
    layout = tiny.family.plan(media.clip_duration(long_clip, to_end=True))
    assert isinstance(layout, Layout) and len(layout) == 2
    assert layout.offsets[0] == 0 and layout.window == 10.0
    overlap = (layout.offsets[0] + layout.latent - layout.offsets[1]) / 50
    assert overlap >= tiny.variant.generator.overlap
    whole = tiny.generate(long_clip, ["sheep bleating"], seed=1, steps=2)
    assert whole.duration == layout.duration > 12
    assert whole.audio.shape == (1, round(layout.duration * 16000))
    first = tiny.generate(long_clip, ["sheep bleating"], seed=1, steps=2, duration=10.0)
    n = round(9.5 * 16000)
    a, b = torch.from_numpy(whole.audio[0]), torch.from_numpy(first.audio[0])
    assert_close("vatt long clip: first window", a[:n], b[:n], 1e-5, 1e-4)
    assert a[-16000:].abs().max() > 0, "the second window's new tokens are sampled"


def test_progress_counts_request_steps(tiny, long_clip):
    told = []
    tiny.generate(long_clip, ["rain"], seed=1, steps=3, progress=told.append)
    assert sum(told) == 3


def test_features_as_released(tiny):
    """`eva02_features` (the authors' released [50, 768] features) skip the tower; a wrong shape
    is one line."""
    c = tiny.variant.generator
    video = torch.randn(c.converter.video_frames, c.image.embed_dim)
    f = tiny.family.features({FEATURES: video}, 1, _run())
    assert torch.equal(f["video"], video)
    with pytest.raises(Exception, match=r"eva02_features must be \[50, 768\]"):
        tiny.family.features({FEATURES: video[:10]}, 1, _run())


def test_negative_prompt_refused(tiny):
    with pytest.raises(Exception, match="takes no negative prompt"):
        tiny.generate("runtime/assets/sample.mp4", ["rain"], negative_prompt="music", steps=1)


def test_layout_is_the_pipelines():
    """The fields the pipeline reads of VATT's layout."""
    from selva_rt.runtime.variants import TINY_VATT

    family = family_of(TINY_VATT, _Stub())
    one = family.plan(3.0)
    assert (len(one), one.window, one.starts, one.latent, one.total) == (1, 10.0, (0.0,), 500, 500)
    many = family.plan(61.2)
    assert many.starts[-1] + many.window >= 61.2 > many.starts[-1] + many.window - 0.04
    assert all(b - a <= 8.0 + 1e-9 for a, b in zip(many.starts, many.starts[1:], strict=False))
    assert many.total == many.offsets[-1] + many.latent
    assert dataclasses.is_dataclass(one)


class _Stub:
    device, dtype, precision = torch.device("cpu"), torch.float32, "fp32"


def test_both_backends_offer_the_same_parts():
    """VATT's torch and ONNX Runtime parts: the same methods with the same signatures."""
    import inspect

    from selva_rt.runtime.backends.vatt_ort_parts import VattOrtParts

    names = ("image_features", "conditions", "logits", "decode")
    for name in names:
        a, b = getattr(VattTorchParts, name), getattr(VattOrtParts, name)
        assert list(inspect.signature(a).parameters) == list(inspect.signature(b).parameters)
