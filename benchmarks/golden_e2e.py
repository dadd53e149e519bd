"""The golden `e2e_tiny` case (made by the official code) as a Pipeline and its inputs: the
networks built from the configuration its json records and loaded from its weights files
through the loaders real checkpoints use. The suite's fixtures and the GPU check (which runs
from a plain checkout, where pytest is not installed) both build it here.

    case = read_e2e(Path("tests/data/golden"))
    pipe = e2e_pipeline(case, device="cuda")
    out = pipe.synthesize([{"sync": case.frames}], case.text, pipe.family.plan(case.duration))
"""

import dataclasses
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..runtime.backends.torch_parts import TorchParts
from ..runtime.families import family_of
from ..runtime.families.flow import TextFeatures
from ..runtime.media import to_model_input
from ..runtime.models.checkpoint import read_state_dict
from ..runtime.models.generator import Generator
from ..runtime.models.networks import Networks
from ..runtime.models.vae import VAE
from ..runtime.models.video_encoder import VideoEncoder
from ..runtime.models.vocoder import BigVGAN, vocoder_config_from_hparams
from ..runtime.pipeline import Pipeline
from ..runtime.variants import (
    AUDIO_16K,
    AUDIO_44K,
    SYNC_FPS,
    TINY,
    GeneratorConfig,
    VAEConfig,
    Variant,
    VideoEncoderConfig,
)

SEQ_KWARGS = ("latent_seq_len", "clip_seq_len", "sync_seq_len")


def generator_config(kwargs: dict, separation: bool = False) -> tuple[GeneratorConfig, tuple]:
    """GeneratorConfig + (latent, clip, sync) lengths from official `MMAudio(**kwargs)`, or
    `MMAudioSep(**kwargs)` with `separation` (same kwargs; the input conv reads 2C channels)."""
    fields = {f.name for f in dataclasses.fields(GeneratorConfig)} - {"mixture_dim"}
    if set(kwargs) != fields | set(SEQ_KWARGS):
        raise ValueError(f"unmapped constructor kwargs: {set(kwargs) ^ (fields | set(SEQ_KWARGS))}")
    config = GeneratorConfig(
        **{k: kwargs[k] for k in fields},
        mixture_dim=kwargs["latent_dim"] if separation else 0,
    )
    return config, tuple(kwargs[k] for k in SEQ_KWARGS)


def video_encoder_config(kwargs: dict, vit_overrides: dict) -> VideoEncoderConfig:
    """VideoEncoderConfig from official `TextSynch(**kwargs)` + the MotionFormer yaml overrides."""
    return VideoEncoderConfig(
        embed_dim=vit_overrides["VIT.EMBED_DIM"],
        depth=vit_overrides["VIT.DEPTH"],
        num_heads=vit_overrides["VIT.NUM_HEADS"],
        text_dim=kwargs["text_dim"],
        num_sup_tokens=kwargs["num_sup_text_tokens"],
        xattn_depth=kwargs["xattn_depth"],
    )


def audio_config(num_mels: int):
    """The AudioConfig of the official mode ("16k": 80 mels, "44k": 128) a mel width implies."""
    modes = {audio.num_mels: audio for audio in (AUDIO_16K, AUDIO_44K)}
    if num_mels not in modes:
        raise ValueError(f"no official mode has {num_mels} mel bins")
    return modes[num_mels]


def read_case(folder: Path, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(json sidecar, tensors) of a golden case in `folder`."""
    path = Path(folder) / f"{name}.safetensors"
    return json.loads(path.with_suffix(".json").read_text()), load_file(str(path))


@dataclasses.dataclass
class E2ECase:
    """e2e_tiny: json, tensors, its duration (the json's exact number; the tensor holds it in
    float32), sync frames [1, T, 3, 224, 224] in [-1, 1], text features, and its folder."""

    meta: dict
    tensors: dict[str, torch.Tensor]
    duration: float
    frames: torch.Tensor
    text: TextFeatures
    folder: Path


def read_e2e(folder: Path) -> E2ECase:
    meta, tensors = read_case(folder, "e2e_tiny")
    duration = meta["args"]["duration"]
    stored = tensors["in.duration"]
    if torch.tensor(duration, dtype=stored.dtype) != stored:
        raise ValueError(f"e2e_tiny records duration {duration} but stores {stored}")
    # "official load_video(preproc_video.mp4, 2.0)...": the first frames of that video's case.
    source = re.search(r"load_video\((\w+)\.mp4", meta["inputs"]["in.sync_video"]).group(1)
    u8 = read_case(folder, source)[1]["out.sync_frames_u8"]
    count = int(SYNC_FPS * duration)  # the official load_video's sync frame count
    if len(u8) < count:
        raise ValueError(f"{source} holds {len(u8)} frames, e2e_tiny needs {count}")
    text = TextFeatures(
        clip=tensors["in.text_clip_f"],
        negative=tensors["in.neg_text_clip_f"],
        t5=tensors["in.text_t5_f"],
        t5_mask=tensors["in.text_t5_mask"],
    )
    return E2ECase(meta, tensors, duration, to_model_input(u8[:count])[None], text, Path(folder))


def _weights_case(meta: dict, role: str) -> str:
    """`"gen_small_v1.safetensors (state.*)"` -> `"gen_small_v1"`."""
    return meta["weights"][role].split(".safetensors")[0]


def e2e_variant(case: E2ECase) -> Variant:
    """`tiny` with every network's configuration as e2e_tiny's json records it."""
    cons = case.meta["constructors"]
    generator, _ = generator_config(cons["generator"]["kwargs"])
    venc = cons["video_enc"]
    voc = json.loads((case.folder / f"{_weights_case(case.meta, 'vocoder')}.json").read_text())
    vae = VAEConfig(**cons["vae"]["kwargs"])
    return dataclasses.replace(
        TINY,
        name="golden e2e_tiny",
        audio=audio_config(vae.data_dim),
        generator=generator,
        video_encoder=video_encoder_config(venc["kwargs"], venc["motionformer_overrides"]),
        vae=vae,
        vocoder=vocoder_config_from_hparams(voc["config"], "bigvgan golden"),
    )


def e2e_networks(case: E2ECase, variant: Variant) -> Networks:
    """Fresh networks of `variant` (from `e2e_variant`), each loaded from its golden file."""
    _, lengths = generator_config(case.meta["constructors"]["generator"]["kwargs"])
    with torch.device("meta"):
        nets = Networks(
            generator=Generator(variant.generator, *lengths),
            video_encoder=VideoEncoder(variant.video_encoder),
            vae=VAE(variant.vae),
            vocoder=BigVGAN(variant.vocoder),
            clip_text=None,  # the case gives CLIP text features
        )
    for role, net in (
        ("generator", nets.generator),
        ("video_enc", nets.video_encoder),
        ("vae", nets.vae),
        ("vocoder", nets.vocoder),
    ):
        name = _weights_case(case.meta, role)
        state = read_state_dict(case.folder / f"{name}.safetensors", prefix="state.")
        if role == "vae":  # the golden VAE file also holds constants only the decoder uses
            state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
        net.load_official(state, name)
    return nets


def e2e_pipeline(
    case: E2ECase,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **options,
) -> Pipeline:
    """A Pipeline over e2e_tiny's golden networks (`options`: TorchParts' reference,
    cuda_graphs, ...)."""
    variant = e2e_variant(case)
    nets = e2e_networks(case, variant)
    parts = TorchParts(variant, nets, torch.device(device), dtype, **options)
    return Pipeline(family_of(variant, parts))
