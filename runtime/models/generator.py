"""MMAudio MM-DiT generator: the flow network SELVA samples with (spec §4).

The module tree mirrors the official one, so official checkpoints load with their own key names.
Sequence lengths are fixed per duration: `update_seq_lengths` rebuilds the RoPE tables and the
sync upsampling index for a new duration. The methods that read these tables also take them as
optional arguments (made by the same `rope_table` / `nearest_exact_index`), so that the exported
graphs hold no duration: their host feeds them (export/onnx_export.py traces these methods).
"""

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..variants import GeneratorConfig
from .checkpoint import StateDict, expected_shapes, load_strict
from .layers import MLP, ChannelLastConv1d, ConvMLP, RMSNorm

LN_EPS = 1e-5  # DiT blocks and FinalBlock: non-affine LayerNorm
ROPE_THETA = 10000
SYNC_FRAMES_PER_SEGMENT = 8  # Synchformer feature rows per segment; one learned embedding each
# Older checkpoints carry these non-persistent buffers; the official loader deletes them.
DROPPED_KEYS = ("t_embed.freqs", "latent_rot", "clip_rot")


class Conditions(NamedTuple):
    """Everything `predict_flow` needs besides latent and t; computed once per request.

    clip_f: [B, clip_len, H], sync_f: [B, N, H] (upsampled to the latent length),
    text_f: [B, 77, H], clip_f_c / text_f_c: [B, H]. Fields may be expanded views.
    """

    clip_f: torch.Tensor
    sync_f: torch.Tensor
    text_f: torch.Tensor
    clip_f_c: torch.Tensor
    text_f_c: torch.Tensor


def cat_conditions(*conds: Conditions) -> Conditions:
    """Stack conditions along the batch (e.g. conditional and empty, for one batched CFG pass)."""
    return Conditions(*(torch.cat(fields) for fields in zip(*conds, strict=True)))


def rope_table(length: int, head_dim: int, freq_scaling: float, device=None) -> torch.Tensor:
    """RoPE rotations [1, length, head_dim/2, 2, 2] float32 holding [[cos, -sin], [sin, cos]].

    `freq_scaling` stretches positions (clip frames live on the latent time axis).
    """
    freqs = 1.0 / ROPE_THETA ** (
        torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    )
    freqs = freqs * freq_scaling
    angle = torch.arange(length, dtype=torch.float32, device=device)[:, None] * freqs
    cos, sin = angle.cos(), angle.sin()
    return torch.stack([cos, -sin, sin, cos], dim=-1).unflatten(-1, (2, 2))[None]


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (x[2i], x[2i+1]) of x [B, h, n, d] by rot [1, n, d/2, 2, 2].

    Computed in fp32 whatever x's dtype (as the reference), and cast back. Bit for bit the
    official rot[0] * x[2i] + rot[1] * x[2i+1] per output (each product rounded, then one
    add), written as x * (r00, r11) + swapped(x) * (r01, r10) over whole rows: the official
    product with the 2x2 matrices and sum over a dimension of 2 makes [.., d/2, 2, 2]
    intermediates and a strided reduction, 9x slower on the CPU (5.56 vs 0.62 ms, one thread,
    [2, 7, 250, 64] fp32, AVX2 EPYC), paid for q and k of every attention at every step.
    """
    cos = torch.stack([rot[..., 0, 0], rot[..., 1, 1]], -1).flatten(-2)  # [1, n, d]
    sin = torch.stack([rot[..., 0, 1], rot[..., 1, 0]], -1).flatten(-2)  # -sin, sin per pair
    xf = x.float()
    pairs = xf.unflatten(-1, (-1, 2))
    swapped = torch.stack([pairs[..., 1], pairs[..., 0]], -1).flatten(-2)  # per pair: y, x
    return (xf * cos + swapped * sin).to(x.dtype)


def nearest_exact_index(src_len: int, dst_len: int, device=None) -> torch.Tensor:
    """Source row of each of `dst_len` rows under F.interpolate(mode='nearest-exact').

    Evaluated in float32 like ATen: min(floor((j + 0.5) * (src/dst)), src - 1). Exact rational
    arithmetic picks different rows in places (spec §4.4), so the float32 rounding matters.
    """
    scale = torch.tensor(src_len, dtype=torch.float32) / dst_len
    j = torch.arange(dst_len, dtype=torch.float32) + 0.5
    return (j * scale).floor().long().clamp_max(src_len - 1).to(device)


def mixture_bias_of(x_cond: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """MMAudioSep: the mixture latent's share of the input convolution, x_cond [B, N, C] ->
    [B, N, H] (no conv bias), with `weight` [H, C, k] that share's weights
    (`Generator.mixture_weight`).

    The convolution is linear, so conv(cat[x_t, x_cond]) = conv(x_t; W[:, :C]) + this. The
    mixture is fixed for a request, so this runs once, not per Euler step and CFG branch (the
    graph backends run it on the host, with the weight from their constants).
    """
    pad = weight.shape[-1] // 2
    return F.conv1d(x_cond.transpose(1, 2), weight, padding=pad).transpose(1, 2)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def timestep_freqs(dim: int, max_period: float) -> torch.Tensor:
    """Sinusoid frequencies [dim/2] float32: (10000/max_period) * 10000^(-2k/dim)."""
    base = 1.0 / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    return (10000 / max_period) * base


class TimestepEmbedder(nn.Module):
    """t [B] in [0, 1] -> [B, H] through [cos(t f), sin(t f)] and a SiLU MLP (keys `mlp.0/2`)."""

    def __init__(self, hidden_dim: int, freq_dim: int, max_period: float):
        super().__init__()
        self.freq_dim = freq_dim
        self.max_period = max_period
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim)
        )
        self.register_buffer("freqs", timestep_freqs(freq_dim, max_period), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # fp32 angles from t and the (possibly bf16-cast) freqs, then the features in t's dtype.
        angle = t[:, None].float() * self.freqs[None]
        return self.mlp(torch.cat([angle.cos(), angle.sin()], dim=-1).to(t.dtype))


class SelfAttention(nn.Module):
    """q, k, v projection of one stream; q/k RMSNorm per head, then RoPE (keys: qkv, q_norm,
    k_norm). The attention itself runs over the joined streams, see `attention`."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RMSNorm(dim // num_heads)
        self.k_norm = RMSNorm(dim // num_heads)

    def forward(self, x: torch.Tensor, rot: torch.Tensor | None):
        """x: [B, n, D] -> q, k, v each [B, heads, n, D/heads]."""
        # Channels are laid out (head, dim, j) with j = q/k/v innermost (interleaved, spec §8.4).
        qkv = self.qkv(x).unflatten(-1, (self.num_heads, -1, 3)).transpose(1, 2)
        q, k, v = qkv.unbind(-1)
        q, k = self.q_norm(q), self.k_norm(k)
        if rot is not None:
            q, k = apply_rope(q, rot), apply_rope(k, rot)
        return q, k, v


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Unmasked SDPA on [B, heads, n, d] tensors -> [B, n, heads * d]."""
    out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
    return out.transpose(1, 2).flatten(2)


class DiTBlock(nn.Module):
    """adaLN-modulated attention + SwiGLU block (official `MMDitSingleBlock`).

    pre_only blocks only feed q, k, v to a joint attention; their stream is not updated.
    kernel_size 3 uses convolutions for the output projection and FFN, 1 uses linear layers.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, kernel_size: int, pre_only: bool = False
    ):
        super().__init__()
        self.pre_only = pre_only
        self.attn = SelfAttention(dim, num_heads)
        hidden = int(dim * mlp_ratio)
        if not pre_only:
            if kernel_size == 1:
                self.linear1 = nn.Linear(dim, dim)
                self.ffn = MLP(dim, hidden)
            else:
                pad = kernel_size // 2
                self.linear1 = ChannelLastConv1d(dim, dim, kernel_size, padding=pad)
                self.ffn = ConvMLP(dim, hidden, kernel_size, pad)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(dim, (2 if pre_only else 6) * dim)
        )

    def pre_attention(self, x: torch.Tensor, c: torch.Tensor, rot: torch.Tensor | None):
        """x: [B, n, D], c: [B, 1 or n, D] -> (q, k, v), modulation for `post_attention`."""
        mod = self.adaLN_modulation(c).chunk(2 if self.pre_only else 6, dim=-1)
        x = modulate(F.layer_norm(x, x.shape[-1:], eps=LN_EPS), mod[0], mod[1])
        return self.attn(x, rot), mod[2:]

    def post_attention(self, x: torch.Tensor, attn_out: torch.Tensor, mod) -> torch.Tensor:
        if self.pre_only:
            return x
        gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        x = x + self.linear1(attn_out) * gate_msa
        r = modulate(F.layer_norm(x, x.shape[-1:], eps=LN_EPS), shift_mlp, scale_mlp)
        return x + self.ffn(r) * gate_mlp

    def forward(self, x: torch.Tensor, c: torch.Tensor, rot: torch.Tensor | None) -> torch.Tensor:
        qkv, mod = self.pre_attention(x, c, rot)
        return self.post_attention(x, attention(*qkv), mod)


class JointBlock(nn.Module):
    """One attention over the concatenated [latent, clip, text] streams, each with its own
    weights; latent is modulated per frame (extended_c), clip and text globally (global_c)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, pre_only: bool):
        super().__init__()
        self.pre_only = pre_only
        self.latent_block = DiTBlock(dim, num_heads, mlp_ratio, 3)
        self.clip_block = DiTBlock(dim, num_heads, mlp_ratio, 3, pre_only)
        self.text_block = DiTBlock(dim, num_heads, mlp_ratio, 1, pre_only)

    def forward(self, latent, clip_f, text_f, global_c, extended_c, latent_rot, clip_rot):
        """latent [B, N, D], clip_f [B, Nc, D], text_f [B, L, D] -> the three updated streams."""
        x_qkv, x_mod = self.latent_block.pre_attention(latent, extended_c, latent_rot)
        c_qkv, c_mod = self.clip_block.pre_attention(clip_f, global_c, clip_rot)
        t_qkv, t_mod = self.text_block.pre_attention(text_f, global_c, None)
        out = attention(
            *(torch.cat(parts, dim=2) for parts in zip(x_qkv, c_qkv, t_qkv, strict=True))
        )
        # Slices, not `split`: a split with dynamic sizes exports as SplitToSequence/SequenceAt,
        # which TensorRT's ONNX parser lacks.
        n, nc = latent.shape[1], clip_f.shape[1]
        latent = self.latent_block.post_attention(latent, out[:, :n], x_mod)
        if not self.pre_only:
            clip_f = self.clip_block.post_attention(clip_f, out[:, n : n + nc], c_mod)
            text_f = self.text_block.post_attention(text_f, out[:, n + nc :], t_mod)
        return latent, clip_f, text_f


class FinalBlock(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.conv = ChannelLastConv1d(dim, out_dim, 7, padding=3)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.conv(modulate(F.layer_norm(x, x.shape[-1:], eps=LN_EPS), shift, scale))


def cfg_combine(v_cond: torch.Tensor, v_uncond: torch.Tensor, cfg_strength: float | torch.Tensor):
    """cfg * v_cond + (1 - cfg) * v_uncond, each product rounded to the latent dtype first.

    A 0-d tensor cfg (a graph input) is cast to the latent dtype; v_cond alone where cfg < 1.
    """
    if isinstance(cfg_strength, torch.Tensor):
        cfg = cfg_strength.to(v_cond.dtype)
        return torch.where(cfg < 1, v_cond, cfg * v_cond + (1 - cfg) * v_uncond)
    return cfg_strength * v_cond + (1 - cfg_strength) * v_uncond


class Generator(nn.Module):
    """The MM-DiT flow network (official `MMAudio`) at fixed sequence lengths.

    latent_seq_len N, clip_seq_len (CLIP frames) and sync_seq_len (8 * segments) follow from the
    duration (`variants.sequence_lengths`).
    """

    def __init__(
        self, config: GeneratorConfig, latent_seq_len: int, clip_seq_len: int, sync_seq_len: int
    ):
        super().__init__()
        self.config = c = config
        H = c.hidden_dim
        act = nn.SiLU if c.v2 else nn.SELU
        # v2 adds a SiLU after the clip/text input Linear, which shifts the MLP's key index.
        proj_act = [nn.SiLU()] if c.v2 else []
        self.audio_input_proj = nn.Sequential(
            ChannelLastConv1d(c.latent_dim + c.mixture_dim, H, 7, padding=3),
            act(),
            ConvMLP(H, 4 * H, 7, 3),
        )
        self.clip_input_proj = nn.Sequential(
            nn.Linear(c.clip_dim, H), *proj_act, ConvMLP(H, 4 * H, 3, 1)
        )
        self.sync_input_proj = nn.Sequential(
            ChannelLastConv1d(c.sync_dim, H, 7, padding=3), act(), ConvMLP(H, 4 * H, 3, 1)
        )
        self.text_input_proj = nn.Sequential(nn.Linear(c.text_dim, H), *proj_act, MLP(H, 4 * H))
        self.clip_cond_proj = nn.Linear(H, H)
        self.text_cond_proj = nn.Linear(H, H)
        self.global_cond_mlp = MLP(H, 4 * H)
        self.sync_pos_emb = nn.Parameter(torch.zeros(1, 1, SYNC_FRAMES_PER_SEGMENT, c.sync_dim))
        self.final_layer = FinalBlock(H, c.latent_dim)
        if c.v2:
            self.t_embed = TimestepEmbedder(H, freq_dim=H, max_period=1)
        else:
            self.t_embed = TimestepEmbedder(H, freq_dim=256, max_period=10000)
        num_joint = c.depth - c.fused_depth
        self.joint_blocks = nn.ModuleList(
            JointBlock(H, c.num_heads, c.mlp_ratio, pre_only=i == num_joint - 1)
            for i in range(num_joint)
        )
        self.fused_blocks = nn.ModuleList(
            DiTBlock(H, c.num_heads, c.mlp_ratio, 3) for _ in range(c.fused_depth)
        )
        # Checkpoint data; NaN until loaded, as in the official module.
        self.latent_mean = nn.Parameter(torch.full((1, 1, c.latent_dim), float("nan")))
        self.latent_std = nn.Parameter(torch.full((1, 1, c.latent_dim), float("nan")))
        self.empty_string_feat = nn.Parameter(torch.zeros(c.text_seq_len, c.text_dim))
        self.empty_clip_feat = nn.Parameter(torch.zeros(1, c.clip_dim))
        self.empty_sync_feat = nn.Parameter(torch.zeros(1, c.sync_dim))
        self.requires_grad_(False)
        self.update_seq_lengths(latent_seq_len, clip_seq_len, sync_seq_len)

    # -- sequence lengths and derived tables ------------------------------------------------

    def update_seq_lengths(self, latent_seq_len: int, clip_seq_len: int, sync_seq_len: int):
        """Set the lengths of a new duration and rebuild the tables that depend on them."""
        if sync_seq_len % SYNC_FRAMES_PER_SEGMENT:
            raise UsageError(
                f"sync length {sync_seq_len} is not a multiple of {SYNC_FRAMES_PER_SEGMENT}"
            )
        self.latent_seq_len = latent_seq_len
        self.clip_seq_len = clip_seq_len
        self.sync_seq_len = sync_seq_len
        self._build_tables()

    def _build_tables(self) -> None:
        """(Re)build the non-persistent buffers on the parameters' device.

        The RoPE tables are fp32 whatever the model dtype (the reference rebuilds them after its
        bf16 cast); t_embed.freqs takes the model dtype, as the reference's cast rounds it.
        """
        device, dtype = self.latent_mean.device, self.latent_mean.dtype
        head_dim = self.config.hidden_dim // self.config.num_heads
        N, Nc = self.latent_seq_len, self.clip_seq_len
        self.register_buffer("latent_rot", rope_table(N, head_dim, 1.0, device), persistent=False)
        self.register_buffer("clip_rot", rope_table(Nc, head_dim, N / Nc, device), persistent=False)
        self.register_buffer(
            "sync_index", nearest_exact_index(self.sync_seq_len, N, device), persistent=False
        )
        freqs = timestep_freqs(self.t_embed.freq_dim, self.t_embed.max_period)
        self.t_embed.register_buffer("freqs", freqs.to(device, dtype), persistent=False)

    def _apply(self, fn, recurse=True):
        # .to(dtype/device) would cast the RoPE tables to bf16; keep them fp32 like the reference.
        super()._apply(fn, recurse)
        self._build_tables()
        return self

    def load_official(self, state: Mapping[str, torch.Tensor], source: str) -> "Generator":
        """Load an official generator checkpoint (flat dict) strictly, as `MMAudio.load_weights`."""
        state = {k: v for k, v in state.items() if k not in DROPPED_KEYS}
        load_strict(self, state, source)
        self._build_tables()  # a module built on the meta device has meta buffers until now
        return self

    # -- conditions ----------------------------------------------------------------------------

    def _check_len(self, what: str, x: torch.Tensor, expected: int) -> None:
        """Only where the module's own tables are used: a check of a dynamic dim against module
        state would make torch.export specialise that dim."""
        if x.shape[1] != expected:
            raise UsageError(
                f"{what} has {x.shape[1]} rows but the generator is set up for {expected}; "
                "call update_seq_lengths for this duration"
            )

    def preprocess_conditions(
        self,
        clip_f: torch.Tensor,
        sync_f: torch.Tensor,
        text_f: torch.Tensor,
        sync_index: torch.Tensor | None = None,
    ) -> Conditions:
        """clip_f [B, clip_len, clip_dim], sync_f [B, 8S, sync_dim], text_f [B, 77, text_dim]
        -> Conditions (cacheable across all flow steps).

        sync_index [N] int64: `nearest_exact_index(8S, N)`; default the module's own, for the
        lengths of `update_seq_lengths`.
        """
        if sync_index is None:
            self._check_len("clip features", clip_f, self.clip_seq_len)
            self._check_len("sync features", sync_f, self.sync_seq_len)
            sync_index = self.sync_index
        self._check_len("text features", text_f, self.config.text_seq_len)
        # The per-position embedding is added in sync_dim space, before the projection.
        sync_f = (sync_f.unflatten(1, (-1, SYNC_FRAMES_PER_SEGMENT)) + self.sync_pos_emb).flatten(
            1, 2
        )
        clip_f = self.clip_input_proj(clip_f)
        sync_f = self.sync_input_proj(sync_f)[:, sync_index]  # nearest-exact to N rows
        text_f = self.text_input_proj(text_f)
        clip_f_c = self.clip_cond_proj(clip_f.mean(dim=1))
        text_f_c = self.text_cond_proj(text_f.mean(dim=1))
        return Conditions(clip_f, sync_f, text_f, clip_f_c, text_f_c)

    def get_empty_conditions(
        self, batch: int, negative_text_f: torch.Tensor | None = None
    ) -> Conditions:
        """Unconditional branch: empty CLIP and sync features, and the negative text features
        [B, 77, text_dim] if given, else the stored empty-string features. Expanded to `batch`."""
        text = self.empty_string_feat[None] if negative_text_f is None else negative_text_f
        cond = self._empty_conditions(self.clip_seq_len, self.sync_seq_len, text)
        return Conditions(*(f.expand(batch, *f.shape[1:]) for f in cond))

    def _empty_conditions(
        self,
        clip_len: int,
        sync_len: int,
        text_f: torch.Tensor,
        sync_index: torch.Tensor | None = None,
    ) -> Conditions:
        """The empty CLIP and sync features projected once (one row), with text_f [B, 77, D]."""
        clip = self.empty_clip_feat[None].expand(1, clip_len, -1)
        sync = self.empty_sync_feat[None].expand(1, sync_len, -1)
        return self.preprocess_conditions(clip, sync, text_f, sync_index)

    def cfg_conditions(
        self,
        clip_f: torch.Tensor,
        sync_f: torch.Tensor,
        text_f: torch.Tensor,
        negative_text_f: torch.Tensor,
        sync_index: torch.Tensor | None = None,
    ) -> Conditions:
        """The conditional rows, then the unconditional rows, of batched CFG:
        `cat_conditions(preprocess_conditions(...), get_empty_conditions(B, negative_text_f))`
        with the lengths read from the inputs.

        clip_f [B, clip_len, clip_dim], sync_f [B, 8S, sync_dim], text_f and negative_text_f
        [B, 77, text_dim], sync_index as `preprocess_conditions` -> Conditions of 2B rows.
        """
        cond = self.preprocess_conditions(clip_f, sync_f, text_f, sync_index)
        uncond = self._empty_conditions(
            clip_f.shape[1], sync_f.shape[1], negative_text_f, sync_index
        )
        return Conditions(
            *(torch.cat([c, u.expand_as(c)]) for c, u in zip(cond, uncond, strict=True))
        )

    # -- flow ---------------------------------------------------------------------------------

    @property
    def mixture_weight(self) -> torch.Tensor:
        """MMAudioSep: the input convolution's weight over the mixture channels, [H, C, 7]."""
        return self.audio_input_proj[0].weight[:, self.config.latent_dim :]

    def mixture_bias(self, x_cond: torch.Tensor) -> torch.Tensor:
        """MMAudioSep: `mixture_bias_of(x_cond, self.mixture_weight)`."""
        return mixture_bias_of(x_cond, self.mixture_weight)

    def _audio_input(
        self,
        latent: torch.Tensor,
        x_cond: torch.Tensor | None,
        mixture_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """audio_input_proj of latent [B, N, C] -> [B, N, H]; a separation generator also reads
        the mixture: as the official concatenation (x_cond [B or 1, N, C], mixture second) or
        as its precomputed `mixture_bias` [B or 1, N, H]."""
        if not self.config.mixture_dim:
            return self.audio_input_proj(latent)
        if x_cond is not None:
            x_cond = x_cond.expand(latent.shape[0], -1, -1)
            return self.audio_input_proj(torch.cat([latent, x_cond], dim=-1))
        if mixture_bias is None:
            raise ValueError("a separation generator needs x_cond or mixture_bias")
        conv, C = self.audio_input_proj[0], self.config.latent_dim
        w = conv.weight[:, :C]
        x = F.conv1d(latent.transpose(1, 2), w, conv.bias, padding=w.shape[-1] // 2)
        return self.audio_input_proj[1:](x.transpose(1, 2) + mixture_bias)

    def predict_flow(
        self,
        latent: torch.Tensor,
        t: torch.Tensor,
        cond: Conditions,
        latent_rot: torch.Tensor | None = None,
        clip_rot: torch.Tensor | None = None,
        *,
        x_cond: torch.Tensor | None = None,
        mixture_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """latent [B, N, latent_dim], t [B] (flow time in [0, 1]) -> velocity [B, N, latent_dim].

        latent_rot / clip_rot: fp32 RoPE tables of N and clip_len rows (`rope_table`), default
        the module's own, for the lengths of `update_seq_lengths`. Separation (MMAudioSep)
        generators take the mixture as x_cond or mixture_bias (see `_audio_input`); both CFG
        branches see the same mixture.
        """
        if latent_rot is None:
            self._check_len("latent", latent, self.latent_seq_len)
            latent_rot = self.latent_rot
        if clip_rot is None:
            clip_rot = self.clip_rot
        clip_f, text_f = cond.clip_f, cond.text_f
        x = self._audio_input(latent, x_cond, mixture_bias)
        global_c = (self.t_embed(t) + self.global_cond_mlp(cond.clip_f_c + cond.text_f_c))[:, None]
        extended_c = global_c + cond.sync_f
        for block in self.joint_blocks:
            x, clip_f, text_f = block(x, clip_f, text_f, global_c, extended_c, latent_rot, clip_rot)
        for block in self.fused_blocks:
            x = block(x, extended_c, latent_rot)
        # global_c, not extended_c: the official "minor implementation error" (#55) it was
        # trained with.
        return self.final_layer(x, global_c)

    def cfg_velocity(
        self,
        latent: torch.Tensor,
        t: torch.Tensor,
        cond: Conditions,
        uncond: Conditions,
        cfg_strength: float,
        **mixture: torch.Tensor,
    ) -> torch.Tensor:
        """Classifier-free guided velocity with two network passes, as the reference.

        latent [B, N, C], t [B] in latent's dtype -> [B, N, C]. cfg_strength < 1: v_cond alone.
        `mixture`: x_cond or mixture_bias for a separation generator, kept in both branches.
        """
        v_cond = self.predict_flow(latent, t, cond, **mixture)
        if cfg_strength < 1:
            return v_cond
        return cfg_combine(v_cond, self.predict_flow(latent, t, uncond, **mixture), cfg_strength)

    def cfg_velocity_batched(
        self,
        latent: torch.Tensor,
        t: torch.Tensor,
        cond_uncond: Conditions,
        cfg_strength: float | torch.Tensor,
        latent_rot: torch.Tensor | None = None,
        clip_rot: torch.Tensor | None = None,
        **mixture: torch.Tensor,
    ) -> torch.Tensor:
        """`cfg_velocity` as one pass over a doubled batch.

        cond_uncond = `cfg_conditions(...)` ([2B, ...]); equal to the two-pass result up to kernel
        rounding. cfg_strength: a float, or a 0-d tensor (an exported graph's input; both
        branches are then always computed); RoPE tables as `predict_flow`; `mixture` tensors
        (x_cond or mixture_bias) have B (or 1) rows and are repeated for both halves.
        """
        B = latent.shape[0]
        rot = (latent_rot, clip_rot)
        if not isinstance(cfg_strength, torch.Tensor) and cfg_strength < 1:
            cond = Conditions(*(f[:B] for f in cond_uncond))
            return self.predict_flow(latent, t, cond, *rot, **mixture)
        mixture = {k: torch.cat([v, v]) if v.shape[0] > 1 else v for k, v in mixture.items()}
        v = self.predict_flow(
            torch.cat([latent, latent]), torch.cat([t, t]), cond_uncond, *rot, **mixture
        )
        # Slices, not chunk(2): torch.export cannot prove 2B rows make exactly two chunks.
        return cfg_combine(v[:B], v[B:], cfg_strength)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised latent [B, N, C] -> VAE latent: x * std + mean (in the model dtype)."""
        return x * self.latent_std + self.latent_mean

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.latent_mean) / self.latent_std


def random_official_state(config: GeneratorConfig, seed: int) -> StateDict:
    """A deterministic random generator checkpoint in the official layout.

    Weights ~N(0, 1/fan_in), biases ~N(0, 0.02^2), norm weights ~1 + 0.1 N, the learned features
    and latent_mean ~0.5 N, latent_std ~U[0.5, 1.5) (the golden cases' recipe).
    """
    with torch.device("meta"):
        shapes = expected_shapes(Generator(config, 8, 8, 8))
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key == "latent_std":
            value = 0.5 + torch.rand(shape, generator=g)
        elif key in ("latent_mean", "sync_pos_emb") or key.startswith("empty_"):
            value = 0.5 * torch.randn(shape, generator=g)
        elif key.endswith("norm.weight"):
            value = 1 + 0.1 * torch.randn(shape, generator=g)
        elif key.endswith(".bias"):
            value = 0.02 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:])
            value = torch.randn(shape, generator=g) / fan_in**0.5
        state[key] = value
    return state
