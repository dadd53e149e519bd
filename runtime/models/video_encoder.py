"""Video encoder: the Synchformer/MotionFormer trunk plus SELVA's text selection (spec §3).

The encoder is split where the prompt first enters:

    tokens = enc.trunk(frames)                            # per clip; independent of the prompt
    text_f, text_mask = enc.prepend_sup(t5_f, t5_mask)    # per prompt
    sync_f = enc.select(tokens, text_f, text_mask, segments)

`enc(frames, t5_f, t5_mask)` is exactly that composition, i.e. the official
`encode_video_with_sync` after `prepend_sup_text_tokens`. One clip's trunk tokens can serve any
number of prompts (stems), and each prompt's keys/values are computed once, not per segment:
queries per segment row meet each prompt's keys by broadcasting. The exported `video_select`
graph traces `select` itself (export/onnx_export.py).

With `num_sup_tokens == 0 and xattn_depth == 0` the module is the plain Synchformer video branch
MMAudio uses: `enc(frames)` = trunk + spatial pooling.
"""

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...kernels.sup_cross_attention import sup_cross_attention
from ..errors import UsageError
from ..variants import (
    PATCH,
    SEGMENT_TOKENS,
    SPACE_TOKENS,
    SYNC_HOP,
    SYNC_SEGMENT,
    SYNC_SIZE,
    TIME_TOKENS,
    TUBELET,
    VideoEncoderConfig,
)
from .checkpoint import load_strict
from .layers import MLP, RMSNorm

MLP_RATIO = 4
VIT_EPS = 1e-6  # every MotionFormer / spatial-pooling LayerNorm
XATTN_EPS = 1e-5  # the text cross-attention block's LayerNorms

TEXT_PREFIXES = ("text_proj", "synch_text_cross_blocks", "sup_text_feat", "empty_string_feat")


def num_segments(frames: int) -> int:
    """S = (T - 16) // 8 + 1 windows of 16 frames, hop 8 (spec §1.4)."""
    return (frames - SYNC_SEGMENT) // SYNC_HOP + 1


def segment(frames: torch.Tensor) -> torch.Tensor:
    """frames: [B, T, 3, 224, 224] -> [B*S, 3, 16, 224, 224] windows (b-major, channels first).

    Trailing frames that do not fill a window are dropped.
    """
    b, t, c, h, w = frames.shape
    if (c, h, w) != (3, SYNC_SIZE, SYNC_SIZE):
        raise UsageError(
            f"sync frames must be [B, T, 3, {SYNC_SIZE}, {SYNC_SIZE}], got {list(frames.shape)}"
        )
    if num_segments(t) < 1:
        raise UsageError(f"{t} sync frames are fewer than one {SYNC_SEGMENT}-frame segment")
    windows = frames.unfold(1, SYNC_SEGMENT, SYNC_HOP)  # [B, S, 3, H, W, 16]
    return windows.permute(0, 1, 2, 5, 3, 4).reshape(-1, c, SYNC_SEGMENT, h, w)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[n, L, h*d] -> [n, h, L, d] (contiguous head slices)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[n, h, L, d] -> [n, L, h*d]."""
    return x.transpose(1, 2).flatten(2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention, q [n, h, i, d] already scaled, k and v [n, h, j, d] -> [n, h, i, d].

    On the CPU the explicit product beats SDPA's flash kernel at MotionFormer's shapes except
    for fp32 space groups (2 cores, AVX-512, per layer of one segment: time groups 8x9 1.5 vs
    3.9 ms in bf16, 2.7 vs 5.1 ms in fp32; space groups 196x197 5.5 vs 9.9 ms in bf16, but 18
    vs 8 ms in fp32; the CLS row 0.2 vs 1.1 ms). Its softmax runs in the compute dtype, as the
    official einsum attention does.
    """
    if q.device.type == "cpu" and (q.dtype != torch.float32 or q.shape[-2] < 64):
        return (q @ k.transpose(-1, -2)).softmax(-1) @ v
    return F.scaled_dot_product_attention(q, k, v, scale=1.0)


class PatchEmbed(nn.Module):
    """Holds a conv under `proj` (keys `proj.weight`, `proj.bias`)."""

    def __init__(self, proj: nn.Module):
        super().__init__()
        self.proj = proj


class DividedAttention(nn.Module):
    """MotionFormer's factorised attention over [CLS; t-major patches] (spec §3.3 step 4).

    Patch queries attend within a group (one spatial position over time, or one frame over
    space) plus the CLS key; the CLS query attends to every token. Keys: `qkv`, `proj`.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, over_time: bool) -> torch.Tensor:
        """x: [n, 1 + 1568, D] -> [n, 1 + 1568, D]."""
        n, length, dim = x.shape
        heads, d = self.heads, dim // self.heads
        # Contiguous q | k | v chunks, each split into contiguous heads (not MMAudio's interleave).
        q, k, v = self.qkv(x).view(n, length, 3, heads, d).permute(2, 0, 3, 1, 4)
        # The official code scales q before the product; same rounding in bf16 for any d.
        q = q * d**-0.5
        cls_out = attend(q[:, :, :1], k, v)

        def groups(t: torch.Tensor) -> torch.Tensor:  # [n, h, 1568, d] -> [n, h, G, g, d]
            t = t[:, :, 1:].unflatten(2, (TIME_TOKENS, SPACE_TOKENS))
            return t.transpose(2, 3) if over_time else t

        qg, kg, vg = groups(q), groups(k), groups(v)
        g_count, g_len = qg.shape[2], qg.shape[3]
        kg = torch.cat([k[:, :, None, :1].expand(-1, -1, g_count, -1, -1), kg], dim=3)
        vg = torch.cat([v[:, :, None, :1].expand(-1, -1, g_count, -1, -1), vg], dim=3)
        # 4-D [n, h*G, g, d] so SDPA takes its fused kernels (a 3-D call falls back to math).
        out = attend(
            qg.reshape(n, -1, g_len, d), kg.view(n, -1, g_len + 1, d), vg.view(n, -1, g_len + 1, d)
        ).view(n, heads, g_count, g_len, d)
        # Straight to t-major tokens with merged heads: [n, T, P, h, d].
        out = out.permute(0, 3, 2, 1, 4) if over_time else out.permute(0, 2, 3, 1, 4)
        out = torch.cat([merge_heads(cls_out), out.reshape(n, SEGMENT_TOKENS, dim)], dim=1)
        return self.proj(out)


class ViTMLP(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DividedBlock(nn.Module):
    """Time attention, then space attention, then MLP; all pre-norm (spec §3.3)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=VIT_EPS)
        self.attn = DividedAttention(dim, heads)
        self.timeattn = DividedAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=VIT_EPS)
        self.mlp = ViTMLP(dim, MLP_RATIO * dim)
        self.norm3 = nn.LayerNorm(dim, eps=VIT_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), over_time=True)
        x = x + self.attn(self.norm1(x), over_time=False)
        return x + self.mlp(self.norm2(x))


class InProjAttention(nn.Module):
    """nn.MultiheadAttention's parameters: in_proj_weight = [Wq; Wk; Wv] (contiguous), out_proj."""

    def __init__(self, dim: int):
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)


class SpatialPool(nn.Module):
    """Per feature frame, a CLS token pooled by one pre-norm TransformerEncoderLayer (spec §3.6).

    Same keys and math as the official nn.TransformerEncoderLayer (norm_first, exact GELU,
    eps 1e-6) plus `cls_token`; written out so it exports and so only the CLS row is computed.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.self_attn = InProjAttention(dim)
        self.linear1 = nn.Linear(dim, MLP_RATIO * dim)
        self.linear2 = nn.Linear(MLP_RATIO * dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=VIT_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=VIT_EPS)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: [n, 1568, D] (t-major) -> [n, 8, D]."""
        n, _, dim = tokens.shape
        x = tokens.reshape(n * TIME_TOKENS, SPACE_TOKENS, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # [m, 197, D]
        y = self.norm1(x)
        # Only the CLS row is read out of this single layer, so the patch rows are needed as
        # keys and values only: their own queries, attention outputs and FFN are never computed.
        w, b = self.self_attn.in_proj_weight, self.self_attn.in_proj_bias
        q = F.linear(y[:, :1], w[:dim], b[:dim])
        k, v = F.linear(y, w[dim:], b[dim:]).chunk(2, dim=-1)
        attn = F.scaled_dot_product_attention(
            split_heads(q, self.heads), split_heads(k, self.heads), split_heads(v, self.heads)
        )
        c = x[:, :1] + self.self_attn.out_proj(merge_heads(attn))
        c = c + self.linear2(F.gelu(self.linear1(self.norm2(c))))
        return c.view(n, TIME_TOKENS, dim)


class MotionFormer(nn.Module):
    """The Synchformer video trunk (`vfeat_extractor`, spec §3.3) and its spatial pooling."""

    def __init__(self, dim: int, depth: int, heads: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.empty(1, 1 + SPACE_TOKENS, dim))
        self.temp_embed = nn.Parameter(torch.empty(1, TIME_TOKENS, dim))
        # The 2D embedding is in every checkpoint but never used (the 3D one replaces it).
        self.patch_embed = PatchEmbed(nn.Conv2d(3, dim, PATCH, PATCH))
        tubelet = (TUBELET, PATCH, PATCH)
        self.patch_embed_3d = PatchEmbed(nn.Conv3d(3, dim, tubelet, tubelet))
        self.blocks = nn.ModuleList(DividedBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=VIT_EPS)
        self.spatial_attn_agg = SpatialPool(dim, heads)

    def forward(self, segments: torch.Tensor) -> torch.Tensor:
        """segments: [n, 3, 16, 224, 224] -> tokens [n, 1568, D] (final norm, CLS dropped)."""
        x = self.patch_embed_3d.proj(segments).flatten(2).transpose(1, 2)  # [n, 1568, D]
        # "separate" embeddings: spatial table tiled over time plus one vector per feature frame.
        pos = self.pos_embed[:, 1:].repeat(1, TIME_TOKENS, 1)
        pos = pos + self.temp_embed.repeat_interleave(SPACE_TOKENS, dim=1)
        pos = torch.cat([self.pos_embed[:, :1], pos], dim=1)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos
        for block in self.blocks:
            x = block(x)
        return self.norm(x[:, 1:])


class SupCrossAttention(nn.Module):
    """Projections of the text cross-attention: q from video tokens, interleaved k|v from text."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(dim, 2 * dim)
        self.q_norm = RMSNorm(dim // heads)
        self.k_norm = RMSNorm(dim // heads)

    def raw_query(self, x: torch.Tensor) -> torch.Tensor:
        """x: [n, N, D] -> q [n, h, N, d] before its RMSNorm (the attention fuses it)."""
        return split_heads(self.q_proj(x), self.heads)

    def key_value(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """c: [P, Lk, D] -> RMS-normed k and v, each [P, h, Lk, d]."""
        kv = self.kv_proj(c).unflatten(-1, (self.heads, -1, 2))  # channel = h*2d + d*2 + j
        k, v = self.k_norm(kv[..., 0]), kv[..., 1]
        return k.transpose(1, 2), v.transpose(1, 2)


def broadcast_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor, segments: int
) -> torch.Tensor:
    """`sup_cross_attention` in traceable torch math, for the ONNX export: q [n, h, Lq, d]
    (normed; n = P * segments or segments), k and v [P, h, Lk, d], key_mask [P, Lk] bool ->
    [P * segments, h, Lq, d].

    Each segment's queries meet each prompt's keys by broadcasting, not by repeat_interleave,
    whose ONNX translation is wrong for a dynamic repeat count (torch 2.13). Masked logits are
    -inf; the [SUP] keys are always valid, so no row is fully masked (no NaN).
    """
    q = q.unflatten(0, (-1, segments))  # [1 or P, S, h, Lq, d]
    logits = (q * q.shape[-1] ** -0.5) @ k[:, None].transpose(-1, -2)  # [P, S, h, Lq, Lk]
    logits = logits.masked_fill(~key_mask[:, None, None, None, :], float("-inf"))
    return (F.softmax(logits, dim=-1) @ v[:, None]).flatten(0, 1)


class SupCrossBlock(nn.Module):
    """`MMCrossAttentionBlock` (spec §3.5): x + LN(linear1(attn)), then x + FFN(LN(x))."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=XATTN_EPS)
        self.attn = SupCrossAttention(dim, heads)
        self.linear1 = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=XATTN_EPS)
        self.ffn = MLP(dim, MLP_RATIO * dim)

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        segments_per_prompt: int,
    ) -> torch.Tensor:
        """x: [n, N, D] video tokens; text: [P, Lk, D] projected prompts; text_mask: [P, Lk].

        With S = segments_per_prompt, n = P*S (each prompt's own rows, prompt-major) or n = S
        (one clip's rows, read by every prompt: q is projected once). Returns [P*S, N, D].
        """
        k, v = self.attn.key_value(text)  # once per prompt, shared by all its segments
        q = self.attn.raw_query(x)
        if torch.onnx.is_in_onnx_export():
            out = broadcast_attention(self.attn.q_norm(q), k, v, text_mask, segments_per_prompt)
        else:  # the Triton kernel on CUDA (q RMSNorm fused), the official SDPA math elsewhere
            out = sup_cross_attention(
                q, k, v, text_mask, segments_per_prompt, q_norm_weight=self.attn.q_norm.weight
            )
        out = self.norm1(self.linear1(merge_heads(out)))
        # The residual by broadcasting: n = S rows serve every prompt without a copy.
        x = x.unflatten(0, (-1, segments_per_prompt)) + out.unflatten(0, (-1, segments_per_prompt))
        x = x.flatten(0, 1)
        return x + self.ffn(self.norm2(x))


class VideoEncoder(nn.Module):
    """TextSynch (SELVA) or, without text, the Synchformer video branch (MMAudio).

    Keys as the official checkpoints: `vfeat_extractor.*`, and for TextSynch `text_proj.*`,
    `synch_text_cross_blocks.<i>.*`, `sup_text_feat`, `empty_string_feat`.
    """

    def __init__(self, config: VideoEncoderConfig):
        super().__init__()
        if (config.num_sup_tokens == 0) != (config.xattn_depth == 0):
            raise UsageError(
                "a video encoder has both [SUP] tokens and text cross-attention, or neither"
            )
        self.config = config
        dim, heads = config.embed_dim, config.num_heads
        self.vfeat_extractor = MotionFormer(dim, config.depth, heads)
        if self.selective:
            self.text_proj = nn.Sequential(
                nn.Linear(config.text_dim, dim), nn.SiLU(), MLP(dim, MLP_RATIO * dim)
            )
            self.synch_text_cross_blocks = nn.ModuleList(
                SupCrossBlock(dim, heads) for _ in range(config.xattn_depth)
            )
            self.sup_text_feat = nn.Parameter(torch.empty(config.num_sup_tokens, config.text_dim))
            # Unused at inference (the demo always has a prompt); kept because the file has it.
            self.empty_string_feat = nn.Parameter(torch.empty(1, config.text_dim))

    @property
    def selective(self) -> bool:
        return self.config.xattn_depth > 0

    def load_official(self, state: Mapping[str, torch.Tensor], source: str) -> "VideoEncoder":
        """Keep the official loader's prefixes (anything else in the file is ignored, as
        officially: the Synchformer file also holds the audio branch), then load strictly."""
        prefixes = ("vfeat_extractor", *(TEXT_PREFIXES if self.selective else ()))
        load_strict(self, {k: v for k, v in state.items() if k.startswith(prefixes)}, source)
        return self

    def trunk(self, frames: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """frames: [B, T, 3, 224, 224] in [-1, 1] -> tokens [B*S, 1568, D] (prompt-independent).

        chunk: segments per MotionFormer call (default: all in one); segments are independent,
        so chunking changes only speed and peak memory.
        """
        segments = segment(frames)
        if chunk is None:
            return self.vfeat_extractor(segments)
        return torch.cat([self.vfeat_extractor(c) for c in segments.split(chunk)])

    def pool(self, tokens: torch.Tensor, segments: int) -> torch.Tensor:
        """tokens: [R*S, 1568, D] -> [R, S*8, D] (segment-major, then the 8 feature frames)."""
        pooled = self.vfeat_extractor.spatial_attn_agg(tokens)
        return pooled.reshape(-1, segments * TIME_TOKENS, pooled.shape[-1])

    def prepend_sup(
        self, t5_f: torch.Tensor, t5_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """t5_f: [P, L, 768], t5_mask: [P, L] bool (True = token) -> [P, 5+L, 768], [P, 5+L]."""
        p = t5_f.shape[0]
        sup = self.sup_text_feat.to(t5_f.dtype).expand(p, -1, -1)
        valid = torch.ones(p, sup.shape[1], dtype=torch.bool, device=t5_mask.device)
        return torch.cat([sup, t5_f], dim=1), torch.cat([valid, t5_mask.bool()], dim=1)

    def select(
        self,
        tokens: torch.Tensor,
        text_f: torch.Tensor,
        text_mask: torch.Tensor,
        segments: int,
    ) -> torch.Tensor:
        """The prompt-dependent part: text cross-attention, then spatial pooling.

        tokens: [B*S, 1568, D] from `trunk`; text_f: [P, 5+L, 768] and text_mask: [P, 5+L] bool
        from `prepend_sup`. Clips and prompts pair up when B == P; one clip serves every prompt
        when B == 1 (stems); one prompt serves every clip when P == 1.
        Returns [max(B, P), S*8, D].
        """
        clips, prompts = tokens.shape[0] // segments, text_f.shape[0]
        if clips * segments != tokens.shape[0]:
            raise UsageError(
                f"{tokens.shape[0]} token rows are not a multiple of {segments} segments"
            )
        if prompts == 1:  # its rows: every clip's segments
            per_prompt = tokens.shape[0]
        elif clips in (1, prompts):  # its rows: its clip's segments, or the one clip's
            per_prompt = segments
        else:
            raise UsageError(
                f"{clips} clips and {prompts} prompts do not pair up; pass as many "
                "prompts as clips, one clip, or one prompt"
            )
        text = self.text_proj(text_f)  # [P, 5+L, D]: once per prompt, never per segment
        x = tokens
        for block in self.synch_text_cross_blocks:
            x = block(x, text, text_mask, per_prompt)
        return self.pool(x, segments)

    def forward(
        self,
        frames: torch.Tensor,
        t5_f: torch.Tensor | None = None,
        t5_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """frames: [B, T, 3, 224, 224]; with TextSynch also t5_f [P, L, 768], t5_mask [P, L]
        bool (before the [SUP] prepend). Returns sync features [max(B, P), S*8, D]."""
        if self.selective != (t5_f is not None and t5_mask is not None):
            need = "needs" if self.selective else "takes no"
            raise UsageError(f"this video encoder {need} T5 prompt features")
        tokens = self.trunk(frames)
        segments = num_segments(frames.shape[1])
        if not self.selective:
            return self.pool(tokens, segments)
        return self.select(tokens, *self.prepend_sup(t5_f, t5_mask), segments)


_EMBEDDINGS = ("cls_token", "pos_embed", "temp_embed", "sup_text_feat", "empty_string_feat")


def random_official_state(config: VideoEncoderConfig, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic random weights in the official layout: weights N(0, 1/fan_in), biases
    N(0, 0.05^2), norm weights 1 + 0.1 N, embeddings and [SUP] tokens 0.5 N."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in VideoEncoder(config).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        x = torch.randn(shape, generator=gen)
        name = key.rsplit(".", 1)[-1]
        if name in _EMBEDDINGS:
            x = 0.5 * x
        elif "norm" in key and name == "weight":
            x = 1 + 0.1 * x
        elif name.endswith("bias"):
            x = 0.05 * x
        else:
            x = x / shape[1:].numel() ** 0.5
        state[key] = x
    return state
