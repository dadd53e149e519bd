"""The video encoder run the way the official code runs it, for reference mode.

`TorchParts(reference=True)` times every speedup against the official execution, so this is
what the official TextSynch does at inference with the same weights (spec §3):

- segments go through MotionFormer in chunks of B items for a batch of B (clip, prompt) items
  (`sync_batch_size_multiplier = -1`), so the trunk runs once per prompt;
- divided attention is TimeSformer's einsum, softmax in the compute dtype, einsum, with the CLS
  key and value copied into every group (no SDPA);
- every segment item carries its own copy of its prompt: `text_proj` and the K/V projections
  run once per segment;
- spatial pooling is a full `nn.TransformerEncoderLayer` over all 197 rows of each frame (the
  fast path computes only the CLS row, the one that is read out);
- the vocoder upsamples with the official transposed convolution (`official_upsampling`).

The functions share the fast modules' weights; the results agree with the fast path to fp32
rounding (tests/test_modes.py).
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..models.video_encoder import (
    MLP_RATIO,
    VIT_EPS,
    DividedAttention,
    MotionFormer,
    SpatialPool,
    VideoEncoder,
    segment,
)
from ..models.vocoder import Activation1d
from ..variants import SPACE_TOKENS, TIME_TOKENS


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [b, i, d], k and v [b, j, d] -> [b, i, d]; q is already scaled."""
    return torch.einsum("bij,bjd->bid", torch.einsum("bid,bjd->bij", q, k).softmax(-1), v)


def divided_attention(attn: DividedAttention, x: torch.Tensor, over_time: bool) -> torch.Tensor:
    """`attn` on x [n, 1 + 1568, D] -> [n, 1 + 1568, D], with heads folded into the batch."""
    n, length, _ = x.shape
    h = attn.heads
    qkv = attn.qkv(x).view(n, length, 3, h, -1).permute(2, 0, 3, 1, 4)
    q, k, v = (t.reshape(n * h, length, -1) for t in qkv)  # [(n h), L, d]
    q = q * q.shape[-1] ** -0.5
    cls_out = _attend(q[:, :1], k, v)
    groups = SPACE_TOKENS if over_time else TIME_TOKENS

    def grouped(t: torch.Tensor) -> torch.Tensor:  # [(n h), 1 + 1568, d] -> [(n h G), g, d]
        t = t[:, 1:].unflatten(1, (TIME_TOKENS, SPACE_TOKENS))
        return (t.transpose(1, 2) if over_time else t).flatten(0, 1)

    k_g = torch.cat([k[:, :1].repeat_interleave(groups, 0), grouped(k)], dim=1)
    v_g = torch.cat([v[:, :1].repeat_interleave(groups, 0), grouped(v)], dim=1)
    out = _attend(grouped(q), k_g, v_g).unflatten(0, (n * h, groups))
    out = (out.transpose(1, 2) if over_time else out).flatten(1, 2)  # t-major tokens
    out = torch.cat([cls_out, out], dim=1).unflatten(0, (n, h)).transpose(1, 2).flatten(2)
    return attn.proj(out)


def motionformer(mf: MotionFormer, segments: torch.Tensor) -> torch.Tensor:
    """segments [n, 3, 16, 224, 224] -> tokens [n, 1568, D], as `MotionFormer.forward`."""
    x = mf.patch_embed_3d.proj(segments).flatten(2).transpose(1, 2)
    pos = mf.pos_embed[:, 1:].repeat(1, TIME_TOKENS, 1)
    pos = pos + mf.temp_embed.repeat_interleave(SPACE_TOKENS, dim=1)
    pos = torch.cat([mf.pos_embed[:, :1], pos], dim=1)
    x = torch.cat([mf.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos
    for block in mf.blocks:
        x = x + divided_attention(block.timeattn, block.norm3(x), over_time=True)
        x = x + divided_attention(block.attn, block.norm1(x), over_time=False)
        x = x + block.mlp(block.norm2(x))
    return mf.norm(x[:, 1:])


def pool_layer(pool: SpatialPool) -> nn.TransformerEncoderLayer:
    """The official pooling module, an `nn.TransformerEncoderLayer` holding `pool`'s weights."""
    dim = pool.cls_token.shape[-1]
    layer = nn.TransformerEncoderLayer(
        dim,
        pool.heads,
        MLP_RATIO * dim,
        dropout=0.0,
        activation="gelu",
        layer_norm_eps=VIT_EPS,
        batch_first=True,
        norm_first=True,
        device="meta",
    )
    layer.self_attn.in_proj_weight = pool.self_attn.in_proj_weight
    layer.self_attn.in_proj_bias = pool.self_attn.in_proj_bias
    layer.self_attn.out_proj = pool.self_attn.out_proj
    for name in ("linear1", "linear2", "norm1", "norm2"):
        setattr(layer, name, getattr(pool, name))
    return layer.eval()


def spatial_pool(pool: SpatialPool, tokens: torch.Tensor) -> torch.Tensor:
    """tokens [n, 1568, D] -> [n, 8, D]: every row of every frame through the full layer."""
    n, _, dim = tokens.shape
    x = tokens.reshape(n * TIME_TOKENS, SPACE_TOKENS, dim)
    x = torch.cat([pool.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    return pool_layer(pool)(x)[:, 0].reshape(n, TIME_TOKENS, dim)


def trunk(enc: VideoEncoder, frames: torch.Tensor) -> torch.Tensor:
    """frames [B, T, 3, 224, 224] -> tokens [B*S, 1568, D], B segment items per call."""
    items = segment(frames)
    return torch.cat([motionformer(enc.vfeat_extractor, c) for c in items.split(frames.shape[0])])


def select(
    enc: VideoEncoder,
    tokens: torch.Tensor,
    text_f: torch.Tensor,
    text_mask: torch.Tensor,
    segments: int,
) -> torch.Tensor:
    """tokens [B*S, 1568, D] of B items (item b = clip b with prompt b); text_f [B, 5+L, 768]
    and text_mask [B, 5+L] after the [SUP] prepend -> sync features [B, S*8, D].

    Chunks of B segment items, each with its own copy of its prompt, as `trunk`.
    """
    items = tokens.shape[0]
    prompt = torch.arange(items, device=tokens.device) // segments
    out = []
    for rows in torch.arange(items, device=tokens.device).split(items // segments):
        x, text = tokens[rows], enc.text_proj(text_f[prompt[rows]])
        for block in enc.synch_text_cross_blocks:
            x = block(x, text, text_mask[prompt[rows]], 1)
        out.append(spatial_pool(enc.vfeat_extractor.spatial_attn_agg, x))
    return torch.cat(out).reshape(-1, segments * TIME_TOKENS, tokens.shape[-1])


def pool(enc: VideoEncoder, tokens: torch.Tensor, segments: int) -> torch.Tensor:
    """Plain Synchformer (MMAudio): tokens [B*S, 1568, D] -> [B, S*8, D]."""
    pooled = spatial_pool(enc.vfeat_extractor.spatial_attn_agg, tokens)
    return pooled.reshape(-1, segments * TIME_TOKENS, tokens.shape[-1])


@contextmanager
def official_upsampling(vocoder: nn.Module) -> Iterator[None]:
    """Within: `vocoder`'s alias-free activations upsample with the official transposed
    convolution (the fast path's polyphase form sums the same products in another order)."""
    acts = [m for m in vocoder.modules() if isinstance(m, Activation1d)]
    for act in acts:
        act.transposed = True
    try:
        yield
    finally:
        for act in acts:
            act.transposed = False
