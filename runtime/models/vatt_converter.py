"""The VATT Converter as VATT calls it: `encode_all_states` of an LLM with a video prefix.

    video [B, 50, 768] -> mean of each 5 frames [B, 10, 768] -> video_proj -> 10 video tokens
    [video tokens; word embeddings of the prompt ids] -> causal LLM with key padding, position ids
    0..N-1 for every row (left padding does not shift them) -> final RMSNorm -> all 10 + L rows

Two released families (VattConverterConfig.family):
  * "llama": Vicuna-7B (LLaMA-1): RMSNorm w * x_hat, SiLU-gated MLP, rotary on halves.
  * "gemma": gemma-2b: RMSNorm x_hat * (1 + w) in float32, tanh-GELU-gated MLP, one KV head, and
    the whole input, video tokens too, scaled by sqrt(hidden) (in the input dtype). Its word
    embeddings live outside the LLM (`word_embeds.pth`); here they are `embed_tokens` too.
Both carry the LoRA delta (rank 16, alpha 32) on q_proj and v_proj unmerged, as peft applies it:
W x + B(A x) * alpha / rank.

Keys (this module): `embed_tokens.weight`, `video_proj.*`, `layers.{i}.self_attn.{q,k,v,o}_proj.
weight`, `layers.{i}.self_attn.{q,v}_proj.lora_{A,B}.weight`, `layers.{i}.mlp.{gate,up,down}_proj.
weight`, `layers.{i}.{input,post_attention}_layernorm.weight`, `norm.weight`. `runtime_state`
maps every official layout onto them.
"""

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, PromptError
from ..variants import VattConverterConfig
from .checkpoint import load_strict


class RMSNorm(nn.Module):
    """LLaMA: w * (x * rsqrt(mean x^2 + eps)), the statistics in float32; Gemma: the whole norm
    in float32 and (1 + w)."""

    def __init__(self, dim: int, eps: float, gemma: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps, self.gemma = eps, gemma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        variance = xf.pow(2).mean(-1, keepdim=True)
        if self.gemma:
            y = xf * torch.rsqrt(variance + self.eps)
            return (y * (1.0 + self.weight.float())).type_as(x)
        y = x * torch.rsqrt(variance + self.eps)  # float32 (x is promoted)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            y = y.to(self.weight.dtype)
        return self.weight * y


class LoraLinear(nn.Module):
    """Bias-free Linear plus an unmerged LoRA branch: W x + B(A x) * scaling (peft's order)."""

    def __init__(self, dim_in: int, dim_out: int, rank: int, scaling: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim_out, dim_in))
        self.lora_A = nn.Linear(dim_in, rank, bias=False)
        self.lora_B = nn.Linear(rank, dim_out, bias=False)
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) + self.lora_B(self.lora_A(x)) * self.scaling


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rope_tables(
    head_dim: int, n: int, theta: float, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [n, head_dim] float32 for positions 0..n-1 (frequencies repeated on halves)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    freqs = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv_freq[None]
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos(), emb.sin()


class SelfAttention(nn.Module):
    def __init__(self, c: VattConverterConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.heads, c.kv_heads, c.head_dim
        self.q_proj = LoraLinear(c.hidden, c.heads * c.head_dim, c.lora_rank, c.lora_scaling)
        self.k_proj = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=False)
        self.v_proj = LoraLinear(c.hidden, c.kv_heads * c.head_dim, c.lora_rank, c.lora_scaling)
        self.o_proj = nn.Linear(c.heads * c.head_dim, c.hidden, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """x [B, N, D], cos/sin [N, head_dim], mask [B, 1, N, N] bool (True: attend)."""
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, c: VattConverterConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden, c.intermediate, bias=False)
        self.up_proj = nn.Linear(c.hidden, c.intermediate, bias=False)
        self.down_proj = nn.Linear(c.intermediate, c.hidden, bias=False)
        self.gemma = c.family == "gemma"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj(x)
        gate = F.gelu(gate, approximate="tanh") if self.gemma else F.silu(gate)
        return self.down_proj(gate * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: VattConverterConfig):
        super().__init__()
        gemma = c.family == "gemma"
        self.input_layernorm = RMSNorm(c.hidden, c.rms_eps, gemma)
        self.self_attn = SelfAttention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden, c.rms_eps, gemma)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class VattConverter(nn.Module):
    def __init__(self, config: VattConverterConfig):
        super().__init__()
        if config.family not in ("llama", "gemma"):
            raise ValueError(f"unknown converter family {config.family!r}")
        c = self.config = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden)
        self.video_proj = nn.Linear(c.video_dim, c.hidden)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.layers))
        self.norm = RMSNorm(c.hidden, c.rms_eps, c.family == "gemma")

    def pool_video(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, F, video_dim] -> [B, video_tokens, video_dim]: adaptive average pooling
        over time (F = 50: means of 5 consecutive frames)."""
        f = self.config.video_frames
        if video.shape[1] != f:
            raise ValueError(f"the converter takes {f} video frames, got {video.shape[1]}")
        pooled = F.adaptive_avg_pool1d(video.transpose(1, 2), self.config.video_tokens)
        return pooled.transpose(1, 2)

    def video_tokens(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, F, video_dim] -> [B, video_tokens, hidden]."""
        return self.video_proj(self.pool_video(video).to(self.video_proj.weight.dtype))

    def forward(self, ids: torch.Tensor, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """encode_all_states: ids [B, L] int64, video [B, F, video_dim], mask [B, 10 + L]
        (nonzero: real position) -> final-norm states of all 10 + L rows [B, 10 + L, hidden]."""
        x = torch.cat([self.video_tokens(video), self.embed_tokens(ids)], 1)
        if self.config.family == "gemma":
            x = x * torch.tensor(self.config.hidden**0.5, dtype=x.dtype)
        n = x.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        attend = causal[None, None] & (mask.to(x.device) > 0)[:, None, None, :]
        cos, sin = rope_tables(self.config.head_dim, n, self.config.rope_theta, x.device)
        for layer in self.layers:
            x = layer(x, cos, sin, attend)
        return self.norm(x)

    def load_official(self, state: Mapping[str, torch.Tensor], source: str) -> "VattConverter":
        """Load a state already in this module's keys (see `runtime_state`), strictly."""
        load_strict(self, state, source)
        return self


# Prefixes of the LLM in the official files, longest first: the Lightning checkpoint (V2TA.encoder
# is the PeftModel), the PeftModel state dict (the LoRA delta), the HF folder of the base model.
_PREFIXES = {
    "llama": ("encoder.base_model.model.model.", "base_model.model.model.", "model."),
    "gemma": ("encoder.base_model.model.", "base_model.model.", "model."),
}
# Weights the files may carry that the converter does not read: the LM head (VATT replaces it by
# Identity) in any layout (the Gemma remap turns `base_model.model.lm_head.weight` into a nested
# name), and for Gemma the embedding inside the LLM (VATT reads word_embeds.pth instead).
_UNUSED = {
    "llama": re.compile(r"(^|\.)lm_head\.weight$"),
    "gemma": re.compile(r"(^|\.)(lm_head|embed_tokens)\.weight$"),
}
_INV_FREQ = re.compile(r"^layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


def gemma_delta_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official Gemma delta remap: "base_model.model." + key.split(".model.model.")[-1]."""
    return {"base_model.model." + k.split(".model.model.")[-1]: v for k, v in state.items()}


def runtime_state(
    state: Mapping[str, torch.Tensor], config: VattConverterConfig, source: str
) -> dict[str, torch.Tensor]:
    """One official file's LLM keys -> this module's keys. Accepted: the HF folder of the base
    model (`model.*`), the PeftModel state dict of the delta (`base_model.model.[model.]*`, LoRA
    keys with `.default.` or without, as get_peft_model_state_dict writes them), the Lightning
    checkpoint's `encoder.base_model.model.[model.]*`. Anything else is refused, naming the keys.

    The stripped LoRA layout (`lora_A.weight`) is read as the adapter: the official
    `load_state_dict(strict=False)` would skip it silently, leaving an untrained adapter."""
    out, unknown = {}, []
    inv_freq = 1.0 / (
        config.rope_theta
        ** (torch.arange(0, config.head_dim, 2, device="cpu").float() / config.head_dim)
    )
    for key, value in state.items():
        if _UNUSED[config.family].search(key):
            continue
        name = next((key[len(p) :] for p in _PREFIXES[config.family] if key.startswith(p)), None)
        if name is None:
            unknown.append(key)
            continue
        name = name.replace(".default.", ".")
        if _INV_FREQ.match(name):
            # The old fork's persistent rotary buffer: derived from rope_theta; a file made with
            # another base would silently change the positions.
            if not torch.allclose(value.float(), inv_freq.to(value.dtype).float(), rtol=1e-3):
                raise CheckpointError(
                    f"{source}: {key} is not the rotary table of base {config.rope_theta:g}"
                )
            continue
        out[name] = value
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise CheckpointError(
            f"{source} is not a VATT {config.family} converter file: unexpected keys "
            f"{', '.join(unknown[:3])}{more}"
        )
    return out


class PromptTokenizer:
    """The official prompt tokenization: the family's template around the caption, the LLM's
    tokenizer (BOS added by it), truncated to max_prompt_tokens, EOS appended when shorter.

    `text_ids(text) -> ids` is the LLM tokenizer with its BOS: `sentencepiece_ids` for Vicuna's
    tokenizer.model (what transformers 4.28's slow LlamaTokenizer runs), a transformers tokenizer
    for Gemma (its chat markers are special tokens), `tiny_tokenizer` for tiny-vatt."""

    def __init__(self, text_ids: Callable[[str], list[int]], config: VattConverterConfig):
        self.text_ids, self.config = text_ids, config

    def encode(self, prompt: str) -> list[int]:
        """prompt -> token ids (at most max_prompt_tokens)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptError("a VATT prompt must be a non-empty string")
        c = self.config
        ids = list(self.text_ids(c.prompt_template.format(prompt)))[: c.max_prompt_tokens]
        if ids[-1] != c.eos_id and len(ids) < c.max_prompt_tokens:
            ids.append(c.eos_id)
        return ids

    def batch(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """prompt -> (ids [1, L] int64, mask [1, video_tokens + L] float32 of ones), the
        official B=1 inputs of `encode_all_states`."""
        ids = torch.tensor([self.encode(prompt)])
        return ids, torch.ones(1, self.config.video_tokens + ids.shape[1])


def sentencepiece_ids(model_file: str | Path, bos_id: int) -> Callable[[str], list[int]]:
    """LLaMA's tokenization: BOS, then sentencepiece's pieces of the whole text."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    return lambda text: [bos_id, *sp.encode(text)]


# The text the tiny tokenizer's word pieces are counted from: the template and prompts like VATT's.
_TINY_CORPUS = """
### Instruction: ### Response: a dog barks while cars pass by on a busy street
the sound of rain falling on a roof with thunder rumbling in the distance
a man is speaking and people are clapping their hands birds are chirping and singing
an engine starts and a motorcycle accelerates sheep bleating on a farm
water is running from a tap wind is blowing through the trees footsteps on a wooden floor
"""


def tiny_tokenizer(config: VattConverterConfig) -> Callable[[str], list[int]]:
    """A LLaMA-style tokenizer of config.vocab_size pieces made locally (tiny-vatt): <unk>,
    <s>, </s> at LLaMA's ids, every printable ASCII character and newline, then the corpus words
    by frequency; Unigram over sentencepiece-style "▁" word starts, BOS prepended."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    specials = ["<unk>", "<s>", "</s>"]
    chars = ["▁", "\n", *(chr(c) for c in range(33, 127))]
    words = Counter("▁" + w for w in _TINY_CORPUS.split())
    ranked = sorted(words, key=lambda w: (-words[w], w))
    pieces = [w for w in ranked if w not in chars][: config.vocab_size - len(specials) - len(chars)]
    vocab = [(p, 0.0) for p in specials] + [(c, -10.0) for c in chars]
    vocab += [(p, -1.0 - i / len(pieces)) for i, p in enumerate(pieces)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first", split=False
    )
    tok.post_processor = processors.TemplateProcessing(
        single=["<s>", "$A"], special_tokens=[("<s>", config.bos_id)]
    )
    return lambda text: tok.encode(text).ids


def official_shapes(c: VattConverterConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official PeftModel state dict (the LoRA delta's layout): LLaMA
    `base_model.model.model.*` with the old fork's rotary buffers, Gemma `base_model.model.*`
    without word embeddings (those are `word_embeds.pth`)."""
    llama = c.family == "llama"
    prefix = "base_model.model.model." if llama else "base_model.model."
    q, kv = c.heads * c.head_dim, c.kv_heads * c.head_dim
    shapes: dict[str, tuple[int, ...]] = {}
    if llama:
        shapes[prefix + "embed_tokens.weight"] = (c.vocab_size, c.hidden)
    for i in range(c.layers):
        p = f"{prefix}layers.{i}."
        for name, out in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            shapes[f"{p}self_attn.{name}.weight"] = (out, c.hidden)
            if name != "k_proj":
                shapes[f"{p}self_attn.{name}.lora_A.default.weight"] = (c.lora_rank, c.hidden)
                shapes[f"{p}self_attn.{name}.lora_B.default.weight"] = (out, c.lora_rank)
        shapes[f"{p}self_attn.o_proj.weight"] = (c.hidden, q)
        if llama:
            shapes[f"{p}self_attn.rotary_emb.inv_freq"] = (c.head_dim // 2,)
        shapes[f"{p}mlp.gate_proj.weight"] = (c.intermediate, c.hidden)
        shapes[f"{p}mlp.up_proj.weight"] = (c.intermediate, c.hidden)
        shapes[f"{p}mlp.down_proj.weight"] = (c.hidden, c.intermediate)
        shapes[f"{p}input_layernorm.weight"] = (c.hidden,)
        shapes[f"{p}post_attention_layernorm.weight"] = (c.hidden,)
    shapes[prefix + "norm.weight"] = (c.hidden,)
    shapes[prefix + "video_proj.weight"] = (c.hidden, c.video_dim)
    shapes[prefix + "video_proj.bias"] = (c.hidden,)
    return shapes


def random_official_state(
    c: VattConverterConfig, seed: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(a random PeftModel state dict in the official layout, word embeddings [V, hidden]) scaled
    as the golden cases: Linear N(0, 1/fan_in), LoRA A and B 0.5/sqrt(fan_in) N (B is zero
    officially at init; random here so the adapter matters), RMSNorm weights 1 + 0.1 N (Gemma's
    (1 + w): 0.1 N), embeddings N(0, 1), video_proj bias 0.05 N, the rotary buffers."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in official_shapes(c).items():
        if key.endswith("inv_freq"):
            value = 1.0 / c.rope_theta ** (torch.arange(0, c.head_dim, 2).float() / c.head_dim)
        elif key.endswith("embed_tokens.weight"):
            value = torch.randn(shape, generator=g)
        elif "lora_" in key:
            value = 0.5 * torch.randn(shape, generator=g) / math.sqrt(shape[1])
        elif len(shape) == 2:
            value = torch.randn(shape, generator=g) / math.sqrt(shape[1])
        elif key.endswith("bias"):
            value = 0.05 * torch.randn(shape, generator=g)
        else:  # RMSNorm weights
            value = 0.1 * torch.randn(shape, generator=g) + (0.0 if c.family == "gemma" else 1.0)
        state[key] = value
    words = torch.randn(c.vocab_size, c.hidden, generator=g)
    if c.family == "llama":
        words = state["base_model.model.model.embed_tokens.weight"]
    return state, words
