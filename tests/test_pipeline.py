"""The pipeline end to end: the golden `e2e_tiny` case through the code path `Pipeline` runs,
and the properties of multi-prompt calls."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import (
    GOLDEN,
    assert_close,
    generator_config,
    load_case,
    sync_frames_from_u8,
    video_encoder_config,
)
from selva_rt.runtime import media
from selva_rt.runtime.backends.torch_parts import TorchParts
from selva_rt.runtime.models.checkpoint import read_state_dict
from selva_rt.runtime.models.generator import Generator
from selva_rt.runtime.models.networks import Networks
from selva_rt.runtime.models.vae import VAE
from selva_rt.runtime.models.video_encoder import VideoEncoder
from selva_rt.runtime.models.vocoder import BigVGAN, vocoder_config_from_hparams
from selva_rt.runtime.pipeline import Pipeline, TextFeatures
from selva_rt.runtime.variants import TINY, VAEConfig

torch.set_num_threads(1)

# Tolerances of the golden README: intermediates as their unit cases, audio 2e-3.
TOL = {
    "sync_features": (1e-4, 1e-3),
    "x1": (5e-4, 5e-3),
    "x1_unnorm": (5e-4, 5e-3),
    "mel": (1e-4, 5e-3),
    "audio": (2e-3, 2e-2),
}


def weights_case(meta: dict, role: str) -> str:
    """`"gen_small_v1.safetensors (state.*)"` -> `"gen_small_v1"`."""
    return meta["weights"][role].split(".safetensors")[0]


def golden_pipeline(meta: dict, reference: bool = False) -> Pipeline:
    """A Pipeline over the networks of e2e_tiny, each loaded from its golden weights file with
    the configuration its json records, through the same loaders real checkpoints use."""
    cons = meta["constructors"]
    gen_config, lengths = generator_config(cons["generator"]["kwargs"])
    venc = cons["video_enc"]
    voc_meta = json.loads((GOLDEN / f"{weights_case(meta, 'vocoder')}.json").read_text())
    with torch.device("meta"):
        nets = Networks(
            generator=Generator(gen_config, *lengths),
            video_encoder=VideoEncoder(
                video_encoder_config(venc["kwargs"], venc["motionformer_overrides"])
            ),
            vae=VAE(VAEConfig(**cons["vae"]["kwargs"])),
            vocoder=BigVGAN(vocoder_config_from_hparams(voc_meta["config"], "bigvgan golden")),
            clip_text=None,  # the case gives CLIP text features
        )
    for role, net in (
        ("generator", nets.generator),
        ("video_enc", nets.video_encoder),
        ("vae", nets.vae),
        ("vocoder", nets.vocoder),
    ):
        case = weights_case(meta, role)
        state = read_state_dict(GOLDEN / f"{case}.safetensors", prefix="state.")
        if role == "vae":  # the golden VAE file also holds constants only the decoder uses
            state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
        net.load_official(state, case)
    parts = TorchParts(TINY, nets, torch.device("cpu"), torch.float32, reference=reference)
    return Pipeline(TINY, parts, tokenizers=None)


@pytest.fixture(scope="module")
def e2e():
    meta, tensors = load_case("e2e_tiny")
    # "official load_video(preproc_video.mp4, 2.0)...": the frames are those of that case.
    source = re.search(r"load_video\((\w+)\.mp4", meta["inputs"]["in.sync_video"]).group(1)
    _, video = load_case(source)
    return meta, tensors, video


def run_case(meta: dict, T: dict, video: dict, reference: bool = False):
    pipe = golden_pipeline(meta, reference)
    duration = float(T["in.duration"])
    frames = sync_frames_from_u8(video["out.sync_frames_u8"][: int(25 * duration)])[None]
    text = TextFeatures(
        clip=T["in.text_clip_f"],
        negative=T["in.neg_text_clip_f"],
        t5=T["in.text_t5_f"],
        t5_mask=T["in.text_t5_mask"],
    )
    args = meta["args"]
    return pipe, pipe.synthesize(
        frames,
        text,
        duration=duration,
        seed=args["seed"],
        steps=args["num_steps"],
        cfg=args["cfg_strength"],
    )


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
def test_e2e_golden(e2e, reference):
    meta, T, video = e2e
    pipe, out = run_case(meta, T, video, reference)
    name = f"e2e_tiny[{'reference' if reference else 'fast'}]"
    assert_close(
        f"{name}:sync_features", out.sync_features, T["out.sync_features"], *TOL["sync_features"]
    )
    assert torch.equal(out.noise, T["out.x0"]), "x0 must be the official seeded draw"
    assert_close(f"{name}:x1", out.latent, T["out.x1"], *TOL["x1"])
    unnorm = pipe.parts.nets.generator.unnormalize(out.latent)
    assert_close(f"{name}:x1_unnorm", unnorm, T["out.x1_unnorm"], *TOL["x1_unnorm"])
    assert_close(f"{name}:mel", out.mel, T["out.mel"], *TOL["mel"])
    assert_close(f"{name}:audio", out.audio, T["out.audio"][:, 0], *TOL["audio"])


def test_mmaudio_structure_runs_clip_video_and_plain_synchformer():
    """The plain MMAudio path (CLIP video features, text-free Synchformer, no Flan-T5) on a tiny
    random variant: every part runs and the prompt still steers through CLIP text."""
    import dataclasses

    from selva_rt.runtime.models.networks import build_networks
    from selva_rt.runtime.variants import ClipConfig, VideoEncoderConfig

    variant = dataclasses.replace(
        TINY,
        name="tiny-mmaudio",
        video_encoder=VideoEncoderConfig(
            embed_dim=64, depth=1, num_heads=2, num_sup_tokens=0, xattn_depth=0
        ),
        t5=None,
        uses_clip_video=True,
        clip=ClipConfig(
            text_width=40,
            text_layers=1,
            text_heads=2,
            embed_dim=48,
            image_width=32,
            image_layers=1,
            image_heads=2,
        ),
    )
    nets = build_networks(variant, {})
    assert nets.t5 is None and nets.clip_image is not None
    pipe = Pipeline(variant, TorchParts(variant, nets, torch.device("cpu"), torch.float32))
    sample = Path(media.__file__).parent / "assets" / "sample.mp4"
    result = pipe.generate(sample, ["rain", "thunder"], duration=1.0)
    assert result.audio.shape == (2, 16000) and np.isfinite(result.audio).all()
    assert np.abs(result.audio[0] - result.audio[1]).max() > 1e-4
