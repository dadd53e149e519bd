"""Video encoder (TextSynch and the plain Synchformer branch): layout, golden parity, the
trunk/select split, prompt batching and strict loading."""

import re
from dataclasses import replace

import pytest
import torch
from golden import (
    assert_close,
    case_path,
    load_case,
    manifest,
    sync_frames_from_u8,
    video_encoder_config,
)
from selva_rt.kernels.sup_cross_attention import sup_cross_attention_reference
from selva_rt.runtime.errors import CheckpointError, UsageError
from selva_rt.runtime.models.checkpoint import read_state_dict
from selva_rt.runtime.models.video_encoder import (
    VideoEncoder,
    broadcast_attention,
    num_segments,
    random_official_state,
    segment,
)
from selva_rt.runtime.variants import VARIANTS, VideoEncoderConfig
from torch import nn

CASE = "textsynch_small"
RTOL, MAXABS = 1e-4, 1e-3  # golden README: TextSynch outputs

torch.set_num_threads(2)


def golden_config(meta: dict) -> VideoEncoderConfig:
    return video_encoder_config(
        meta["constructor_kwargs"], meta["motionformer_config"]["overrides_applied"]
    )


def golden_frames(meta: dict) -> torch.Tensor:
    """The case's sync video, rebuilt from the source named in its json."""
    source = meta["inputs"]["in.sync_video_source"]  # "<case>.safetensors:<key>[[a:b],[c:d]]"
    case, key, ranges = re.fullmatch(r"(\w+)\.safetensors:([\w.]+)\[(.*)\]", source).groups()
    u8 = load_case(case)[1][key]
    items = [u8[int(a) : int(b)] for a, b in re.findall(r"\[(\d+):(\d+)\]", ranges)]
    return torch.stack([sync_frames_from_u8(x) for x in items])


@pytest.fixture(scope="module")
def golden():
    """(encoder, tensors, frames, trunk tokens) of the golden case, computed once."""
    meta, t = load_case(CASE)
    state = read_state_dict(case_path(CASE), prefix="state.")
    enc = VideoEncoder(golden_config(meta)).load_official(state, CASE).eval()
    frames = golden_frames(meta)
    with torch.inference_mode():
        tokens = enc.trunk(frames)
    return enc, t, frames, tokens


@pytest.fixture(scope="module")
def small():
    """A random TextSynch small enough for several runs: 2 random clips of 24 frames."""
    cfg = VideoEncoderConfig(embed_dim=32, depth=1, num_heads=2, text_dim=48)
    enc = VideoEncoder(cfg).load_official(random_official_state(cfg, seed=1), "random").eval()
    gen = torch.Generator().manual_seed(2)
    frames = torch.rand(2, 24, 3, 224, 224, generator=gen) * 2 - 1
    t5_f = torch.randn(2, 9, cfg.text_dim, generator=gen)
    t5_mask = torch.arange(9) < torch.tensor([[9], [4]])
    with torch.inference_mode():
        tokens = enc.trunk(frames)
    return enc, frames, tokens, t5_f, t5_mask


@pytest.mark.parametrize(
    "name, config",
    [
        ("textsynch_depth1", VARIANTS["selva-small-16k"].video_encoder),
        ("synchformer_video_reference", VARIANTS["mmaudio-small-16k"].video_encoder),
    ],
)
def test_full_size_layout_matches_manifest(name, config):
    m = manifest(name)
    with torch.device("meta"):
        enc = VideoEncoder(config)
    shapes = {k: list(v.shape) for k, v in enc.state_dict().items()}
    assert shapes == {k: v[0] for k, v in m["keys"].items()}
    assert sum(p.numel() for p in enc.parameters()) == m["total_parameters"]


def test_full_size_loads_on_meta():
    config = VARIANTS["selva-small-16k"].video_encoder
    with torch.device("meta"):
        enc = VideoEncoder(config)
        state = {k: torch.empty_like(v) for k, v in enc.state_dict().items()}
    enc.load_official({**state, "some_other.weight": torch.empty(1)}, "meta file")
    assert enc.sup_text_feat.shape == (config.num_sup_tokens, config.text_dim)


def test_golden_prepend_and_text_proj(golden):
    enc, t, _, _ = golden
    with torch.inference_mode():
        text_f, text_mask = enc.prepend_sup(t["in.text_f"], t["in.text_mask"])
        projected = enc.text_proj(text_f)
    assert torch.equal(text_f, t["out.text_f_prepended"])
    assert text_mask.dtype == torch.bool
    assert torch.equal(text_mask, t["out.text_mask_prepended"])
    assert_close(
        f"{CASE}.text_proj_of_prepended", projected, t["out.text_proj_of_prepended"], RTOL, MAXABS
    )


def test_golden_trunk(golden):
    enc, t, frames, tokens = golden
    expected = t["out.mformer_features_no_agg"]  # [B*S, D, t, h, w]
    assert expected.shape[0] == frames.shape[0] * num_segments(frames.shape[1])
    assert_close(
        f"{CASE}.mformer_features_no_agg", tokens, expected.flatten(2).transpose(1, 2), RTOL, MAXABS
    )


def test_chunked_trunk_matches_one_call(small):
    """Segments are independent: any chunking gives the one-call tokens (up to GEMM rounding)."""
    enc, frames, tokens, _, _ = small
    with torch.inference_mode():
        for chunk in (1, 3, 100):
            torch.testing.assert_close(enc.trunk(frames, chunk), tokens, rtol=1e-5, atol=1e-5)


def test_golden_sync_features_and_split(golden):
    enc, t, frames, tokens = golden
    with torch.inference_mode():
        whole = enc(frames, t["in.text_f"], t["in.text_mask"])
        text_f, text_mask = enc.prepend_sup(t["in.text_f"], t["in.text_mask"])
        split = enc.select(tokens, text_f, text_mask, num_segments(frames.shape[1]))
    assert_close(f"{CASE}.sync_features", whole, t["out.sync_features"], RTOL, MAXABS)
    assert torch.equal(split, whole)


def test_padded_prompt_tokens_change_nothing(golden):
    enc, t, frames, tokens = golden
    t5_f, t5_mask = t["in.text_f"], t["in.text_mask"]
    assert not t5_mask.all(), "the golden case should have padding"
    noisy = torch.where(t5_mask[..., None], t5_f, 100 * torch.randn_like(t5_f))
    segments = num_segments(frames.shape[1])
    with torch.inference_mode():
        a = enc.select(tokens, *enc.prepend_sup(t5_f, t5_mask), segments)
        b = enc.select(tokens, *enc.prepend_sup(noisy, t5_mask), segments)
    assert (a - b).abs().max().item() <= 1e-6


def test_segment_windows():
    frames = torch.arange(2 * 27, dtype=torch.float32).view(2, 27, 1, 1, 1)
    frames = frames.expand(-1, -1, 3, 224, 224)
    seg = segment(frames)  # 27 frames -> 2 windows; the last 3 frames are dropped
    assert seg.shape == (4, 3, 16, 224, 224)
    starts = seg[:, 0, :, 0, 0]  # [B*S, 16] frame numbers
    for row, (b, s) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        assert torch.equal(starts[row], torch.arange(16.0) + 27 * b + 8 * s)
    with pytest.raises(UsageError):
        segment(frames[:, :15])


def test_pool_matches_transformer_encoder_layer(small):
    """The hand-written pooling against torch's own layer with the official settings."""
    enc, _, tokens, _, _ = small
    pool, dim = enc.vfeat_extractor.spatial_attn_agg, enc.config.embed_dim
    layer = nn.TransformerEncoderLayer(
        dim,
        enc.config.num_heads,
        4 * dim,
        dropout=0.0,
        activation=nn.GELU(),
        layer_norm_eps=1e-6,
        batch_first=True,
        norm_first=True,
    ).eval()
    layer.load_state_dict({k: v for k, v in pool.state_dict().items() if k != "cls_token"})
    x = tokens.reshape(-1, 196, dim)
    with torch.no_grad():  # the slow (Python) path of the layer
        ref = layer(torch.cat([pool.cls_token.expand(x.shape[0], -1, -1), x], dim=1))[:, 0]
        ours = pool(tokens)
    torch.testing.assert_close(ours, ref.view(ours.shape), rtol=1e-5, atol=1e-5)


def test_one_clip_serves_many_prompts(small):
    enc, frames, tokens, t5_f, t5_mask = small
    segments = num_segments(frames.shape[1])
    clip = tokens[:segments]  # the first clip's trunk tokens, shared by both prompts
    with torch.inference_mode():
        both = enc.select(clip, *enc.prepend_sup(t5_f, t5_mask), segments)
        one_by_one = [
            enc.select(clip, *enc.prepend_sup(t5_f[i : i + 1], t5_mask[i : i + 1]), segments)
            for i in range(2)
        ]
    assert both.shape == (2, segments * 8, enc.config.embed_dim)
    torch.testing.assert_close(both, torch.cat(one_by_one), rtol=1e-6, atol=1e-6)
    assert (both[0] - both[1]).abs().max() > 1e-3  # the prompts do select differently


@pytest.mark.parametrize("shared", [True, False], ids=["one clip", "rows per prompt"])
def test_traced_attention_matches_the_dispatcher(shared):
    """The [SUP] attention the ONNX export traces (broadcasting) against the dispatcher's torch
    reference (repeat_interleave), with one clip's rows read by every prompt or each prompt's
    own rows, under a key-padding mask."""
    gen = torch.Generator().manual_seed(3)
    P, S, heads, lq, lk, d = 3, 2, 2, 5, 7, 16
    q = torch.randn(S if shared else P * S, heads, lq, d, generator=gen)
    k, v = (torch.randn(P, heads, lk, d, generator=gen) for _ in range(2))
    mask = torch.arange(lk) < torch.tensor([[7], [2], [5]])
    want = sup_cross_attention_reference(q, k, v, mask, S)
    torch.testing.assert_close(broadcast_attention(q, k, v, mask, S), want, rtol=1e-5, atol=1e-6)


def test_clips_pair_with_prompts(small):
    enc, frames, tokens, t5_f, t5_mask = small
    with torch.inference_mode():
        paired = enc(frames, t5_f, t5_mask)
        alone = [enc(frames[i : i + 1], t5_f[i : i + 1], t5_mask[i : i + 1]) for i in range(2)]
        shared = enc(frames, t5_f[:1], t5_mask[:1])  # one prompt for both clips
    torch.testing.assert_close(paired, torch.cat(alone), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(shared[0], paired[0], rtol=1e-6, atol=1e-6)
    assert shared.shape == paired.shape


def test_unpairable_batch_is_a_usage_error(small):
    enc, frames, tokens, t5_f, t5_mask = small
    three = torch.cat([t5_f, t5_f[:1]]), torch.cat([t5_mask, t5_mask[:1]])
    with pytest.raises(UsageError, match="pair up"):
        enc.select(tokens, *enc.prepend_sup(*three), num_segments(frames.shape[1]))
    with pytest.raises(UsageError, match="needs"):
        enc(frames)


def test_plain_synchformer(golden):
    """The MMAudio branch: same trunk, no text; loads only `vfeat_extractor.*` of a file."""
    enc, t, frames, tokens = golden
    config = replace(enc.config, num_sup_tokens=0, xattn_depth=0)
    state = read_state_dict(case_path(CASE), prefix="state.")
    plain = VideoEncoder(config).load_official(state, CASE).eval()
    assert not any(k.startswith("text_proj") for k in plain.state_dict())
    with torch.inference_mode():
        out = plain(frames)
    segments = num_segments(frames.shape[1])
    assert out.shape == (frames.shape[0], segments * 8, config.embed_dim)
    torch.testing.assert_close(out, plain.pool(tokens, segments), rtol=1e-6, atol=1e-6)
    with pytest.raises(UsageError, match="takes no"):
        plain(frames, t["in.text_f"], t["in.text_mask"])


def test_random_state_is_deterministic():
    cfg = VideoEncoderConfig(embed_dim=32, depth=1, num_heads=2, text_dim=48)
    a, b = random_official_state(cfg, 5), random_official_state(cfg, 5)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["sup_text_feat"], random_official_state(cfg, 6)["sup_text_feat"])


@pytest.mark.parametrize("damage", ["missing", "extra", "misshaped"])
def test_strict_loading_names_source_and_key(damage):
    cfg = VideoEncoderConfig(embed_dim=32, depth=1, num_heads=2, text_dim=48)
    state = random_official_state(cfg, 0)
    key = "synch_text_cross_blocks.0.attn.k_norm.weight"
    if damage == "missing":
        del state[key]
    elif damage == "extra":  # an official prefix is kept by the filter, so it must fail
        key = "text_proj.9.weight"
        state[key] = torch.zeros(1)
    else:
        state[key] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=rf"video_enc\.pth.*{re.escape(key)}"):
        VideoEncoder(cfg).load_official(state, "video_enc.pth")
