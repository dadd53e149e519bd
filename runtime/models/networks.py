"""Every network of a variant, constructed and loaded from the official files."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..variants import Variant
from . import clip as clip_mod
from . import generator as gen_mod
from . import vae as vae_mod
from . import video_encoder as venc_mod
from . import vocoder as voc_mod
from .checkpoint import read_state_dict
from .clip import ClipImageEncoder, ClipTextEncoder
from .generator import Generator
from .t5 import T5TextEncoder, load_t5
from .vae import VAE
from .video_encoder import VideoEncoder
from .vocoder import BigVGAN

# Fixed seeds of the `tiny` variant's locally made weights, one per network.
TINY_SEEDS = {"generator": 1, "video_encoder": 2, "vae": 3, "vocoder": 4, "clip": 5}


@dataclass
class Networks:
    """Every network of a variant, loaded."""

    generator: Generator
    video_encoder: VideoEncoder
    vae: VAE
    vocoder: BigVGAN
    clip_text: ClipTextEncoder
    t5: T5TextEncoder | None = None
    clip_image: ClipImageEncoder | None = None


def build_networks(variant: Variant, paths: dict[str, Path]) -> Networks:
    """Construct every network of `variant` and load its weights (fp32, CPU).

    `paths` maps weight roles to local files (`weights.resolve`); the `tiny` variant makes its
    weights locally from fixed seeds, in the official layout, through the same loaders.
    """

    def load(net, role: str, make: Callable[[], dict], entry: str | None = None):
        if variant.random_weights:
            return net.load_official(make(), f"{variant.name} random {role} weights")
        return net.load_official(read_state_dict(paths[role], entry=entry), str(paths[role]))

    seq = variant.sequence_lengths()
    with torch.device("meta"):  # nothing is allocated until the weights are assigned
        generator = Generator(variant.generator, seq.latent, seq.clip, seq.sync)
        video_encoder = VideoEncoder(variant.video_encoder)
        # Separation encodes the mixture: keep the VAE encoder that generation drops.
        vae = VAE(variant.vae, with_encoder=variant.separation)
        vocoder = BigVGAN(variant.vocoder)
        clip_text = ClipTextEncoder(variant.clip)
        clip_image = ClipImageEncoder(variant.clip) if variant.uses_clip_video else None
    load(
        generator,
        "generator",
        lambda: gen_mod.random_official_state(variant.generator, TINY_SEEDS["generator"]),
    )
    load(
        video_encoder,
        "video_encoder" if variant.selective else "synchformer",
        lambda: venc_mod.random_official_state(variant.video_encoder, TINY_SEEDS["video_encoder"]),
    )
    load(vae, "vae", lambda: vae_mod.random_official_state(variant.vae, TINY_SEEDS["vae"]))
    load(
        vocoder,
        "vocoder",
        lambda: voc_mod.random_official_state(variant.vocoder, TINY_SEEDS["vocoder"]),
        entry="generator",
    )
    # One open_clip file holds both towers; read it once.
    clip_state = (
        clip_mod.random_official_state(variant.clip, TINY_SEEDS["clip"])
        if variant.random_weights
        else read_state_dict(paths["clip"])
    )
    clip_source = (
        f"{variant.name} random clip weights" if variant.random_weights else str(paths.get("clip"))
    )
    clip_text.load_official(clip_state, clip_source)
    if clip_image is not None:
        clip_image.load_official(clip_state, clip_source)
    t5 = load_t5(variant, paths.get("t5")) if variant.t5 is not None else None
    return Networks(generator, video_encoder, vae, vocoder, clip_text, t5, clip_image)
