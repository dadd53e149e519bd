"""Flowley's parts on the torch backend: its own conditions and step; the T5 and CLIP image
encoders, the Euler loop (CUDA graphs included) and the decoder are `TorchParts`' own.

Conditions are [cond; uncond] rows like every backend's. Fast mode projects the features once
per request, runs CFG as one pass over the doubled batch and PSCA through the dispatcher (the
Triton kernel on CUDA). Reference mode runs the official sampler's way: the raw features are
kept, every step projects them again inside two network passes (conditional, then zero
features with the conditional text_len), and PSCA is SDPA with the materialised bias.
"""

import torch

from ...kernels.psca_attention import psca_attention_reference
from ..models.flowley import FlowleyConditions, normalize_text
from .torch_parts import TorchParts


class FlowleyTorchParts(TorchParts):
    @torch.inference_mode()
    def dit_conditions(
        self,
        clip_features: torch.Tensor | None,
        sync_features: torch.Tensor | None,
        text_features: torch.Tensor,
        negative_text_features: torch.Tensor | None,
        latent_len: int,
        clip_len: int,
        text_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """clip_features [P, Lv, video_dim]: CLIP image features (8 fps); text_features
        [P, Lt, text_dim]: Flan-T5 hidden states with text_mask [P, Lt] bool; no sync or
        negative features (None) -> text_f [2P, Lt, H], visual_f [2P, Lv, H], global_c [2P, H],
        text_len [2P] int64 (reference mode: the raw text, visual and text_len)."""
        g = self.nets.generator
        if self.reference or (g.audio_seq_len, g.visual_seq_len) != (latent_len, clip_len):
            g.update_seq_lengths(latent_len, clip_len)
        text = normalize_text(text_features.to(self.device), self.dtype)
        visual = clip_features.to(self.device, self.dtype)
        text_len = text_mask.to(self.device).sum(1)
        if self.reference:
            zeros_text = g.empty_text_feature[None].expand_as(text)
            zeros_visual = g.empty_visual_feature[None].expand_as(visual)
            return {
                "text": torch.cat([text, zeros_text]),
                "visual": torch.cat([visual, zeros_visual]),
                "text_len": torch.cat([text_len, text_len]),
            }
        return g.cfg_conditions(text, visual, text_len)._asdict()

    @torch.inference_mode()
    def dit_step(
        self, latent: torch.Tensor, t: torch.Tensor, conditions: dict[str, torch.Tensor], cfg: float
    ) -> torch.Tensor:
        g = self.nets.generator
        if not self.reference:
            return g.cfg_velocity_batched(latent, t, FlowleyConditions(**conditions), cfg)
        P = latent.shape[0]
        text, visual, text_len = conditions["text"], conditions["visual"], conditions["text_len"]
        cond = g.project_conditions(text[:P], visual[:P], text_len[:P])
        uncond = g.project_conditions(text[P:], visual[P:], text_len[P:])
        return g.cfg_velocity(latent, t, cond, uncond, cfg, psca_attention_reference)
