"""Flowley's Progressive Soft-masked Cross-Attention (PSCA; spec SEEDS.md §2.3).

Audio queries attend to video keys with the additive bias B_l[i, j] = log(M_l[i, j] + eps):

    x_i    = fp32(fp32(i / r_a) * r_v)      r_v = video_fps, r_a = r_v * La / Lv (fp32 arithmetic)
    jc(i)  = clamp(round(x_i), 0, Lv - 1)   center "round": half-to-even (the released code)
           = clamp(ceil(x_i), 0, Lv - 1)    center "ceil": the paper
    d      = |j - jc(i)|
    M_l    = 1                                                 if d <= window
           = beta_l * (1 + cos(pi * (d - window) / fade_range)) / 2    if d <= window + fade_range
           = 0                                                 otherwise
    beta_l = 1 - l / (num_layers - 1)   (1 when num_layers == 1)

The centre follows the released code's fp32 arithmetic, not exact rational arithmetic: the two
can differ where i·Lv/La is exactly a half-integer (La = 8, Lv = 7, i = 4 gives 3 in fp32, not
4), and the checkpoint was trained with the former. video_fps enters only through that rounding.
For the released La = 250, Lv = 64 they agree.

Public API:

    PSCALayer(layer, num_layers=10, window=0, fade_range=4, center="round", video_fps=8.0, eps=1e-6)
    psca_attention(q, k, v, psca) -> out: [B, h, La, d]   Triton on CUDA, the reference elsewhere
    psca_attention_reference(q, k, v, psca)              SDPA with the materialised bias
    psca_attention_triton(q, k, v, psca)                 the kernel
    psca_mask(psca, La, Lv) -> M: [La, Lv] float32
    psca_bias(psca, La, Lv) -> log(M + eps): [La, Lv] float32

    q: [B, h, La, d], k, v: [B, h, Lv, d] (q and k already RMS-normed), scale 1/sqrt(d).

The bias is the same for every batch row and head. It is finite (log(eps) = -13.8155 where
M = 0), so every key keeps a small weight: nothing is turned into -inf or skipped. It is rounded
to the dtype of q before it is added, as the official bf16 autocast run does (-13.8155 becomes
-13.8125 in bf16). The kernel reads no La x Lv tensor: it computes jc(i) and d from the indices
and looks the bias up in a (window + fade_range + 2)-entry table of log(M + eps) per distance,
built by torch once per (layer, dtype, device).

Triton is optional (the reference needs none), and only its public API is used. A process runs
the kernel compiled for CUDA, or interpreted on the CPU when TRITON_INTERPRET=1 is set before
Triton is imported (kernels/jit.py): that is how the tests run it without a GPU.
"""

from __future__ import annotations  # tl.constexpr annotations stay unevaluated without Triton

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference path needs no Triton
    triton = tl = None

from .jit import INTERPRETED, jit


@dataclass(frozen=True)
class PSCALayer:
    """The soft-mask parameters of one single-stream layer (released config by default)."""

    layer: int
    num_layers: int = 10
    window: int = 0
    fade_range: int = 4
    center: str = "round"
    video_fps: float = 8.0
    eps: float = 1e-6

    def __post_init__(self):
        if self.center not in ("round", "ceil"):
            raise ValueError(f"center must be 'round' or 'ceil', got {self.center!r}")
        if not 0 <= self.layer < self.num_layers:
            raise ValueError(f"layer {self.layer} is outside 0..{self.num_layers - 1}")
        if self.window < 0 or self.fade_range < 1:
            raise ValueError("window must be >= 0 and fade_range >= 1")

    @property
    def beta(self) -> float:
        return 1.0 if self.num_layers == 1 else 1.0 - self.layer / (self.num_layers - 1)

    def audio_fps(self, la: int, lv: int) -> float:
        return self.video_fps * la / lv


def psca_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, psca: PSCALayer
) -> torch.Tensor:
    """out: [B, h, La, d] from q: [B, h, La, d], k, v: [B, h, Lv, d]."""
    if q.is_cuda and triton is not None:
        return psca_attention_triton(q, k, v, psca)
    return psca_attention_reference(q, k, v, psca)


def psca_mask(psca: PSCALayer, la: int, lv: int) -> torch.Tensor:
    """M_l: [La, Lv] float32 on the CPU, the soft mask as the released code builds it."""
    x = torch.arange(la).float() / psca.audio_fps(la, lv) * psca.video_fps
    center = x.round() if psca.center == "round" else x.ceil()
    center = center.clamp(0, lv - 1)
    return _weights(psca, (torch.arange(lv).float()[None, :] - center[:, None]).abs())


def psca_bias(psca: PSCALayer, la: int, lv: int) -> torch.Tensor:
    """B_l = log(M_l + eps): [La, Lv] float32 on the CPU, the additive bias of `psca`'s layer."""
    return (psca_mask(psca, la, lv) + psca.eps).log()


def _weights(psca: PSCALayer, dist: torch.Tensor) -> torch.Tensor:
    """M for float distances |j - jc(i)|, with the released code's fp32 operations."""
    fade = 0.5 * (1 + torch.cos((dist - psca.window) / psca.fade_range * math.pi)) * psca.beta
    mask = torch.where(dist <= psca.window + psca.fade_range, fade, 0.0)
    return torch.where(dist <= psca.window, 1.0, mask)


def psca_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, psca: PSCALayer
) -> torch.Tensor:
    """SDPA with the materialised [La, Lv] bias, rounded to q's dtype."""
    _check_shapes(q, k, v)
    bias = psca_bias(psca, q.shape[2], k.shape[2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.device, q.dtype))


def psca_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    psca: PSCALayer,
    config: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """The Triton kernel (any device under TRITON_INTERPRET=1, CUDA otherwise).

    config: (BLOCK_M, BLOCK_N, num_warps); None picks the default for q's dtype.
    """
    _check_shapes(q, k, v)
    batch, heads, la, d = q.shape
    lv = k.shape[2]
    if d < 16 or d & (d - 1):
        raise ValueError(f"head dim must be a power of two >= 16, got {d}")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    table = _bias_table(psca, q.dtype, q.device)
    out = q.new_empty(batch, la, heads, d)
    block_m, block_n, num_warps = config or DEFAULT_CONFIGS[q.dtype]
    grid = (-(-la // block_m), batch * heads)
    _kernel[grid](
        q, k, v, table, out,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        out.stride(0), out.stride(2), out.stride(1),
        heads, la, lv, psca.window + psca.fade_range + 1,
        psca.audio_fps(la, lv), psca.video_fps, math.log2(math.e) / math.sqrt(d),
        HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, CENTER_CEIL=psca.center == "ceil",
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        # Triton 3.9's interpreter multiplies bf16 dot operands as raw bits; interpreted runs
        # feed it fp32 copies instead (exact products, the same fp32 accumulation).
        DOT_UPCAST=INTERPRETED and q.dtype == torch.bfloat16,
        # The centre must follow IEEE fp32 rounding step by step: no fused multiply-adds.
        enable_fp_fusion=False,
        num_warps=num_warps, num_stages=2,
    )  # fmt: skip
    return out.transpose(1, 2)


# (BLOCK_M, BLOCK_N, num_warps) for 16-bit and fp32 inputs. Flowley's problem is tiny (B·h = 16
# programs per 250 rows), so short query tiles spread it over more SMs; all fit without spills.
DEFAULT_CONFIGS = {
    torch.bfloat16: (32, 64, 4),
    torch.float16: (32, 64, 4),
    torch.float32: (32, 32, 4),
}


@functools.cache
def _bias_table(psca: PSCALayer, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """log(M + eps) per distance d = 0 .. window + fade_range + 1 (the last entry: M = 0)."""
    mask = _weights(psca, torch.arange(psca.window + psca.fade_range + 2).float())
    return (mask + psca.eps).log().to(device, dtype)


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    batch, heads, _, d = q.shape
    if k.shape[:2] != (batch, heads) or k.shape[3] != d or v.shape != k.shape:
        raise ValueError(
            f"k {tuple(k.shape)} and v {tuple(v.shape)} must be [{batch}, {heads}, Lv, {d}]"
        )


def _psca_attention_kernel(
    Q, K, V, BIAS, O,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    heads, la, lv, last_dist,
    audio_fps, video_fps, qk_scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CENTER_CEIL: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    batch = tl.program_id(1) // heads
    head = tl.program_id(1) % heads

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + batch * stride_qb + head * stride_qh
    q_ptrs += offs_m[:, None] * stride_qm + offs_d[None, :]
    q = tl.load(q_ptrs, mask=offs_m[:, None] < la, other=0.0)
    if DOT_UPCAST:
        q = q.to(tl.float32)

    # jc(i) from the released fp32 arithmetic; floor and the exact fraction give round-half-
    # to-even (torch.round) or ceil.
    x = tl.math.div_rn(offs_m.to(tl.float32), audio_fps) * video_fps
    floor = tl.floor(x)
    frac = x - floor
    if CENTER_CEIL:
        up = frac > 0.0
    else:
        odd = (floor.to(tl.int32) % 2) == 1
        up = (frac > 0.5) | ((frac == 0.5) & odd)
    center = tl.minimum(floor.to(tl.int32) + up.to(tl.int32), lv - 1)

    k_base = K + batch * stride_kb + head * stride_kh
    v_base = V + batch * stride_vb + head * stride_vh
    # Every row has a finite bias on every key, so the row max is finite after the first
    # block; only keys past Lv get -inf.
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, HEAD_DIM], 0.0, tl.float32)
    for start_n in tl.range(0, lv, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_range = offs_n < lv
        kt = tl.load(
            k_base + offs_n[None, :] * stride_kn + offs_d[:, None],
            mask=in_range[None, :],
            other=0.0,
        )
        if DOT_UPCAST:
            kt = kt.to(tl.float32)
        dist = tl.minimum(tl.abs(offs_n[None, :] - center[:, None]), last_dist)
        bias = tl.load(BIAS + dist).to(tl.float32)
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale_log2
        s = s + bias * 1.4426950408889634  # log2(e): the softmax runs in base 2
        s = tl.where(in_range[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        vv = tl.load(
            v_base + offs_n[:, None] * stride_vn + offs_d[None, :],
            mask=in_range[:, None],
            other=0.0,
        )
        p = p.to(V.dtype.element_ty)
        if DOT_UPCAST:
            p = p.to(tl.float32)
            vv = vv.to(tl.float32)
        acc = tl.dot(p, vv, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new

    acc = acc / l_i[:, None]
    o_ptrs = O + batch * stride_ob + head * stride_oh
    o_ptrs += offs_m[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=offs_m[:, None] < la)


_kernel = jit(_psca_attention_kernel)
