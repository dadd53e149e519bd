"""`Pipeline`: load a variant once, keep it warm, turn a clip plus prompts into audio stems.

    pipe = Pipeline.from_pretrained("selva-small-16k", device="cpu")
    result = pipe.generate("clip.mp4", ["dog barking", "car horn"], seed=42)
    result.audio  # [P, samples] float32, one stem per prompt, at result.sample_rate

The work follows the parts of DESIGN.md: per clip the video is decoded and the MotionFormer
trunk runs once; per prompt the text is encoded and the [SUP] selection picks that prompt's
sound; then conditions, the Euler loop and the decoder run for all prompts as one batch.

A clip longer than the trained 8 s is generated in overlapping windows of its own frames,
denoised in lockstep as one batch of rows (runtime/windows.py); up to 8 s it is one window, as
the official code runs it.
"""

import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from .backends import Parts, Progress, load_parts
from .checks import check_negative_prompt, check_options, check_prompts
from .device import precision_name
from .errors import UsageError
from .models.clip_tokenizer import ClipTokenizer
from .models.mixture import sample_mixture
from .models.t5 import load_tokenizer
from .variants import (
    DEFAULT_DURATION,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    Variant,
    get_variant,
)
from .windows import decode_windows, plan_windows, sample_windows

if TYPE_CHECKING:
    from .media import Video


@dataclass
class TextFeatures:
    """Encoded prompts: clip [P, 77, W] and negative [1, 77, W] CLIP text features (None for
    Flowley, whose generator reads Flan-T5); for SELVA and Flowley also t5 [P, L, W5] with
    t5_mask [P, L] bool (True = token)."""

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


@dataclass
class Synthesis:
    """What one generation computed: sync_features [P, 8S, D] (None without video or without a
    video encoder: Flowley), noise x0 and latent x1 [P, N, E] (normalised), mel [P, M, 2N],
    audio [P, samples]; separation: the sampled mixture latent [1, N, E]."""

    sync_features: torch.Tensor | None
    noise: torch.Tensor
    latent: torch.Tensor
    mel: torch.Tensor
    audio: torch.Tensor
    mixture_latent: torch.Tensor | None = None


@dataclass
class GenerationResult:
    audio: np.ndarray  # [P, samples] float32 in [-1, 1], one stem per prompt
    sample_rate: int
    prompts: list[str]
    duration: float  # seconds of picture the audio follows (shorter clips give shorter audio)
    start: float
    seed: int
    steps: int
    cfg: float
    timings: dict[str, float] = field(default_factory=dict)  # seconds per part


class Pipeline:
    """A loaded variant on one device and precision, kept warm; `generate` is the one call."""

    def __init__(self, variant: Variant, parts: Parts, tokenizers: "Tokenizers | None" = None):
        self.variant = variant
        self.parts = parts
        self.tokenizers = tokenizers or Tokenizers.load(variant)
        self.device, self.dtype = parts.device, parts.dtype
        # A graph build names its own precision (int8 computes in int8 behind fp32 tensors).
        self.precision = getattr(parts, "precision", None) or precision_name(parts.dtype)

    @classmethod
    def from_pretrained(
        cls,
        variant: str = "selva-small-16k",
        device: str = "auto",
        precision: str = "auto",
        *,
        backend: str = "torch",
        engines: str | Path | None = None,
        reference: bool = False,
        cuda_graphs: bool | None = None,
        quiet: bool = True,
        checkpoint: str | Path | None = None,
        graph_parts: str | tuple[str, ...] | None = None,
    ) -> "Pipeline":
        """Load `variant` from the local weights folder ($SELVA_RT_HOME; `selva-rt weights
        download VARIANT` fetches the files; `tiny` needs none), on `backend` (see
        `backends.load_parts`: torch, or onnxruntime/tensorrt from the `engines` folder that
        `selva-rt export` built). `checkpoint`: a generator file instead of the variant's (how
        an MMAudioSep checkpoint, which no hub publishes yet, can be used from anywhere).
        `graph_parts`: parts the torch backend takes from the `engines` graphs instead."""
        v = get_variant(variant)
        parts = load_parts(
            v,
            backend,
            device=device,
            precision=precision,
            reference=reference,
            cuda_graphs=cuda_graphs,
            engines=engines,
            quiet=quiet,
            checkpoint=checkpoint,
            graph_parts=graph_parts,
        )
        return cls(v, parts)

    @torch.inference_mode()
    def encode_text(self, prompts: Sequence[str], negative_prompt: str = "") -> TextFeatures:
        """CLIP text features of the prompts and the negative prompt; Flan-T5 for SELVA; only
        Flan-T5 for Flowley (no negative prompt: its unconditional branch is zero features)."""
        if self.variant.flowley:
            check_negative_prompt(negative_prompt, self.variant)
            feats = TextFeatures(clip=None, negative=None)
        else:
            clip = self.parts.clip_text(self.tokenizers.clip([*prompts, negative_prompt]))
            feats = TextFeatures(clip=clip[:-1], negative=clip[-1:])
        if self.variant.t5 is not None:
            ids, mask = self.tokenizers.t5(list(prompts))
            feats.t5, feats.t5_mask = self.parts.t5(ids, mask.long()), mask.to(self.device)
        return feats

    @torch.inference_mode()
    def synthesize(
        self,
        sync_frames: torch.Tensor | None,
        text: TextFeatures,
        *,
        duration: float,
        clip_frames: torch.Tensor | None = None,
        seed: int = DEFAULT_SEED,
        steps: int = DEFAULT_STEPS,
        cfg: float | None = None,
        progress: "bool | Progress" = False,
        timings: dict[str, float] | None = None,
        mixture: torch.Tensor | None = None,
        normalize_mixture_latent: bool = False,
    ) -> Synthesis:
        """Audio for one clip and P prompts.

        sync_frames: [1, T, 3, 224, 224] in [-1, 1]; clip_frames: [T_clip, 3, S, S] in [0, 1]
        (plain MMAudio, MMAudioSep and Flowley variants only; S = variant.clip.frame_size). Each
        prompt gets the noise a single-prompt call with the same seed gets, so a stem does not
        depend on which prompts share the call.

        Separation variants (MMAudioSep) also take `mixture` [1, S] float32 at the variant's
        rate, S = `seq.audio_samples`; sync_frames None is a query without video (empty clip
        and sync features). The mixture is encoded once for all prompts; its posterior sample
        draws eps from the seeded generator before x0, as the official `separate`.
        `normalize_mixture_latent`: see `TorchParts.mixture_conditions`.
        """
        timings = {} if timings is None else timings
        cfg = self.variant.cfg if cfg is None else cfg
        parts, dev = self.parts, self.device
        seq = self.variant.sequence_lengths(duration)
        sync_f, clip_f = self._features(sync_frames, clip_frames, text, timings)
        with _timed(timings, "dit_conditions", dev):
            conditions = self.dit_conditions(text, clip_f, sync_f, duration)
        # Every prompt gets the draws of its own single-prompt call: the same ones.
        rng = torch.Generator(dev).manual_seed(seed)
        x_cond = None
        if self.variant.separation:
            if mixture is None:
                raise UsageError(f"{self.variant.name} separates a mixture; pass one")
            with _timed(timings, "mixture_encoder", dev):
                mean, std = parts.mixture_encoder(mixture)
                x_cond, _ = sample_mixture(mean, std, rng)
                conditions.update(
                    parts.mixture_conditions(x_cond, text.prompts, normalize_mixture_latent)
                )
        x0 = self._noise(text.prompts, seq.latent, rng)
        with _timed(timings, "sampling", dev), _progress(steps, "sampling", progress) as bar:
            x1 = parts.sample(x0, conditions, steps, cfg, bar.update)
        with _timed(timings, "decoder", dev):
            mel, audio = parts.decoder(x1)
        return Synthesis(
            sync_features=sync_f, noise=x0, latent=x1, mel=mel, audio=audio, mixture_latent=x_cond
        )

    def _features(
        self,
        sync_frames: torch.Tensor,
        clip_frames: torch.Tensor | None,
        text: TextFeatures,
        timings: dict[str, float],
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One window's video features per prompt: sync [P, 8S, D] (None without a video
        encoder: Flowley) and, for plain MMAudio and Flowley, CLIP [P, Nc, C] (else None)."""
        parts, dev, prompts = self.parts, self.device, text.prompts
        sync_f = clip_f = None
        if self.variant.video_encoder is not None and sync_frames is not None:
            with _timed(timings, "video_trunk", dev):
                trunk = parts.video_trunk(sync_frames, prompts)
            with _timed(timings, "video_select", dev):
                sync_f = parts.video_select(trunk, text.t5, text.t5_mask, prompts)
        if self.variant.uses_clip_video and clip_frames is not None:
            with _timed(timings, "dit_conditions", dev):
                clip_f = parts.clip_image(clip_frames)[None].expand(prompts, -1, -1)
        return sync_f, clip_f

    def _noise(self, prompts: int, length: int, rng: torch.Generator) -> torch.Tensor:
        """x0 [P, length, E]: the generator's next draw, the same for every prompt (so a stem
        does not depend on which prompts share the call). A long clip's noise is one seeded draw
        for its whole latent, each window's noise its slice."""
        shape = (1, length, self.variant.generator.latent_dim)
        x0 = torch.randn(shape, dtype=self.dtype, device=self.device, generator=rng)
        return x0.repeat(prompts, 1, 1)

    def dit_conditions(
        self,
        text: TextFeatures,
        clip_features: torch.Tensor | None,
        sync_features: torch.Tensor | None,
        duration: float,
    ) -> dict[str, torch.Tensor]:
        """The generator's conditions ([cond; uncond] rows) for P prompts: clip_features
        [P, Nc, C] or None, sync_features [P, 8S, D] or None (Flowley)."""
        seq = self.variant.sequence_lengths(duration)
        if self.variant.flowley:  # Flan-T5 text with its mask; zero unconditional features
            return self.parts.dit_conditions(
                clip_features, None, text.t5, None, seq.latent, seq.clip, text_mask=text.t5_mask
            )
        return self.parts.dit_conditions(
            clip_features,
            sync_features,
            text.clip,
            text.negative.expand(text.prompts, -1, -1),
            seq.latent,
            seq.clip,
            sync_len=seq.sync,  # for a query without video (sync_features None)
        )

    def generate(
        self,
        clip: "str | Path | Video",
        prompts: str | Sequence[str],
        *,
        negative_prompt: str = "",
        seed: int = DEFAULT_SEED,
        steps: int = DEFAULT_STEPS,
        cfg: float | None = None,
        duration: float | None = None,
        start: float = 0.0,
        progress: "bool | Progress" = False,
    ) -> GenerationResult:
        """One stem per prompt for `clip`, from `start` for `duration` seconds (None: to the
        clip's end; beyond the trained 8 s in overlapping windows denoised in lockstep) with
        guidance `cfg` (None: the variant's). `clip` may also be a Video that
        `media.decode_video` made ahead (a batch decodes the next clips while this one
        generates); its duration and start are then the Video's own. Bad values raise a
        SelvaError with the one-line message the CLI prints. `progress`: True for progress bars
        on a terminal, or a function told of every finished Euler step (it may raise to stop
        the generation)."""
        if self.variant.separation:
            raise UsageError(f"{self.variant.name} separates a mixture: use separate()")
        prompts = check_prompts(prompts)
        negative_prompt = check_negative_prompt(negative_prompt, self.variant)
        cfg = self.variant.cfg if cfg is None else cfg
        check_options(steps=steps, cfg=cfg, seed=seed, duration=duration, start=start)
        from . import media  # PyAV only where media is touched

        timings: dict[str, float] = {}
        video = clip
        if not isinstance(video, media.Video) and (duration is None or duration > DEFAULT_DURATION):
            with _timed(timings, "decode", self.device):
                available = media.clip_duration(clip, start)
            length = available if duration is None else min(duration, available)
            if length > DEFAULT_DURATION:
                return self._generate_windows(
                    clip,
                    prompts,
                    negative_prompt,
                    seed,
                    steps,
                    cfg,
                    length,
                    start,
                    progress,
                    timings,
                )
        if not isinstance(video, media.Video):
            with _timed(timings, "decode", self.device):
                video = media.decode_video(
                    clip,
                    duration=DEFAULT_DURATION if duration is None else duration,
                    start=start,
                    need_clip=self.variant.uses_clip_video,
                    progress=progress is True,
                    clip_size=self.variant.clip.frame_size,
                )
        with _timed(timings, "text", self.device):
            text = self.encode_text(prompts, negative_prompt)
        clip_frames = None if video.clip_frames is None else video.clip_frames.float() / 255
        out = self.synthesize(
            media.to_model_input(video.sync_frames)[None],
            text,
            duration=video.duration,
            clip_frames=clip_frames,
            seed=seed,
            steps=steps,
            cfg=cfg,
            progress=progress,
            timings=timings,
        )
        # The model's audio overruns the picture by up to one latent frame (spec §1.4); a stem
        # for an editor's timeline ends with the picture.
        samples = round(video.duration * self.variant.audio.sample_rate)
        return GenerationResult(
            audio=out.audio[:, :samples].float().cpu().numpy(),
            sample_rate=self.variant.audio.sample_rate,
            prompts=prompts,
            duration=video.duration,
            start=video.start,
            seed=seed,
            steps=steps,
            cfg=cfg,
            timings=timings,
        )

    def _generate_windows(
        self,
        clip: str | Path,
        prompts: list[str],
        negative_prompt: str,
        seed: int,
        steps: int,
        cfg: float,
        duration: float,
        start: float,
        progress: "bool | Progress",
        timings: dict[str, float],
    ) -> GenerationResult:
        """`generate` for more than DEFAULT_DURATION seconds: windows of the clip's own frames
        (decoded one after another, features kept, frames dropped), denoised in lockstep."""
        from . import media

        parts, dev = self.parts, self.device
        layout = plan_windows(duration, self.variant.audio)
        with _timed(timings, "text", dev):
            text = self.encode_text(prompts, negative_prompt)
        videos = media.decode_windows(
            clip,
            [start + s for s in layout.starts],
            layout.window,
            need_clip=self.variant.uses_clip_video,
            progress=progress is True,
            clip_size=self.variant.clip.frame_size,
        )
        sync_f, clip_f = [], []  # per window [P, ...]
        while True:
            with _timed(timings, "decode", dev):
                video = next(videos, None)
            if video is None:
                break
            frames = None if video.clip_frames is None else video.clip_frames.float() / 255
            s, c = self._features(
                media.to_model_input(video.sync_frames)[None], frames, text, timings
            )
            sync_f.append(s)
            clip_f.append(c)
        windows, prompts_n = len(layout), len(prompts)
        with _timed(timings, "dit_conditions", dev):
            conditions = self.dit_conditions(  # rows window-major: j * P + p
                text.repeat(windows),
                None if clip_f[0] is None else torch.cat(clip_f),
                None if sync_f[0] is None else torch.cat(sync_f),
                layout.window,
            )
        del sync_f, clip_f
        x0 = self._noise(prompts_n, layout.total, torch.Generator(dev).manual_seed(seed))
        with _timed(timings, "sampling", dev), _progress(steps, "sampling", progress) as bar:
            x1 = sample_windows(parts, x0, conditions, layout, steps, cfg, bar.update)
        with _timed(timings, "decoder", dev):
            audio = decode_windows(parts, x1, layout)
        samples = round(duration * self.variant.audio.sample_rate)
        return GenerationResult(
            audio=audio[:, :samples].numpy(),
            sample_rate=self.variant.audio.sample_rate,
            prompts=prompts,
            duration=duration,
            start=start,
            seed=seed,
            steps=steps,
            cfg=cfg,
            timings=timings,
        )

    def separate(
        self,
        source: str | Path,
        prompts: str | Sequence[str],
        *,
        mixture: str | Path | None = None,
        video: bool = True,
        negative_prompt: str = "",
        seed: int = DEFAULT_SEED,
        steps: int = DEFAULT_STEPS,
        cfg: float | None = None,
        duration: float | None = None,
        start: float = 0.0,
        progress: bool = False,
        normalize_mixture_latent: bool = False,
    ) -> GenerationResult:
        """Separation variants (MMAudioSep): one stem per prompt, each the prompt's sound pulled
        out of the mixture. `source` is a clip (its audio is the mixture, its picture the
        visual query; `video=False` drops the picture) or an audio file (a text-only query);
        `mixture` takes the mixture from another file. `duration` None: one trained window
        (8 s; longer mixtures are not windowed yet). See `separation.py`."""
        from . import separation

        prompts = check_prompts(prompts)
        negative_prompt = check_negative_prompt(negative_prompt, self.variant)
        cfg = self.variant.cfg if cfg is None else cfg
        duration = DEFAULT_DURATION if duration is None else duration
        check_options(steps=steps, cfg=cfg, seed=seed, duration=duration, start=start)
        return separation.separate(
            self,
            source,
            prompts,
            mixture=mixture,
            video=video,
            negative_prompt=negative_prompt,
            seed=seed,
            steps=steps,
            cfg=cfg,
            duration=duration,
            start=start,
            progress=progress,
            normalize_mixture_latent=normalize_mixture_latent,
        )


class Tokenizers:
    """Text to token ids, on the CPU, whatever backend runs the encoders."""

    def __init__(self, clip: ClipTokenizer, t5=None):
        self.clip = clip
        self._t5 = t5  # a T5TextEncoder; only its tokenizer is used (it may hold no model)

    @classmethod
    def load(cls, variant: Variant) -> "Tokenizers":
        """The variant's tokenizers: CLIP's (bundled) and, for SELVA, Flan-T5's (from the
        weights folder; made locally for random-weight variants)."""
        from . import weights

        t5 = None
        if variant.t5 is not None:
            folder = None if variant.random_weights else weights.local_path(variant.file("t5"))
            t5 = load_tokenizer(variant, None if folder is None else folder.parent)
        return cls(ClipTokenizer(), t5)

    def t5(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._t5.tokenize(prompts)


def _progress(total: int, desc: str, progress: "bool | Progress"):
    """A tqdm bar on a terminal when `progress` is True; a caller's function as the bar."""
    if callable(progress):
        return _Told(progress)
    return tqdm(total=total, desc=desc, disable=not (progress and sys.stderr.isatty()), leave=False)


class _Told:
    """The bar interface (`update`, context manager) over a function told of finished steps."""

    def __init__(self, tell: "Progress"):
        self.update = tell

    def __enter__(self) -> "_Told":
        return self

    def __exit__(self, *exc) -> None:
        return None


@contextmanager
def _timed(timings: dict[str, float], name: str, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
