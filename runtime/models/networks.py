"""Every network of a variant, constructed and loaded from the official files."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..variants import Variant
from . import clip as clip_mod
from . import flowley as flowley_mod
from . import generator as gen_mod
from . import vae as vae_mod
from . import video_encoder as venc_mod
from . import vocoder as voc_mod
from .checkpoint import read_state_dict
from .clip import ClipImageEncoder, ClipTextEncoder
from .flowley import Flowley
from .generator import Generator
from .t5 import T5TextEncoder, load_t5
from .vae import VAE
from .video_encoder import VideoEncoder
from .vocoder import BigVGAN

# Fixed seeds of the random variants' locally made weights, one per network.
TINY_SEEDS = {"generator": 1, "video_encoder": 2, "vae": 3, "vocoder": 4, "clip": 5}


@dataclass
class Networks:
    """Every network of a variant, loaded (None: the variant has no such network; Flowley has
    no video encoder and no CLIP text tower)."""

    generator: Generator | Flowley
    video_encoder: VideoEncoder | None
    vae: VAE
    vocoder: BigVGAN
    clip_text: ClipTextEncoder | None
    t5: T5TextEncoder | None = None
    clip_image: ClipImageEncoder | None = None


def decode_latent(
    generator: Generator, vae: VAE, vocoder: BigVGAN, latent: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised latent [B, N, E] -> (mel [B, M, 2N], waveform [B, samples]): unnormalised in
    the generator's dtype, then the VAE decoder and the vocoder in the VAE's dtype (the decoder
    may run in fp32 beside a bf16 generator). The torch backend and the exported graph both run
    this function."""
    z = generator.unnormalize(latent).to(vae.data_mean.dtype)
    mel = vae.decode(z.transpose(1, 2))
    return mel, vocoder(mel)[:, 0]


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
        if variant.flowley:
            generator = Flowley(variant.generator, seq.latent, seq.clip)
            video_encoder = clip_text = None
        else:
            generator = Generator(variant.generator, seq.latent, seq.clip, seq.sync)
            video_encoder = VideoEncoder(variant.video_encoder)
            clip_text = ClipTextEncoder(variant.clip)
        # Separation encodes the mixture: keep the VAE encoder that generation drops.
        vae = VAE(variant.vae, with_encoder=variant.separation)
        vocoder = BigVGAN(variant.vocoder)
        clip_image = ClipImageEncoder(variant.clip) if variant.uses_clip_video else None
    family = flowley_mod if variant.flowley else gen_mod
    load(
        generator,
        "generator",
        lambda: family.random_official_state(variant.generator, TINY_SEEDS["generator"]),
    )
    if video_encoder is not None:
        load(
            video_encoder,
            "video_encoder" if variant.selective else "synchformer",
            lambda: venc_mod.random_official_state(
                variant.video_encoder, TINY_SEEDS["video_encoder"]
            ),
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
    if clip_text is not None:
        clip_text.load_official(clip_state, clip_source)
    if clip_image is not None:
        clip_image.load_official(clip_state, clip_source)
    # The model only: the family builds the tokenizer once, whatever backend runs the encoder.
    t5 = load_t5(variant, paths.get("t5"), tokenizer=False) if variant.t5 is not None else None
    return Networks(generator, video_encoder, vae, vocoder, clip_text, t5, clip_image)
