"""VATT's video features: the eva02-L CLIP image tower at 5 fps (VATT.md §1, golden
`vatt_eva02_small`).

The authors extract them with an external script (`extract_vggs_clip_5fps.py`, Dropbox only) that
uses open_clip `EVA02-L-14-336` (timm `eva02_large_patch14_clip_336`,
`timm/eva02_large_patch14_clip_336.merged2b_s6b_b61k`). What is reproduced here is open_clip's own
eval transform and `encode_image(normalize=False)`:
  * preprocessing (`preprocess` = `normalize(resize_crop(...))`): PIL bicubic resize of the
    short side to 336 px, centre crop 336 x 336, /255, OpenAI mean/std. PIL's uint8 resampler
    (fixed-point two-pass convolution, horizontal first, rounding to uint8 in between) is
    re-implemented bit for bit in torch, so no PIL is needed;
  * the tower (`Eva02Vision`): patch 14 conv, class token + absolute positions, blocks of
    [LayerNorm, attention (q and v biased, 2-D RoPE on the patch tokens, LayerNorm before the
    output projection), LayerNorm, SwiGLU with a LayerNorm before fc2], final LayerNorm, the class
    token through `head` (width -> 768). LayerNorm eps 1e-6 (timm).
  * frame timing (`frame_times`, `pick_frames`): the official rule is unverified. Chosen: frame i
    of a window (i = 0..49 for 10 s at 5 fps) is the last source frame whose presentation time is
    at or before start + i / 5 s (sample and hold), which for a constant-rate source is frame
    floor(i * fps / 5), the rule the golden case assumes. Whether the released features were
    L2-normalised is also unverified; none is applied (encode_image(normalize=False)).

Keys: timm's `Eva` trunk (`cls_token`, `pos_embed`, `patch_embed.proj.*`, `blocks.{i}.*`,
`norm.*`, `head.*`); `load_official` takes open_clip's `visual.trunk.*` layout.
"""

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..variants import Eva02Config
from .checkpoint import load_strict

LN_EPS = 1e-6
OPEN_CLIP_PREFIX = "visual.trunk."
_PIL_BITS = 22  # Pillow's PRECISION_BITS for 8-bit images: 32 - 8 - 2


def _bicubic(x: float) -> float:
    """Pillow's bicubic kernel (a = -0.5)."""
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


@lru_cache(maxsize=16)
def _pil_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc for a resize of the whole axis:
    (source index [out, K] int64, fixed-point weight [out, K] int64); unused taps weigh 0."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = math.ceil(support) * 2 + 1
    index = torch.zeros(out_size, ksize, dtype=torch.long)
    weight = torch.zeros(out_size, ksize, dtype=torch.long)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [_bicubic((x + xmin - center + 0.5) / filterscale) for x in range(xmax)]
        total = 0.0
        for v in w:  # summed in order, as the C loop
            total += v
        if total != 0.0:
            w = [v / total for v in w]
        for x, v in enumerate(w):
            index[xx, x] = xmin + x
            weight[xx, x] = int((-0.5 if v < 0 else 0.5) + v * (1 << _PIL_BITS))
    return index, weight


def _pil_rows(image: torch.Tensor, out_size: int, keep: slice) -> torch.Tensor:
    """One Pillow resampling pass of uint8 `image` [..., H, W] along H to `out_size`, of which
    only the output rows `keep` are computed (uint8 out): int32 sums of the fixed-point taps,
    rounded, shifted and clipped as Pillow's clip8. Whole rows are gathered per tap."""
    index, weight = (t[keep] for t in _pil_taps(image.shape[-2], out_size))
    x = image.to(torch.int32).contiguous()
    acc = None
    for j in range(index.shape[1]):  # one tap at a time: memory stays one output image
        term = x.index_select(-2, index[:, j]).mul_(weight[:, j, None].to(torch.int32))
        acc = term.add_(1 << (_PIL_BITS - 1)) if acc is None else acc.add_(term)
    return acc.bitwise_right_shift_(_PIL_BITS).clamp_(0, 255).to(torch.uint8)


def pil_bicubic_resize(
    image: torch.Tensor, size: tuple[int, int], crop: tuple[slice, slice] | None = None
) -> torch.Tensor:
    """image [..., H, W] uint8 -> [..., h, w] uint8, bit-exact with PIL's
    Image.resize((w, h), BICUBIC) (horizontal pass first; an unchanged axis is not resampled).
    `crop` (rows, cols of the output) computes only that part, as a crop after the resize."""
    rows, cols = crop or (slice(None), slice(None))
    h, w = size
    if image.shape[-1] != w:
        image = _pil_rows(image.transpose(-1, -2), w, cols).transpose(-1, -2)
    else:
        image = image[..., cols]
    return _pil_rows(image, h, rows) if image.shape[-2] != h else image[..., rows, :]


def preprocess(frames: torch.Tensor, config: Eva02Config) -> torch.Tensor:
    """frames [N, H, W, 3] uint8 RGB -> [N, 3, S, S] float32 (S = image_size): open_clip's eval
    transform (torchvision Resize(S) on PIL images, CenterCrop(S), ToTensor, Normalize)."""
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [N, H, W, 3] uint8, got {tuple(frames.shape)}")
    return normalize(resize_crop(frames.permute(0, 3, 1, 2), config), config)


def resize_crop(images: torch.Tensor, config: Eva02Config) -> torch.Tensor:
    """images [..., 3, H, W] uint8 RGB -> [..., 3, S, S] uint8: the resize and centre crop of
    open_clip's eval transform, PIL-exact (what a decoder keeps per frame: `media.FrameTrack`)."""
    if images.dtype != torch.uint8 or images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"images must be [..., 3, H, W] uint8, got {tuple(images.shape)}")
    s = config.image_size
    h, w = images.shape[-2:]
    # torchvision's resized size: the short side to s, the long side int(s * long / short);
    # CenterCrop's offsets round((n - s) / 2).
    size = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
    crop = tuple(slice(o, o + s) for o in (int(round((n - s) / 2.0)) for n in size))
    return pil_bicubic_resize(images, size, crop)


def normalize(images: torch.Tensor, config: Eva02Config) -> torch.Tensor:
    """images [..., 3, S, S] uint8 (`resize_crop`) -> float32: ToTensor, then OpenAI mean/std."""
    mean = torch.tensor(config.mean, device=images.device)[:, None, None]
    std = torch.tensor(config.std, device=images.device)[:, None, None]
    return (images.float().div(255) - mean) / std


def frame_times(start: float, count: int, fps: int) -> list[Fraction]:
    """The times of the `count` feature frames of a window starting at `start` seconds."""
    base = Fraction(start).limit_denominator(1_000_000)
    return [base + Fraction(i, fps) for i in range(count)]


def pick_frames(pts: Sequence[Fraction], times: Sequence[Fraction]) -> list[int]:
    """Index into `pts` (increasing presentation times of the decoded frames, seconds, exact)
    of the frame shown at each of `times`: the last one at or before it (the first frame for
    times before the first). For frames k / fps this is floor(t * fps)."""
    out, j = [], 0
    for t in times:
        while j + 1 < len(pts) and pts[j + 1] <= t:
            j += 1
        out.append(j)
    return out


def rope_table(config: Eva02Config, device: torch.device | None = None) -> torch.Tensor:
    """timm RotaryEmbeddingCat(head_dim, in_pixels=False, feat_shape=grid, ref_feat_shape):
    [grid^2, 2 * head_dim] = [sin | cos], bands interleaved in pairs."""
    head_dim = config.width // config.heads
    grid = config.image_size // config.patch_size
    bands = head_dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(bands, device=device).float() / bands)
    t = torch.arange(grid, device=device).float() / grid * config.rope_ref_grid
    pos = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1)[..., None] * freqs
    sin = pos.sin().reshape(grid * grid, -1).repeat_interleave(2, -1)
    cos = pos.cos().reshape(grid * grid, -1).repeat_interleave(2, -1)
    return torch.cat([sin, cos], -1)


def _rot(x: torch.Tensor) -> torch.Tensor:
    """[x0, x1, x2, x3, ...] -> [-x1, x0, -x3, x2, ...]."""
    return torch.stack([-x[..., 1::2], x[..., ::2]], -1).reshape(x.shape)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=LN_EPS)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (
            f(x).view(b, n, self.heads, -1).transpose(1, 2)
            for f in (self.q_proj, self.k_proj, self.v_proj)
        )
        sin, cos = rope.to(q.dtype).chunk(2, -1)
        # RoPE on the patch tokens only; the class token keeps its q and k.
        q = torch.cat([q[:, :, :1], q[:, :, 1:] * cos + _rot(q[:, :, 1:]) * sin], 2)
        k = torch.cat([k[:, :, :1], k[:, :, 1:] * cos + _rot(k[:, :, 1:]) * sin], 2)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(self.norm(x.transpose(1, 2).reshape(b, n, c)))


class SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1_g = nn.Linear(width, hidden)
        self.fc1_x = nn.Linear(width, hidden)
        self.norm = nn.LayerNorm(hidden, eps=LN_EPS)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(F.silu(self.fc1_g(x)) * self.fc1_x(x)))


class Block(nn.Module):
    def __init__(self, config: Eva02Config):
        super().__init__()
        w = config.width
        self.norm1 = nn.LayerNorm(w, eps=LN_EPS)
        self.attn = Attention(w, config.heads)
        self.norm2 = nn.LayerNorm(w, eps=LN_EPS)
        self.mlp = SwiGLU(w, int(w * config.mlp_ratio))

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, config: Eva02Config):
        super().__init__()
        p = config.patch_size
        self.proj = nn.Conv2d(3, config.width, p, stride=p)


class Eva02Vision(nn.Module):
    def __init__(self, config: Eva02Config):
        super().__init__()
        self.config = config
        grid = config.image_size // config.patch_size
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, config.width))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width, eps=LN_EPS)
        self.head = nn.Linear(config.width, config.embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, S, S] (`preprocess`) -> features [N, embed_dim], not normalised."""
        x = self.patch_embed.proj(images.to(self.pos_embed.dtype)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        rope = rope_table(self.config, x.device)
        for block in self.blocks:
            x = block(x, rope)
        return self.head(self.norm(x)[:, 0])

    def load_official(self, state: Mapping[str, torch.Tensor], source: str) -> "Eva02Vision":
        """Load the image tower of an open_clip EVA02 checkpoint (`visual.trunk.*`, prefix
        stripped; the text tower and logit scale are dropped), strictly."""
        trunk = {
            k[len(OPEN_CLIP_PREFIX) :]: v
            for k, v in state.items()
            if k.startswith(OPEN_CLIP_PREFIX)
        }
        if not trunk:
            keys = ", ".join(list(state)[:3])
            raise CheckpointError(f"{source} has no {OPEN_CLIP_PREFIX}* keys (found {keys}, ...)")
        others = [
            k for k in state if k.startswith("visual.") and not k.startswith(OPEN_CLIP_PREFIX)
        ]
        if others:
            raise CheckpointError(f"{source}: unexpected image-tower keys {', '.join(others[:3])}")
        load_strict(self, trunk, source)
        return self


def random_official_state(config: Eva02Config, seed: int) -> dict[str, torch.Tensor]:
    """A random open_clip checkpoint of the tower (`visual.trunk.*`): weights N(0, 1/fan_in),
    LayerNorm weights 1 + 0.1 N, biases 0.05 N, class token and positions 0.5 N."""
    with torch.device("meta"):
        layout = Eva02Vision(config).state_dict()
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, t in layout.items():
        shape = tuple(t.shape)
        if key in ("cls_token", "pos_embed"):
            value = 0.5 * torch.randn(shape, generator=g)
        elif len(shape) >= 2:
            value = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith("bias"):
            value = 0.05 * torch.randn(shape, generator=g)
        else:
            value = 1 + 0.1 * torch.randn(shape, generator=g)
        state[OPEN_CLIP_PREFIX + key] = value
    return state
