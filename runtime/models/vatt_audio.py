"""VATT Audio (`VT2AModel`'s inference path): tokens + condition -> logits of every audio slot.

One network step of the official `generate_audio_sample` (golden README "VATT cases"):
  condition rows  v = img_linear(cond) + pos_embed[:Nc] + modality_v   (Nc = 10 video + L text)
  uncond rows       = 0 + pos_embed[:Nc] + modality_v   (the condition zeroed after img_linear)
  audio rows        = latent_proj(sum_k table_k[tokens_k]) + pos_embed[Nc:Nc+T] + modality_a,
                      table_k = [codebook_k; MASK_k], so token id num_tokens is MASK
  encoder: (attention, multiway FF) x num_layers, pre-norm, ONE multiway LayerNorm pair shared by
           every sub-layer and the final norm (condition rows use one, audio rows the other)
  decoder: (attention, FF) x dec_num_layers, pre-norm, own LayerNorms, final LayerNorm
  heads:   classifier_k(decoder rows Nc..Nc+T) -> logits [B, K, T, V]
Attention is bidirectional, 64 wide per head, bias-free, with ALiBi over the joint index and the
condition's pad mask on keys (a finite -max/2 fill after the ALiBi bias); padded query rows leave
the attention with zeros. Cond and uncond run as one batch of 2B, cond first.

Several prompts batch here (the official code is B=1) when their conditions have the same length
Nc: every row is computed as in the sample's own run (on the CPU bit for bit). Prompts of
different lengths run as separate batches (`runtime/maskgit.py` groups them): padding one to the
other's length would move its audio positions, routing and ALiBi distances.

Keys: `load_official` maps the official `VT2AModel.state_dict()` (and the codebook file) onto this
module; see `runtime_state`.
"""

import math
import re
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..variants import VattAudioConfig
from .checkpoint import load_strict

LN_EPS = 1e-5


def alibi_slopes(heads: int) -> list[float]:
    """x-transformers' ALiBi slopes: 2^(-8(i+1)/h) for a power of two h, else the power-of-two
    list for the largest p < h and every other slope of the list for 2p."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(heads).is_integer():
        return power_of_2(heads)
    p = 2 ** math.floor(math.log2(heads))
    return power_of_2(p) + power_of_2(2 * p)[0::2][: heads - p]


def alibi_bias(heads: int, n: int, device: torch.device | None = None) -> torch.Tensor:
    """[heads, n, n] float32: -|j - i| * slope_h (integer distances times float32 slopes)."""
    pos = torch.arange(n, device=device)
    distance = -(pos[None, :] - pos[:, None]).abs()
    slopes = torch.tensor(alibi_slopes(heads), device=device).view(heads, 1, 1)
    return distance * slopes


def sincos_positions(dim: int, n: int) -> torch.Tensor:
    """[1, n, dim] float32: the official frozen `pos_embed` (1-D sincos, sin half first,
    omega_i = 10000^(-i / (dim / 2)), in float32 as the official numpy code). Real checkpoints
    store it; this makes it for random weights."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float32) / (dim / 2.0))
    out = torch.arange(n, dtype=torch.float32)[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], 1)[None]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x [B, N, D], bias [B, H, N, N] additive, keep [B, N] bool -> [B, N, D]."""
        b, n, _ = x.shape
        q, k, v = (
            f(x).view(b, n, self.heads, -1).transpose(1, 2)
            for f in (self.to_q, self.to_k, self.to_v)
        )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = self.to_out(out.transpose(1, 2).reshape(b, n, -1))
        return out.masked_fill(~keep[..., None], 0.0)


class FeedForward(nn.Module):
    """Linear -> exact GELU -> Linear, no biases."""

    def __init__(self, dim: int, mult: int):
        super().__init__()
        self.w1 = nn.Linear(dim, dim * mult, bias=False)
        self.w2 = nn.Linear(dim * mult, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.gelu(self.w1(x)))


class MultiwayFeedForward(nn.Module):
    """Two experts: `cond` for condition rows, `audio` for audio rows."""

    def __init__(self, dim: int, mult: int):
        super().__init__()
        self.cond = FeedForward(dim, mult)
        self.audio = FeedForward(dim, mult)


def multiway(x: torch.Tensor, split: int, cond: Callable, audio: Callable) -> torch.Tensor:
    """Apply `cond` to the condition rows [:split] and `audio` to the rest of x [B, N, D]."""
    return torch.cat([cond(x[:, :split]), audio(x[:, split:])], 1)


class Encoder(nn.Module):
    """(attention, multiway FF) x num_layers with the one shared multiway LayerNorm pair."""

    def __init__(self, c: VattAudioConfig):
        super().__init__()
        self.norm_cond = nn.LayerNorm(c.dim, eps=LN_EPS)
        self.norm_audio = nn.LayerNorm(c.dim, eps=LN_EPS)
        self.layers = nn.ModuleList()
        for _ in range(c.num_layers):
            self.layers.append(Attention(c.dim, c.num_heads, c.dim_head))
            self.layers.append(MultiwayFeedForward(c.dim, c.ff_mult))

    def norm(self, x: torch.Tensor, split: int) -> torch.Tensor:
        return multiway(x, split, self.norm_cond, self.norm_audio)

    def forward(
        self,
        x: torch.Tensor,
        split: int,
        bias: torch.Tensor,
        keep: torch.Tensor,
        trace: list | None = None,
    ) -> torch.Tensor:
        """x [B, N, D], condition rows [:split], bias [B, H, N, N], keep [B, N] -> [B, N, D]."""
        for layer in self.layers:
            h = self.norm(x, split)
            if isinstance(layer, Attention):
                h = layer(h, bias, keep)
            else:
                h = multiway(h, split, layer.cond, layer.audio)
            x = h + x
            if trace is not None:
                trace.append(x)
        return self.norm(x, split)


class Decoder(nn.Module):
    """(attention, FF) x dec_num_layers, pre-norm, each sub-layer with its own LayerNorm."""

    def __init__(self, c: VattAudioConfig):
        super().__init__()
        self.norms = nn.ModuleList(
            nn.LayerNorm(c.dim, eps=LN_EPS) for _ in range(2 * c.dec_num_layers)
        )
        self.layers = nn.ModuleList()
        for _ in range(c.dec_num_layers):
            self.layers.append(Attention(c.dim, c.dec_num_heads, c.dim_head))
            self.layers.append(FeedForward(c.dim, c.ff_mult))
        self.final_norm = nn.LayerNorm(c.dim, eps=LN_EPS)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor, keep: torch.Tensor, trace: list | None = None
    ) -> torch.Tensor:
        """x [B, N, D], bias [B, H, N, N], keep [B, N] -> [B, N, D]."""
        for norm, layer in zip(self.norms, self.layers, strict=True):
            h = norm(x)
            h = layer(h, bias, keep) if isinstance(layer, Attention) else layer(h)
            x = h + x
            if trace is not None:
                trace.append(x)
        return self.final_norm(x)


class VattAudio(nn.Module):
    def __init__(self, config: VattAudioConfig):
        super().__init__()
        c = self.config = config
        self.img_linear = nn.Linear(c.encoder_dim, c.dim)
        self.modality_v = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.modality_a = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.visual_seq_len + c.audio_seq_len, c.dim))
        self.register_buffer("codebooks", torch.zeros(c.n_codebooks, c.num_tokens, c.latent_dim))
        self.mask_embed = nn.Parameter(torch.zeros(c.n_codebooks, c.latent_dim))
        self.latent_proj = nn.Linear(c.latent_dim, c.dim)
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.classifier = nn.ModuleList(
            nn.Linear(c.dim, c.num_tokens, bias=False) for _ in range(c.n_codebooks)
        )

    @property
    def mask_id(self) -> int:
        return self.config.num_tokens

    def condition_rows(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cond [B, Nc, E] -> (condition rows, uncond rows), each [B, Nc, D]."""
        v = self.img_linear(cond.to(self.img_linear.weight.dtype))
        pos = self.pos_embed[:, : v.shape[1]]
        return v + pos + self.modality_v, torch.zeros_like(v) + pos + self.modality_v

    def token_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, K, T] int64 (num_tokens = MASK) -> sum of the K lookups [B, T, latent]."""
        latent = 0
        for k in range(tokens.shape[1]):
            table = torch.cat([self.codebooks[k], self.mask_embed[k : k + 1]])
            latent = latent + F.embedding(tokens[:, k], table)
        return latent

    def audio_rows(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """tokens [B, K, T] -> audio rows [B, T, D] at positions start..start+T (start = Nc)."""
        emb = self.latent_proj(self.token_latents(tokens).to(self.latent_proj.weight.dtype))
        return emb + self.pos_embed[:, start : start + tokens.shape[2]] + self.modality_a

    def forward(
        self,
        tokens: torch.Tensor,
        cond: torch.Tensor,
        pad_mask: torch.Tensor,
        trace: dict | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B, K, T] int64, cond [B, Nc, E], pad_mask [B, Nc] (nonzero: real row)
        -> (cond logits, uncond logits), each [B, K, T, V] float.

        `trace` (golden checks) receives the encoder input and the residual stream after every
        sub-layer."""
        b, nc, _ = cond.shape
        v, null = self.condition_rows(cond)
        a = self.audio_rows(tokens, nc)
        x = torch.cat([torch.cat([v, a], 1), torch.cat([null, a], 1)], 0)
        audio_keep = torch.ones(b, tokens.shape[2], dtype=torch.bool, device=x.device)
        keep = torch.cat([pad_mask.to(x.device) > 0, audio_keep], 1).repeat(2, 1)
        enc_trace = dec_trace = None
        if trace is not None:
            enc_trace, dec_trace = [], []
            trace.update(enc_input=x, enc_layers=enc_trace, dec_layers=dec_trace)
        bias = self.bias(keep, self.config.num_heads, x.dtype)
        h = self.encoder(x, nc, bias, keep, enc_trace)
        if trace is not None:
            trace["enc_out"] = h
        if self.config.dec_num_heads != self.config.num_heads:
            bias = self.bias(keep, self.config.dec_num_heads, x.dtype)
        h = self.decoder(h, bias, keep, dec_trace)
        if trace is not None:
            trace["dec_out"] = h
        logits = torch.stack([head(h[:, nc:]) for head in self.classifier], 1)
        return logits[:b], logits[b:]

    @staticmethod
    def bias(keep: torch.Tensor, heads: int, dtype: torch.dtype) -> torch.Tensor:
        """keep [B, N] bool -> [B, H, N, N] in `dtype`: ALiBi, and the padded keys filled with
        -max/2 of that dtype (finite, as officially: the fill comes after the ALiBi bias)."""
        alibi = alibi_bias(heads, keep.shape[1], keep.device).to(dtype)
        fill = torch.tensor(-torch.finfo(dtype).max // 2, dtype=dtype, device=keep.device)
        return torch.where(keep[:, None, None, :], alibi[None], fill)

    def load_official(
        self, state: Mapping[str, torch.Tensor], codebooks: torch.Tensor, source: str
    ) -> "VattAudio":
        """Load `VT2AModel.state_dict()` keys (prefix already removed) and the codebook file's
        content [K, V, latent], strictly."""
        load_strict(self, runtime_state(state, codebooks, source), source)
        return self


_SHARED_NORM = re.compile(
    r"^encoder\.attn_layers\.(?:layers\.\d+\.0\.0|final_norm)\.([AB])\.(\w+)$"
)
_RENAMES = (
    (r"^embedding\.special\.MASK$", "mask_embed"),
    (r"^embedding\.out_proj\.", "latent_proj."),
    (r"^(\w+)\.attn_layers\.layers\.(\d+)\.1\.(to_[qkv]|to_out)\.", r"\1.layers.\2.\3."),
    (r"^encoder\.attn_layers\.layers\.(\d+)\.1\.A\.ff\.0\.0\.", r"encoder.layers.\1.cond.w1."),
    (r"^encoder\.attn_layers\.layers\.(\d+)\.1\.A\.ff\.2\.", r"encoder.layers.\1.cond.w2."),
    (r"^encoder\.attn_layers\.layers\.(\d+)\.1\.B\.ff\.0\.0\.", r"encoder.layers.\1.audio.w1."),
    (r"^encoder\.attn_layers\.layers\.(\d+)\.1\.B\.ff\.2\.", r"encoder.layers.\1.audio.w2."),
    (r"^decoder\.attn_layers\.layers\.(\d+)\.1\.ff\.0\.0\.", r"decoder.layers.\1.w1."),
    (r"^decoder\.attn_layers\.layers\.(\d+)\.1\.ff\.2\.", r"decoder.layers.\1.w2."),
    (r"^decoder\.attn_layers\.layers\.(\d+)\.0\.0\.", r"decoder.norms.\1."),
    (r"^decoder\.attn_layers\.final_norm\.", "decoder.final_norm."),
)


def runtime_state(
    state: Mapping[str, torch.Tensor], codebooks: torch.Tensor, source: str
) -> dict[str, torch.Tensor]:
    """Official `VT2AModel` keys -> this module's. The shared multiway LayerNorm is stored once
    per sub-layer and once as the final norm: every copy must be equal, one is kept."""
    out: dict[str, torch.Tensor] = {"codebooks": codebooks}
    for key, value in state.items():
        if m := _SHARED_NORM.match(key):
            name = f"encoder.norm_{'cond' if m[1] == 'A' else 'audio'}.{m[2]}"
            if name in out and not torch.equal(out[name], value):
                raise CheckpointError(
                    f"{source}: {key} differs from the other copies of the shared encoder norm"
                )
            out[name] = value
            continue
        for pattern, replacement in _RENAMES:
            key, hits = re.subn(pattern, replacement, key)
            if hits:
                break
        out[key] = value
    return out


def official_shapes(c: VattAudioConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of `VT2AModel.state_dict()` for `c` (the layout of the official files)."""
    d, ff = c.dim, c.dim * c.ff_mult
    shapes: dict[str, tuple[int, ...]] = {
        "modality_v": (1, 1, d),
        "modality_a": (1, 1, d),
        "pos_embed": (1, c.visual_seq_len + c.audio_seq_len, d),
    }

    def attention(prefix: str, heads: int) -> None:
        for name in ("to_q", "to_k", "to_v"):
            shapes[f"{prefix}.{name}.weight"] = (heads * c.dim_head, d)
        shapes[f"{prefix}.to_out.weight"] = (d, heads * c.dim_head)

    def feed_forward(prefix: str) -> None:
        shapes[f"{prefix}.ff.0.0.weight"] = (ff, d)
        shapes[f"{prefix}.ff.2.weight"] = (d, ff)

    enc = "encoder.attn_layers"
    for i in range(2 * c.num_layers):
        for way in "AB":  # the one shared multiway LayerNorm, stored once per sub-layer
            shapes[f"{enc}.layers.{i}.0.0.{way}.weight"] = (d,)
            shapes[f"{enc}.layers.{i}.0.0.{way}.bias"] = (d,)
        if i % 2 == 0:
            attention(f"{enc}.layers.{i}.1", c.num_heads)
        else:
            feed_forward(f"{enc}.layers.{i}.1.A")
            feed_forward(f"{enc}.layers.{i}.1.B")
    for way in "AB":
        shapes[f"{enc}.final_norm.{way}.weight"] = (d,)
        shapes[f"{enc}.final_norm.{way}.bias"] = (d,)
    dec = "decoder.attn_layers"
    for i in range(2 * c.dec_num_layers):
        shapes[f"{dec}.layers.{i}.0.0.weight"] = (d,)
        shapes[f"{dec}.layers.{i}.0.0.bias"] = (d,)
        if i % 2 == 0:
            attention(f"{dec}.layers.{i}.1", c.dec_num_heads)
        else:
            feed_forward(f"{dec}.layers.{i}.1")
    shapes[f"{dec}.final_norm.weight"] = (d,)
    shapes[f"{dec}.final_norm.bias"] = (d,)
    shapes["embedding.special.MASK"] = (c.n_codebooks, c.latent_dim)
    shapes["embedding.out_proj.weight"] = (d, c.latent_dim)
    shapes["embedding.out_proj.bias"] = (d,)
    for k in range(c.n_codebooks):
        shapes[f"classifier.{k}.weight"] = (c.num_tokens, d)
    shapes["img_linear.weight"] = (d, c.encoder_dim)
    shapes["img_linear.bias"] = (d,)
    return shapes


def random_official_state(
    c: VattAudioConfig, seed: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(a random `VT2AModel.state_dict()`, codebook file content [K, V, latent]) scaled as the
    golden cases: Linear N(0, 1/fan_in) (heads 2.5/sqrt(fan_in), so sampling is neither uniform
    nor one-hot), biases 0.05 N, LayerNorms 1 + 0.1 N / 0.1 N (the shared pair repeated in every
    copy), modality 0.3 N, MASK and codebooks N(0, 1), the official sincos pos_embed."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in official_shapes(c).items():
        if m := _SHARED_NORM.match(key):
            first = f"encoder.attn_layers.layers.0.0.0.{m[1]}.{m[2]}"
            if first in state:
                state[key] = state[first]
                continue
        if key == "pos_embed":
            value = sincos_positions(c.dim, shape[1])
        elif key.startswith("modality_"):
            value = 0.3 * torch.randn(shape, generator=g)
        elif key == "embedding.special.MASK":
            value = torch.randn(shape, generator=g)
        elif len(shape) == 2:
            scale = 2.5 if key.startswith("classifier.") else 1.0
            value = scale * torch.randn(shape, generator=g) / math.sqrt(shape[1])
        elif key.endswith(".bias") and ("norm" in key or ".0.0." in key):
            value = 0.1 * torch.randn(shape, generator=g)
        elif key.endswith(".bias"):
            value = 0.05 * torch.randn(shape, generator=g)
        else:  # LayerNorm weights
            value = 1 + 0.1 * torch.randn(shape, generator=g)
        state[key] = value
    codebooks = torch.randn(c.n_codebooks, c.num_tokens, c.latent_dim, generator=g)
    return state, codebooks
