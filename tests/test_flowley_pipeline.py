"""Flowley through the runtime: the golden sampler through the real parts (both modes), fast
mode against reference mode on the golden generator, and `selva-rt generate --variant
tiny-flowley`."""

import dataclasses

import pytest
import soundfile as sf
import torch
from golden import assert_close, case_path, flowley_config, load_case
from selva_rt.runtime import cli
from selva_rt.runtime.backends.flowley_parts import FlowleyTorchParts
from selva_rt.runtime.families import family_of
from selva_rt.runtime.models.checkpoint import read_state_dict
from selva_rt.runtime.models.networks import build_networks
from selva_rt.runtime.pipeline import Pipeline
from selva_rt.runtime.variants import TINY_FLOWLEY, Variant
from synth import one_window, output

torch.set_num_threads(1)
CASE = "flowley_gen_small"


@pytest.fixture(scope="module")
def variant() -> Variant:
    """tiny-flowley with the golden case's generator (its encoders, random, as wide as the
    generator reads)."""
    config = flowley_config(load_case(CASE)[0]["constructor_kwargs"])[0]
    return dataclasses.replace(
        TINY_FLOWLEY,
        generator=config,
        t5=dataclasses.replace(
            TINY_FLOWLEY.t5, d_model=config.text_dim, pad_to=config.text_seq_len
        ),
        clip=dataclasses.replace(TINY_FLOWLEY.clip, embed_dim=config.video_dim),
    )


@pytest.fixture(scope="module")
def nets(variant):
    """The variant's networks, the generator with the golden weights through the real loader
    (non-degenerate, so a difference between the modes shows)."""
    nets = build_networks(variant, {})
    nets.generator.load_official(read_state_dict(case_path(CASE), prefix="state."), CASE)
    return nets


def parts(variant, nets, reference: bool) -> FlowleyTorchParts:
    return FlowleyTorchParts(variant, nets, torch.device("cpu"), torch.float32, reference=reference)


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
@torch.inference_mode()
def test_golden_sampler_through_the_parts(variant, nets, reference):
    """The parts' conditions + Euler loop over the golden generator reproduce out.x1 and
    out.x1_denorm."""
    meta, t = load_case(CASE)
    p = parts(variant, nets, reference)
    B, lt = t["in.text_feat"].shape[:2]
    mask = torch.arange(lt)[None] < t["in.text_len"][:, None]
    visual = t["in.visual_feat"]
    # in.text_feat is already sequence-normalised; the parts normalise again (idempotent).
    conditions = p.dit_conditions(
        visual, None, t["in.text_feat"], None, t["in.x0"].shape[1], visual.shape[1], mask
    )
    x1 = p.sample(t["in.x0"], conditions, meta["args"]["num_steps"], meta["args"]["cfg_strength"])
    mode = "reference" if reference else "fast"
    assert_close(f"{CASE}.x1[parts:{mode}]", x1, t["out.x1"], 5e-4, 5e-3)
    unnorm = nets.generator.unnormalize(x1)
    assert_close(f"{CASE}.x1_denorm[parts:{mode}]", unnorm, t["out.x1_denorm"], 5e-4, 5e-3)


@torch.inference_mode()
def test_fast_matches_reference(variant, nets):
    fast = Pipeline(family_of(variant, parts(variant, nets, False)))
    ref = Pipeline(family_of(variant, parts(variant, nets, True)))
    g = torch.Generator().manual_seed(0)
    seq = variant.sequence_lengths(2.0)
    size = variant.clip.frame_size
    clip = torch.rand(seq.clip, 3, size, size, generator=g)
    text = fast.family.encode_text(["sheep bleating", "a dog barks twice"])
    # Padded to the generator's text length, as the released features.
    assert text.clip is None and text.t5.shape[1] == variant.generator.text_seq_len
    out = one_window(fast, text, 2.0, clip=clip, steps=10)
    expected = one_window(ref, text, 2.0, clip=clip, steps=10)
    assert output(out, "sync_features") is None
    assert_close("flowley modes:latent", out.latent, expected.latent, 5e-4, 5e-3)
    assert_close("flowley modes:audio", out.audio, expected.audio, 2e-3, 2e-2)
    assert out.audio.shape == (2, seq.audio_samples)


def test_negative_prompt_refused(capsys, tmp_path, sample_clip):
    code = cli.main(
        ["generate", str(sample_clip), "rain", "--variant", "tiny-flowley", "--out", str(tmp_path),
         "--negative-prompt", "music"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and "negative prompt" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_generate_writes_a_stem(tmp_path, capsys, sample_clip):
    code = cli.main(
        ["generate", str(sample_clip), "sheep bleating", "--variant", "tiny-flowley",
         "--out", str(tmp_path), "--duration", "1.0", "--no-video", "--quiet",
         "--precision", "fp32"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    (stem,) = tmp_path.iterdir()
    audio, rate = sf.read(stem)
    assert rate == 16000 and audio.shape == (16000,)
    assert 0 < abs(audio).max() <= 1


@torch.inference_mode()
def test_text_normalised_along_the_sequence(variant, nets):
    """As the released features: L2 over the tokens of each channel, so scaling one channel
    across all tokens changes nothing, while scaling one token does."""
    p = parts(variant, nets, reference=False)
    g = torch.Generator().manual_seed(3)
    c, seq = variant.generator, variant.sequence_lengths(2.0)
    text = torch.randn(1, c.text_seq_len, c.text_dim, generator=g)
    visual = torch.randn(1, seq.clip, c.video_dim, generator=g)
    mask = torch.arange(c.text_seq_len)[None] < 9

    def conditions(t):
        return p.dit_conditions(visual, None, t, None, seq.latent, seq.clip, mask)["global_c"]

    base = conditions(text)
    channel, token = torch.ones_like(text), torch.ones_like(text)
    channel[..., 5] = 3.0
    token[:, 5] = 10.0

    def change(t):
        return ((conditions(t) - base).norm() / base.norm()).item()

    assert change(text * channel) < 1e-5
    assert change(text * token) > 1e-3  # per-token normalisation: exactly 0
