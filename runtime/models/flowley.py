"""Flowley's single-stream cross-attention step (SEEDS.md §2.2-2.3).

After its self-attention, the audio latent x attends to the video features through PSCA (the
progressive soft mask of layer l) and to the text features without any mask, both from the same
un-normalised x, and the two are mixed by one learnable scalar α (`cross_weight`):

    x <- x + α · attn(x, text) + (1 - α) · psca_attn(x, video; l)

The released model ties its 10 single-stream layers, so one module serves them all and only
`PSCALayer(l)` changes. Parameter names are Flowley's, relative to a single-stream block:
`{vis_aud_cross_atn,tex_aud_cross_atn}.{q_prj,kv_prj}.{weight,bias}`,
`{vis_aud_cross_atn,tex_aud_cross_atn}.{q_norm,k_norm}.scale`, `cross_weight`.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ...kernels.psca_attention import PSCALayer, psca_attention


class FlowleyRMSNorm(nn.Module):
    """scale · x / (rms(x) + eps): eps outside the sqrt, unlike torch.nn.RMSNorm (key: `scale`)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        rms = xf.norm(2, dim=-1, keepdim=True) * xf.shape[-1] ** -0.5
        return (self.scale.float() * (xf / (rms + self.eps))).to(x.dtype)


class CrossAttentionProjections(nn.Module):
    """Flowley's CrossAttention up to the attention itself: q from x, k and v from the context
    (kv_prj channels interleaved as (h d j), j = 0 is k), per-head RMSNorm on q and k. It has no
    output projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_prj = nn.Linear(dim, dim)
        self.kv_prj = nn.Linear(dim, 2 * dim)
        self.q_norm = FlowleyRMSNorm(dim // heads)
        self.k_norm = FlowleyRMSNorm(dim // heads)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: [B, N, D], context: [B, M, D] -> q: [B, h, N, d], k, v: [B, h, M, d]."""
        b, n, dim = x.shape
        m = context.shape[1]
        q = self.q_prj(x).view(b, n, self.heads, dim // self.heads).transpose(1, 2)
        kv = self.kv_prj(context).view(b, m, self.heads, dim // self.heads, 2)
        k, v = kv.permute(4, 0, 2, 1, 3).unbind(0)
        return self.q_norm(q), self.k_norm(k), v


class FlowleyCrossAttention(nn.Module):
    """The text + PSCA video cross-attention of one Flowley single-stream (DiTV2) block."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.vis_aud_cross_atn = CrossAttentionProjections(dim, heads)
        self.tex_aud_cross_atn = CrossAttentionProjections(dim, heads)
        self.cross_weight = nn.Parameter(torch.tensor(0.5))

    def forward(
        self, x: torch.Tensor, video: torch.Tensor, text: torch.Tensor, psca: PSCALayer
    ) -> torch.Tensor:
        """x: [B, La, D] audio, video: [B, Lv, D], text: [B, Lt, D] -> [B, La, D].

        The text attention has no padding mask, as in Flowley's single stream."""
        video_out = psca_attention(*self.vis_aud_cross_atn(x, video), psca)
        text_out = F.scaled_dot_product_attention(*self.tex_aud_cross_atn(x, text))
        alpha = self.cross_weight
        return x + alpha * _merge_heads(text_out) + (1 - alpha) * _merge_heads(video_out)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)
