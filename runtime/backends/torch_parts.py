"""The torch backend: the parts of DESIGN.md (`backends.Parts`) as methods over the faithful
networks.

`reference=True` runs the parts the way the official code does, so speedups are measured against
it with the same weights and inputs: the trunk in chunks of B segments for a batch of B (clip,
prompt) items with einsum attention, the prompt's text projection and K/V recomputed for every
segment, the full spatial pooling layer, the vocoder's transposed-convolution upsampling (see
`reference.py`), the generator's tables rebuilt per call, CFG as two network passes per step.
Reference `video_trunk` runs the clip once per prompt, as the official `generate` batch holds it.

Optional behaviour (not part of the contract above):
- `decoder_dtype`: run the VAE and vocoder in another dtype (fp32 beside a bf16 generator);
- `cuda_graphs` (fast mode): `sample` runs the whole Euler loop as one captured CUDA graph;
- `low_memory`: only the running stage's weights in memory (`offload.Offload`; see STAGES).
"""

from functools import partial

import torch

from ..cache import weights_fingerprint
from ..device import precision_name
from ..models.generator import Conditions
from ..models.mel import MelConverter
from ..models.mixture import MixtureEncoder
from ..models.networks import Networks, decode_latent
from ..sampler import euler_loop
from ..variants import Variant
from . import Progress
from . import reference as official
from .cuda_graph import EulerGraphs

# Items per network call in fast mode. On the CPU one at a time: one item's activations stay in
# cache, where a batch sends every elementwise op to DRAM (2 cores, 8 s clip: the trunk ~15 %
# faster one segment at a time; the decoder of 4 prompts 35 s one by one against 87 s as one
# batch). Per precision, one thread, CPU-s per trunk segment in chunks of 1 / 2 / 4: fp32 4.13 /
# 4.24 / 4.68, bf16 2.25 / 2.20 / 2.27 (one segment serves both). The [SUP] selection takes the
# same chunks of segments with every prompt in each call (fp32: 0.25 CPU-s per segment in chunks
# of 1-2, 0.29 in chunks of 8, more as one 24-segment call; 4 prompts over 24 segments, 2
# threads: bf16 5.7 s all prompts per call against 6.4 s one by one, fp32 12.8 vs 13.0 s). On
# CUDA a batch keeps the GPU busy: every prompt at once, and the trunk in chunks of 32 segments
# to bound the activations of long clips.
TRUNK_CHUNK = {"cpu": 1, "cuda": 32}  # segments per MotionFormer call and per selection call
PROMPT_CHUNK = {"cpu": 1}  # prompts per decoder call (else all)
MIXTURE_KEYS = ("x_cond", "mixture_bias")  # separation entries of the conditions (P rows)
# Low-memory mode: the networks each stage needs, and the stage each part runs in.
STAGES = {
    "text": ("t5", "clip_text"),
    "video": ("clip_image", "video_encoder", "vae"),
    "dit": ("generator",),
    "decoder": ("vae", "vocoder"),
}
PART_STAGES = {
    "t5": "text",
    "clip_text": "text",
    "clip_image": "video",
    "video_trunk": "video",
    "video_select": "video",  # reads the prompt's T5 features, not the T5 network
    "mixture_encoder": "video",  # the VAE encoder (separation)
    "dit_conditions": "dit",
    "mixture_conditions": "dit",
    "dit_step": "dit",
    "sample": "dit",
    "decoder": "decoder",
}


def _in_stage(part, offload, stage: str):
    """`part` with `stage`'s networks made resident first."""

    def run(*args, **kwargs):
        offload.enter(stage)
        return part(*args, **kwargs)

    run.__doc__ = part.__doc__
    return run


def _by_chunks(fn, chunk: int, *tensors: torch.Tensor):
    """fn over `chunk` rows of `tensors` at a time, outputs joined (one chunk: as returned)."""
    outs = [fn(*rows) for rows in zip(*(t.split(chunk) for t in tensors), strict=True)]
    if len(outs) == 1:
        return outs[0]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(o) for o in zip(*outs, strict=True))
    return torch.cat(outs)


class TorchParts:
    def __init__(
        self,
        variant: Variant,
        nets: Networks,
        device: torch.device,
        dtype: torch.dtype,
        reference: bool = False,
        decoder_dtype: torch.dtype | None = None,
        cuda_graphs: bool = False,
        low_memory: bool = False,
    ):
        self.variant, self.nets, self.device, self.dtype = variant, nets, device, dtype
        self.precision = precision_name(dtype)
        self.reference = reference
        self.decoder_dtype = decoder_dtype or dtype
        if cuda_graphs and (reference or device.type != "cuda"):
            raise ValueError("CUDA graphs are a fast-mode option on a CUDA device")
        if cuda_graphs and low_memory:  # a replayed graph reads the weights where they were
            raise ValueError("CUDA graphs and low-memory mode exclude each other")
        self.graphs = EulerGraphs() if cuda_graphs else None
        # Low memory: cast where the weights are and move only the running stage (below).
        place = torch.device("cpu") if low_memory else device
        for net in (
            nets.generator,
            nets.video_encoder,
            nets.vae,
            nets.vocoder,
            nets.clip_text,
            nets.clip_image,
        ):
            if net is not None:
                net.to(place, dtype).eval()
        nets.vae.to(dtype=self.decoder_dtype)
        nets.vocoder.to(dtype=self.decoder_dtype)
        if nets.t5 is not None:
            nets.t5.to(place, dtype)
        self._fingerprint: str | None = None
        self.offload = None
        if low_memory:
            self._offload()
        self.mixture = None
        if variant.separation:  # the mel converter stays fp32 whatever the dtype
            self.mixture = MixtureEncoder(MelConverter(variant.audio).to(device), nets.vae)

    def _offload(self) -> None:
        """Every network out of memory until a stage needs it (`offload.Offload`); the parts
        named in PART_STAGES enter their stage first."""
        from .. import weights
        from .offload import FOLDER, Offload

        nets = self.nets
        named = {
            "t5": nets.t5.model if nets.t5 is not None else None,
            "clip_text": nets.clip_text,
            "clip_image": nets.clip_image,
            "video_encoder": nets.video_encoder,
            "vae": nets.vae,
            "vocoder": nets.vocoder,
            "generator": nets.generator,
        }
        named = {k: m for k, m in named.items() if m is not None}
        self._fingerprint = weights_fingerprint(self.modules())  # before the weights go
        name = f"{self._fingerprint[:20]}-{self.precision}-{precision_name(self.decoder_dtype)}"
        folder = weights.weights_home() / FOLDER / name
        keep = {"generator": ("latent_mean", "latent_std")}  # the decoder unnormalises with them
        self.offload = Offload(named, STAGES, self.device, folder, keep)
        for m in named.values():  # what stays resident goes to the device now
            m._apply(lambda t: t if t.is_meta else t.to(self.device))
        for part, stage in PART_STAGES.items():
            setattr(self, part, _in_stage(getattr(self, part), self.offload, stage))

    @property
    def identity(self) -> dict | None:
        """How the feature cache (runtime/cache.py) tells these parts' features apart; None in
        reference mode, the official execution, which reuses nothing between requests."""
        if self.reference:
            return None
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.modules())
        decoder = precision_name(self.decoder_dtype)
        return {
            "backend": "torch",
            "precision": self.precision,
            "decoder": decoder,
            "weights": self._fingerprint,
        }

    def modules(self) -> list[torch.nn.Module]:
        """Every network these parts run."""
        nets = self.nets
        found = [nets.generator, nets.video_encoder, nets.vae, nets.vocoder, nets.clip_text]
        found += [nets.clip_image, nets.t5.model if nets.t5 is not None else None]
        return [m for m in found if m is not None]

    @torch.inference_mode()
    def t5(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.nets.t5.forward(input_ids, attention_mask.bool()).to(self.dtype)

    @torch.inference_mode()
    def clip_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.nets.clip_text(tokens.to(self.device))

    @torch.inference_mode()
    def clip_image(self, frames: torch.Tensor) -> torch.Tensor:
        return self.nets.clip_image.encode(frames.to(self.device, self.dtype))

    @torch.inference_mode()
    def video_trunk(self, frames: torch.Tensor, prompts: int = 1) -> torch.Tensor:
        frames = frames.to(self.device, self.dtype)
        if self.reference:  # the official batch holds the clip once per prompt
            return official.trunk(self.nets.video_encoder, frames.expand(prompts, -1, -1, -1, -1))
        return self.nets.video_encoder.trunk(frames, TRUNK_CHUNK.get(self.device.type))

    @torch.inference_mode()
    def video_select(
        self,
        trunk_tokens: torch.Tensor,
        t5_features: torch.Tensor | None,
        t5_mask: torch.Tensor | None,
        prompts: int = 1,
    ) -> torch.Tensor:
        """[SUP] selection of each prompt's sound (`prompts` only matters for plain MMAudio,
        whose pooled features do not depend on the prompt).

        Reference parts read trunk_tokens [P*S, 1568, D]: the clip's tokens once per prompt,
        from `video_trunk` on the clip repeated P times, as the official batch holds it.
        """
        enc = self.nets.video_encoder
        if t5_features is not None:
            prompts = t5_features.shape[0]
        if self.reference:
            segments = trunk_tokens.shape[0] // prompts
            if not enc.selective:
                return official.pool(enc, trunk_tokens, segments)
            text, mask = enc.prepend_sup(t5_features.to(self.dtype), t5_mask)
            return official.select(enc, trunk_tokens, text, mask, segments)
        segments = trunk_tokens.shape[0]
        if not enc.selective:
            return enc.pool(trunk_tokens, segments).expand(prompts, -1, -1)
        text, mask = enc.prepend_sup(t5_features.to(self.dtype), t5_mask)
        rows = trunk_tokens.split(TRUNK_CHUNK.get(self.device.type, segments))
        return torch.cat([enc.select(r, text, mask, r.shape[0]) for r in rows], dim=1)

    @torch.inference_mode()
    def dit_conditions(
        self,
        clip_features: torch.Tensor | None,
        sync_features: torch.Tensor | None,
        text_features: torch.Tensor,
        negative_text_features: torch.Tensor,
        latent_len: int,
        clip_len: int,
        text_mask: torch.Tensor | None = None,  # Flowley's; MMAudio's CLIP text is unmasked
        sync_len: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """As `Parts.dit_conditions`; sync_features None (a query without video) takes the
        learned empty sync feature for `sync_len` rows."""
        g = self.nets.generator
        prompts = text_features.shape[0]
        if sync_features is not None:
            sync_len = sync_features.shape[1]
        lengths = (latent_len, clip_len, sync_len)
        # The official generate rebuilds the tables on every call; the fast path when they change.
        if self.reference or (g.latent_seq_len, g.clip_seq_len, g.sync_seq_len) != lengths:
            g.update_seq_lengths(*lengths)
        if clip_features is None:  # SELVA never uses CLIP video: the learned empty feature
            clip_features = g.empty_clip_feat[None].expand(prompts, clip_len, -1)
        if sync_features is None:
            sync_features = g.empty_sync_feat[None].expand(prompts, sync_len, -1)
        features = (clip_features, sync_features, text_features, negative_text_features)
        return g.cfg_conditions(*(f.to(self.dtype) for f in features))._asdict()

    @torch.inference_mode()
    def mixture_encoder(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Separation: mixture waveform [1, S] float32 -> posterior mean, std [1, E, N]."""
        return self.mixture(waveform.to(self.device))

    @torch.inference_mode()
    def mixture_conditions(
        self, x_cond: torch.Tensor, prompts: int, normalize: bool = False
    ) -> dict[str, torch.Tensor]:
        """Separation: the sampled mixture latent x_cond [1, N, E] -> entries for `dit_step`'s
        conditions, shared by both CFG branches. Fast: its share of the input conv, once
        (mixture_bias [P, N, H]); reference: x_cond [P, N, E], concatenated at every step as
        the official code does. `normalize`: apply the generator's latent statistics first
        (what MMAudioSep's training does; its inference does not)."""
        g = self.nets.generator
        x_cond = x_cond.to(self.device, self.dtype)
        if normalize:
            x_cond = g.normalize(x_cond)
        if self.reference:
            return {"x_cond": x_cond.expand(prompts, -1, -1)}
        return {"mixture_bias": g.mixture_bias(x_cond).expand(prompts, -1, -1)}

    @torch.inference_mode()
    def dit_step(
        self, latent: torch.Tensor, t: torch.Tensor, conditions: dict[str, torch.Tensor], cfg: float
    ) -> torch.Tensor:
        g = self.nets.generator
        cond = Conditions(*(conditions[k] for k in Conditions._fields))
        mixture = {k: conditions[k] for k in MIXTURE_KEYS if k in conditions}
        if not self.reference:
            return g.cfg_velocity_batched(latent, t, cond, cfg, **mixture)
        P = latent.shape[0]
        return g.cfg_velocity(
            latent,
            t,
            Conditions(*(f[:P] for f in cond)),
            Conditions(*(f[P:] for f in cond)),
            cfg,
            **mixture,
        )

    @torch.inference_mode()
    def decoder(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nets = self.nets
        # Reference: the whole batch in one call, as the official code decodes it.
        n = latent.shape[0]
        chunk = n if self.reference else PROMPT_CHUNK.get(self.device.type, n)
        decode = partial(decode_latent, nets.generator, nets.vae, nets.vocoder)
        if not self.reference:
            return _by_chunks(decode, chunk, latent)
        with official.official_upsampling(nets.vocoder):
            return decode(latent)

    def sample(
        self,
        x0: torch.Tensor,
        conditions: dict[str, torch.Tensor],
        steps: int,
        cfg: float,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """The whole Euler loop x0 [P, N, E] -> x1 [P, N, E] over `dit_step`; with
        `cuda_graphs` captured once per shape as one CUDA graph and replayed (progress is then
        told of all steps at once)."""
        if self.graphs is None:
            return euler_loop(self.dit_step, x0, conditions, steps, cfg, progress)
        g = self.nets.generator
        keep = (*g.parameters(), *g.buffers())
        x1 = self.graphs.sample(self.dit_step, x0, conditions, steps, cfg, keep_alive=keep)
        if progress is not None:
            progress(steps)
        return x1
