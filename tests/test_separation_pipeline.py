"""Separation end to end: the golden `sep_e2e_tiny` cases (official `mmaudiosep.separate`,
video+text and text-only queries) through `Pipeline.synthesize`, fast and reference modes, and
MMAudioSep's own video reader (`sep_preproc_video`)."""

import dataclasses
import hashlib
import json

import pytest
import torch
from golden import (
    assert_close,
    audio_config,
    case_path,
    check_seq_cfg,
    generator_config,
    golden_file,
    golden_video,
    load_case,
    recorded,
    setting,
    stored_frames,
    sync_frames_from_u8,
    vae_from_call,
)
from selva_rt.runtime import media
from selva_rt.runtime.backends.torch_parts import TorchParts
from selva_rt.runtime.families import family_of
from selva_rt.runtime.families.flow import TextFeatures
from selva_rt.runtime.models.checkpoint import read_state_dict
from selva_rt.runtime.models.clip import ClipImageEncoder
from selva_rt.runtime.models.generator import Generator
from selva_rt.runtime.models.networks import Networks
from selva_rt.runtime.models.vae import VAE
from selva_rt.runtime.models.video_encoder import VideoEncoder
from selva_rt.runtime.models.vocoder import BigVGAN, vocoder_config_from_hparams
from selva_rt.runtime.pipeline import Pipeline
from selva_rt.runtime.variants import ClipConfig, VideoEncoderConfig, get_variant
from synth import one_window, output

torch.set_num_threads(1)

TOL = {
    "clip_features": (1e-4, 1e-3),
    "sync_features": (1e-4, 1e-3),
    "x_cond": (1e-4, 1e-3),
    "x1": (5e-4, 5e-3),
    "x1_unnorm": (5e-4, 5e-3),
    "mel": (1e-4, 5e-3),
    "audio": (2e-3, 2e-2),
}


def golden_sep_pipeline(meta: dict, reference: bool = False) -> Pipeline:
    """A Pipeline over sep_e2e_tiny's five checkpoints, each through the loader of the real
    file it stands for, with the sizes its json records."""
    cons = meta["constructors"]
    gen_config, lengths = generator_config(cons["net"]["kwargs"], separation=True)
    mf = cons["synchformer"]["motionformer_overrides"]
    assert cons["clip"]["quick_gelu"] is True  # ClipImageEncoder's activation (DFN5B's)
    vision = cons["clip"]["config"]["vision_cfg"]
    clip_config = ClipConfig(
        embed_dim=cons["clip"]["config"]["embed_dim"],
        image_width=vision["width"],
        image_layers=vision["layers"],
        image_heads=vision["width"] // vision["head_width"],
        patch_size=vision["patch_size"],
        image_size=vision["image_size"],
    )
    # "BigVGAN(ckpt) with bigvgan_vocoder.yml, upsample_initial_channel=64 ...": the yml is the
    # bigvgan_16k case's config, with its own channel count.
    voc = cons["vocoder"]["cls"]
    assert "bigvgan_vocoder.yml" in voc
    voc_hparams = json.loads(golden_file("bigvgan_16k.json").read_text())["config"]
    voc_hparams |= {"upsample_initial_channel": setting(voc, "upsample_initial_channel")}
    voc_config = vocoder_config_from_hparams(voc_hparams, "bigvgan golden")
    vae_config = vae_from_call(cons["vae"]["cls"])
    with torch.device("meta"):
        nets = Networks(
            generator=Generator(gen_config, *lengths),
            video_encoder=VideoEncoder(
                VideoEncoderConfig(
                    embed_dim=mf["VIT.EMBED_DIM"],
                    depth=mf["VIT.DEPTH"],
                    num_heads=mf["VIT.NUM_HEADS"],
                    num_sup_tokens=0,
                    xattn_depth=0,
                )
            ),
            vae=VAE(vae_config, with_encoder=True),
            vocoder=BigVGAN(voc_config),
            clip_text=None,  # the case gives CLIP text features
            clip_image=ClipImageEncoder(clip_config),
        )
    path = case_path("sep_e2e_tiny")
    for prefix, net in (
        ("net", nets.generator),
        ("synchformer", nets.video_encoder),
        ("vae", nets.vae),
        ("vocoder", nets.vocoder),
        ("clip", nets.clip_image),
    ):
        net.load_official(
            read_state_dict(path, prefix=f"state.{prefix}."), f"sep_e2e_tiny {prefix}"
        )
    variant = dataclasses.replace(
        get_variant("tiny-sep"),
        audio=audio_config(vae_config.data_dim),
        generator=gen_config,
        video_encoder=nets.video_encoder.config,
        vae=vae_config,
        vocoder=voc_config,
        clip=clip_config,
    )
    parts = TorchParts(variant, nets, torch.device("cpu"), torch.float32, reference=reference)
    return Pipeline(family_of(variant, parts))


def duration_of(meta: dict, tensors: dict) -> float:
    return recorded(meta["args"]["duration"], tensors["in.duration"], f"{meta['case']} duration")


@pytest.fixture(scope="module")
def clip_frames():
    """The official load_video's CLIP frames (the video and duration sep_e2e_tiny records), from
    our decoder, proven bit-exact by the sha256 of every uint8 frame that the case records."""
    meta, T = load_case("sep_e2e_tiny")
    video = golden_video(meta["inputs"]["in.clip_video"])
    frames = media.decode_video(video, duration=duration_of(meta, T), need_clip=True).clip_frames
    digests = [hashlib.sha256(f.numpy().tobytes()).hexdigest() for f in frames]
    assert digests == meta["inputs"]["clip_frames_u8_sha256"]
    return frames


def run_case(case: str, clip_frames, reference: bool):
    meta, T = load_case(case)
    main, _ = load_case("sep_e2e_tiny")  # the weights
    pipe = golden_sep_pipeline(main, reference)
    duration = duration_of(meta, T)
    check_seq_cfg(pipe.variant.sequence_lengths(duration), meta["seq_cfg"])
    with_video = "out.sync_features" in T
    sync = clip = None
    if with_video:  # "... = preproc_video.safetensors:out.sync_frames_u8[0:50] mapped by ..."
        (u8,) = stored_frames(meta["inputs"]["in.sync_video"])
        sync = sync_frames_from_u8(u8)[None]
        clip = clip_frames.float() / 255
    text = TextFeatures(clip=T["in.text_clip_f"], negative=T["in.neg_text_clip_f"])
    args = meta["args"]
    # The pipeline separates one mixture per call (the official demo's batch of 1).
    assert args["batch"] == 1 and args["seed"] == int(T["in.rng_seed"])
    out = one_window(
        pipe,
        text,
        duration,
        sync=sync,
        clip=clip,
        seed=args["seed"],
        steps=args["num_steps"],
        cfg=args["cfg_strength"],
        mixture=T["in.mixture"],
    )
    return pipe, out, T


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
@pytest.mark.parametrize("case", ["sep_e2e_tiny", "sep_e2e_tiny_textonly"])
def test_sep_e2e_golden(case, reference, clip_frames):
    pipe, out, T = run_case(case, clip_frames, reference)
    name = f"{case}[{'reference' if reference else 'fast'}]"
    g = pipe.parts.nets.generator
    if "out.sync_features" in T:
        assert_close(f"{name}:sync_features", output(out, "sync_features"), T["out.sync_features"],
                     *TOL["sync_features"])  # fmt: skip
        clip_f = pipe.parts.clip_image(clip_frames.float() / 255)[None]
        assert_close(f"{name}:clip_features", clip_f, T["out.clip_features"],
                     *TOL["clip_features"])  # fmt: skip
    else:
        assert output(out, "sync_features") is None
    mean, std = pipe.parts.mixture_encoder(T["in.mixture"])
    assert_close(f"{name}:mix_mel", pipe.parts.mixture.mel(T["in.mixture"]), T["out.mix_mel"],
                 1e-5, 1e-4)  # fmt: skip
    assert_close(f"{name}:mix_mean", mean, T["out.mix_mean"], 1e-4, 1e-3)
    assert_close(f"{name}:mix_std", std, T["out.mix_std"], 1e-4, 1e-3)
    assert_close(f"{name}:x_cond", output(out, "mixture_latent"), T["out.x_cond"], *TOL["x_cond"])
    assert torch.equal(out.noise, T["out.x0"]), "x0 must be the official second draw"
    assert_close(f"{name}:x1", out.latent, T["out.x1"], *TOL["x1"])
    assert_close(f"{name}:x1_unnorm", g.unnormalize(out.latent), T["out.x1_unnorm"],
                 *TOL["x1_unnorm"])  # fmt: skip
    assert_close(f"{name}:mel", output(out, "mel"), T["out.mel"], *TOL["mel"])
    assert_close(f"{name}:audio", out.audio, T["out.audio"][:, 0], *TOL["audio"])


def test_sep_preproc_video_center_crops_sync_frames():
    """MMAudioSep's reader: short side to 224, centre crop; every frame's sha256 matches."""
    meta, T = load_case("sep_preproc_video")
    duration = float(T["out.duration_sec"])  # float64: the exact number
    path = golden_video(meta["video_file"])
    video = media.decode_video(path, duration=duration, sync_center_crop=True)
    frames = video.sync_frames
    digests = [hashlib.sha256(f.numpy().tobytes()).hexdigest() for f in frames]
    assert digests == meta["sync_frames_u8_sha256"]
    index = T["out.sync_frames_subset_index"]
    assert torch.equal(frames[index], T["out.sync_frames_u8_subset"])
    means = media.to_model_input(frames).mean(dim=(1, 2, 3))
    assert torch.allclose(means, T["out.sync_frames_mean_per_frame"], atol=1e-6)
    if video.size[0] != video.size[1]:  # SELVA's reader squashes instead of cropping
        squashed = media.decode_video(path, duration=duration).sync_frames
        assert (squashed.float() - frames.float()).abs().mean() > 5


@torch.inference_mode()
def test_zero_extended_mmaudio_separates_as_mmaudio_generates_through_the_pipeline():
    """The oracle end to end: tiny-sep's pipeline with a zero-widened MMAudio generator gives
    bit-identical stems for unrelated mixtures (silence, a tone, loud noise), and its latent is
    what the MMAudio generator samples from the same noise and conditions."""
    from selva_rt.runtime.models.generator import Conditions
    from selva_rt.runtime.models.generator import random_official_state as random_generator
    from selva_rt.runtime.models.networks import build_networks
    from selva_rt.runtime.sampler import euler_sample

    variant = get_variant("tiny-sep")
    nets = build_networks(variant, {})
    base = dataclasses.replace(variant.generator, mixture_dim=0)
    state = random_generator(base, seed=11)
    w = state["audio_input_proj.0.weight"]
    wide = dict(state, **{"audio_input_proj.0.weight": torch.cat([w, torch.zeros_like(w)], 1)})
    nets.generator.load_official(wide, "zero-widened MMAudio")
    pipe = Pipeline(
        family_of(variant, TorchParts(variant, nets, torch.device("cpu"), torch.float32))
    )
    seq = variant.sequence_lengths(1.0)
    g = torch.Generator().manual_seed(5)
    mixtures = [
        torch.zeros(1, seq.audio_samples),
        0.5 * torch.sin(torch.arange(seq.audio_samples) * 0.07)[None],
        3 * torch.randn(1, seq.audio_samples, generator=g),
    ]
    sync = torch.rand(1, 25, 3, 224, 224, generator=g) * 2 - 1
    text = pipe.family.encode_text(["dog barking", "rain"])
    outs = [one_window(pipe, text, 1.0, sync=sync, steps=4, mixture=m, seed=3) for m in mixtures]
    assert not torch.equal(output(outs[0], "mixture_latent"), output(outs[2], "mixture_latent"))
    for out in outs[1:]:
        assert torch.equal(out.audio, outs[0].audio)

    mm = Generator(base, seq.latent, seq.clip, seq.sync).load_official(state, "MMAudio").eval()
    conditions = pipe.parts.dit_conditions(
        None, output(outs[0], "sync_features"), text.clip, text.negative.expand(2, -1, -1),
        seq.latent, seq.clip,
    )  # fmt: skip
    both = Conditions(*(conditions[k] for k in Conditions._fields))
    x1 = euler_sample(lambda t, x: mm.cfg_velocity_batched(x, t, both, 4.5), outs[0].noise, 4)
    assert torch.equal(x1, outs[0].latent)
