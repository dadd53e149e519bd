"""Flowley's PSCA: the soft mask against SEEDS.md §2.3, the kernel against the torch reference
(under TRITON_INTERPRET=1 on the CPU, natively on CUDA when there is a GPU), and the Flowley
single-stream cross-attention step built on it."""

import math

import pytest
import torch
from selva_rt.kernels import psca_attention as psca
from selva_rt.kernels.jit import INTERPRETED
from selva_rt.kernels.psca_attention import PSCALayer
from selva_rt.runtime.models.flowley import SingleStreamBlock

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
LOG_EPS = math.log(1e-6)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    pytest.importorskip("triton")
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if request.param == "cpu" and not INTERPRETED:
        pytest.skip("Triton is compiled for CUDA in this process (tests/conftest.py): cuda runs it")
    return torch.device(request.param)


def make_qkv(batch, heads, la, lv, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = (2 * torch.randn(batch, heads, la, d, generator=g)).to(dtype)
    k = torch.randn(batch, heads, lv, d, generator=g).to(dtype)
    v = torch.randn(batch, heads, lv, d, generator=g).to(dtype)
    return q, k, v


def rel_err(actual, expected):
    actual, expected = actual.float().cpu(), expected.float().cpu()
    assert torch.isfinite(actual).all()
    return ((actual - expected).norm() / expected.norm()).item()


def bias(layer: PSCALayer, la: int, lv: int) -> torch.Tensor:
    return (psca.psca_mask(layer, la, lv) + layer.eps).log()


# --- the soft mask (SEEDS.md §2.3) -------------------------------------------------------------


def test_beta_schedule():
    betas = [PSCALayer(layer).beta for layer in range(10)]
    assert betas == pytest.approx([1 - layer / 9 for layer in range(10)])
    assert betas[0] == 1.0 and betas[-1] == 0.0
    assert PSCALayer(0, num_layers=1).beta == 1.0


def test_bias_values_per_distance():
    """beta = 1: d = 0 -> ~0, 1 -> -0.1583, 2 -> -0.6931, 3 -> -1.9211, >= 4 -> log(eps)."""
    row = bias(PSCALayer(0), 250, 64)[0]
    expected = [1e-6, -0.1583, -0.6931, -1.9211, LOG_EPS, LOG_EPS]
    assert row[:6].tolist() == pytest.approx(expected, abs=1e-4)
    assert (row[4:] == row[4]).all()


def test_last_layer_keeps_only_the_centre():
    b = bias(PSCALayer(9), 250, 64)
    centre = b.argmax(dim=1)
    assert torch.allclose(b[torch.arange(250), centre], torch.tensor(1e-6), atol=1e-7)
    others = b.clone()
    others[torch.arange(250), centre] = LOG_EPS
    assert torch.allclose(others, torch.tensor(LOG_EPS))


@pytest.mark.parametrize("layer", [0, 5, 9])
def test_bias_is_finite_and_no_row_is_masked(layer):
    b = bias(PSCALayer(layer), 250, 64)
    assert torch.isfinite(b).all()
    assert torch.allclose(b.max(dim=1).values, torch.tensor(math.log(1 + 1e-6)), atol=1e-7)


def test_centre_modes():
    """round (released code) and ceil (paper) differ by one on 122 of 250 rows; i = 1: 0 vs 1."""
    released = torch.round(torch.arange(250).float() / 31.25 * 8).clamp(max=63)
    round_centre = psca.psca_mask(PSCALayer(0, center="round"), 250, 64).argmax(dim=1)
    ceil_centre = psca.psca_mask(PSCALayer(0, center="ceil"), 250, 64).argmax(dim=1)
    assert torch.equal(round_centre, released.long())
    assert torch.equal(ceil_centre, torch.ceil(torch.arange(250) * 0.256).clamp(max=63).long())
    assert ((ceil_centre - round_centre) == 1).sum() == 122
    assert ((ceil_centre - round_centre) == 0).sum() == 128
    assert (round_centre[1], ceil_centre[1]) == (0, 1)


def test_centre_follows_fp32_arithmetic():
    """La = 8, Lv = 7: i = 4 is exactly 3.5 frames, but fp32 i / r_a * r_v rounds to 3."""
    centre = psca.psca_mask(PSCALayer(0), 8, 7).argmax(dim=1)
    assert centre.tolist() == [0, 1, 2, 3, 3, 4, 5, 6]


def test_bf16_bias_is_rounded_like_autocast():
    table = psca._bias_table(PSCALayer(9), torch.bfloat16, torch.device("cpu"))
    assert table[-1].item() == -13.8125


def test_rejects_bad_parameters():
    with pytest.raises(ValueError, match="center"):
        PSCALayer(0, center="floor")
    with pytest.raises(ValueError, match="layer 10"):
        PSCALayer(10)
    with pytest.raises(ValueError, match="fade_range"):
        PSCALayer(0, fade_range=0)


# --- the kernel against the reference ----------------------------------------------------------

SHAPES = {
    # batch, heads, La, Lv, d
    "odd": (2, 2, 37, 13, 32),
    "released": (1, 2, 250, 64, 64),
    "fp32_tie": (1, 2, 8, 7, 16),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layer", [0, 4, 9])
@pytest.mark.parametrize("center", ["round", "ceil"])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_reference(device, shape, center, layer, dtype):
    q, k, v = make_qkv(*SHAPES[shape], dtype)
    params = PSCALayer(layer, center=center)
    expected = psca.psca_attention_reference(q, k, v, params)
    out = psca.psca_attention_triton(q.to(device), k.to(device), v.to(device), params)
    assert out.shape == q.shape and out.dtype == dtype
    assert rel_err(out, expected) < TOL[dtype]


def test_flowley_heads_and_cfg_batch(device):
    """The released head count (8 x 64) and the CFG batch of 2."""
    q, k, v = make_qkv(2, 8, 250, 64, 64, torch.float32)
    params = PSCALayer(3)
    expected = psca.psca_attention_reference(q, k, v, params)
    out = psca.psca_attention_triton(q.to(device), k.to(device), v.to(device), params)
    assert rel_err(out, expected) < 1e-5


@pytest.mark.parametrize(
    "params, la, lv",
    [
        (PSCALayer(0), 250, 64),
        (PSCALayer(4, center="ceil"), 250, 64),
        (PSCALayer(9), 250, 64),
        (PSCALayer(2), 8, 7),
        (PSCALayer(6), 12, 10),
        (PSCALayer(6, center="ceil"), 12, 10),
        (PSCALayer(1), 37, 13),
        (PSCALayer(3, num_layers=6, window=2, fade_range=3), 70, 29),
    ],
    ids=["l0", "l4_ceil", "l9", "fp32_tie", "half_even", "ceil_12x10", "odd", "window2_fade3"],
)
def test_kernel_bias_is_the_materialised_bias(device, params, la, lv):
    """q = 0 leaves only the bias in the logits and V = I reads the softmax out: the kernel's
    in-kernel centre and distance give the reference's bias on every (i, j)."""
    d = 64 if lv > 32 else 32
    q = torch.zeros(1, 1, la, d)
    k = torch.randn(1, 1, lv, d)
    v = torch.eye(lv, d)[None, None]
    out = psca.psca_attention_triton(q.to(device), k.to(device), v.to(device), params).cpu()
    expected = bias(params, la, lv).softmax(dim=-1)
    torch.testing.assert_close(out[0, 0, :, :lv], expected, rtol=1e-5, atol=1e-7)


def test_dispatch_uses_reference_off_cuda(monkeypatch):
    def no_kernel(*args):
        raise AssertionError("the Triton kernel must not run on CPU tensors")

    monkeypatch.setattr(psca, "psca_attention_triton", no_kernel)
    q, k, v = make_qkv(2, 2, 25, 8, 16, torch.float32)
    out = psca.psca_attention(q, k, v, PSCALayer(1))
    assert torch.equal(out, psca.psca_attention_reference(q, k, v, PSCALayer(1)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dispatch_uses_kernel_on_cuda(monkeypatch):
    calls = []
    kernel = psca.psca_attention_triton
    monkeypatch.setattr(
        psca, "psca_attention_triton", lambda *args: calls.append(1) or kernel(*args)
    )
    q, k, v = make_qkv(2, 2, 25, 8, 16, torch.bfloat16)
    psca.psca_attention(q.cuda(), k.cuda(), v.cuda(), PSCALayer(1))
    assert calls


# --- the Flowley single-stream cross-attention step --------------------------------------------


def make_step(dim=64, heads=4, seed=0):
    torch.manual_seed(seed)
    step = SingleStreamBlock(dim, heads)
    with torch.no_grad():
        for name, param in step.named_parameters():
            if name.endswith("scale"):
                param.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                param.normal_(0, 0.1)
        step.cross_weight.fill_(0.3)
    return step.eval()


def official_cross_attention(proj, x, context, attn_bias, heads):
    """Flowley's CrossAttention + SDPA, written out: interleaved kv, RMSNorm eps outside the
    sqrt, softmax(q k^T / sqrt(d) + bias) v."""
    b, n, dim = x.shape
    d = dim // heads

    def rms(t, scale):
        return scale * t / (t.norm(dim=-1, keepdim=True) * d**-0.5 + 1e-6)

    q = (x @ proj.q_prj.weight.T + proj.q_prj.bias).view(b, n, heads, d).transpose(1, 2)
    kv = (context @ proj.kv_prj.weight.T + proj.kv_prj.bias).view(b, -1, heads, d, 2)
    k, v = kv[..., 0].transpose(1, 2), kv[..., 1].transpose(1, 2)
    q, k = rms(q, proj.q_norm.scale), rms(k, proj.k_norm.scale)
    weights = (q @ k.transpose(-1, -2) / math.sqrt(d) + attn_bias).softmax(dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, n, dim)


@pytest.mark.parametrize("layer", [0, 9])
def test_flowley_step_matches_official_math(layer):
    step = make_step()
    g = torch.Generator().manual_seed(1)
    x, video, text = (torch.randn(2, n, 64, generator=g) for n in (25, 8, 11))
    params = PSCALayer(layer)
    with torch.no_grad():
        out = step.cross_attend(x, video, text, params)
        text_out = official_cross_attention(step.tex_aud_cross_atn, x, text, 0.0, 4)
        video_bias = bias(params, 25, 8)
        video_out = official_cross_attention(step.vis_aud_cross_atn, x, video, video_bias, 4)
    expected = x + 0.3 * text_out + 0.7 * video_out
    assert rel_err(out - x, expected - x) < 1e-5


def test_flowley_step_alpha_selects_the_stream():
    step = make_step()
    g = torch.Generator().manual_seed(2)
    x, video, text = (torch.randn(1, n, 64, generator=g) for n in (25, 8, 11))
    with torch.no_grad():
        step.cross_weight.fill_(1.0)
        text_only = step.cross_attend(x, video, text, PSCALayer(0))
        other_video = torch.randn(1, 8, 64)
        assert torch.equal(text_only, step.cross_attend(x, other_video, text, PSCALayer(0)))
        step.cross_weight.fill_(0.0)
        video_only = step.cross_attend(x, video, text, PSCALayer(0))
        other_text = torch.randn(1, 11, 64)
        assert torch.equal(video_only, step.cross_attend(x, video, other_text, PSCALayer(0)))
        assert not torch.equal(video_only, step.cross_attend(x, video, text, PSCALayer(9)))


def test_flowley_step_parameter_names():
    names = {
        k for k in SingleStreamBlock(64, 4).state_dict() if k.startswith(("vis_", "tex_", "cross"))
    }
    expected = {"cross_weight"}
    for attn in ("vis_aud_cross_atn", "tex_aud_cross_atn"):
        expected |= {f"{attn}.{p}.{t}" for p in ("q_prj", "kv_prj") for t in ("weight", "bias")}
        expected |= {f"{attn}.{n}.scale" for n in ("q_norm", "k_norm")}
    assert names == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_flowley_step_on_cuda_matches_cpu():
    step = make_step()
    g = torch.Generator().manual_seed(3)
    x, video, text = (torch.randn(2, n, 64, generator=g) for n in (250, 64, 77))
    with torch.no_grad():
        expected = step.cross_attend(x, video, text, PSCALayer(4))
        out = step.cuda().cross_attend(x.cuda(), video.cuda(), text.cuda(), PSCALayer(4))
    assert rel_err(out, expected) < 1e-4
