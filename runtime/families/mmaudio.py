"""The MMAudio family: SELVA, MMAudio and MMAudioSep over any backend's parts.

Per window the video trunk (MotionFormer) and, for plain MMAudio and MMAudioSep, the CLIP image
features run once for all prompts; for MMAudioSep the mixture's posterior too. Per request each
prompt's [SUP] selection picks its sound from the trunk tokens (SELVA; plain MMAudio pools them),
and the generator's conditions are made for every (window, prompt) row. MMAudioSep then samples
each window's mixture latent from its posterior, eps drawn from the request's generator before
the noise, as the official `separate`.
"""

from collections.abc import Sequence

import torch

from ..errors import UsageError
from ..models.mixture import sample_mixture
from ..variants import separating_variants
from ..windows import Layout
from .family import Run
from .flow import FlowFamily, TextFeatures


class MMAudio(FlowFamily):
    def check(self, mixture: bool) -> None:
        if self.variant.separation and not mixture:
            raise UsageError(f"{self.variant.name} separates a mixture: use selva-rt separate")
        if mixture and not self.variant.separation:
            raise UsageError(
                f"{self.variant.name} generates; separation needs one of: "
                + ", ".join(separating_variants())
            )

    @torch.inference_mode()
    def encode_text(self, prompts: Sequence[str], negative_prompt: str = "") -> TextFeatures:
        """CLIP text features of the prompts and the negative prompt; Flan-T5 for SELVA."""
        clip = self.parts.clip_text(self.tokenizers.clip([*prompts, negative_prompt]))
        text = TextFeatures(clip=clip[:-1], negative=clip[-1:])
        if self.variant.t5 is not None:
            ids, mask = self.tokenizers.t5(list(prompts))
            text.t5, text.t5_mask = self.parts.t5(ids, mask.long()), mask.to(self.device)
        return text

    @torch.inference_mode()
    def features(self, inputs: dict[str, torch.Tensor], prompts: int, run: Run) -> dict:
        """trunk: MotionFormer tokens (`video_trunk`); clip: CLIP image features [Nc, C] (plain
        MMAudio, MMAudioSep); mixture_mean/std: the mixture's posterior [1, E, N] (MMAudioSep).
        A query without picture (separation by text alone) has no `sync` input."""
        parts, out = self.parts, {}
        if "sync" in inputs:
            with run.timed("video_trunk"):
                out["trunk"] = parts.video_trunk(inputs["sync"], prompts)
        if "clip" in inputs:  # plain MMAudio, MMAudioSep: CLIP frames are decoded
            with run.timed("clip_image"):
                out["clip"] = parts.clip_image(inputs["clip"])
        if "mixture" in inputs:
            with run.timed("mixture_encoder"):
                out["mixture_mean"], out["mixture_std"] = parts.mixture_encoder(inputs["mixture"])
        return out

    @torch.inference_mode()
    def conditions(
        self, text: TextFeatures, features: list[dict], layout: Layout, run: Run
    ) -> dict[str, torch.Tensor]:
        """The generator's conditions ([cond; uncond] rows, each window-major) and, for
        MMAudioSep, each window's mixture entries (P rows per window, read by both branches)."""
        parts, prompts = self.parts, text.prompts
        sync, clip = [], []
        for f in features:
            if "trunk" in f:
                with run.timed("video_select"):
                    sync.append(parts.video_select(f["trunk"], text.t5, text.t5_mask, prompts))
            if "clip" in f:
                clip.append(f["clip"][None].expand(prompts, -1, -1))
        sync_f = torch.cat(sync) if sync else None
        if sync_f is not None:
            run.trace["sync_features"] = sync_f
        rows = text.repeat(len(features))
        seq = self.variant.sequence_lengths(layout.window)
        with run.timed("dit_conditions"):
            conditions = parts.dit_conditions(
                torch.cat(clip) if clip else None,
                sync_f,
                rows.clip,
                rows.negative.expand(rows.prompts, -1, -1),
                seq.latent,
                seq.clip,
                sync_len=seq.sync,  # a query without picture: the learned empty sync feature
            )
        if "mixture_mean" in features[0]:
            conditions.update(self._mixture(features, prompts, run))
        return conditions

    def _mixture(self, features: list[dict], prompts: int, run: Run) -> dict[str, torch.Tensor]:
        """Each window's posterior sample (eps drawn window by window, before the noise) and
        its `dit_step` entries, window-major."""
        latents, entries = [], []
        with run.timed("mixture_encoder"):
            for f in features:
                x_cond, _ = sample_mixture(f["mixture_mean"], f["mixture_std"], run.rng)
                latents.append(x_cond)
                entries.append(
                    self.parts.mixture_conditions(
                        x_cond, prompts, run.options.get("normalize_mixture_latent", False)
                    )
                )
        run.trace["mixture_latent"] = torch.cat(latents)
        return {k: torch.cat([e[k] for e in entries]) for k in entries[0]}
