"""Fast mode against reference mode: the same outputs within the golden tolerances, on the tiny
variant and on the golden-weight networks; prompts sharing a call equal separate calls; the
official-way video encoder pieces equal the fast ones; the CUDA-graph loop equals the eager one
(CUDA only)."""

import pytest
import torch
from golden import assert_close, sync_frames_from_u8
from selva_rt.runtime.backends import reference as official
from selva_rt.runtime.backends.torch_parts import TorchParts
from selva_rt.runtime.families import family_of
from selva_rt.runtime.families.flow import TextFeatures
from selva_rt.runtime.models.networks import build_networks
from selva_rt.runtime.pipeline import Pipeline, Synthesis
from selva_rt.runtime.variants import TINY
from synth import one_window, output

torch.set_num_threads(1)

# The golden README's tolerances: unit cases for the intermediates, e2e for the audio.
TOL = {
    "sync_features": (1e-4, 1e-3),
    "noise": (0.0, 0.0),
    "latent": (5e-4, 5e-3),
    "mel": (1e-4, 5e-3),
    "audio": (2e-3, 2e-2),
}
DURATION, STEPS = 2.0, 25
PROMPTS = ["dog barking", "car horn", "rain on a window"]


def assert_same(name: str, out, expected) -> None:
    for field, (rtol, maxabs) in TOL.items():
        assert_close(f"{name}:{field}", output(out, field), output(expected, field), rtol, maxabs)


def tiny_pipeline(nets, reference: bool) -> Pipeline:
    parts = TorchParts(TINY, nets, torch.device("cpu"), torch.float32, reference=reference)
    return Pipeline(family_of(TINY, parts))


def frames(seconds: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u8 = torch.randint(0, 256, (int(25 * seconds), 3, 224, 224), dtype=torch.uint8, generator=g)
    return sync_frames_from_u8(u8)[None]


def test_tiny_fast_matches_reference(tiny_nets):
    fast, ref = tiny_pipeline(tiny_nets, False), tiny_pipeline(tiny_nets, True)
    text = fast.family.encode_text(PROMPTS[:2])
    x = frames(DURATION)
    out = one_window(fast, text, DURATION, sync=x, steps=STEPS)
    expected = one_window(ref, text, DURATION, sync=x, steps=STEPS)
    assert out.audio.shape == (2, TINY.sequence_lengths(DURATION).latent * 512)
    assert_same("modes[tiny]", out, expected)


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
def test_prompts_sharing_a_call_equal_separate_calls(tiny_nets, reference):
    pipe = tiny_pipeline(tiny_nets, reference)
    x = frames(1.0, seed=1)
    together = one_window(pipe, pipe.family.encode_text(PROMPTS), 1.0, sync=x, steps=5)
    for i, prompt in enumerate(PROMPTS):
        alone = one_window(pipe, pipe.family.encode_text([prompt]), 1.0, sync=x, steps=5)
        part = Synthesis(
            together.noise[i : i + 1],
            together.latent[i : i + 1],
            together.audio[i : i + 1],
            {k: v[i : i + 1] for k, v in together.trace.items()},
        )
        assert_same(f"shared_call[{'reference' if reference else 'fast'}]", part, alone)


def test_golden_networks_fast_matches_reference(e2e, golden_pipeline):
    """e2e_tiny's golden-weight networks, two prompts: the case's, and the same prompt with its
    T5 features shuffled over tokens and another padding (a different selection)."""
    T, x = e2e.tensors, e2e.frames
    t5, mask = T["in.text_t5_f"], T["in.text_t5_mask"]
    other_mask = mask.clone()
    other_mask[:, mask.sum() // 2 :] = False
    text = TextFeatures(
        clip=torch.cat([T["in.text_clip_f"], T["in.text_clip_f"].flip(1)]),
        negative=T["in.neg_text_clip_f"],
        t5=torch.cat([t5, t5.flip(1)]),
        t5_mask=torch.cat([mask, other_mask]),
    )
    args = e2e.meta["args"]
    kw = dict(sync=x, seed=args["seed"], steps=args["num_steps"], cfg=args["cfg_strength"])
    out = one_window(golden_pipeline(reference=False), text, e2e.duration, **kw)
    expected = one_window(golden_pipeline(reference=True), text, e2e.duration, **kw)
    assert_same("modes[golden]", out, expected)
    # And prompt 0 is still the official output.
    assert_close("modes[golden]:audio_vs_official", out.audio[:1], T["out.audio"][:, 0], 2e-3, 2e-2)


def test_official_video_pieces_match_fast_modules(tiny_nets):
    enc = tiny_nets.video_encoder
    g = torch.Generator().manual_seed(3)
    segments = torch.randn(2, 3, 16, 224, 224, generator=g)
    with torch.inference_mode():
        tokens = enc.vfeat_extractor(segments)
        assert_close(
            "official:motionformer",
            official.motionformer(enc.vfeat_extractor, segments),
            tokens,
            1e-4,
            1e-3,
        )
        pool = enc.vfeat_extractor.spatial_attn_agg
        assert_close("official:pool", official.spatial_pool(pool, tokens), pool(tokens), 1e-4, 1e-3)
        # Trunk chunks of B items: B = 2 clips, 2 segments each.
        clip = frames(0.96, seed=4)
        assert_close(
            "official:trunk",
            official.trunk(enc, clip.expand(2, -1, -1, -1, -1)),
            enc.trunk(clip).repeat(2, 1, 1),
            1e-4,
            1e-3,
        )


def test_decoder_dtype_keeps_the_decoder_in_fp32():
    nets = build_networks(TINY, {})
    parts = TorchParts(TINY, nets, torch.device("cpu"), torch.bfloat16, decoder_dtype=torch.float32)
    assert nets.generator.latent_mean.dtype == torch.bfloat16
    assert next(nets.vocoder.parameters()).dtype == torch.float32
    latent = torch.randn(1, TINY.sequence_lengths(1.0).latent, 20, dtype=torch.bfloat16)
    mel, audio = parts.decoder(latent)
    assert mel.dtype == audio.dtype == torch.float32


def test_cuda_graphs_need_fast_mode_on_cuda(tiny_nets):
    with pytest.raises(ValueError, match="CUDA graphs"):
        TorchParts(TINY, tiny_nets, torch.device("cpu"), torch.float32, cuda_graphs=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_loop_matches_eager(dtype):
    nets = build_networks(TINY, {})
    dev = torch.device("cuda")
    eager = Pipeline(family_of(TINY, TorchParts(TINY, nets, dev, dtype)))
    graphed = Pipeline(family_of(TINY, TorchParts(TINY, nets, dev, dtype, cuda_graphs=True)))
    tol = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (2e-2, 1e-1)}[dtype]
    for seed, prompts in ((0, PROMPTS[:2]), (1, PROMPTS[1:])):  # the second call replays
        x, text = frames(DURATION, seed).to(dev), eager.family.encode_text(prompts)
        expected = one_window(eager, text, DURATION, sync=x, seed=seed)
        out = one_window(graphed, text, DURATION, sync=x, seed=seed)
        assert_close(f"cuda_graph[{dtype}]:latent", out.latent, expected.latent, *tol)
    assert len(graphed.parts.graphs.graphs) == 1
