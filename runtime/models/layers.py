"""Building blocks shared by several networks (spec §4.1, §8)."""

import torch
import torch.nn.functional as F
from torch import nn

# The one eps of every RMSNorm here and of the [SUP] kernel's fused q norm (see there: fp32 eps).
from ...kernels.sup_cross_attention import RMS_EPS


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, computed in fp32 and cast back (keys: `weight`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + RMS_EPS)
        return (y * self.weight.float()).to(x.dtype)


def swiglu_hidden(dim: int, hidden: int, multiple_of: int = 256) -> int:
    """sd3-ref hidden width: 256 * ceil(int(2h/3) / 256)."""
    hidden = int(2 * hidden / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class MLP(nn.Module):
    """SwiGLU MLP without biases: w2(silu(w1 x) * w3 x). `hidden` is the pre-2/3 width."""

    def __init__(self, dim: int, hidden: int, multiple_of: int = 256):
        super().__init__()
        h = swiglu_hidden(dim, hidden, multiple_of)
        self.w1 = nn.Linear(dim, h, bias=False)
        self.w2 = nn.Linear(h, dim, bias=False)
        self.w3 = nn.Linear(dim, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ChannelLastConv1d(nn.Conv1d):
    """Conv1d on [B, N, C] tensors (transposes around a plain Conv1d; same keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ConvMLP(nn.Module):
    """SwiGLU MLP whose three projections are channel-last convolutions (kernel k, padding p)."""

    def __init__(
        self, dim: int, hidden: int, kernel_size: int, padding: int, multiple_of: int = 256
    ):
        super().__init__()
        h = swiglu_hidden(dim, hidden, multiple_of)
        self.w1 = ChannelLastConv1d(dim, h, kernel_size, padding=padding, bias=False)
        self.w2 = ChannelLastConv1d(h, dim, kernel_size, padding=padding, bias=False)
        self.w3 = ChannelLastConv1d(dim, h, kernel_size, padding=padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
