"""DFN5B CLIP towers (open_clip model config `ViT-H-14-378-quickgelu`) without open_clip.

Text (spec §2.2): the generator's text condition, SELVA's patched `encode_text`: every one of the
77 token states after `ln_final`, each L2-normalised; no EOT pooling, no `text_projection`.
Image (spec §1.3): `encode_image(normalize=True)` of the plain MMAudio variants.

Both towers load from the one open_clip checkpoint (`open_clip_pytorch_model.bin`), whose keys
are the text tower at the top level and the image tower under `visual.`.
"""

import math
from collections import OrderedDict
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..variants import ClipConfig
from .checkpoint import expected_shapes, load_strict

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# Keys of the open_clip file that neither tower uses: the contrastive head (the text tower's
# pooled projection and the logit scale/bias). The other tower's keys are dropped too.
CONTRASTIVE_KEYS = ("text_projection", "logit_scale", "logit_bias")
VISUAL = "visual."


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the activation OpenAI-style CLIPs were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with `nn.MultiheadAttention`'s parameters (`in_proj_weight` is
    the contiguous [Wq; Wk; Wv], then `out_proj`), written with SDPA so it exports to ONNX."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        """x: [B, L, D] -> [B, L, D]; `causal`: position i attends to positions <= i only."""
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, d))


class ResidualBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)), then x + mlp(ln_2(x)) with a QuickGELU MLP (ratio 4)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(dim, 4 * dim), gelu=QuickGELU(), c_proj=nn.Linear(4 * dim, dim)
            )
        )

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, dim: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualBlock(dim, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, causal)
        return x


class ClipTextEncoder(nn.Module):
    """CLIP text tower as SELVA uses it: tokens [B, 77] int64 -> [B, 77, W] float, every token
    state L2-normalised (the positions after EOT too; the generator mean-pools all 77)."""

    def __init__(self, config: ClipConfig):
        super().__init__()
        self.config = config
        w = config.text_width
        self.token_embedding = nn.Embedding(config.vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.zeros(config.context_length, w))
        self.transformer = Transformer(w, config.text_layers, config.text_heads)
        self.ln_final = nn.LayerNorm(w)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: [B, 77] int64 -> [B, 77, W]."""
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.ln_final(self.transformer(x, causal=True))
        return F.normalize(x, dim=-1)

    def load_official(self, state: Mapping[str, torch.Tensor], source: str) -> "ClipTextEncoder":
        """Load the text keys of an open_clip checkpoint, strictly. Dropped: `visual.*` (the image
        tower) and `text_projection`, `logit_scale`, `logit_bias` (unused by SELVA)."""
        text = {
            k: v for k, v in state.items() if not k.startswith(VISUAL) and k not in CONTRASTIVE_KEYS
        }
        load_strict(self, text, source)
        return self


class ClipImageEncoder(nn.Module):
    """CLIP ViT image tower: frames [N, 3, 384, 384] in [0, 1] -> [N, embed_dim], L2-normalised.

    The position table is for 378 px (27 x 27 patches + class token); a 384 px frame gives the
    same 27 x 27 grid because the stride-14 patch conv never reads its last 6 rows and columns.
    """

    def __init__(self, config: ClipConfig):
        super().__init__()
        self.config = config
        w, p = config.image_width, config.patch_size
        self.grid = config.image_size // p
        self.conv1 = nn.Conv2d(3, w, p, stride=p, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(w))
        self.positional_embedding = nn.Parameter(torch.zeros(self.grid**2 + 1, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(w, config.image_layers, config.image_heads)
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(torch.zeros(w, config.embed_dim))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: [N, 3, H, W] in [0, 1] (H, W give a 27 x 27 patch grid) -> [N, embed_dim]."""
        mean = frames.new_tensor(OPENAI_MEAN).view(3, 1, 1)
        std = frames.new_tensor(OPENAI_STD).view(3, 1, 1)
        x = self.conv1((frames - mean) / std)
        if x.shape[-2:] != (self.grid, self.grid):
            raise ValueError(f"CLIP frames {tuple(frames.shape)} do not give a {self.grid}^2 grid")
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        x = self.transformer(x, causal=False)
        return F.normalize(self.ln_post(x[:, 0]) @ self.proj, dim=-1)

    encode = forward  # frames -> features, the name the pipeline calls

    def load_official(self, state: Mapping[str, torch.Tensor], source: str) -> "ClipImageEncoder":
        """Load the `visual.*` keys of an open_clip checkpoint (prefix stripped), strictly; the
        text tower and contrastive head are dropped."""
        visual = {k[len(VISUAL) :]: v for k, v in state.items() if k.startswith(VISUAL)}
        load_strict(self, visual, source)
        return self


def official_shapes(config: ClipConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the open_clip checkpoint for `config` (the image tower only when
    `image_layers` > 0)."""
    with torch.device("meta"):
        shapes = expected_shapes(ClipTextEncoder(config))
        shapes["text_projection"] = (config.text_width, config.embed_dim)
        shapes["logit_scale"] = ()
        if config.image_layers > 0:
            image = expected_shapes(ClipImageEncoder(config))
            shapes.update({VISUAL + k: s for k, s in image.items()})
    return shapes


def random_official_state(config: ClipConfig, seed: int) -> dict[str, torch.Tensor]:
    """A deterministic random open_clip checkpoint for `config`: linear weights ~N(0, 1/fan_in),
    small biases, LayerNorm weights near 1, embeddings at open_clip's init scale, and
    `logit_scale` at ln(100) (the clamp every trained CLIP sits at)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_shapes(config).items():
        if key == "logit_scale":
            state[key] = torch.tensor(math.log(100.0))
            continue
        if "ln_" in key and key.endswith("weight"):
            std, mean = 0.02, 1.0
        elif key.endswith("bias") or key == "token_embedding.weight":
            std, mean = 0.02, 0.0
        elif key == "positional_embedding":
            std, mean = 0.01, 0.0
        elif key in ("text_projection", "visual.proj") or len(shape) == 1:
            std, mean = shape[0] ** -0.5, 0.0  # [in, out] projections; the class embedding
        else:  # [out, in(, kh, kw)] weights; the image position table
            std, mean = math.prod(shape[1:]) ** -0.5, 0.0
        state[key] = mean + std * torch.randn(shape, generator=g)
    return state
