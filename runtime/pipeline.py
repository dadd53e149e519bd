"""`Pipeline`: load a variant once, keep it warm, turn a clip plus prompts into audio stems.

    pipe = Pipeline.from_pretrained("selva-small-16k", device="cpu")
    result = pipe.generate("clip.mp4", ["dog barking", "car horn"], seed=42)
    result.audio  # [P, samples] float32, one stem per prompt, at result.sample_rate

The work follows the parts of DESIGN.md: per clip the video is decoded and the MotionFormer
trunk runs once; per prompt the text is encoded and the [SUP] selection picks that prompt's
sound; then conditions, the Euler loop and the decoder run for all prompts as one batch.
"""

import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import media
from .errors import UsageError
from .models import clip as clip_mod
from .models import generator as gen_mod
from .models import vae as vae_mod
from .models import video_encoder as venc_mod
from .models import vocoder as voc_mod
from .models.checkpoint import read_state_dict
from .models.clip import ClipImageEncoder, ClipTextEncoder
from .models.clip_tokenizer import ClipTokenizer
from .models.generator import Generator
from .models.t5 import T5TextEncoder, load_t5, load_tokenizer
from .models.vae import VAE
from .models.video_encoder import VideoEncoder
from .models.vocoder import BigVGAN
from .parts import Networks, TorchParts
from .sampler import euler_sample
from .variants import (
    DEFAULT_CFG,
    DEFAULT_DURATION,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    Variant,
    get_variant,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Fixed seeds of the `tiny` variant's locally made weights, one per network.
TINY_SEEDS = {"generator": 1, "video_encoder": 2, "vae": 3, "vocoder": 4, "clip": 5}


@dataclass
class TextFeatures:
    """Encoded prompts: clip [P, 77, W] and negative [1, 77, W] CLIP text features; for SELVA
    also t5 [P, L, 768] with t5_mask [P, L] bool (True = token)."""

    clip: torch.Tensor
    negative: torch.Tensor
    t5: torch.Tensor | None = None
    t5_mask: torch.Tensor | None = None


@dataclass
class Synthesis:
    """What one generation computed: sync_features [P, 8S, D], noise x0 and latent x1 [P, N, E]
    (normalised), mel [P, M, 2N], audio [P, samples]."""

    sync_features: torch.Tensor
    noise: torch.Tensor
    latent: torch.Tensor
    mel: torch.Tensor
    audio: torch.Tensor


@dataclass
class GenerationResult:
    audio: np.ndarray  # [P, samples] float32 in [-1, 1], one stem per prompt
    sample_rate: int
    prompts: list[str]
    duration: float  # seconds of picture the audio follows (shorter clips give shorter audio)
    start: float
    seed: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds per part


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device} was asked for but no CUDA device is available; use cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device {device!r}; use cpu, cuda, cuda:N or auto")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in DTYPES:
        raise UsageError(f"unknown precision {precision!r}; use fp32, bf16 or fp16")
    return precision


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
        vae, vocoder = VAE(variant.vae), BigVGAN(variant.vocoder)
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


class Pipeline:
    """A loaded variant on one device and precision, kept warm; `generate` is the one call."""

    def __init__(self, variant: Variant, parts, tokenizers: "Tokenizers"):
        self.variant = variant
        self.parts = parts  # a backend: TorchParts, or one with the same parts
        self.tokenizers = tokenizers
        self.device, self.dtype = parts.device, parts.dtype
        self.precision = next(k for k, v in DTYPES.items() if v == parts.dtype)

    @classmethod
    def from_pretrained(
        cls,
        variant: str = "selva-small-16k",
        device: str = "auto",
        precision: str = "auto",
        reference: bool = False,
        quiet: bool = True,
        cuda_graphs: bool | None = None,
        backend: str = "torch",
        engines: str | Path | None = None,
    ) -> "Pipeline":
        """Load `variant` from the local weights folder ($SELVA_RT_HOME; `selva-rt weights
        download VARIANT` fetches the files; `tiny` needs none). `reference=True` runs the
        parts the official way (see parts.TorchParts). `cuda_graphs` (default: on for the fast
        mode on CUDA) replays the Euler loop as one captured CUDA graph. `backend` "onnxruntime" or
        "tensorrt" runs the parts from the files `selva-rt export` built into `engines`."""
        from . import weights

        v = get_variant(variant)
        dev = resolve_device(device)
        if backend != "torch":
            return cls._from_engines(v, backend, engines, dev)
        dtype = DTYPES[resolve_precision(precision, dev)]
        if cuda_graphs is None:
            cuda_graphs = dev.type == "cuda" and not reference
        nets = build_networks(v, weights.resolve(v, quiet=quiet))
        parts = TorchParts(v, nets, dev, dtype, reference=reference, cuda_graphs=cuda_graphs)
        return cls(v, parts, Tokenizers(nets.t5))

    @classmethod
    def _from_engines(
        cls, v: Variant, backend: str, engines: str | Path | None, dev: torch.device
    ) -> "Pipeline":
        """Parts from files built by `selva-rt export`; only the tokenizers come from weights."""
        from . import weights

        if engines is None:
            raise UsageError(f"the {backend} backend needs --engines DIR (see selva-rt export)")
        if backend == "onnxruntime":
            from .ort_backend import OrtParts

            parts = OrtParts.load(engines, v, dev)
        elif backend == "tensorrt":
            from .trt_backend import TrtParts

            parts = TrtParts.load(engines, v, dev)
        else:
            raise UsageError(f"unknown backend {backend!r}; use torch, onnxruntime or tensorrt")
        t5 = None
        if v.t5 is not None:
            folder = None if v.random_weights else weights.local_path(v.file("t5")).parent
            t5 = load_tokenizer(v, folder)
        return cls(v, parts, Tokenizers(t5))

    @torch.inference_mode()
    def encode_text(self, prompts: Sequence[str], negative_prompt: str = "") -> TextFeatures:
        """CLIP text features of the prompts and the negative prompt; Flan-T5 for SELVA."""
        clip = self.parts.clip_text(self.tokenizers.clip([*prompts, negative_prompt]))
        feats = TextFeatures(clip=clip[:-1], negative=clip[-1:])
        if self.variant.t5 is not None:
            ids, mask = self.tokenizers.t5(list(prompts))
            feats.t5, feats.t5_mask = self.parts.t5(ids, mask.long()), mask.to(self.device)
        return feats

    @torch.inference_mode()
    def synthesize(
        self,
        sync_frames: torch.Tensor,
        text: TextFeatures,
        *,
        duration: float,
        clip_frames: torch.Tensor | None = None,
        seed: int = DEFAULT_SEED,
        steps: int = DEFAULT_STEPS,
        cfg: float = DEFAULT_CFG,
        progress: bool = False,
        timings: dict[str, float] | None = None,
    ) -> Synthesis:
        """Audio for one clip and P prompts.

        sync_frames: [1, T, 3, 224, 224] in [-1, 1]; clip_frames: [T_clip, 3, 384, 384] in
        [0, 1] (plain MMAudio variants only). Each prompt gets the noise a single-prompt call
        with the same seed gets, so a stem does not depend on which prompts share the call.
        """
        timings = {} if timings is None else timings
        parts, dev, dt = self.parts, self.device, self.dtype
        seq = self.variant.sequence_lengths(duration)
        prompts = text.clip.shape[0]
        if getattr(parts, "reference", False):  # the official batch holds the clip per prompt
            sync_frames = sync_frames.expand(prompts, -1, -1, -1, -1)
        with _timed(timings, "video_trunk", dev):
            trunk = parts.video_trunk(sync_frames)
        with _timed(timings, "video_select", dev):
            sync_f = parts.video_select(trunk, text.t5, text.t5_mask, prompts)
        with _timed(timings, "dit_conditions", dev):
            clip_f = None
            if self.variant.uses_clip_video:
                clip_f = parts.clip_image(clip_frames)[None].expand(prompts, -1, -1)
            conditions = parts.dit_conditions(
                clip_f,
                sync_f,
                text.clip,
                text.negative.expand(prompts, -1, -1),
                seq.latent,
                seq.clip,
            )
        x0 = torch.cat(
            [
                torch.randn(
                    (1, seq.latent, self.variant.generator.latent_dim),
                    dtype=dt,
                    device=dev,
                    generator=torch.Generator(dev).manual_seed(seed),
                )
                for _ in range(prompts)
            ]
        )
        with _timed(timings, "sampling", dev):
            if getattr(parts, "graphs", None) is not None:  # one graph replay: no progress bar
                x1 = parts.sample(x0, conditions, steps, cfg)
            else:
                bar = _progress(steps, "sampling", progress)

                def velocity(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
                    bar.update()
                    return parts.dit_step(x, t, conditions, cfg)

                x1 = euler_sample(velocity, x0, steps)
                bar.close()
        with _timed(timings, "decoder", dev):
            mel, audio = parts.decoder(x1)
        return Synthesis(sync_features=sync_f, noise=x0, latent=x1, mel=mel, audio=audio)

    def generate(
        self,
        clip: str | Path,
        prompts: str | Sequence[str],
        *,
        negative_prompt: str = "",
        seed: int = DEFAULT_SEED,
        steps: int = DEFAULT_STEPS,
        cfg: float = DEFAULT_CFG,
        duration: float = DEFAULT_DURATION,
        start: float = 0.0,
        progress: bool = False,
    ) -> GenerationResult:
        """One stem per prompt for `clip`, from `start` for `duration` seconds."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise UsageError("give at least one prompt")
        timings: dict[str, float] = {}
        with _timed(timings, "decode", self.device):
            video = media.decode_video(
                clip,
                duration=duration,
                start=start,
                need_clip=self.variant.uses_clip_video,
                progress=progress,
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
            timings=timings,
        )


class Tokenizers:
    """Text to token ids, on the CPU, whatever backend runs the encoders."""

    def __init__(self, t5: T5TextEncoder | None):
        self.clip = ClipTokenizer()
        self._t5 = t5  # only its tokenizer is used (it may hold no model)

    def t5(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._t5.tokenize(prompts)


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, disable=not (enabled and sys.stderr.isatty()), leave=False)


@contextmanager
def _timed(timings: dict[str, float], name: str, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
