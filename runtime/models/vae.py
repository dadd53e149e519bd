"""EDM2-style magnitude-preserving 1D VAE that maps latents to log-mel spectrograms (spec §6.1).

The decoder turns a generator latent [B, E, N] into a log-mel [B, M, 2N]; the encoder (optional,
for separation and training-style encoding) maps a log-mel back to a diagonal Gaussian.

Every convolution is an MPConv1d. The checkpoint holds *raw* weights; the official loader
rewrites them once (`remove_weight_norm`) into normalised weights that forward then uses as
they are. `load_official` does that rewrite in fp32 before anything else touches the weights.
"""

import math
from collections.abc import Mapping
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from ..variants import VAEConfig
from .checkpoint import check_state_dict, load_strict

CH_MULT = (1, 2, 4)
NUM_RES_BLOCKS = 2  # encoder blocks per level; the decoder has one more
CLIP_ACT = 256.0
MP_SUM_T = 0.3
PIXEL_NORM_EPS = 1e-4

# Per-mel-bin statistics of the training data, as hard-coded in the official vae.py and stored
# in the checkpoints as the persistent buffers data_mean / data_std (shape (1, M, 1)).
# fmt: off
DATA_MEAN_80 = (
    -1.6058, -1.3676, -1.2520, -1.2453, -1.2078, -1.2224, -1.2419, -1.2439, -1.2922, -1.2927,
    -1.3170, -1.3543, -1.3401, -1.3836, -1.3907, -1.3912, -1.4313, -1.4152, -1.4527, -1.4728,
    -1.4568, -1.5101, -1.5051, -1.5172, -1.5623, -1.5373, -1.5746, -1.5687, -1.6032, -1.6131,
    -1.6081, -1.6331, -1.6489, -1.6489, -1.6700, -1.6738, -1.6953, -1.6969, -1.7048, -1.7280,
    -1.7361, -1.7495, -1.7658, -1.7814, -1.7889, -1.8064, -1.8221, -1.8377, -1.8417, -1.8643,
    -1.8857, -1.8929, -1.9173, -1.9379, -1.9531, -1.9673, -1.9824, -2.0042, -2.0215, -2.0436,
    -2.0766, -2.1064, -2.1418, -2.1855, -2.2319, -2.2767, -2.3161, -2.3572, -2.3954, -2.4282,
    -2.4659, -2.5072, -2.5552, -2.6074, -2.6584, -2.7107, -2.7634, -2.8266, -2.8981, -2.9673,
)
DATA_STD_80 = (
    1.0291, 1.0411, 1.0043, 0.9820, 0.9677, 0.9543, 0.9450, 0.9392, 0.9343, 0.9297,
    0.9276, 0.9263, 0.9242, 0.9254, 0.9232, 0.9281, 0.9263, 0.9315, 0.9274, 0.9247,
    0.9277, 0.9199, 0.9188, 0.9194, 0.9160, 0.9161, 0.9146, 0.9161, 0.9100, 0.9095,
    0.9145, 0.9076, 0.9066, 0.9095, 0.9032, 0.9043, 0.9038, 0.9011, 0.9019, 0.9010,
    0.8984, 0.8983, 0.8986, 0.8961, 0.8962, 0.8978, 0.8962, 0.8973, 0.8993, 0.8976,
    0.8995, 0.9016, 0.8982, 0.8972, 0.8974, 0.8949, 0.8940, 0.8947, 0.8936, 0.8939,
    0.8951, 0.8956, 0.9017, 0.9167, 0.9436, 0.9690, 1.0003, 1.0225, 1.0381, 1.0491,
    1.0545, 1.0604, 1.0761, 1.0929, 1.1089, 1.1196, 1.1176, 1.1156, 1.1117, 1.1070,
)
DATA_MEAN_128 = (
    -3.3462, -2.6723, -2.4893, -2.3143, -2.2664, -2.3317, -2.1802, -2.4006, -2.2357, -2.4597,
    -2.3717, -2.4690, -2.5142, -2.4919, -2.6610, -2.5047, -2.7483, -2.5926, -2.7462, -2.7033,
    -2.7386, -2.8112, -2.7502, -2.9594, -2.7473, -3.0035, -2.8891, -2.9922, -2.9856, -3.0157,
    -3.1191, -2.9893, -3.1718, -3.0745, -3.1879, -3.2310, -3.1424, -3.2296, -3.2791, -3.2782,
    -3.2756, -3.3134, -3.3509, -3.3750, -3.3951, -3.3698, -3.4505, -3.4509, -3.5089, -3.4647,
    -3.5536, -3.5788, -3.5867, -3.6036, -3.6400, -3.6747, -3.7072, -3.7279, -3.7283, -3.7795,
    -3.8259, -3.8447, -3.8663, -3.9182, -3.9605, -3.9861, -4.0105, -4.0373, -4.0762, -4.1121,
    -4.1488, -4.1874, -4.2461, -4.3170, -4.3639, -4.4452, -4.5282, -4.6297, -4.7019, -4.7960,
    -4.8700, -4.9507, -5.0303, -5.0866, -5.1634, -5.2342, -5.3242, -5.4053, -5.4927, -5.5712,
    -5.6464, -5.7052, -5.7619, -5.8410, -5.9188, -6.0103, -6.0955, -6.1673, -6.2362, -6.3120,
    -6.3926, -6.4797, -6.5565, -6.6511, -6.8130, -6.9961, -7.1275, -7.2457, -7.3576, -7.4663,
    -7.6136, -7.7469, -7.8815, -8.0132, -8.1515, -8.3071, -8.4722, -8.7418, -9.3975, -9.6628,
    -9.7671, -9.8863, -9.9992, -10.0860, -10.1709, -10.5418, -11.2795, -11.3861,
)
DATA_STD_128 = (
    2.3804, 2.4368, 2.3772, 2.3145, 2.2803, 2.2510, 2.2316, 2.2083, 2.1996, 2.1835,
    2.1769, 2.1659, 2.1631, 2.1618, 2.1540, 2.1606, 2.1571, 2.1567, 2.1612, 2.1579,
    2.1679, 2.1683, 2.1634, 2.1557, 2.1668, 2.1518, 2.1415, 2.1449, 2.1406, 2.1350,
    2.1313, 2.1415, 2.1281, 2.1352, 2.1219, 2.1182, 2.1327, 2.1195, 2.1137, 2.1080,
    2.1179, 2.1036, 2.1087, 2.1036, 2.1015, 2.1068, 2.0975, 2.0991, 2.0902, 2.1015,
    2.0857, 2.0920, 2.0893, 2.0897, 2.0910, 2.0881, 2.0925, 2.0873, 2.0960, 2.0900,
    2.0957, 2.0958, 2.0978, 2.0936, 2.0886, 2.0905, 2.0845, 2.0855, 2.0796, 2.0840,
    2.0813, 2.0817, 2.0838, 2.0840, 2.0917, 2.1061, 2.1431, 2.1976, 2.2482, 2.3055,
    2.3700, 2.4088, 2.4372, 2.4609, 2.4731, 2.4847, 2.5072, 2.5451, 2.5772, 2.6147,
    2.6529, 2.6596, 2.6645, 2.6726, 2.6803, 2.6812, 2.6899, 2.6916, 2.6931, 2.6998,
    2.7062, 2.7262, 2.7222, 2.7158, 2.7041, 2.7485, 2.7491, 2.7451, 2.7485, 2.7233,
    2.7297, 2.7233, 2.7145, 2.6958, 2.6788, 2.6439, 2.6007, 2.4786, 2.2469, 2.1877,
    2.1392, 2.0717, 2.0107, 1.9676, 1.9140, 1.7102, 0.9101, 0.7164,
)
# fmt: on

DATA_STATS = {80: (DATA_MEAN_80, DATA_STD_80), 128: (DATA_MEAN_128, DATA_STD_128)}
DOWN_LEVEL = 0  # the encoder halves time after this level; the decoder doubles after level + 1


def pixel_norm(x: torch.Tensor, dim: int) -> torch.Tensor:
    """EDM2 normalize(): x / (eps + ||x||_dim / sqrt(size of dim)), the norm taken in fp32."""
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    # torch.add(eps, norm, alpha=...) as in the official code: one fused multiply-add.
    norm = torch.add(PIXEL_NORM_EPS, norm, alpha=math.sqrt(1 / x.shape[dim]))
    return x / norm.to(x.dtype)


def normalize_mp_weight(weight: torch.Tensor) -> torch.Tensor:
    """The official MPConv1D.remove_weight_norm rewrite of a raw weight [O, I, K], in fp32:
    w / (1e-4 + ||w_o|| / sqrt(I*K)) / sqrt(I*K), per output channel o."""
    w = weight.float()
    fan_in = w[0].numel()
    norm = torch.linalg.vector_norm(w, dim=(1, 2), keepdim=True, dtype=torch.float32)
    norm = torch.add(PIXEL_NORM_EPS, norm, alpha=math.sqrt(1 / fan_in))
    return w / norm / math.sqrt(fan_in)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = MP_SUM_T) -> torch.Tensor:
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


class MPConv1d(nn.Module):
    """Bias-free conv, zero padding k // 2. `weight` [O, I, K] is the normalised weight that
    `VAE.load_official` writes (never the raw checkpoint weight)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))

    def forward(self, x: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
        w = self.weight if gain is None else self.weight * gain
        return F.conv1d(x, w, padding=w.shape[-1] // 2)


class ResnetBlock1d(nn.Module):
    """x <- pixel_norm(x); mp_sum(shortcut(x), conv2(mp_silu(conv1(mp_silu(x)))))."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv1 = MPConv1d(in_dim, out_dim, 3)
        self.conv2 = MPConv1d(out_dim, out_dim, 3)
        self.nin_shortcut = MPConv1d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(x, dim=1)  # the residual path carries the normalised input too
        h = self.conv2(mp_silu(self.conv1(mp_silu(x))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return mp_sum(x, h)


class AttnBlock1d(nn.Module):
    """One-head self-attention over time with pixel-normalised q, k, v (scale 1/sqrt(C))."""

    def __init__(self, channels: int):
        super().__init__()
        self.qkv = MPConv1d(channels, channels * 3, 1)
        self.proj_out = MPConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, L] -> [B, C, L]."""
        y = self.qkv(x)
        # qkv channels are interleaved (c, j): channel 3c + j holds q/k/v (j = 0/1/2) of c.
        y = y.unflatten(1, (-1, 3))
        q, k, v = pixel_norm(y, dim=1).unbind(2)  # each [B, C, L]
        h = F.scaled_dot_product_attention(
            q.transpose(1, 2).unsqueeze(1),
            k.transpose(1, 2).unsqueeze(1),
            v.transpose(1, 2).unsqueeze(1),
        )  # [B, 1, L, C]
        return mp_sum(x, self.proj_out(h.squeeze(1).transpose(1, 2)))


class Upsample1d(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = MPConv1d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, L] -> [B, C, 2L]."""
        # interpolate(scale_factor=2, mode="nearest-exact") repeats every frame twice; the
        # explicit repeat is the same and exports to ONNX without a Resize op.
        return self.conv(x.unsqueeze(-1).expand(-1, -1, -1, 2).flatten(2))


class Downsample1d(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = MPConv1d(channels, channels, 1)
        self.conv2 = MPConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, L] -> [B, C, L // 2]."""
        return self.conv2(F.avg_pool1d(self.conv1(x), kernel_size=2, stride=2))


class Level(nn.Module):
    """ResnetBlocks, each followed by clamp(±256), then an optional resampler."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_blocks: int,
        *,
        upsample: bool = False,
        downsample: bool = False,
    ):
        super().__init__()
        dims = [in_dim] + [out_dim] * num_blocks
        self.block = nn.ModuleList(ResnetBlock1d(i, o) for i, o in pairwise(dims))
        self.upsample = Upsample1d(out_dim) if upsample else None
        self.downsample = Downsample1d(out_dim) if downsample else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            h = block(h).clamp(-CLIP_ACT, CLIP_ACT)
        if self.upsample is not None:
            h = self.upsample(h)
        if self.downsample is not None:
            h = self.downsample(h)
        return h


class MidBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock1d(channels, channels)
        self.attn_1 = AttnBlock1d(channels)
        self.block_2 = ResnetBlock1d(channels, channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.block_2(self.attn_1(self.block_1(h)))
        return h.clamp(-CLIP_ACT, CLIP_ACT)


class Encoder1d(nn.Module):
    """Normalised log-mel [B, M, 2N] -> moments [B, 2E, N] (mean | logvar)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        widths = [config.hidden_dim * m for m in CH_MULT]
        self.conv_in = MPConv1d(config.data_dim, widths[0], 3)
        self.down = nn.ModuleList(
            Level(c_in, c_out, NUM_RES_BLOCKS, downsample=i == DOWN_LEVEL)
            for i, (c_in, c_out) in enumerate(zip([widths[0], *widths[:-1]], widths, strict=True))
        )
        self.mid = MidBlock(widths[-1])
        self.conv_out = MPConv1d(widths[-1], 2 * config.embed_dim, 3)
        self.learnable_gain = nn.Parameter(torch.empty(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(mp_silu(self.mid(h)), gain=self.learnable_gain + 1)


class Decoder1d(nn.Module):
    """Latent [B, E, N] -> normalised log-mel [B, M, 2N]. `up[i]` runs deepest level first."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        widths = [config.hidden_dim * m for m in CH_MULT]
        self.conv_in = MPConv1d(config.embed_dim, widths[-1], 3)
        self.mid = MidBlock(widths[-1])
        self.up = nn.ModuleList(
            Level(c_in, c_out, NUM_RES_BLOCKS + 1, upsample=i == DOWN_LEVEL + 1)
            for i, (c_in, c_out) in enumerate(zip([*widths[1:], widths[-1]], widths, strict=True))
        )
        self.conv_out = MPConv1d(widths[0], config.data_dim, 3)
        self.learnable_gain = nn.Parameter(torch.empty(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)


class VAE(nn.Module):
    """The MMAudio mel VAE. Without `with_encoder` only the decoder exists (as in inference,
    where the official code deletes the encoder after loading)."""

    def __init__(self, config: VAEConfig, with_encoder: bool = False):
        super().__init__()
        if config.data_dim not in DATA_STATS:
            raise ValueError(f"no data_mean/data_std table for {config.data_dim} mel bins")
        mean, std = DATA_STATS[config.data_dim]
        self.register_buffer("data_mean", torch.tensor(mean).view(1, -1, 1))
        self.register_buffer("data_std", torch.tensor(std).view(1, -1, 1))
        self.encoder = Encoder1d(config) if with_encoder else None
        self.decoder = Decoder1d(config)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: [B, E, N] float32 (channels first) -> log-mel [B, M, 2N] (unnormalised)."""
        return self.decoder(z) * self.data_std + self.data_mean

    forward = decode  # so the module exports as the decoder

    def encode(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel: [B, M, T] log-mel -> (mean, logvar), each [B, E, T // 2]; logvar in [-30, 20]."""
        if self.encoder is None:
            raise ValueError("this VAE was built without its encoder (with_encoder=False)")
        moments = self.encoder((mel - self.data_mean) / self.data_std)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def load_official(self, state: Mapping[str, torch.Tensor], source: str) -> "VAE":
        """Load a v1-16.pth / v1-44.pth state dict (raw MPConv weights), rewriting each MPConv
        weight in fp32 exactly as the official `remove_weight_norm()`. Without the encoder,
        `encoder.*` keys are dropped (the official code loads them, then deletes the encoder)."""
        if self.encoder is None:
            state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
        check_state_dict(self, state, source)
        mp_weights = {f"{n}.weight" for n, m in self.named_modules() if isinstance(m, MPConv1d)}
        state = {
            k: normalize_mp_weight(v) if k in mp_weights else v.float() for k, v in state.items()
        }
        load_strict(self, state, source)
        return self


def random_official_state(config: VAEConfig, seed: int) -> dict[str, torch.Tensor]:
    """A random checkpoint in the official layout (encoder included): raw MPConv weights N(0, 1)
    (the load rewrite normalises them), learnable gains 0.1·N(0, 1), the real data statistics."""
    with torch.device("meta"):
        layout = VAE(config, with_encoder=True).state_dict()
    gen = torch.Generator().manual_seed(seed)
    mean, std = DATA_STATS[config.data_dim]
    state = {}
    for key, t in layout.items():
        if key in ("data_mean", "data_std"):
            values = mean if key == "data_mean" else std
            state[key] = torch.tensor(values, device="cpu").view(t.shape)
        else:
            scale = 0.1 if key.endswith("learnable_gain") else 1.0
            state[key] = scale * torch.randn(t.shape, generator=gen, device="cpu")
    return state
