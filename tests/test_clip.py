"""CLIP tokenizer and towers (spec §1.3, §2.2) against open_clip, without open_clip installed.

The reference ids and values below come from the official code, open_clip_torch 3.3.0 from PyPI,
as tests/clip_reference.py printed them in one recorded run (OFFICIAL_TEXT[0][2][2] is 0.2911175
there; an earlier hand copy said 0.2911170). `python tests/clip_reference.py --check` recomputes
all of them, but not in this suite's environment: open_clip needs torchvision, which is not
installed here (nor in CI), so the check was not rerun after that run. How the references are
made:
`SimpleTokenizer(context_length=77, clean='lower')` (what
`open_clip.get_tokenizer('ViT-H-14-378-quickgelu')` returns), `open_clip.model.CLIP` built from
`model_configs/ViT-H-14-378-quickgelu.json` (quick_gelu) for the key list, and tiny `CLIP`s
loaded with `_weights` below for the feature values (text: SELVA's patched `encode_text`, i.e.
token + position embedding, transformer with `attn_mask`, `ln_final`, `F.normalize`; image:
`encode_image(normalize=True)` of OpenAI-normalised frames).
"""

import pytest
import torch
from selva_rt.runtime.errors import CheckpointError, PromptError
from selva_rt.runtime.models.clip import (
    ClipImageEncoder,
    ClipTextEncoder,
    official_shapes,
    random_official_state,
)
from selva_rt.runtime.models.clip_tokenizer import ClipTokenizer
from selva_rt.runtime.variants import VARIANTS, ClipConfig

torch.set_num_threads(2)

FULL = ClipConfig()
TINY = ClipConfig(
    text_width=40, text_layers=2, text_heads=2, embed_dim=40,
    image_width=32, image_layers=2, image_heads=2,
)  # fmt: skip
SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer()


def _weights(config: ClipConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Plain random weights in the open_clip layout (this function made the reference values)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in sorted(official_shapes(config).items()):
        t = 0.1 * torch.randn(shape, generator=g)
        state[key] = t + 1 if "ln_" in key and key.endswith("weight") else t
    return state


# -- tokenizer ------------------------------------------------------------------------------------

# (prompt, official ids up to the last non-pad token); from open_clip 3.3.0's SimpleTokenizer.
OFFICIAL_IDS = [
    ("", [49406, 49407]),
    ("a dog barking", [49406, 320, 1929, 32676, 49407]),
    ("  A Dog   BARKING!!!\n", [49406, 320, 1929, 32676, 995, 49407]),
    ("rock &amp;amp; roll &lt;loud&gt;", [49406, 2172, 261, 3341, 283, 7464, 285, 49407]),
    ("Caf\u00c3\u00a9 na\u00efve r\u00e9sum\u00e9",
     [49406, 15304, 1097, 35689, 563, 29106, 7054, 4166, 49407]),
    ("\U0001f436 woof \U0001f50a", [49406, 10631, 24028, 20502, 49407]),
    ("\u72ac\u304c\u5420\u3048\u308b",
     [49406, 163, 232, 105, 4813, 234, 41673, 254, 4813, 230, 3909, 489, 49407]),
    ("it's 3.14 o'clock, isn't it?",
     [49406, 585, 568, 274, 269, 272, 275, 334, 262, 6716, 267, 2923, 713, 585, 286, 49407]),
    ("c++ -> <end_of_text> ...", [49406, 322, 19056, 5081, 49407, 678, 49407]),
    ("supercalifragilisticexpialidocious",
     [49406, 1642, 2857, 13093, 2076, 5868, 26850, 835, 639, 38466, 49407]),
]  # fmt: skip


def test_tokenizer_matches_open_clip(tokenizer):
    tokens = tokenizer([p for p, _ in OFFICIAL_IDS])
    assert tokens.shape == (len(OFFICIAL_IDS), 77) and tokens.dtype == torch.long
    for row, (prompt, ids) in zip(tokens, OFFICIAL_IDS, strict=True):
        assert row[: len(ids)].tolist() == ids, prompt
        assert not row[len(ids) :].any(), prompt  # zero padding


def test_tokenizer_truncates_to_77_and_ends_with_eot(tokenizer):
    text = "the quick brown fox jumps over the lazy dog " * 10  # 90 BPE tokens
    ids = tokenizer.encode(text)
    # Official: [49406, 518, 3712, 2866, ...] and the last four [518, 3712, 2866, 49407].
    assert ids[:5] == [518, 3712, 2866, 3240, 18911] and len(ids) == 90
    row = tokenizer([text])[0].tolist()
    assert row == [SOT, *ids[:75], EOT]


def test_tokenizer_rejects_non_text(tokenizer):
    with pytest.raises(PromptError):
        tokenizer("a bare string")
    with pytest.raises(PromptError):
        tokenizer(["ok", None])


# -- checkpoint layout ----------------------------------------------------------------------------


def _open_clip_layout() -> dict[str, tuple[int, ...]]:
    """Every key and shape of open_clip's CLIP(ViT-H-14-378-quickgelu).state_dict(), written out
    from the model config (width 1024 x 24 layers text, 1280 x 32 layers image at 378 px, patch
    14, embed 1024, MLP ratio 4); checked once against the instantiated open_clip 3.3.0 model."""

    def block(prefix: str, d: int, layers: int) -> dict[str, tuple[int, ...]]:
        one = {
            "ln_1.weight": (d,), "ln_1.bias": (d,),
            "attn.in_proj_weight": (3 * d, d), "attn.in_proj_bias": (3 * d,),
            "attn.out_proj.weight": (d, d), "attn.out_proj.bias": (d,),
            "ln_2.weight": (d,), "ln_2.bias": (d,),
            "mlp.c_fc.weight": (4 * d, d), "mlp.c_fc.bias": (4 * d,),
            "mlp.c_proj.weight": (d, 4 * d), "mlp.c_proj.bias": (d,),
        }  # fmt: skip
        return {f"{prefix}.{i}.{k}": s for i in range(layers) for k, s in one.items()}

    return {
        "positional_embedding": (77, 1024),
        "text_projection": (1024, 1024),
        "logit_scale": (),
        "visual.class_embedding": (1280,),
        "visual.positional_embedding": (27 * 27 + 1, 1280),
        "visual.proj": (1280, 1024),
        "visual.conv1.weight": (1280, 3, 14, 14),
        "visual.ln_pre.weight": (1280,),
        "visual.ln_pre.bias": (1280,),
        **block("visual.transformer.resblocks", 1280, 32),
        "visual.ln_post.weight": (1280,),
        "visual.ln_post.bias": (1280,),
        **block("transformer.resblocks", 1024, 24),
        "token_embedding.weight": (49408, 1024),
        "ln_final.weight": (1024,),
        "ln_final.bias": (1024,),
    }


def test_full_size_layout_matches_open_clip():
    layout = _open_clip_layout()
    # 686 tensors, 986,714,881 fp32 values: consistent with the 3,947,081,637-byte
    # open_clip_pytorch_model.bin on the hub.
    assert len(layout) == 686
    assert sum(torch.Size(s).numel() for s in layout.values()) == 986_714_881
    assert official_shapes(FULL) == layout

    state = {k: torch.empty(s, device="meta") for k, s in layout.items()}
    with torch.device("meta"):
        text, image = ClipTextEncoder(FULL), ClipImageEncoder(FULL)
    text.load_official(state, "open_clip_pytorch_model.bin")
    image.load_official(state, "open_clip_pytorch_model.bin")
    assert sum(p.numel() for p in text.parameters()) == 352_984_064
    assert sum(p.numel() for p in image.parameters()) == 632_682_240


@pytest.mark.parametrize(
    "change, key",
    [
        ("drop", "transformer.resblocks.1.attn.in_proj_bias"),
        ("add", "transformer.resblocks.0.attn.attn_mask"),
        ("reshape", "positional_embedding"),
        ("drop", "visual.ln_post.weight"),
    ],
)
def test_bad_checkpoint_is_named(change, key):
    state = random_official_state(TINY, 0)
    if change == "drop":
        del state[key]
    elif change == "add":
        state[key] = torch.zeros(3)
    else:
        state[key] = torch.zeros(3, 3)
    net = ClipImageEncoder(TINY) if key.startswith("visual.") else ClipTextEncoder(TINY)
    with pytest.raises(CheckpointError) as err:
        net.load_official(state, "clip.bin")
    assert "clip.bin" in str(err.value) and key.removeprefix("visual.") in str(err.value)


def test_random_official_state_is_the_official_layout_and_deterministic():
    tiny = VARIANTS["tiny"].clip
    a, b = random_official_state(tiny, 5), random_official_state(tiny, 5)
    assert {k: tuple(v.shape) for k, v in a.items()} == official_shapes(tiny)
    assert not any(k.startswith("visual.") for k in a)  # text-only config
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = random_official_state(tiny, 6)
    assert not torch.equal(a["positional_embedding"], other["positional_embedding"])
    ClipTextEncoder(tiny).load_official(a, "tiny")


# -- features -------------------------------------------------------------------------------------

# open_clip 3.3.0, TINY loaded with _weights(TINY): SELVA's encode_text of
# ["a dog barking", ""] at positions [0, 2, 4, 76], dims [:4].
OFFICIAL_TEXT = [
    [[0.1601757, 0.3119008, 0.2452347, 0.1351458],
     [-0.1662829, 0.0699932, 0.3301270, 0.2247426],
     [0.0825279, 0.1055848, 0.2911175, 0.0385450],
     [-0.3051438, 0.3291584, 0.0264420, 0.0816312]],
    [[0.1601757, 0.3119008, 0.2452347, 0.1351458],
     [-0.0585789, 0.4316678, 0.3273312, -0.2022284],
     [0.0788820, 0.3083837, 0.0548418, -0.2135201],
     [-0.2826166, 0.3429993, 0.0335492, 0.0644137]],
]  # fmt: skip
# encode_image(normalize=True)[:, :8] of torch.rand(2, 3, 384, 384, generator seed 1).
OFFICIAL_IMAGE = [
    [0.0153827, -0.1697639, 0.0851359, 0.2127670, -0.1567396, 0.0728476, 0.1392041, -0.0981013],
    [0.0080634, -0.1691541, 0.0806419, 0.2119667, -0.1505790, 0.0771587, 0.1363991, -0.0935226],
]  # fmt: skip


@pytest.fixture(scope="module")
def text_encoder() -> ClipTextEncoder:
    return ClipTextEncoder(TINY).load_official(_weights(TINY), "weights").eval()


@pytest.fixture(scope="module")
def image_encoder() -> ClipImageEncoder:
    return ClipImageEncoder(TINY).load_official(_weights(TINY), "weights").eval()


@torch.no_grad()
def test_text_features_match_open_clip(text_encoder, tokenizer):
    out = text_encoder(tokenizer(["a dog barking", ""]))
    assert out.shape == (2, 77, TINY.text_width)
    torch.testing.assert_close(out[:, [0, 2, 4, 76], :4], torch.tensor(OFFICIAL_TEXT),
                               rtol=0, atol=2e-6)  # fmt: skip


@torch.no_grad()
def test_text_keeps_and_normalises_positions_after_eot(text_encoder, tokenizer):
    tokens = tokenizer(["a dog barking"])
    eot = tokens[0].tolist().index(EOT)
    out = text_encoder(tokens)[0]
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(77))
    tail = out[eot + 1 :]  # the padding positions: real, distinct states
    assert len(tail) == 77 - eot - 1 and (tail[1:] - tail[:-1]).abs().amax(-1).min() > 1e-3


@torch.no_grad()
def test_text_attention_is_causal(text_encoder, tokenizer):
    a = tokenizer(["a dog barking loudly at night"])
    b = a.clone()
    b[0, 3] = 1234
    ya, yb = text_encoder(a), text_encoder(b)
    torch.testing.assert_close(ya[:, :3], yb[:, :3], rtol=0, atol=1e-6)
    assert (ya[:, 3:] - yb[:, 3:]).abs().amax(-1).min() > 1e-4


@torch.no_grad()
def test_image_features_match_open_clip(image_encoder):
    frames = torch.rand(2, 3, 384, 384, generator=torch.Generator().manual_seed(1))
    out = image_encoder.encode(frames)
    assert out.shape == (2, TINY.embed_dim)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(out[:, :8], torch.tensor(OFFICIAL_IMAGE), rtol=0, atol=2e-6)
    # The last 6 rows and columns of a 384 px frame are never read (27 patches of 14 px).
    torch.testing.assert_close(image_encoder.encode(frames[..., :378, :378]), out, rtol=0, atol=0)


@pytest.mark.slow
def test_text_encoder_exports_to_onnx(text_encoder, tokenizer, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = tmp_path / "clip_text.onnx"
    torch.onnx.export(
        text_encoder, (tokenizer(["a dog"]),), str(path), input_names=["tokens"],
        output_names=["clip"], dynamo=True, dynamic_shapes=({0: torch.export.Dim("B")},),
    )  # fmt: skip
    tokens = tokenizer(["rain on a roof", "", "a dog barking"])
    (out,) = ort.InferenceSession(str(path)).run(None, {"tokens": tokens.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), text_encoder(tokens), rtol=0, atol=1e-5)
