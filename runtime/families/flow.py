"""What the flow-matching families (MMAudio with SELVA and MMAudioSep, Flowley) share: Gaussian
noise from the seeded generator, the Euler loop (one window: the backend's own `sample`, a CUDA
graph where it has one; several: in lockstep, runtime/windows.py) and the VAE + BigVGAN decoder.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..backends import Parts, Progress
from ..models.clip_tokenizer import ClipTokenizer
from ..models.t5 import load_tokenizer
from ..variants import Variant
from ..windows import Layout, decode_windows, plan_windows, sample_windows
from .family import Needs, Run


@dataclass
class TextFeatures:
    """Encoded prompts: clip [P, 77, W] and negative [1, 77, W] CLIP text features (None where
    the generator reads Flan-T5 only: Flowley); t5 [P, L, W5] with t5_mask [P, L] bool (True =
    token) where the variant reads Flan-T5 (SELVA, Flowley)."""

    clip: torch.Tensor | None
    negative: torch.Tensor | None
    t5: torch.Tensor | None = None
    t5_mask: torch.Tensor | None = None

    @property
    def prompts(self) -> int:
        return (self.clip if self.clip is not None else self.t5).shape[0]

    def repeat(self, windows: int) -> "TextFeatures":
        """The prompts' rows once per window, window-major (row j * P + p)."""

        def rows(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.repeat(windows, *(1,) * (t.dim() - 1))

        return TextFeatures(rows(self.clip), self.negative, rows(self.t5), rows(self.t5_mask))


class FlowFamily:
    """The flow-matching half of a family; subclasses add text handling and conditions."""

    joins_requests = True

    def __init__(self, variant: Variant, parts: Parts, tokenizers: "Tokenizers | None" = None):
        self.variant, self.parts = variant, parts
        self.tokenizers = tokenizers or Tokenizers.load(variant)
        self.device, self.dtype, self.precision = parts.device, parts.dtype, parts.precision
        self.sample_rate = variant.audio.sample_rate
        self.needs = self.needs_of(variant)

    @staticmethod
    def needs_of(variant: Variant) -> Needs:
        """Sync frames at 25 fps always (decoding counts them for the duration); CLIP frames
        at 8 fps where the generator reads CLIP image features; the mixture for MMAudioSep."""
        return Needs(
            picture={
                "need_clip": variant.uses_clip_video,
                "clip_size": variant.clip.frame_size,
                "sync_center_crop": variant.sync_center_crop,
            },
            mixture=variant.separation,
        )

    def plan(self, duration: float) -> Layout:
        return plan_windows(duration, self.variant.audio)

    @property
    def identity(self) -> dict | None:
        """The variant, its precision and the parts' own description (backend, mode, weights);
        None where the parts have none (they then share nothing between requests)."""
        parts = getattr(self.parts, "identity", None)
        if parts is None:
            return None
        v = self.variant
        return {"variant": v.name, "random_weights": v.random_weights, "parts": parts}

    def encode_text(self, prompts: Sequence[str], negative_prompt: str = "") -> TextFeatures:
        """Each prompt encoded alone, then joined: a prompt's features are the same whatever
        prompts share its request (so a cache can hold them per prompt)."""
        return self.join_text([self.encode_prompt(p, negative_prompt) for p in prompts])

    def join_text(self, prompts: Sequence[dict[str, torch.Tensor]]) -> TextFeatures:
        """`encode_prompt` results (clip [1, 77, W] and negative [1, 77, W] where the
        generator reads CLIP text; t5 [1, L, W5] and t5_mask [1, L] where it reads Flan-T5)
        -> TextFeatures of P prompts: Flan-T5 states right-padded with zeros to the longest
        (their mask False, as the tokenizer pads a batch); the first prompt's negative."""
        first = prompts[0]
        text = TextFeatures(clip=None, negative=first.get("negative"))
        if "clip" in first:
            text.clip = torch.cat([p["clip"] for p in prompts])
        if "t5" in first:
            length = max(p["t5"].shape[1] for p in prompts)
            text.t5 = torch.cat([_pad(p["t5"], length) for p in prompts])
            text.t5_mask = torch.cat([_pad(p["t5_mask"], length) for p in prompts])
        return text

    def join_conditions(self, conditions: list[dict], rows: list[int]) -> dict:
        """Several requests' conditions as one batch of their rows (`rows` each: P, or W*P
        for W windows): the [cond; uncond] entries joined as all conditional rows, then all
        unconditional ones; the entries with one row per request row (the mixture's) joined
        as they are. The sampler then runs every request's rows at once."""
        joined = {}
        for key in conditions[0]:
            parts = [c[key] for c in conditions]
            if all(p.shape[0] == 2 * n for p, n in zip(parts, rows, strict=True)):
                halves = [p.split(n) for p, n in zip(parts, rows, strict=True)]
                joined[key] = torch.cat([h[0] for h in halves] + [h[1] for h in halves])
            elif all(p.shape[0] == n for p, n in zip(parts, rows, strict=True)):
                joined[key] = torch.cat(parts)
            else:
                raise ValueError(f"condition {key!r} has neither P nor 2P rows per request")
        return joined

    def noise(self, prompts: int, layout: Layout, run: Run) -> torch.Tensor:
        """x0 [P, total, E]: one seeded draw for the whole latent (a window's noise is its
        slice), the same for every prompt."""
        shape = (1, layout.total, self.variant.generator.latent_dim)
        x0 = torch.randn(shape, dtype=self.dtype, device=self.device, generator=run.rng)
        return x0.repeat(prompts, 1, 1)

    def sample(
        self,
        x0: torch.Tensor,
        conditions: dict[str, torch.Tensor],
        layout: Layout,
        steps: int,
        cfg: float,
        progress: Progress | None,
        run: Run,
    ) -> torch.Tensor:
        if len(layout) == 1:
            return self.parts.sample(x0, conditions, steps, cfg, progress)
        return sample_windows(self.parts, x0, conditions, layout, steps, cfg, progress)

    def decode(self, x1: torch.Tensor, layout: Layout, run: Run) -> torch.Tensor:
        if len(layout) > 1:
            return decode_windows(self.parts, x1, layout)
        mel, audio = self.parts.decoder(x1)
        run.trace["mel"] = mel
        return audio


def _pad(t: torch.Tensor, length: int) -> torch.Tensor:
    """[1, L, ...] -> [1, length, ...], zeros (False) after the L rows."""
    pad = t.new_zeros(t.shape[0], length - t.shape[1], *t.shape[2:])
    return torch.cat([t, pad], dim=1)


class Tokenizers:
    """Text to token ids, on the CPU, whatever backend runs the encoders."""

    def __init__(self, clip: ClipTokenizer, t5=None):
        self.clip = clip
        self._t5 = t5  # a T5TextEncoder holding only its tokenizer

    @classmethod
    def load(cls, variant: Variant) -> "Tokenizers":
        """The variant's tokenizers: CLIP's (bundled) and Flan-T5's where it reads Flan-T5
        (from the weights folder; made locally for random-weight variants)."""
        return cls(ClipTokenizer(), t5_tokenizer(variant))

    def t5(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._t5.tokenize(prompts)


def t5_tokenizer(variant: Variant):
    """The Flan-T5 tokenizer of `variant` (a T5TextEncoder without a model), or None."""
    from .. import weights

    if variant.t5 is None:
        return None
    folder = None if variant.random_weights else weights.local_path(variant.file("t5")).parent
    return load_tokenizer(variant, folder)
