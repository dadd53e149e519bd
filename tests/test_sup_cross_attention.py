"""The [SUP] cross-attention kernel against its torch reference, and the reference against the
spec's block math (§3.5). Kernel tests run under TRITON_INTERPRET=1 on the CPU and natively on
CUDA when there is a GPU."""

import pytest
import torch
from selva_rt.kernels import sup_cross_attention as sup
from selva_rt.kernels.jit import INTERPRETED
from selva_rt.runtime.models.layers import RMSNorm

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    pytest.importorskip("triton")
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if request.param == "cpu" and not INTERPRETED:
        pytest.skip("Triton is compiled for CUDA in this process (tests/conftest.py): cuda runs it")
    return torch.device(request.param)


def make_inputs(prompts, segments, heads, lq, lk, d, valid, dtype, q_rows=None, seed=0):
    """Random q/k/v, a key mask valid[p] keys long per prompt, and a q_norm weight."""
    g = torch.Generator().manual_seed(seed)
    q_rows = q_rows or prompts * segments
    q = torch.randn(q_rows, heads, lq, d, generator=g).to(dtype)
    k = torch.randn(prompts, heads, lk, d, generator=g).to(dtype)
    v = torch.randn(prompts, heads, lk, d, generator=g).to(dtype)
    key_mask = torch.arange(lk)[None, :] < torch.tensor(valid)[:, None]
    weight = 0.5 + torch.rand(d, generator=g)
    return q, k, v, key_mask, weight


def rel_err(actual, expected):
    actual, expected = actual.float().cpu(), expected.float().cpu()
    assert torch.isfinite(actual).all()
    return ((actual - expected).norm() / expected.norm()).item()


CASES = {
    # prompts, segments, heads, Lq, Lk, d, valid keys per prompt, q rows
    "odd_lengths": (2, 3, 2, 37, 21, 32, [21, 9], None),
    # Lk = 150 spans several key blocks; all but the first are fully padded for prompt 0.
    "padded_tail_blocks": (2, 2, 1, 19, 150, 16, [7, 70], None),
    "selva_heads": (2, 2, 12, 9, 17, 64, [17, 6], None),
    # N prompts over one clip: every prompt reuses the clip's segment queries.
    "stems": (3, 2, 2, 23, 40, 32, [5, 40, 12], 2),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fused_norm", [True, False], ids=["raw_q", "normed_q"])
def test_kernel_matches_reference(device, case, dtype, fused_norm):
    prompts, segments, heads, lq, lk, d, valid, q_rows = CASES[case]
    q, k, v, key_mask, weight = make_inputs(
        prompts, segments, heads, lq, lk, d, valid, dtype, q_rows
    )
    weight = weight if fused_norm else None
    expected = sup.sup_cross_attention_reference(q, k, v, key_mask, segments, weight)
    args = [t.to(device) if t is not None else None for t in (q, k, v, key_mask, weight)]
    out = sup.sup_cross_attention_triton(*args[:4], segments, args[4])
    assert out.shape == (prompts * segments, heads, lq, d) and out.dtype == dtype
    assert rel_err(out, expected) < TOL[dtype]


def test_mask_with_holes(device):
    """The mask is honoured key by key, not only as a padded length."""
    q, k, v, key_mask, weight = make_inputs(2, 2, 2, 17, 45, 32, [45, 30], torch.float32)
    key_mask[0, 3:40:3] = False
    key_mask[1, 0] = False
    expected = sup.sup_cross_attention_reference(q, k, v, key_mask, 2, weight)
    args = [t.to(device) for t in (q, k, v, key_mask, weight)]
    out = sup.sup_cross_attention_triton(*args[:4], 2, args[4])
    assert rel_err(out, expected) < 1e-5


def test_fully_masked_prompt_gives_zero(device):
    """An all-False key row (never produced by SELVA) gives 0 like torch's SDPA, never NaN."""
    q, k, v, key_mask, weight = make_inputs(2, 2, 2, 11, 20, 16, [20, 0], torch.float32)
    out = sup.sup_cross_attention_triton(
        *(t.to(device) for t in (q, k, v, key_mask)), 2, weight.to(device)
    ).cpu()
    expected = sup.sup_cross_attention_reference(q, k, v, key_mask, 2, weight)
    assert torch.equal(out[2:], torch.zeros_like(out[2:]))
    assert torch.equal(expected[2:], torch.zeros_like(expected[2:]))
    assert rel_err(out[:2], expected[:2]) < 1e-5


def test_heads_merge_without_copy(device):
    q, k, v, key_mask, weight = make_inputs(1, 2, 3, 10, 8, 16, [8], torch.float32)
    out = sup.sup_cross_attention_triton(*(t.to(device) for t in (q, k, v, key_mask)), 2)
    assert out.transpose(1, 2).is_contiguous()


def test_strided_query_view(device):
    """q as the encoder makes it: a head-split view of [n, Lq, h·d], not contiguous."""
    q, k, v, key_mask, weight = make_inputs(2, 2, 4, 13, 11, 16, [11, 7], torch.float32)
    q_view = q.transpose(1, 2).contiguous().transpose(1, 2)
    assert not q_view.is_contiguous()
    expected = sup.sup_cross_attention_reference(q, k, v, key_mask, 2, weight)
    args = [t.to(device) for t in (q_view, k, v, key_mask, weight)]
    out = sup.sup_cross_attention_triton(*args[:4], 2, args[4])
    assert rel_err(out, expected) < 1e-5


def test_reference_is_the_spec_block_math():
    """§3.5: per-segment repeated K/V, RMSNorm_q (fp32 eps), scale 1/8, boolean key mask."""
    prompts, segments, heads, lq, lk, d = 2, 3, 12, 7, 10, 64
    q, k, v, key_mask, weight = make_inputs(
        prompts, segments, heads, lq, lk, d, [10, 4], torch.float32
    )
    q_norm = RMSNorm(d)
    q_norm.weight.data.copy_(weight)
    prompt = torch.arange(prompts * segments) // segments
    logits = torch.einsum("nhqd,nhkd->nhqk", q_norm(q), k[prompt]) / 8.0
    logits = logits.masked_fill(~key_mask[prompt][:, None, None, :], float("-inf"))
    expected = torch.einsum("nhqk,nhkd->nhqd", logits.softmax(-1), v[prompt])
    out = sup.sup_cross_attention_reference(q, k, v, key_mask, segments, weight)
    assert rel_err(out, expected) < 1e-6


def test_dispatch_uses_reference_off_cuda(monkeypatch):
    def no_kernel(*args):
        raise AssertionError("the Triton kernel must not run on CPU tensors")

    monkeypatch.setattr(sup, "sup_cross_attention_triton", no_kernel)
    q, k, v, key_mask, weight = make_inputs(2, 2, 2, 5, 6, 16, [6, 2], torch.float32)
    out = sup.sup_cross_attention(q, k, v, key_mask, 2, weight)
    assert torch.equal(out, sup.sup_cross_attention_reference(q, k, v, key_mask, 2, weight))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dispatch_uses_kernel_on_cuda(monkeypatch):
    calls = []
    kernel = sup.sup_cross_attention_triton
    monkeypatch.setattr(
        sup, "sup_cross_attention_triton", lambda *args: calls.append(1) or kernel(*args)
    )
    q, k, v, key_mask, weight = make_inputs(2, 2, 2, 5, 6, 16, [6, 2], torch.bfloat16)
    sup.sup_cross_attention(*(t.cuda() for t in (q, k, v, key_mask, weight)), 2)
    assert calls


def test_rejects_mismatched_shapes():
    q, k, v, key_mask, weight = make_inputs(2, 3, 2, 5, 6, 16, [6, 2], torch.float32)
    with pytest.raises(ValueError, match="q has 5 rows"):
        sup.sup_cross_attention(q[:5], k, v, key_mask, 3)
    with pytest.raises(ValueError, match="key_mask"):
        sup.sup_cross_attention(q, k, v, key_mask.float(), 3)
    with pytest.raises(ValueError, match="q_norm_weight"):
        sup.sup_cross_attention(q, k, v, key_mask, 3, weight[:8])


def test_benchmark_needs_cuda(monkeypatch):
    from selva_rt.benchmarks import kernels as benchmark

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="CUDA GPU"):
        benchmark.main([])
