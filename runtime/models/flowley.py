"""Flowley's flow network (Fsoft-AIC/Flowley; spec SEEDS.md §2.2-2.3).

    latent [B, La, A] --audio_projector--> x
    text [B, Lt, Ct], video [B, Lv, Cv] --projectors--> text_f, visual_f; their means give the
        global condition c = global_cond_projector(...) + timestep_embedder(t)
    joint blocks: one attention over [x; visual_f; text_f] (padded text keys get -inf),
        each stream with its own adaLN DiT block; every block updates all three streams
    cross projectors on the last visual_f and text_f, then ONE single-stream block applied N
        times: self-attention, then PSCA cross-attention to the video (layer l's soft mask)
        and unmasked cross-attention to the text, mixed by one scalar α
    final adaLN + conv -> flow [B, La, A]

Numerics that differ from MMAudio's MM-DiT and matter for parity: q/k/v channels interleaved
(`(h d j)`), the q/k RMSNorm `scale * x / (rms(x) + 1e-6)` with eps outside the sqrt, non-affine
LayerNorms with eps 1e-5, t in [0, 1] fed to a 256-frequency DiT embedding without x1000, and the
text mean over all Lt tokens (padding included).

The module tree mirrors the official one, so the released checkpoint (`model.<key>`) loads with
its own names. The official module lists the tied block N times (`single_modal_stream.{0..N-1}`,
N identical copies in the file); here it is one module, `single_modal_stream.0`, and
`load_official` checks that the N stored copies agree before it keeps one.
"""

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ...kernels.psca_attention import PSCALayer, psca_attention, psca_bias
from ..errors import CheckpointError
from ..variants import FlowleyConfig
from .checkpoint import StateDict, expected_shapes, load_strict
from .generator import apply_rope, cfg_combine, modulate, rope_table
from .layers import MLP, ChannelLastConv1d, ConvMLP

LN_EPS = 1e-5  # nn.LayerNorm(elementwise_affine=False) of every block
ROPE_THETA = 10000
TIME_FREQS = 256  # sinusoidal timestep features
PREFIX = "model."  # the released file is RectifiedFlowMatching's state: model.<Flowley key>
TIED = "single_modal_stream."
# q, k, v, layer -> out: psca_attention (dispatcher) or one of its implementations.
PSCAFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, PSCALayer], torch.Tensor]
# The fp32 RoPE tables of one duration (`rope_tables`); older checkpoints may hold them as
# non-persistent buffers, which the official loader deletes.
ROPE_TABLES = ("multi_audio_rot", "multi_visual_rot", "single_audio_rot")
DROPPED_KEYS = ROPE_TABLES


class FlowleyConditions(NamedTuple):
    """What the flow needs besides latent and t, computed once per request.

    text_f [B, Lt, H] and visual_f [B, Lv, H]: projected features; global_c [B, H]: the global
    condition before the timestep embedding; text_len [B] int64: real text tokens (the joint
    blocks mask the rest). Fields may be expanded views.
    """

    text_f: torch.Tensor
    visual_f: torch.Tensor
    global_c: torch.Tensor
    text_len: torch.Tensor


def cat_conditions(*conds: FlowleyConditions) -> FlowleyConditions:
    return FlowleyConditions(*(torch.cat(fields) for fields in zip(*conds, strict=True)))


def normalize_text(t5_states: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Flan-T5 states [B, Lt, W] -> L2-normalised along the sequence axis (padding rows
    included), in fp32, then `dtype`: what the released text features are."""
    return F.normalize(t5_states.float(), dim=1).to(dtype)


def rope_tables(config: FlowleyConfig, la: int, lv: int, device=None) -> dict[str, torch.Tensor]:
    """The fp32 RoPE tables of La audio latents and Lv video frames (the video stretched by
    La / Lv onto the audio time axis), named as ROPE_TABLES."""
    H = config.hidden_dim
    multi, single = H // config.multi_heads, H // config.single_heads
    return {
        "multi_audio_rot": rope_table(la, multi, 1.0, device),
        "multi_visual_rot": rope_table(lv, multi, la / lv, device),
        "single_audio_rot": rope_table(la, single, 1.0, device),
    }


def psca_layers(config: FlowleyConfig) -> list[PSCALayer]:
    """The soft-mask parameters of each application of the tied block."""
    return [
        PSCALayer(
            layer,
            num_layers=config.single_depth,
            window=config.mask_window,
            fade_range=config.mask_fade_range,
            video_fps=config.video_fps,
        )
        for layer in range(config.single_depth)
    ]


def psca_biases(config: FlowleyConfig, la: int, lv: int, device=None) -> torch.Tensor:
    """Every application's PSCA bias log(M_l + eps), [single_depth, La, Lv] float32: what an
    exported step takes as an input (`psca_from_biases`)."""
    return torch.stack([psca_bias(p, la, lv) for p in psca_layers(config)]).to(device)


def psca_from_biases(biases: torch.Tensor) -> PSCAFn:
    """A `psca_fn` that reads layer l's bias from `biases` [L, La, Lv] (fp32, rounded to q's
    dtype as `psca_attention_reference` rounds its own): SDPA with that additive mask."""

    def psca_fn(q, k, v, psca: PSCALayer) -> torch.Tensor:
        bias = biases[psca.layer].to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    return psca_fn


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


class QKNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query_norm = FlowleyRMSNorm(dim)
        self.key_norm = FlowleyRMSNorm(dim)


class SelfAttention(nn.Module):
    """q, k, v of one stream (channels (h d j), j = q/k/v innermost), q/k RMSNorm per head, then
    RoPE where a table is given (keys: qkv_prj, qk_norm.{query,key}_norm)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv_prj = nn.Linear(dim, 3 * dim)
        self.qk_norm = QKNorm(dim // heads)

    def forward(self, x: torch.Tensor, rot: torch.Tensor | None):
        """x [B, n, D] -> q, k, v each [B, heads, n, D/heads]."""
        q, k, v = self.qkv_prj(x).unflatten(-1, (self.heads, -1, 3)).transpose(1, 2).unbind(-1)
        q, k = self.qk_norm.query_norm(q), self.qk_norm.key_norm(k)
        if rot is not None:
            q, k = apply_rope(q, rot), apply_rope(k, rot)
        return q, k, v


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


class Modulation(nn.Module):
    """adaLN: c [B, D] -> `n` tensors [B, 1, D] (key: adaLN_modulation.1)."""

    def __init__(self, dim: int, n: int):
        super().__init__()
        self.n = n
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, n * dim))

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.adaLN_modulation(c)[:, None].chunk(self.n, dim=-1)


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=LN_EPS)


def attention(q, k, v, bias: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA on [B, h, n, d] (scale 1/sqrt(d), additive bias) -> [B, n, h * d]."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return out.transpose(1, 2).flatten(2)


class StreamBlock(nn.Module):
    """One stream of a joint block (official `SingleModalStreamBlockDiT`): adaLN, q/k/v for the
    joint attention, then output projection and SwiGLU FFN; convolutions (k 3) for audio and
    video, linear layers for text."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, conv: bool):
        super().__init__()
        self.attn = SelfAttention(dim, heads)
        hidden = int(mlp_ratio * dim)
        if conv:
            self.linear1 = ChannelLastConv1d(dim, dim, 3, padding=1)
            self.ffn = ConvMLP(dim, hidden, 3, 1)
        else:
            self.linear1 = nn.Linear(dim, dim)
            self.ffn = MLP(dim, hidden)
        self.adaLN_modulation = Modulation(dim, 6)

    def pre_attention(self, x: torch.Tensor, c: torch.Tensor, rot: torch.Tensor | None):
        shift, scale, *post = self.adaLN_modulation(c)
        return self.attn(modulate(layer_norm(x), shift, scale), rot), post

    def post_attention(self, x: torch.Tensor, attn_out: torch.Tensor, post) -> torch.Tensor:
        gate_msa, shift_ffn, scale_ffn, gate_ffn = post
        x = x + self.linear1(attn_out) * gate_msa
        return x + self.ffn(modulate(layer_norm(x), shift_ffn, scale_ffn)) * gate_ffn


class JointBlock(nn.Module):
    """One attention over [audio; visual; text], every stream updated (the official `pre_only`
    flag of the last block is stored but never used)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.audio_block = StreamBlock(dim, heads, mlp_ratio, conv=True)
        self.visual_block = StreamBlock(dim, heads, mlp_ratio, conv=True)
        self.text_block = StreamBlock(dim, heads, mlp_ratio, conv=False)

    def forward(self, audio, visual, text, c, audio_rot, visual_rot, key_bias):
        """audio [B, La, D], visual [B, Lv, D], text [B, Lt, D], c [B, D], key_bias
        [B, 1, 1, La + Lv + Lt] -> the three updated streams."""
        a_qkv, a_post = self.audio_block.pre_attention(audio, c, audio_rot)
        v_qkv, v_post = self.visual_block.pre_attention(visual, c, visual_rot)
        t_qkv, t_post = self.text_block.pre_attention(text, c, None)
        qkv = (torch.cat(parts, dim=2) for parts in zip(a_qkv, v_qkv, t_qkv, strict=True))
        out = attention(*qkv, key_bias)
        # Slices, not split: a split with dynamic sizes exports as sequence ops TensorRT lacks.
        n, nv = audio.shape[1], visual.shape[1]
        return (
            self.audio_block.post_attention(audio, out[:, :n], a_post),
            self.visual_block.post_attention(visual, out[:, n : n + nv], v_post),
            self.text_block.post_attention(text, out[:, n + nv :], t_post),
        )


class SingleStreamBlock(nn.Module):
    """The tied single-stream block (official `SingleModalStreamBlockDiTV2`)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.self_attn = SelfAttention(dim, heads)
        self.vis_aud_cross_atn = CrossAttentionProjections(dim, heads)
        self.tex_aud_cross_atn = CrossAttentionProjections(dim, heads)
        self.cross_weight = nn.Parameter(torch.tensor(0.5))
        self.linear1 = ChannelLastConv1d(dim, dim, 3, padding=1)
        self.ffn = ConvMLP(dim, int(mlp_ratio * dim), 3, 1)
        self.adaLN_modulation = Modulation(dim, 6)

    def cross_attend(
        self,
        x: torch.Tensor,
        visual: torch.Tensor,
        text: torch.Tensor,
        psca: PSCALayer,
        psca_fn: PSCAFn | None = None,
    ) -> torch.Tensor:
        """x + α · attn(x, text) + (1 - α) · psca_attn(x, visual; l), both from the same
        un-normalised x; the text attention has no padding mask. x [B, La, D], visual
        [B, Lv, D], text [B, Lt, D] -> [B, La, D]. `psca_fn`: default the dispatcher (the
        Triton kernel on CUDA, the reference elsewhere)."""
        video_out = (psca_fn or psca_attention)(*self.vis_aud_cross_atn(x, visual), psca)
        text_out = F.scaled_dot_product_attention(*self.tex_aud_cross_atn(x, text))
        alpha = self.cross_weight
        return x + alpha * _merge_heads(text_out) + (1 - alpha) * _merge_heads(video_out)

    def forward(self, x, visual, text, c, rot, psca: PSCALayer, psca_fn=None) -> torch.Tensor:
        """One application: x [B, La, D], c [B, D], rot the audio RoPE table."""
        shift_msa, scale_msa, gate_msa, shift_ffn, scale_ffn, gate_ffn = self.adaLN_modulation(c)
        attn = attention(*self.self_attn(modulate(layer_norm(x), shift_msa, scale_msa), rot))
        x = self.cross_attend(x + self.linear1(attn) * gate_msa, visual, text, psca, psca_fn)
        return x + self.ffn(modulate(layer_norm(x), shift_ffn, scale_ffn)) * gate_ffn


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class CrossModalityProjector(nn.Module):
    """Linear, SiLU, (dropout), Linear (keys proj.0, proj.3)."""

    def __init__(self, dim: int):
        super().__init__()
        # The Identity holds dropout's place so the second Linear keeps its key, proj.3.
        self.proj = nn.Sequential(
            nn.Linear(dim, dim), nn.SiLU(), nn.Identity(), nn.Linear(dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class TimestepEmbedder(nn.Module):
    """t [B] in [0, 1] (no x1000) -> [B, H]: [cos, sin] of t · 10000^(-k/128), then a SiLU MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(TIME_FREQS, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = TIME_FREQS // 2
        # The official op order, fp32, then rounded to t's dtype as the official `.to(t)`.
        k = torch.arange(half, dtype=torch.float32, device=t.device)
        freqs = torch.exp(-math.log(ROPE_THETA) * k / half).to(t.dtype)
        angle = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([angle.cos(), angle.sin()], dim=-1).to(t.dtype))


class FinalBlock(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.adaLN_modulation = Modulation(dim, 2)
        self.conv = ChannelLastConv1d(dim, out_dim, 7, padding=3)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)
        return self.conv(modulate(layer_norm(x), shift, scale))


class Flowley(nn.Module):
    """The Flowley DiT at fixed sequence lengths: La audio latents, Lv video frames (8 fps)."""

    def __init__(self, config: FlowleyConfig, audio_seq_len: int, visual_seq_len: int):
        super().__init__()
        self.config = c = config
        H = c.hidden_dim
        self.text_projector = nn.Sequential(nn.Linear(c.text_dim, H), nn.SiLU(), MLP(H, 4 * H))
        self.visual_projector = nn.Sequential(
            nn.Linear(c.video_dim, H), nn.SiLU(), ConvMLP(H, 4 * H, 3, 1)
        )
        self.audio_projector = nn.Sequential(
            ChannelLastConv1d(c.latent_dim, H, 7, padding=3), nn.SiLU(), ConvMLP(H, 4 * H, 7, 3)
        )
        self.text_cond_projector = nn.Linear(H, H)
        self.visual_cond_projector = nn.Linear(H, H)
        self.global_cond_projector = MLP(H, 4 * H)
        self.timestep_embedder = TimestepEmbedder(H)
        self.multimodal_stream = nn.ModuleList(
            JointBlock(H, c.multi_heads, c.mlp_ratio) for _ in range(c.multi_depth)
        )
        self.cross_visual_proj = CrossModalityProjector(H)
        self.cross_textual_proj = CrossModalityProjector(H)
        # The tied block, stored once (see the module docstring).
        tied = SingleStreamBlock(H, c.single_heads, c.mlp_ratio)
        self.single_modal_stream = nn.ModuleList([tied])
        self.final_layer = FinalBlock(H, c.latent_dim)
        self.latent_mean = nn.Parameter(torch.full((1, 1, c.latent_dim), float("nan")))
        self.latent_std = nn.Parameter(torch.full((1, 1, c.latent_dim), float("nan")))
        self.empty_visual_feature = nn.Parameter(torch.zeros(1, c.video_dim))
        self.empty_text_feature = nn.Parameter(torch.zeros(1, c.text_dim))
        self.requires_grad_(False)
        self.psca = psca_layers(c)
        self.update_seq_lengths(audio_seq_len, visual_seq_len)

    # -- sequence lengths and tables -------------------------------------------------------

    def update_seq_lengths(self, audio_seq_len: int, visual_seq_len: int) -> None:
        self.audio_seq_len, self.visual_seq_len = audio_seq_len, visual_seq_len
        self._build_tables()

    def _build_tables(self) -> None:
        """The fp32 RoPE tables of the module's lengths (`rope_tables`)."""
        tables = rope_tables(
            self.config, self.audio_seq_len, self.visual_seq_len, self.latent_mean.device
        )
        for name, table in tables.items():
            self.register_buffer(name, table, persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)  # keep the RoPE tables fp32 whatever the model dtype
        self._build_tables()
        return self

    @property
    def tied_block(self) -> SingleStreamBlock:
        return self.single_modal_stream[0]

    def load_official(self, state: Mapping[str, torch.Tensor], source: str) -> "Flowley":
        """Load the released checkpoint layout (`model.<key>`, the tied block stored N times)
        strictly: every copy of the tied block must be present and equal; one is kept."""
        state = {
            k.removeprefix(PREFIX): v
            for k, v in state.items()
            if k.removeprefix(PREFIX) not in DROPPED_KEYS
        }
        load_strict(self, untie(state, self.config.single_depth, source), source)
        self._build_tables()
        return self

    # -- conditions ---------------------------------------------------------------------------

    def project_conditions(
        self, text: torch.Tensor, visual: torch.Tensor, text_len: torch.Tensor
    ) -> FlowleyConditions:
        """text [B, Lt, text_dim] (T5, L2-normalised along the sequence), visual [B, Lv,
        video_dim] (CLIP, L2-normalised per frame), text_len [B] -> FlowleyConditions."""
        if visual.shape[1] != self.visual_seq_len:
            raise ValueError(f"{visual.shape[1]} video frames, expected {self.visual_seq_len}")
        return self._project(text, visual, text_len)

    def _project(self, text, visual, text_len) -> FlowleyConditions:
        text_f = self.text_projector(text)
        visual_f = self.visual_projector(visual)
        # The mean runs over all Lt text tokens, padding included, as the official code.
        global_c = self.global_cond_projector(
            self.text_cond_projector(text_f.mean(1)) + self.visual_cond_projector(visual_f.mean(1))
        )
        return FlowleyConditions(text_f, visual_f, global_c, text_len)

    def empty_conditions(self, text_len: torch.Tensor) -> FlowleyConditions:
        """The unconditional branch: zero features through the projectors (not zero after
        them), with the conditional text_len [B], as the official sampler."""
        B = text_len.shape[0]
        text = self.empty_text_feature[None].expand(B, self.config.text_seq_len, -1)
        visual = self.empty_visual_feature[None].expand(B, self.visual_seq_len, -1)
        return self.project_conditions(text, visual, text_len)

    def cfg_conditions(
        self, text: torch.Tensor, visual: torch.Tensor, text_len: torch.Tensor
    ) -> FlowleyConditions:
        """The conditional rows, then the unconditional rows, of batched CFG:
        `cat_conditions(project_conditions(...), empty_conditions(text_len))` with the lengths
        read from the inputs (no check against the module's: an exported graph runs this)."""
        empty_text = self.empty_text_feature[None].expand_as(text)
        empty_visual = self.empty_visual_feature[None].expand_as(visual)
        return cat_conditions(
            self._project(text, visual, text_len),
            self._project(empty_text, empty_visual, text_len),
        )

    def condition(self, global_c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """global_c [B, H] + timestep embedding of t [B] (or [1], broadcast) -> c [B, H]."""
        return global_c + self.timestep_embedder(t)

    # -- flow ---------------------------------------------------------------------------------

    def predict_flow(
        self,
        latent: torch.Tensor,
        t: torch.Tensor,
        cond: FlowleyConditions,
        psca_fn: PSCAFn | None = None,
        tables: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """latent [B, La, A], t [B] or [1] -> flow [B, La, A]. `psca_fn`: how the tied block
        runs PSCA (default: the dispatcher). `tables`: the RoPE tables of the inputs' lengths
        (`rope_tables`), default the module's own, for the lengths of `update_seq_lengths`."""
        if tables is None:
            if latent.shape[1] != self.audio_seq_len:
                raise ValueError(f"{latent.shape[1]} latent frames, expected {self.audio_seq_len}")
            tables = {name: getattr(self, name) for name in ROPE_TABLES}
        c = self.condition(cond.global_c, t)
        x, visual, text = self.audio_projector(latent), cond.visual_f, cond.text_f
        lead = x.shape[1] + visual.shape[1]
        key_bias = self.text_key_bias(cond.text_len, lead, text.shape[1]).to(x.dtype)
        for block in self.multimodal_stream:
            x, visual, text = block(
                x, visual, text, c, tables["multi_audio_rot"], tables["multi_visual_rot"], key_bias
            )
        visual, text = self.cross_visual_proj(visual), self.cross_textual_proj(text)
        block = self.tied_block
        for psca in self.psca:
            x = block(x, visual, text, c, tables["single_audio_rot"], psca, psca_fn)
        return self.final_layer(x, c)

    @staticmethod
    def text_key_bias(text_len: torch.Tensor, lead: int, lt: int) -> torch.Tensor:
        """[B, 1, 1, lead + Lt] float32: 0, and -inf on text keys at or past text_len."""
        pad = torch.arange(lt, device=text_len.device)[None] >= text_len[:, None]
        bias = torch.zeros(pad.shape, dtype=torch.float32, device=text_len.device)
        bias = bias.masked_fill(pad, float("-inf"))
        return F.pad(bias, (lead, 0))[:, None, None]

    def forward(self, latent, text, visual, text_len, t, psca_fn=None) -> torch.Tensor:
        """The official `Flowley.forward`: latent [B, La, A], text [B, Lt, Ct], visual
        [B, Lv, Cv], text_len [B], t [B] -> flow [B, La, A]."""
        cond = self.project_conditions(text, visual, text_len)
        return self.predict_flow(latent, t, cond, psca_fn)

    def cfg_velocity(
        self,
        latent: torch.Tensor,
        t: torch.Tensor,
        cond: FlowleyConditions,
        uncond: FlowleyConditions,
        cfg_strength: float,
        psca_fn: PSCAFn | None = None,
    ) -> torch.Tensor:
        """s · v(cond) + (1 - s) · v(uncond) with two passes, as the official sampler
        (cfg_strength < 1: v(cond) alone)."""
        v_cond = self.predict_flow(latent, t, cond, psca_fn)
        if cfg_strength < 1:
            return v_cond
        v_uncond = self.predict_flow(latent, t, uncond, psca_fn)
        return cfg_combine(v_cond, v_uncond, cfg_strength)

    def cfg_velocity_batched(
        self,
        latent: torch.Tensor,
        t: torch.Tensor,
        cond_uncond: FlowleyConditions,
        cfg_strength: float | torch.Tensor,
        psca_fn: PSCAFn | None = None,
        tables: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """`cfg_velocity` as one pass over the doubled batch cat_conditions(cond, uncond).
        cfg_strength: a float, or a 0-d tensor (an exported graph's input; both branches are
        then always computed); `psca_fn`, `tables` as `predict_flow`."""
        B = latent.shape[0]
        if not isinstance(cfg_strength, torch.Tensor) and cfg_strength < 1:
            cond = FlowleyConditions(*(f[:B] for f in cond_uncond))
            return self.predict_flow(latent, t, cond, psca_fn, tables)
        v = self.predict_flow(
            torch.cat([latent, latent]), torch.cat([t, t]), cond_uncond, psca_fn, tables
        )
        return cfg_combine(v[:B], v[B:], cfg_strength)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised latent [B, La, A] -> VAE latent: x * std + mean (the official
        `denormalize`, which works in place; here a new tensor)."""
        return x * self.latent_std + self.latent_mean


def untie(state: Mapping[str, torch.Tensor], copies: int, source: str) -> StateDict:
    """The state with the tied block's N stored copies (`single_modal_stream.{i}.*`) reduced to
    copy 0, after checking there are exactly `copies` of them and that they are equal."""
    out, tied = {}, {}
    for key, value in state.items():
        if key.startswith(TIED):
            index, _, rest = key.removeprefix(TIED).partition(".")
            tied.setdefault(rest, {})[index] = value
        else:
            out[key] = value
    expected = {str(i) for i in range(copies)}
    for rest, by_index in tied.items():
        if set(by_index) != expected:
            raise CheckpointError(
                f"{source}: {TIED}*.{rest} is stored {len(by_index)} times, expected {copies} "
                "(one per application of the tied single-stream block)"
            )
        first = by_index["0"]
        for i in sorted(expected, key=int):
            v = by_index[i]
            if v.shape != first.shape or not torch.equal(v, first):
                raise CheckpointError(
                    f"{source}: the tied single-stream block's copies differ "
                    f"({TIED}{i}.{rest} != {TIED}0.{rest}); this is not a Flowley checkpoint"
                )
        out[f"{TIED}0.{rest}"] = first
    return out


def official_state_keys(config: FlowleyConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the released checkpoint for `config` (`model.` prefix, N copies)."""
    with torch.device("meta"):
        shapes = expected_shapes(Flowley(config, 8, 8))
    out = {}
    for key, shape in shapes.items():
        if key.startswith(f"{TIED}0."):
            rest = key.removeprefix(f"{TIED}0.")
            out.update({f"{PREFIX}{TIED}{i}.{rest}": shape for i in range(config.single_depth)})
        else:
            out[PREFIX + key] = shape
    return out


def random_official_state(config: FlowleyConfig, seed: int) -> StateDict:
    """A deterministic random checkpoint in the released layout (the golden recipe): weights
    ~N(0, 1/fan_in), biases ~N(0, 0.05^2), RMSNorm scales 1 + 0.1 N, α ~U[0.2, 0.8),
    latent_mean 0.5 N, latent_std U[0.5, 1.5); the empty features stay zero (true constants).
    The tied block is drawn once and stored N times."""
    g = torch.Generator().manual_seed(seed)
    state, tied = {}, {}
    for key, shape in official_state_keys(config).items():
        name = key.removeprefix(PREFIX)
        if name.startswith(TIED):
            rest = name.removeprefix(TIED).partition(".")[2]
            if rest in tied:
                state[key] = tied[rest]
                continue
        if name == "latent_std":
            value = 0.5 + torch.rand(shape, generator=g)
        elif name == "latent_mean":
            value = 0.5 * torch.randn(shape, generator=g)
        elif name.startswith("empty_"):
            value = torch.zeros(shape)
        elif name.endswith("cross_weight"):
            value = 0.2 + 0.6 * torch.rand(shape, generator=g)
        elif name.endswith(".scale"):
            value = 1 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith(".bias"):
            value = 0.05 * torch.randn(shape, generator=g)
        else:
            value = torch.randn(shape, generator=g) / math.prod(shape[1:]) ** 0.5
        state[key] = value
        if name.startswith(TIED):
            tied[name.removeprefix(TIED).partition(".")[2]] = value
    return state
