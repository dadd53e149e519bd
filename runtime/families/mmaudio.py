"""The MMAudio family: SELVA, MMAudio and MMAudioSep over any backend's parts.

Per window the video trunk (MotionFormer) and, for plain MMAudio and MMAudioSep, the CLIP image
features run once for all prompts; for MMAudioSep the mixture's posterior too. Per request each
prompt's [SUP] selection picks its sound from the trunk tokens (SELVA; plain MMAudio pools them),
and the generator's conditions are made for every (window, prompt) row. MMAudioSep then samples
each window's mixture latent from its posterior, eps drawn from the request's generator before
the noise, as the official `separate`.
"""

import torch

from ..cache import tensor_digest
from ..errors import UsageError
from ..models.mixture import sample_mixture
from ..models.video_encoder import num_segments
from ..variants import SYNC_HOP, SYNC_SEGMENT, separating_variants
from ..windows import Layout
from .family import Run
from .flow import FlowFamily, TextFeatures


def _runs(items: list[int]) -> list[tuple[int, int]]:
    """Sorted integers -> (first, last) of each run of consecutive ones."""
    runs: list[tuple[int, int]] = []
    for i in items:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


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
    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> dict[str, torch.Tensor]:
        """CLIP text features of the prompt and the negative prompt; Flan-T5 for SELVA."""
        clip = self.parts.clip_text(self.tokenizers.clip([prompt, negative_prompt]))
        text = {"clip": clip[:1], "negative": clip[1:]}
        if self.variant.t5 is not None:
            ids, mask = self.tokenizers.t5([prompt])
            text["t5"], text["t5_mask"] = self.parts.t5(ids, mask.long()), mask.to(self.device)
        return text

    @torch.inference_mode()
    def features(self, inputs: dict[str, torch.Tensor], prompts: int, run: Run) -> dict:
        """trunk: MotionFormer tokens (`video_trunk`); clip: CLIP image features [Nc, C] (plain
        MMAudio, MMAudioSep); mixture_mean/std: the mixture's posterior [1, E, N] (MMAudioSep).
        A query without picture (separation by text alone) has no `sync` input."""
        parts, out = self.parts, {}
        if "sync" in inputs:
            with run.timed("video_trunk"):
                out["trunk"] = self._trunk(inputs["sync"], prompts, run)
        if "clip" in inputs:  # plain MMAudio, MMAudioSep: CLIP frames are decoded
            with run.timed("clip_image"):
                out["clip"] = parts.clip_image(inputs["clip"])
        if "mixture" in inputs:
            with run.timed("mixture_encoder"):
                out["mixture_mean"], out["mixture_std"] = parts.mixture_encoder(inputs["mixture"])
        return out

    def _trunk(self, sync: torch.Tensor, prompts: int, run: Run) -> torch.Tensor:
        """`video_trunk` of sync [1, T, 3, 224, 224], each segment (16 frames, hop 8) computed
        once per request: overlapping windows start on the 8-frame grid, so they share whole
        segments, found by their frames' content (a frame picked differently in two windows
        makes a different segment) in `run.shared`."""
        count = num_segments(sync.shape[1])
        frames = [tensor_digest(f) for f in sync[0, : SYNC_HOP * (count - 1) + SYNC_SEGMENT]]
        keys = ["".join(frames[SYNC_HOP * s : SYNC_HOP * s + SYNC_SEGMENT]) for s in range(count)]
        done = run.shared.setdefault("trunk_segments", {})  # key -> tokens [R, 1568, D]
        todo = [s for s in range(count) if keys[s] not in done]
        for first, last in _runs(todo):
            n = last - first + 1
            span = sync[:, SYNC_HOP * first : SYNC_HOP * last + SYNC_SEGMENT]
            tokens = self.parts.video_trunk(span, prompts)  # [R * n, 1568, D], R: 1 or P
            rows = tokens.unflatten(0, (-1, n)).unbind(1)
            done.update(zip(keys[first : last + 1], rows, strict=True))
            if n == count:  # nothing shared: as returned, no copy
                return tokens
        return torch.stack([done[k] for k in keys], dim=1).flatten(0, 1)

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
