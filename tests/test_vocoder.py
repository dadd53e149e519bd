"""BigVGAN vocoders (spec §6.2, §6.3): manifests in all three weight layouts, golden waveforms,
weight-norm folding, strict loading and the config.json reader."""

import pytest
import torch
from golden import assert_close, case_path, load_case, manifest
from selva_rt.runtime.backends.reference import official_upsampling
from selva_rt.runtime.errors import CheckpointError
from selva_rt.runtime.models.checkpoint import read_state_dict
from selva_rt.runtime.models.vocoder import (
    Activation1d,
    BigVGAN,
    fold_weight_norm,
    kaiser_sinc_filter,
    random_official_state,
    vocoder_config_from_hparams,
)
from selva_rt.runtime.variants import BIGVGAN_16K, BIGVGAN_V2_44K

torch.set_num_threads(2)

LEGACY, PARAMETRIZED = (
    (".weight_g", ".weight_v"),
    (
        ".parametrizations.weight.original0",
        ".parametrizations.weight.original1",
    ),
)


def shapes_of(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def to_layout(state: dict[str, torch.Tensor], layout: tuple[str, str]) -> dict[str, torch.Tensor]:
    """Rename legacy weight_g / weight_v keys to another weight-norm layout."""
    out = {}
    for key, t in state.items():
        for old, new in zip(LEGACY, layout, strict=True):
            if key.endswith(old):
                key = key.removesuffix(old) + new
        out[key] = t
    return out


@pytest.mark.parametrize("name, config", [("bigvgan_16k", BIGVGAN_16K),
                                          ("bigvgan_v2_44k", BIGVGAN_V2_44K)])  # fmt: skip
def test_full_size_matches_manifest(name, config):
    spec = manifest(name)
    assert vocoder_config_from_hparams(spec["config"], name) == config
    folded = {k: v[0] for k, v in spec["keys_after_remove_weight_norm"].items()}
    g_numel = sum(
        torch.Size(v[0]).numel() for k, v in spec["keys"].items() if k.endswith("original0")
    )
    for layout in ("keys", "keys_legacy_weight_norm_layout", "keys_after_remove_weight_norm"):
        with torch.device("meta"):
            module = BigVGAN(config)
        state = {k: torch.empty(v[0], device="meta") for k, v in spec[layout].items()}
        module.load_official(state, f"{name}:{layout}")
        assert shapes_of(module) == folded, layout
    # Folding drops one g per conv; the manifest counts the weight-normed module.
    assert sum(p.numel() for p in module.parameters()) == spec["total_parameters"] - g_numel
    assert sum(k.endswith(".filter") for k in folded) == 218


@pytest.mark.parametrize("case", ["bigvgan_16k", "bigvgan_v2_44k"])
def test_golden_waveform(case):
    meta, tensors = load_case(case)
    config = vocoder_config_from_hparams(meta["config"], case)
    state = read_state_dict(case_path(case), prefix="state.")
    assert any(k.endswith(".weight_g") for k in state)  # golden files use the legacy layout
    with torch.device("meta"):
        vocoder = BigVGAN(config)
    vocoder.load_official(state, case)
    mel = tensors["in.mel"]
    with torch.inference_mode():
        wav = vocoder(mel)
    assert wav.shape == (mel.shape[0], 1, mel.shape[2] * vocoder.hop)
    assert_close(f"{case}/wav", wav, tensors["out.wav"], rtol=5e-4, maxabs=5e-3)
    with torch.inference_mode(), official_upsampling(vocoder):  # reference mode's form
        official = vocoder(mel)
    assert_close(f"{case}/wav[transposed]", official, tensors["out.wav"], rtol=5e-4, maxabs=5e-3)

    # Every layout folds to the same weights, so the outputs are identical too.
    folded = vocoder.state_dict()
    for layout_state in (to_layout(state, PARAMETRIZED), folded):
        other = BigVGAN(config).load_official(layout_state, case).state_dict()
        assert other.keys() == folded.keys()
        assert all(torch.equal(other[k], folded[k]) for k in folded)
    with torch.inference_mode():
        short = mel[..., :6]
        parametrized = BigVGAN(config).load_official(to_layout(state, PARAMETRIZED), case)
        assert torch.equal(parametrized(short), vocoder(short))


def test_filters_are_official():
    taps = manifest("reference_tables")
    expected = torch.tensor(taps["alias_free_kaiser_sinc_filter_ratio2_k12"]).view(1, 1, 12)
    assert torch.equal(kaiser_sinc_filter(), expected)
    meta, tensors = load_case("bigvgan_16k")
    filters = [v for k, v in tensors.items() if k.endswith(".filter")]
    with torch.device("meta"):  # one up- and one down-sampling filter per activation
        module = BigVGAN(vocoder_config_from_hparams(meta["config"], "bigvgan_16k"))
    assert len(filters) == sum(k.endswith(".filter") for k in module.state_dict())
    assert all(torch.equal(f, expected) for f in filters)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [1, 6, 37, 1000])
def test_polyphase_upsampling_is_the_transposed_convolution(dtype, length):
    """The fast 2x upsampler (one depthwise conv1d per phase) against the official
    2 * conv_transpose1d, cropped: the same products summed in another order."""
    torch.manual_seed(length)
    act = Activation1d(8).to(dtype)
    x = torch.randn(2, 8, length, dtype=dtype)
    fast = act.upsample2(x)
    act.transposed = True
    official = act.upsample2(x)
    assert fast.shape == official.shape == (2, 8, 2 * length)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert torch.allclose(fast.float(), official.float(), rtol=tol, atol=tol)
    vocoder = torch.nn.Sequential(Activation1d(4), Activation1d(4))
    with official_upsampling(vocoder):
        assert all(a.transposed for a in vocoder)
    assert not any(a.transposed for a in vocoder)  # reference mode leaves the fast form behind


def test_fold_weight_norm():
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(6, 3, 5, generator=gen)
    g = torch.rand(6, 1, 1, generator=gen) + 0.5
    w = fold_weight_norm({"c.weight_g": g, "c.weight_v": v}, "t")["c.weight"]
    per_out = w.flatten(1).norm(dim=1)
    torch.testing.assert_close(per_out, g.flatten())  # ‖w_o‖ = g_o: norm taken per dim-0 slice
    torch.testing.assert_close(
        w / per_out[:, None, None], v / v.flatten(1).norm(dim=1)[:, None, None]
    )

    # ConvTranspose1d weight [in, out, k]: g has one value per *input* channel.
    v, g = torch.randn(4, 2, 4, generator=gen), torch.rand(4, 1, 1, generator=gen) + 0.5
    w = fold_weight_norm({"ups.0.0.weight_g": g, "ups.0.0.weight_v": v}, "t")["ups.0.0.weight"]
    torch.testing.assert_close(w.flatten(1).norm(dim=1), g.flatten())


TINY = vocoder_config_from_hparams(
    {"resblock": "1", "activation": "snakebeta", "snake_logscale": True, "num_mels": 8,
     "upsample_rates": [2, 2], "upsample_kernel_sizes": [4, 4], "upsample_initial_channel": 8,
     "resblock_kernel_sizes": [3, 5], "resblock_dilation_sizes": [[1, 3], [1, 2]]},
    "tiny",
)  # fmt: skip


@pytest.mark.parametrize(
    "mutation", ["missing", "extra", "misshaped", "unpaired_v", "unpaired_g", "bad_g", "twice"]
)
def test_strict_loading_errors(mutation):
    state = random_official_state(TINY, seed=1)
    key = "resblocks.1.convs1.0.bias"
    word = mutation
    if mutation == "missing":
        del state[key]
    elif mutation == "extra":
        key, word = "resblocks.9.convs1.0.bias", "unexpected"
        state[key] = torch.zeros(4)
    elif mutation == "misshaped":
        state[key] = torch.zeros(3)
    elif mutation == "unpaired_v":
        key, word = "conv_pre.weight_g", "no matching"
        del state["conv_pre.weight_v"]
    elif mutation == "unpaired_g":
        key, word = "conv_pre.weight_v", "no matching"
        del state["conv_pre.weight_g"]
    elif mutation == "bad_g":
        key, word = "conv_pre.weight_g", "expected [8, 1, 1]"
        state[key] = state[key].flatten()
    else:
        key, word = "conv_pre.weight", "twice"
        state[key] = torch.zeros(8, 8, 7)
    with pytest.raises(CheckpointError) as err:
        BigVGAN(TINY).load_official(state, "best_netG.pt")
    message = str(err.value)
    assert "best_netG.pt" in message and key in message and word in message, message


def test_random_state_and_ends():
    """Random legacy-layout states load and give sane audio; v1 ends with tanh, v2 has no
    conv_post bias and ends with clamp(-1, 1)."""
    v2_hparams = {**manifest("bigvgan_v2_44k")["config"], "num_mels": 8,
                  "upsample_initial_channel": 8, "upsample_rates": [2, 2],
                  "upsample_kernel_sizes": [4, 4]}  # fmt: skip
    for config in (TINY, vocoder_config_from_hparams(v2_hparams, "tiny v2")):
        state = random_official_state(config, seed=2)
        again = random_official_state(config, seed=2)
        assert all(torch.equal(state[k], again[k]) for k in state)
        assert ("conv_post.bias" in state) == config.use_bias_at_final
        vocoder = BigVGAN(config).load_official(state, "random")
        assert (vocoder.conv_post.bias is not None) == config.use_bias_at_final

        captured = []
        vocoder.conv_post.register_forward_hook(lambda m, i, out, seen=captured: seen.append(out))
        mel = torch.randn(2, config.num_mels, 10, generator=torch.Generator().manual_seed(3))
        with torch.inference_mode():
            wav = vocoder(mel)
        assert wav.shape == (2, 1, 10 * vocoder.hop)
        assert 0.01 < wav.std() < 0.9  # not silent, not saturated
        end = torch.tanh if config.use_tanh_at_final else lambda x: x.clamp(-1.0, 1.0)
        assert torch.equal(wav, end(captured[0]))


def test_vocoder_config_from_official_hparams():
    spec = manifest("bigvgan_v2_44k")
    assert vocoder_config_from_hparams(spec["config"], "config.json") == BIGVGAN_V2_44K
    with pytest.raises(CheckpointError, match="unsupported BigVGAN settings"):
        vocoder_config_from_hparams({**spec["config"], "activation": "snake"}, "config.json")
