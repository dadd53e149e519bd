"""The benchmarks' synthetic request: prompts, sync frames and the other inputs a variant takes,
deterministic from a seed (the same in the bench, its low-memory children and the GPU check)."""

import torch

from ..runtime import media
from ..runtime.variants import SYNC_SIZE

PROMPTS = ("dog barking", "car horn honking", "sheep bleating", "rain on a window")


def synthetic_frames(duration: float, seed: int) -> torch.Tensor:
    """[1, int(25 * duration), 3, 224, 224] float32 in [-1, 1], deterministic."""
    frames = int(25 * duration)
    g = torch.Generator().manual_seed(seed)
    u8 = torch.randint(0, 256, (frames, 3, SYNC_SIZE, SYNC_SIZE), dtype=torch.uint8, generator=g)
    return media.to_model_input(u8)[None]


def synthetic_extras(variant, duration: float, seed: int) -> dict[str, torch.Tensor]:
    """The other inputs `synthesize` takes for `variant`: CLIP frames [8 * duration, 3, S, S]
    in [0, 1] (plain MMAudio, MMAudioSep, Flowley; S = variant.clip.frame_size), and for
    separation a noise mixture [1, S] at the variant's rate (the encoder's cost does not depend
    on the content)."""
    g = torch.Generator().manual_seed(seed + 1)
    seq = variant.sequence_lengths(duration)
    extras, size = {}, variant.clip.frame_size
    if variant.uses_clip_video:
        extras["clip"] = torch.rand(seq.clip, 3, size, size, generator=g)
    if variant.separation:
        extras["mixture"] = 0.3 * torch.randn(1, seq.audio_samples, generator=g)
    return extras
