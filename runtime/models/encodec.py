"""Encodec, AudioGen's 16 kHz compression model: tokens [B, K, T] <-> waveform [B, 1, T * 320].

VATT decodes its tokens with this model (`encodec2audio.py`: `compression_model.decode`); the
encoder and `encode` are here for round trips. Same computation as audiocraft's EncodecModel
(non-causal SEANet, constant padding, weight norm, ELU, LSTM with skip, residual VQ, no
renormalisation), in selva-rt's own code. The official file keeps weight norm as
`weight_g`/`weight_v`; `load_official` folds it into plain weights (w = g * v / ||v||, the norm
over every dim but 0, as torch's weight_norm), so the module holds ordinary convolutions.

Keys: the official `EncodecModel.state_dict()` with `.conv.conv.` / `.convtr.convtr.` collapsed to
`.`, weight norm folded, and the RVQ codebooks stacked as `codebooks` [K, bins, dimension]
(`quantizer.vq.layers.{k}._codebook.embed`; the training-only `inited`, `cluster_size` and
`embed_avg` buffers are dropped).
"""

import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..variants import EncodecConfig
from .checkpoint import load_strict
from .vocoder import WEIGHT_NORM_LAYOUTS

_CODEBOOK = re.compile(r"^quantizer\.vq\.layers\.(\d+)\._codebook\.(\w+)$")
_TRAINING_BUFFERS = ("inited", "cluster_size", "embed_avg")
# Frames of context either side of a chunk in a chunked decode (the receptive field of the
# upsampling stack: each transposed convolution overlaps 2 frames, the rest is sub-frame).
DECODE_MARGIN = 8


class SConv1d(nn.Conv1d):
    """audiocraft StreamableConv1d, non-causal: pad k_eff - stride zeros (the extra half on the
    left), plus what makes the last frame whole on the right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = (self.kernel_size[0] - 1) * self.dilation[0] + 1
        stride = self.stride[0]
        total = kernel - stride
        # audiocraft's (ceil((L - kernel + total) / stride + 1) - 1) * stride + kernel - total
        # - L, in integers (the same for every length; a traced graph keeps L dynamic).
        length = x.shape[-1]
        frames = -(-(length - kernel + total) // stride)
        extra = frames * stride + kernel - total - length
        x = F.pad(x, (total - total // 2, total // 2 + extra))
        return super().forward(x)


class SConvTranspose1d(nn.ConvTranspose1d):
    """audiocraft StreamableConvTranspose1d, non-causal: trims kernel - stride samples, the
    extra half from the left."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        total = self.kernel_size[0] - self.stride[0]
        right = total // 2
        # Trimmed without reading the length (a traced graph keeps its time axis dynamic).
        y = y[..., total - right :]
        return y[..., :-right] if right else y


class ResBlock(nn.Module):
    """x + [ELU, conv(k, dilation) to dim/compress, ELU, conv1 back](x) (true skip)."""

    def __init__(self, dim: int, config: EncodecConfig, dilation: int):
        super().__init__()
        hidden = dim // config.compress
        self.block = nn.Sequential(
            nn.ELU(),
            SConv1d(dim, hidden, config.residual_kernel_size, dilation=dilation),
            nn.ELU(),
            SConv1d(hidden, dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class LSTM(nn.Module):
    """Multi-layer LSTM over time with a skip: [B, C, T] -> [B, C, T]."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(2, 0, 1)
        y, _ = self.lstm(x)
        return (y + x).permute(1, 2, 0)


def _res_blocks(dim: int, config: EncodecConfig) -> list[nn.Module]:
    return [ResBlock(dim, config, config.dilation_base**j) for j in range(config.n_residual_layers)]


class SEANetEncoder(nn.Module):
    """waveform [B, channels, S] -> embeddings [B, dimension, S / hop]."""

    def __init__(self, config: EncodecConfig):
        super().__init__()
        c, n = config, config.n_filters
        layers: list[nn.Module] = [SConv1d(c.channels, n, c.kernel_size)]
        mult = 1
        for ratio in reversed(c.ratios):
            layers += _res_blocks(mult * n, c)
            layers += [nn.ELU(), SConv1d(mult * n, 2 * mult * n, 2 * ratio, stride=ratio)]
            mult *= 2
        if c.lstm_layers:
            layers.append(LSTM(mult * n, c.lstm_layers))
        layers += [nn.ELU(), SConv1d(mult * n, c.dimension, c.last_kernel_size)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class SEANetDecoder(nn.Module):
    """embeddings [B, dimension, T] -> waveform [B, channels, T * hop] (no final activation)."""

    def __init__(self, config: EncodecConfig):
        super().__init__()
        c, n = config, config.n_filters
        mult = 2 ** len(c.ratios)
        layers: list[nn.Module] = [SConv1d(c.dimension, mult * n, c.kernel_size)]
        if c.lstm_layers:
            layers.append(LSTM(mult * n, c.lstm_layers))
        for ratio in c.ratios:
            layers += [nn.ELU(), SConvTranspose1d(mult * n, mult * n // 2, 2 * ratio, ratio)]
            layers += _res_blocks(mult * n // 2, c)
            mult //= 2
        layers += [nn.ELU(), SConv1d(n, c.channels, c.last_kernel_size)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Encodec(nn.Module):
    def __init__(self, config: EncodecConfig):
        super().__init__()
        self.config = config
        self.encoder = SEANetEncoder(config)
        self.decoder = SEANetDecoder(config)
        self.register_buffer("codebooks", torch.zeros(config.n_q, config.bins, config.dimension))

    def decode_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] int64 -> latent [B, dimension, T]: the sum of the K codebook
        lookups, in codebook order (as the official RVQ decode)."""
        latent = torch.zeros((), dtype=self.codebooks.dtype, device=codes.device)
        for k in range(codes.shape[1]):
            latent = latent + F.embedding(codes[:, k], self.codebooks[k]).transpose(1, 2)
        return latent

    def decode(self, codes: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """codes [B, K, T] int64 -> waveform [B, channels, T * hop] float.

        `chunk` (frames): past the LSTM, which runs over the whole sequence, the decoder's
        upsampling stack runs on `chunk` frames at a time, each with DECODE_MARGIN frames of
        its neighbours (its receptive field is under two frames), so memory stays that of one
        chunk while the result is the whole pass's (within float rounding)."""
        split = 2 if self.config.lstm_layers else 1  # the first convolution and the LSTM
        x = self.decoder.model[:split](self.decode_latent(codes))
        tail = self.decoder.model[split:]
        t = x.shape[-1]
        if chunk is None or t <= chunk:
            return tail(x)
        hop, m, out = self.config.hop, DECODE_MARGIN, []
        for a in range(0, t, chunk):
            b = min(a + chunk, t)
            lo, hi = max(0, a - m), min(t, b + m)
            y = tail(x[..., lo:hi])
            out.append(y[..., (a - lo) * hop : (b - lo) * hop])
        return torch.cat(out, -1)

    def quantize(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, dimension, T] -> codes [B, K, T] int64: greedy residual nearest codes,
        with the official distance expression (-(|x|^2 - 2 x.e + |e|^2), argmax)."""
        residual, codes = latent, []
        for book in self.codebooks:
            x = residual.transpose(1, 2).reshape(-1, book.shape[1])
            embed = book.t()
            square = embed.pow(2).sum(0, keepdim=True)
            dist = -(x.pow(2).sum(1, keepdim=True) - 2 * x @ embed + square)
            index = dist.max(dim=-1).indices.view(residual.shape[0], residual.shape[2])
            residual = residual - F.embedding(index, book).transpose(1, 2)
            codes.append(index)
        return torch.stack(codes, 1)

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """waveform [B, channels, S] -> codes [B, K, ceil(S / hop)] int64."""
        return self.quantize(self.encoder(wav))

    def load_official(self, state: Mapping[str, torch.Tensor], source: str) -> "Encodec":
        """Load an audiocraft `EncodecModel` state dict (`compression_state_dict.bin`'s
        `best_state`) strictly: fold weight norm, stack the codebooks, drop the training-only
        codebook buffers."""
        load_strict(self, runtime_state(state, source), source)
        return self


def runtime_state(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The official Encodec layout -> this module's keys (see the module docstring)."""
    out, books = {}, {}
    for key, value in state.items():
        if m := _CODEBOOK.match(key):
            if m[2] == "embed":
                books[int(m[1])] = value
            elif m[2] not in _TRAINING_BUFFERS:
                out[key] = value  # unknown: the strict check names it
            continue
        if key.endswith(tuple(s for layout in WEIGHT_NORM_LAYOUTS for s in layout)):
            continue  # folded below, from the g key
        out[key.replace(".conv.conv.", ".").replace(".convtr.convtr.", ".")] = value
    for g_suffix, v_suffix in WEIGHT_NORM_LAYOUTS:
        for key in [k for k in state if k.endswith(g_suffix)]:
            stem = key[: -len(g_suffix)]
            if stem + v_suffix not in state:
                raise CheckpointError(f"{source}: {key} has no {stem + v_suffix}")
            g, v = state[key], state[stem + v_suffix]
            norm = v.float().norm(dim=tuple(range(1, v.dim())), keepdim=True)
            weight = (v.float() * (g.float() / norm)).to(v.dtype)
            out[stem.replace(".conv.conv", "").replace(".convtr.convtr", "") + ".weight"] = weight
    if books:
        if sorted(books) != list(range(len(books))):
            raise CheckpointError(f"{source}: RVQ codebooks {sorted(books)} are not 0..K-1")
        out["codebooks"] = torch.stack([books[k] for k in range(len(books))])
    return out


def official_shapes(config: EncodecConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of audiocraft's `EncodecModel.state_dict()` (legacy weight norm)."""
    with torch.device("meta"):
        model = Encodec(config)
    shapes: dict[str, tuple[int, ...]] = {}
    for name, module in model.named_modules():
        if isinstance(module, (SConv1d, SConvTranspose1d)):
            inner = "convtr.convtr" if isinstance(module, SConvTranspose1d) else "conv.conv"
            w = tuple(module.weight.shape)
            shapes[f"{name}.{inner}.bias"] = tuple(module.bias.shape)
            shapes[f"{name}.{inner}.weight_g"] = (w[0],) + (1,) * (len(w) - 1)
            shapes[f"{name}.{inner}.weight_v"] = w
        elif isinstance(module, nn.LSTM):
            shapes.update({f"{name}.{k}": tuple(v.shape) for k, v in module.named_parameters()})
    for k in range(config.n_q):
        book = f"quantizer.vq.layers.{k}._codebook."
        shapes[book + "inited"] = (1,)
        shapes[book + "cluster_size"] = (config.bins,)
        shapes[book + "embed"] = (config.bins, config.dimension)
        shapes[book + "embed_avg"] = (config.bins, config.dimension)
    return shapes


def random_official_state(
    config: EncodecConfig, seed: int, codebooks: torch.Tensor
) -> dict[str, torch.Tensor]:
    """A random `EncodecModel.state_dict()` around given RVQ codebooks [K, bins, dimension] (VATT
    embeds its tokens with the Encodec codebooks): weight_g U[0.5, 1.5), weight_v N(0, 1),
    biases 0.05 N, LSTM N(0, 1/hidden), the codebook EMA buffers consistent with the codebooks."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_shapes(config).items():
        if m := _CODEBOOK.match(key):
            k, name = int(m[1]), m[2]
            cluster = 1 + torch.rand(config.bins, generator=g)
            value = {
                "inited": torch.ones(1),
                "cluster_size": cluster,
                "embed": codebooks[k],
                "embed_avg": codebooks[k] * cluster[:, None],
            }[name]
        elif key.endswith("weight_g"):
            value = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("weight_v"):
            value = torch.randn(shape, generator=g)
        elif ".lstm." in key:
            value = torch.randn(shape, generator=g) / math.sqrt(shape[0] // 4)  # 4 gates x hidden
        else:
            value = 0.05 * torch.randn(shape, generator=g)
        state[key] = value
    return state
