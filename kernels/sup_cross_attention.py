"""[SUP] cross-attention of the TextSynch video encoder (spec §3.5): video tokens attend to the
prompt's [SUP] + Flan-T5 keys under a key-padding mask.

Public API (what the video encoder calls):

    sup_cross_attention(q, k, v, key_mask, segments_per_prompt, q_norm_weight=None)
        -> out: [P * segments_per_prompt, h, Lq, d], dtype of q

    q:             [n, h, Lq, d]  queries, n = P * segments_per_prompt (one row per segment of each
                   prompt) or n = segments_per_prompt (one clip's segments shared by all P
                   prompts: the stems case). Output row r reads q row r % n.
    k, v:          [P, h, Lk, d]  computed once per prompt; k already RMS-normed (k_norm).
    key_mask:      [P, Lk] bool, True = attend (the [SUP] keys, then the prompt's T5 tokens).
    q_norm_weight: [d] or None. **Pass the raw q (after q_proj, before q_norm) and the q_norm
                   weight**: the RMSNorm of q (fp32 math, eps = fp32 eps, weight, cast back to the
                   dtype of q, exactly `layers.RMSNorm`) is then fused into the kernel's prologue.
                   None means q is used as given (already normed).

Output row r attends to prompt r // segments_per_prompt, with scale 1/sqrt(d). The prompt's K/V
are never repeated per segment (the official code repeats them 24 times). The output is a
[n, h, Lq, d] view of a [n, Lq, h, d] buffer from the kernel, so merging heads afterwards
(`out.transpose(1, 2).reshape(n, Lq, h * d)`) costs no copy.

Dispatch: `sup_cross_attention` runs the Triton kernel on CUDA tensors and the torch reference
(`sup_cross_attention_reference`, the official math: SDPA with repeated K/V and a boolean mask)
everywhere else.

Numerics: fp32 accumulation and an online (flash) softmax in base 2; fp32 inputs use IEEE fp32
dots (no TF32), 16-bit inputs round the probabilities to their dtype before the PV product, as
flash attention does. Logits of masked keys are -inf, as in the reference; nothing else is
masked. A row whose keys are all masked (an all-False key_mask row, which SELVA never produces
because the 5 [SUP] keys are always valid) gives 0, as torch's SDPA does, never NaN.

Triton is optional (the reference needs none), and only its public API is used. A process runs
the kernel compiled for CUDA, or interpreted on the CPU when TRITON_INTERPRET=1 is set before
Triton is imported (kernels/jit.py): that is how the tests run it without a GPU.
"""

from __future__ import annotations  # tl.constexpr annotations stay unevaluated without Triton

import math

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference path needs no Triton
    triton = tl = None

from .jit import INTERPRETED, jit

# nn.RMSNorm(eps=None) uses the epsilon of the op-math type (fp32) for every input dtype, not
# finfo(x.dtype).eps as its docs say (spec §8.1): pinned, so bf16 runs match the official code.
# runtime.models.layers.RMSNorm reads it from here.
RMS_EPS = torch.finfo(torch.float32).eps


def sup_cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor,
    segments_per_prompt: int,
    q_norm_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """out: [P * segments_per_prompt, h, Lq, d] (see the module docstring for the shapes)."""
    if q.is_cuda and triton is not None:
        return sup_cross_attention_triton(q, k, v, key_mask, segments_per_prompt, q_norm_weight)
    return sup_cross_attention_reference(q, k, v, key_mask, segments_per_prompt, q_norm_weight)


def sup_cross_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor,
    segments_per_prompt: int,
    q_norm_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The official math: K/V and mask repeated per segment, SDPA with a boolean mask."""
    n_out = _check_shapes(q, k, v, key_mask, segments_per_prompt, q_norm_weight)
    if q_norm_weight is not None:
        qf = q.float()
        qf = qf * torch.rsqrt(qf.pow(2).mean(-1, keepdim=True) + RMS_EPS)
        q = (qf * q_norm_weight.float()).to(q.dtype)
    if q.shape[0] != n_out:
        q = q.repeat(n_out // q.shape[0], 1, 1, 1)
    k = k.repeat_interleave(segments_per_prompt, dim=0)
    v = v.repeat_interleave(segments_per_prompt, dim=0)
    mask = key_mask.repeat_interleave(segments_per_prompt, dim=0)[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def sup_cross_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor,
    segments_per_prompt: int,
    q_norm_weight: torch.Tensor | None = None,
    config: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """The Triton kernel (any device under TRITON_INTERPRET=1, CUDA otherwise).

    config: (BLOCK_M, BLOCK_N, num_warps); None picks the default for q's dtype.
    """
    n_out = _check_shapes(q, k, v, key_mask, segments_per_prompt, q_norm_weight)
    n, heads, lq, d = q.shape
    lk = k.shape[2]
    if d < 16 or d & (d - 1):
        raise ValueError(f"head dim must be a power of two >= 16, got {d}")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    mask = key_mask.contiguous().view(torch.uint8)
    weight = q_norm_weight.contiguous() if q_norm_weight is not None else q  # unread
    out = q.new_empty(n_out, lq, heads, d)
    block_m, block_n, num_warps = config or DEFAULT_CONFIGS[q.dtype]
    grid = (-(-lq // block_m), n_out * heads)
    _kernel[grid](
        q, k, v, mask, weight, out,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], mask.stride(0),
        out.stride(0), out.stride(2), out.stride(1),
        n, heads, lq, lk, segments_per_prompt,
        RMS_EPS, math.log2(math.e) / math.sqrt(d),
        HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n,
        NORM_Q=q_norm_weight is not None,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        # Triton 3.9's interpreter multiplies bf16 dot operands as raw bits; interpreted runs
        # feed it fp32 copies instead (exact products, the same fp32 accumulation).
        DOT_UPCAST=INTERPRETED and q.dtype == torch.bfloat16,
        enable_fp_fusion=True,
        num_warps=num_warps, num_stages=2,
    )  # fmt: skip
    return out.transpose(1, 2)


# (BLOCK_M, BLOCK_N, num_warps) for 16-bit and fp32 inputs: the largest tiles that ptxas
# (sm_80, sm_90) fits without register spills; fp32 runs IEEE dots on CUDA cores.
DEFAULT_CONFIGS = {
    torch.bfloat16: (128, 64, 8),
    torch.float16: (128, 64, 8),
    torch.float32: (64, 32, 8),
}


def _check_shapes(q, k, v, key_mask, segments_per_prompt, q_norm_weight) -> int:
    n, heads, _, d = q.shape
    prompts, _, lk, _ = k.shape
    n_out = prompts * segments_per_prompt
    if n not in (n_out, segments_per_prompt):
        raise ValueError(
            f"q has {n} rows; expected P * segments_per_prompt = {n_out} or {segments_per_prompt}"
        )
    if k.shape != (prompts, heads, lk, d) or v.shape != k.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must be [P, {heads}, Lk, {d}]")
    if key_mask.shape != (prompts, lk) or key_mask.dtype != torch.bool:
        raise ValueError(f"key_mask must be bool [{prompts}, {lk}], got {tuple(key_mask.shape)}")
    if q_norm_weight is not None and q_norm_weight.shape != (d,):
        raise ValueError(f"q_norm_weight must be [{d}], got {tuple(q_norm_weight.shape)}")
    return n_out


def _sup_attention_kernel(
    Q, K, V, MASK, W, O,
    stride_qn, stride_qh, stride_qm,
    stride_kp, stride_kh, stride_kn,
    stride_vp, stride_vh, stride_vn,
    stride_mp,
    stride_on, stride_oh, stride_om,
    n_q, heads, lq, lk, segments_per_prompt,
    rms_eps, qk_scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    NORM_Q: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    row = tl.program_id(1) // heads
    head = tl.program_id(1) % heads
    prompt = row // segments_per_prompt

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + (row % n_q) * stride_qn + head * stride_qh
    q_ptrs += offs_m[:, None] * stride_qm + offs_d[None, :]
    q = tl.load(q_ptrs, mask=offs_m[:, None] < lq, other=0.0)
    if NORM_Q:
        qf = q.to(tl.float32)
        inv_rms = tl.rsqrt(tl.sum(qf * qf, 1) / HEAD_DIM + rms_eps)
        w = tl.load(W + offs_d).to(tl.float32)
        # Rounded to q's dtype before the dot, as the reference's RMSNorm output is.
        q = (qf * inv_rms[:, None] * w[None, :]).to(Q.dtype.element_ty)

    if DOT_UPCAST:
        q = q.to(tl.float32)

    # Keys after the prompt's last valid key are masked anyway: the key loop stops there, so a
    # short prompt padded to a long batch costs its own length (a 64-byte read per block).
    mask_row = MASK + prompt * stride_mp
    kv_len = tl.full([], 0, tl.int32)
    for start_n in tl.range(0, lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        valid = tl.load(mask_row + offs_n, mask=offs_n < lk, other=0) != 0
        last = tl.max(tl.where(valid, offs_n + 1, 0), 0)
        kv_len = tl.maximum(kv_len, last)

    k_base = K + prompt * stride_kp + head * stride_kh
    v_base = V + prompt * stride_vp + head * stride_vh
    # A finite floor instead of -inf keeps exp2(m_i - m_new) at 1, not NaN, while a row has
    # seen only masked keys; such keys get p = exp2(-inf) = 0.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, HEAD_DIM], 0.0, tl.float32)
    for start_n in tl.range(0, kv_len, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_range = offs_n < kv_len
        kt = tl.load(
            k_base + offs_n[None, :] * stride_kn + offs_d[:, None],
            mask=in_range[None, :],
            other=0.0,
        )
        attend = tl.load(mask_row + offs_n, mask=in_range, other=0) != 0
        if DOT_UPCAST:
            kt = kt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale_log2
        s = tl.where(attend[None, :], s, float("-inf"))
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

    acc = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    o_ptrs = O + row * stride_on + head * stride_oh
    o_ptrs += offs_m[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=offs_m[:, None] < lq)


_kernel = jit(_sup_attention_kernel)
