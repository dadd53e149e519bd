"""BigVGAN vocoders: log-mel [B, M, T] -> waveform [B, 1, T * hop] (spec §6.2, §6.3).

One module covers both published generators: the 16 kHz Make-An-Audio 2 BigVGAN (v1 code,
tanh at the end) and NVIDIA's BigVGAN-v2 44.1 kHz (no conv_post bias, clamp at the end). The
official code trains with weight norm and folds it before inference; this module holds the
folded plain weights, and `load_official` folds whichever layout the file uses.
"""

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..variants import VocoderConfig
from .checkpoint import load_strict

# Alias-free activation (ratio 2): a 12-tap Kaiser-windowed sinc low-pass, cutoff 0.25 and
# half-width 0.3 (in units of the doubled rate), shared by the up- and the down-sampler.
FILTER_TAPS = 12
FILTER_CUTOFF = 0.25
FILTER_HALF_WIDTH = 0.3
UP_PAD = FILTER_TAPS // 2 - 1  # 5 replicate samples each side before the transposed conv
UP_CROP = UP_PAD * 2 + (FILTER_TAPS - 2) // 2  # 15 samples cropped from each end afterwards
DOWN_PAD = (FILTER_TAPS // 2 - 1, FILTER_TAPS // 2)  # (5, 6) for an even tap count
SNAKE_EPS = 1e-9

# Weight-norm layouts of a conv weight in official files: (g key suffix, v key suffix).
WEIGHT_NORM_LAYOUTS = (
    (".weight_g", ".weight_v"),  # torch.nn.utils.weight_norm (the released checkpoints)
    (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
)


def kaiser_sinc_filter(device: torch.device | str | None = None) -> torch.Tensor:
    """The official kaiser_sinc_filter1d(0.25, 0.3, 12): [1, 1, 12] float32, taps summing to 1."""
    half = FILTER_TAPS // 2
    attenuation = 2.285 * (half - 1) * math.pi * (4 * FILTER_HALF_WIDTH) + 7.95  # 51.02 dB
    beta = 0.1102 * (attenuation - 8.7)  # Kaiser's formula for attenuation > 50 dB
    window = torch.kaiser_window(FILTER_TAPS, periodic=False, beta=beta, device=device)
    time = torch.arange(-half, half, device=device) + 0.5  # even tap count: half-integer times
    taps = 2 * FILTER_CUTOFF * window * torch.sinc(2 * FILTER_CUTOFF * time)
    return (taps / taps.sum()).view(1, 1, FILTER_TAPS)


class SnakeBeta(nn.Module):
    """x + sin²(x·e^α) / (e^β + 1e-9), α and β per channel and stored as logs (keys alpha, beta)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.empty(channels))
        self.beta = nn.Parameter(torch.empty(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None].exp()
        beta = self.beta[None, :, None].exp()
        # In place on the one temporary: the official sums and products, fewer passes over x.
        return torch.sin(x * alpha).pow_(2).mul_(1.0 / (beta + SNAKE_EPS)).add_(x)


class FilterTaps(nn.Module):
    """Holds one Kaiser-sinc filter as the persistent buffer `filter` (it is in the checkpoints)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("filter", kaiser_sinc_filter())


class LowPassHolder(nn.Module):
    """Only gives the down-sampler's filter its official key, `downsample.lowpass.filter`."""

    def __init__(self):
        super().__init__()
        self.lowpass = FilterTaps()


class Activation1d(nn.Module):
    """Alias-free SnakeBeta, [B, C, L] -> [B, C, L]: 2x upsample, activate, low-pass, 2x down."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels  # static, so exported graphs see constant depthwise kernels
        self.act = SnakeBeta(channels)
        self.upsample = FilterTaps()
        self.downsample = LowPassHolder()
        self.transposed = False  # reference mode: the official transposed convolution

    def upsample2(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, L] -> [B, C, 2L]: the official 2 * conv_transpose1d(stride 2) of the
        replicate-padded signal, cropped. Computed in its polyphase form: output sample 2j + r
        is a 6-tap correlation with the taps of phase r, so one depthwise conv1d with two
        outputs per channel, interleaved; the same sums in another order. The transposed
        depthwise convolution has no fast CPU kernel (bf16, one second of audio: 1.2 of the
        vocoder's 2.7 CPU-s; 1.7 CPU-s in all in this form)."""
        channels, length = self.channels, x.shape[-1]
        x = F.pad(x, (UP_PAD, UP_PAD), mode="replicate")
        if self.transposed:
            up = self.upsample.filter.expand(channels, -1, -1)
            return 2 * F.conv_transpose1d(x, up, stride=2, groups=channels)[..., UP_CROP:-UP_CROP]
        phases = 2 * self.upsample.filter.view(FILTER_TAPS // 2, 2).T.flip(-1)  # [2, 6]
        x = F.conv1d(x, phases.repeat(channels, 1)[:, None], groups=channels)
        x = x.unflatten(1, (channels, 2)).transpose(-1, -2).flatten(-2)
        return x[..., UP_CROP - 2 * UP_PAD : UP_CROP - 2 * UP_PAD + 2 * length]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.upsample2(x))
        down = self.downsample.lowpass.filter.expand(self.channels, -1, -1)
        x = F.pad(x, DOWN_PAD, mode="replicate")
        return F.conv1d(x, down, stride=2, groups=self.channels)


class AMPBlock1(nn.Module):
    """For each dilation d: x += conv2(act(conv1_d(act(x)))); activations interleave 0..5."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(
                channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2
            )
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)
            for _ in dilations
        )
        self.activations = nn.ModuleList(Activation1d(channels) for _ in range(2 * len(dilations)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acts = self.activations
        for conv1, conv2, act1, act2 in zip(
            self.convs1, self.convs2, acts[::2], acts[1::2], strict=True
        ):
            x = conv2(act2(conv1(act1(x)))) + x
        return x


class BigVGAN(nn.Module):
    """BigVGAN generator holding folded weights (the official keys after weight-norm removal)."""

    def __init__(self, config: VocoderConfig):
        super().__init__()
        self.config = config
        ch = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.num_mels, ch, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for rate, kernel in zip(config.upsample_rates, config.upsample_kernel_sizes, strict=True):
            # Padding (k - u) / 2 makes the output exactly u times longer; no activation before.
            up = nn.ConvTranspose1d(ch, ch // 2, kernel, rate, padding=(kernel - rate) // 2)
            self.ups.append(nn.ModuleList([up]))
            ch //= 2
            self.resblocks.extend(
                AMPBlock1(ch, k, d)
                for k, d in zip(
                    config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True
                )
            )
        self.activation_post = Activation1d(ch)
        self.conv_post = nn.Conv1d(ch, 1, 7, padding=3, bias=config.use_bias_at_final)

    @property
    def hop(self) -> int:
        return math.prod(self.config.upsample_rates)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: [B, M, T] float32 log-mel -> waveform [B, 1, T * hop] in [-1, 1]."""
        x = self.conv_pre(mel)
        kernels = len(self.config.resblock_kernel_sizes)
        for i, (up,) in enumerate(self.ups):
            x = up(x)
            blocks = self.resblocks[i * kernels : (i + 1) * kernels]
            xs = blocks[0](x)
            for block in blocks[1:]:
                xs = xs + block(x)
            x = xs / kernels
        x = self.conv_post(self.activation_post(x))
        return torch.tanh(x) if self.config.use_tanh_at_final else x.clamp(-1.0, 1.0)

    def load_official(self, state: Mapping[str, torch.Tensor], source: str) -> "BigVGAN":
        """Load a generator state dict (`ckpt["generator"]`) in any official layout: legacy
        weight_g/weight_v, parametrized original0/original1, or already folded `.weight`."""
        load_strict(self, fold_weight_norm(state, source), source)
        return self


def fold_weight_norm(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Replace every (g, v) pair by the weight g·v/‖v‖ (norm over all dims but 0; for a
    ConvTranspose1d weight [in, out, k] dim 0 is the input channel), in fp32. Other tensors
    pass through as fp32."""
    v_suffixes = tuple(v for _, v in WEIGHT_NORM_LAYOUTS)
    unpaired_v = {key for key in state if key.endswith(v_suffixes)}
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if key.endswith(v_suffixes):
            continue
        for g_suffix, v_suffix in WEIGHT_NORM_LAYOUTS:
            if key.endswith(g_suffix):
                base = key.removesuffix(g_suffix)
                v = state.get(base + v_suffix)
                if v is None:
                    raise CheckpointError(f"{source}: {key} has no matching {base + v_suffix}")
                unpaired_v.discard(base + v_suffix)
                expected = (v.shape[0],) + (1,) * (v.ndim - 1)
                if tuple(t.shape) != expected:
                    raise CheckpointError(
                        f"{source}: {key} has shape {list(t.shape)}, expected {list(expected)}"
                    )
                v = v.float()
                norm = torch.linalg.vector_norm(v, dim=tuple(range(1, v.ndim)), keepdim=True)
                key, t = base + ".weight", v * (t.float() / norm)
                break
        else:
            t = t.float()
        if key in out:
            raise CheckpointError(f"{source} holds {key} twice (in two weight layouts)")
        out[key] = t
    if unpaired_v:
        raise CheckpointError(f"{source}: {sorted(unpaired_v)[0]} has no matching g tensor")
    return out


def vocoder_config_from_hparams(hparams: Mapping[str, Any], source: str) -> VocoderConfig:
    """The VocoderConfig of a BigVGAN hyper-parameter dict (config.json / bigvgan_vocoder.yml)."""
    unsupported = {
        k: hparams.get(k)
        for k, want in (("resblock", "1"), ("activation", "snakebeta"), ("snake_logscale", True))
        if hparams.get(k) != want
    }
    if unsupported:
        raise CheckpointError(f"{source}: unsupported BigVGAN settings {unsupported}")
    try:
        return VocoderConfig(
            num_mels=int(hparams["num_mels"]),
            upsample_rates=tuple(hparams["upsample_rates"]),
            upsample_kernel_sizes=tuple(hparams["upsample_kernel_sizes"]),
            upsample_initial_channel=int(hparams["upsample_initial_channel"]),
            resblock_kernel_sizes=tuple(hparams["resblock_kernel_sizes"]),
            resblock_dilation_sizes=tuple(tuple(d) for d in hparams["resblock_dilation_sizes"]),
            # Both default to True in the official code (the v1 code has neither key).
            use_tanh_at_final=bool(hparams.get("use_tanh_at_final", True)),
            use_bias_at_final=bool(hparams.get("use_bias_at_final", True)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: bad BigVGAN config ({type(e).__name__}: {e})") from e


POST_GAIN = 0.01  # random_official_state: conv_post scale (output std 0.1-0.4, not saturated)


def random_official_state(config: VocoderConfig, seed: int) -> dict[str, torch.Tensor]:
    """A random generator state dict in the legacy weight-norm layout of the released files:
    v ~ N(0, 1/fan_in), g = ‖v‖·(1 + 0.1·N), biases 0.05·N, log α/β 0.2·N, real filters."""
    with torch.device("meta"):
        module = BigVGAN(config)
    modules = dict(module.named_modules())
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen, device="cpu")

    state = {}
    for key, t in module.state_dict().items():
        if key.endswith(".filter"):
            state[key] = kaiser_sinc_filter(device="cpu")
        elif key.endswith((".alpha", ".beta")):
            state[key] = 0.2 * randn(*t.shape)
        elif key.endswith(".bias"):
            state[key] = 0.05 * randn(*t.shape)
        else:
            conv = modules[key.removesuffix(".weight")]
            fan_in = t[0].numel()
            if isinstance(conv, nn.ConvTranspose1d):
                fan_in = t.shape[0] * t.shape[2] // conv.stride[0]  # inputs per output sample
            v = randn(*t.shape) / math.sqrt(fan_in)
            norm = torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True)
            g = norm * (1 + 0.1 * randn(*norm.shape))
            if key == "conv_post.weight":
                # With random weights the six residual AMP stages grow the signal about 20x
                # (40x before conv_post); scale down so tanh / clamp do not saturate.
                g = g * POST_GAIN
            state[key.removesuffix("weight") + "weight_g"] = g
            state[key.removesuffix("weight") + "weight_v"] = v
    return state
