"""The VATT family ("Tell What You Hear From What You See", VATT.md): eva02 features of the
picture at 5 fps, an LLM (Vicuna-7B or gemma-2b) turning 10 pooled video tokens and the prompt
into the condition, MaskGIT over 4 x 500 Encodec tokens per 10 s, Encodec's 16 kHz decoder.

    features    eva02 over the window's 5 fps crops (media.FrameTrack): {"video": [50, 768]}
    conditions  the converter per (window, prompt): states [10 + L, hidden] and a pad mask
    noise       every token MASK
    sample      MaskGIT (runtime/maskgit.py): per-prompt CPU generators seeded as the official
                torch.manual_seed(seed), the official draw order, cfg and steps from the request
    decode      Encodec over the whole stem's tokens

VATT was trained on 10 s clips and its converter takes exactly 50 frames: a request up to 10 s
is one 10 s window as the official code runs it, the picture's last frame held to fill the
window (the frame rule's own sample and hold past the last frame), and the stem is cut to the
picture. A longer request runs in 10 s windows overlapping by at least `VattConfig.overlap`
(runtime/windows.py `plan_fixed_windows`), one after another: each window starts from the
tokens of its overlap with the stem so far and MaskGIT fills the rest (`maskgit.generate(tokens=
...)`: kept slots are never re-masked; the schedule counts the MASK slots it starts from, as the
official code does). The stem is one token sequence, decoded in one pass, so there is no seam
in the waveform. Chosen by measurement against sampling the windows independently and joining
their tokens or their audio, and against blending the windows' logits in lockstep
(benchmarks/vatt_seams.py, results in benchmarks/results/vatt-seams-tiny.json: tiny-vatt, 25 s,
3 seeds). With 5 s of overlap the network scores the continuation's joined tokens as it scores
a window's middle (mean NLL excess -0.01 nats per token), where the cut's joins are 1.7 and
lockstep's 2.9 worse; no method clicks (spectral flux at the joins under the 99th percentile
elsewhere), and the crossfade of independent windows lifts the overlaps by 0.9 dB. With only
2.5 s kept the continuation's join is the worst (3.4, cut 2.5), hence the 4 s least overlap.
The weights are random: what the released weights make of it is not measured.

Prompts: the family's template around the caption (VattConverterConfig.prompt_template) through
the LLM's tokenizer, as the official `Prompter` + tokenizer. VATT has no negative prompt (its
unconditional branch zeroes the condition).
"""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch

from .. import maskgit
from ..backends import Progress
from ..errors import UsageError
from ..media import FrameTrack
from ..models import eva02
from ..variants import Variant, VattConfig
from ..windows import Layout, plan_fixed_windows
from .family import Needs, Run

FRAMES = "eva02"  # the model input of the window's 5 fps crops [n, 3, S, S] uint8
FEATURES = "eva02_features"  # or its features as the authors released them, [50, 768]


@dataclass
class VattText:
    """Each prompt's token ids [L_p] int64 (lengths may differ: prompts never share padding)."""

    ids: list[torch.Tensor]

    @property
    def prompts(self) -> int:
        return len(self.ids)


class Vatt:
    joins_requests = False

    def __init__(self, variant: Variant, parts, tokenizers=None):
        self.variant, self.parts = variant, parts
        self.config: VattConfig = variant.generator
        self.device, self.dtype, self.precision = parts.device, parts.dtype, parts.precision
        self.sample_rate = self.config.encodec.sample_rate
        self.needs = self.needs_of(variant)

    @staticmethod
    def needs_of(variant: Variant) -> Needs:
        """eva02's 336 px crops at 5 fps over a 10 s window; no sync or CLIP frames."""
        c: VattConfig = variant.generator
        crop = partial(eva02.resize_crop, config=c.image)
        return Needs(
            picture={"need_sync": False, "tracks": (FrameTrack(FRAMES, c.feature_fps, crop),)},
            window=c.window,
        )

    def plan(self, duration: float) -> Layout:
        c = self.config
        rate = c.audio.audio_seq_len / c.window
        if rate != int(rate):
            raise ValueError(f"{c.audio.audio_seq_len} tokens per {c.window} s is not a rate")
        return plan_fixed_windows(duration, c.window, int(rate), c.overlap)

    def check(self, mixture: bool) -> None:
        if mixture:
            raise UsageError(f"{self.variant.name} generates; it does not separate a mixture")

    @property
    def identity(self) -> None:
        """Nothing of VATT's is kept by the feature cache yet (its key is not defined)."""
        return None

    def encode_text(self, prompts: Sequence[str], negative_prompt: str = "") -> VattText:
        return self.join_text([self.encode_prompt(p, negative_prompt) for p in prompts])

    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> dict[str, torch.Tensor]:
        """ids: the prompt's ids (the official template and tokenizer, at most 64, EOS ended)."""
        if negative_prompt:
            raise UsageError(f"{self.variant.name} takes no negative prompt")
        return {"ids": torch.tensor(self.parts.tokenizer.encode(prompt))}

    def join_text(self, prompts: Sequence[dict[str, torch.Tensor]]) -> VattText:
        return VattText([p["ids"] for p in prompts])

    def features(self, inputs: dict[str, torch.Tensor], prompts: int, run: Run) -> dict:
        """video: the window's eva02 features [video_frames, 768] float32, from its 5 fps crops
        (a picture shorter than the window holds its last frame's features to the end) or as
        given (`eva02_features`, the form the authors released for VGGSound)."""
        frames = self.config.converter.video_frames
        if FEATURES in inputs:
            video = inputs[FEATURES].float()
            if tuple(video.shape) != (frames, self.config.image.embed_dim):
                raise UsageError(
                    f"{FEATURES} must be [{frames}, {self.config.image.embed_dim}], "
                    f"not {list(video.shape)}"
                )
            return {"video": video}
        with run.timed("image"):
            video = self.parts.image_features(inputs[FRAMES][:frames])
        held = video[-1:].expand(frames - len(video), -1)
        return {"video": torch.cat([video, held])}

    def conditions(self, text: VattText, features: list[dict], layout: Layout, run: Run) -> dict:
        """states / masks: per (window, prompt) row, window-major (row j * P + p), the
        converter's states [10 + L_p, hidden] float32 and pad mask [10 + L_p]."""
        states, masks = [], []
        with run.timed("converter"):
            for f in features:
                for s, m in self.parts.conditions(text.ids, f["video"]):
                    states.append(s)
                    masks.append(m)
        return {"states": states, "masks": masks}

    def join_conditions(self, conditions: list[dict], rows: list[int]) -> dict:
        """One request's conditions as they are: MaskGIT draws from each request's own
        generators, so requests do not share a sampler call (`joins_requests` is False)."""
        (one,) = conditions
        return one

    def noise(self, prompts: int, layout: Layout, run: Run) -> torch.Tensor:
        """tokens [P, K, total] int64, every one MASK (nothing is drawn)."""
        a = self.config.audio
        return torch.full((prompts, a.n_codebooks, layout.total), a.num_tokens, dtype=torch.long)

    def sample(
        self,
        x0: torch.Tensor,
        conditions: dict,
        layout: Layout,
        steps: int,
        cfg: float,
        progress: Progress | None,
        run: Run,
    ) -> torch.Tensor:
        """Tokens [P, K, total], window after window (see the module docstring). Each prompt
        draws from its own CPU generator seeded with the request's seed (torch.manual_seed's
        stream, on any device), so its stem is its single-prompt run's."""
        prompts, n = x0.shape[0], layout.latent
        config = dataclasses.replace(self.config.sampler, steps=steps, cfg=cfg)
        generators = maskgit.generators_for([run.rng.initial_seed()] * prompts)
        mask_id = self.config.audio.num_tokens
        tell = _Scaled(progress, len(layout)) if progress is not None else None
        tokens = x0.clone()
        for j, offset in enumerate(layout.offsets):
            rows = slice(j * prompts, (j + 1) * prompts)
            logits = maskgit.grouped_logits(
                self.parts.logits, conditions["states"][rows], conditions["masks"][rows]
            )
            start = tokens[..., offset : offset + n]
            tokens[..., offset : offset + n] = maskgit.generate(
                logits, tuple(start.shape[1:]), mask_id, generators, config, tell, tokens=start
            )
        return tokens

    def decode(self, x1: torch.Tensor, layout: Layout, run: Run) -> torch.Tensor:
        """tokens [P, K, total] -> waveform [P, total * hop] float32."""
        return self.parts.decode(x1)


class _Scaled:
    """Told of every MaskGIT step of `windows` windows, tells `progress` of whole request steps
    (one per `windows` window steps), so a request counts `steps` whatever its windows."""

    def __init__(self, progress: Progress, windows: int):
        self.progress, self.windows, self.calls = progress, windows, 0

    def __call__(self, steps: int) -> None:
        before = self.calls // self.windows
        self.calls += steps
        if done := self.calls // self.windows - before:
            self.progress(done)
