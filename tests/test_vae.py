"""MMAudio mel VAE (spec §6.1) and the mel converter: manifests, golden cases, strict loading."""

import math

import pytest
import torch
from golden import assert_close, case_path, load_case, manifest
from selva_rt.runtime.errors import CheckpointError
from selva_rt.runtime.models.checkpoint import read_state_dict
from selva_rt.runtime.models.mel import MelConverter, mel_filterbank
from selva_rt.runtime.models.vae import VAE, normalize_mp_weight, random_official_state
from selva_rt.runtime.variants import AUDIO_16K, AUDIO_44K, VAE_16K, VAE_44K, VAEConfig

torch.set_num_threads(2)

TINY_16K = VAEConfig(data_dim=80, embed_dim=20, hidden_dim=16)
TINY_44K = VAEConfig(data_dim=128, embed_dim=40, hidden_dim=16)


def meta_state(shapes: dict[str, list]) -> dict[str, torch.Tensor]:
    """Meta tensors with a manifest's key -> [shape, ...] layout (nothing is allocated)."""
    return {k: torch.empty(v[0], device="meta") for k, v in shapes.items()}


def shapes_of(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name, config", [("vae_16k", VAE_16K), ("vae_44k", VAE_44K)])
def test_full_size_matches_manifest(name, config):
    spec = manifest(name)
    expected = {k: v[0] for k, v in spec["keys"].items()}
    with torch.device("meta"):
        full = VAE(config, with_encoder=True)
        decoder_only = VAE(config)
    assert shapes_of(full) == expected
    assert sum(p.numel() for p in full.parameters()) == spec["total_parameters"]
    decoder_keys = {k: v for k, v in expected.items() if not k.startswith("encoder.")}
    assert shapes_of(decoder_only) == decoder_keys
    assert len(decoder_keys) == spec["decoder_only_num_keys"]
    assert sum(p.numel() for p in decoder_only.parameters()) == spec["decoder_only_parameters"]

    # The published file (57 keys, encoder included) loads into both; the decoder-only module
    # drops encoder.* as the official code does.
    full.load_official(meta_state(spec["keys"]), name)
    decoder_only.load_official(meta_state(spec["keys"]), name)
    assert shapes_of(decoder_only) == decoder_keys


@pytest.mark.parametrize("case", ["vae_dec_16k", "vae_dec_44k"])
def test_golden_decode(case):
    meta, tensors = load_case(case)
    state = read_state_dict(case_path(case), prefix="state.")
    config = VAEConfig(**meta["constructor_kwargs"])
    with torch.device("meta"):
        vae = VAE(config)
    vae.load_official(state, case)
    with torch.inference_mode():
        mel = vae.decode(tensors["in.z"])
    assert_close(f"{case}/mel", mel, tensors["out.mel"], rtol=1e-4, maxabs=5e-3)

    # Decoder-only golden states lack the encoder, so the full VAE refuses them.
    with pytest.raises(CheckpointError, match=r"missing: encoder\."):
        VAE(config, with_encoder=True).load_official(state, case)


def test_golden_constants_are_official():
    for case in ("vae_dec_16k", "vae_dec_44k"):
        meta, tensors = load_case(case)
        state = random_official_state(VAEConfig(**meta["constructor_kwargs"]), seed=0)
        for key in ("data_mean", "data_std"):
            assert torch.equal(state[key], tensors[f"state.{key}"]), key


def test_mp_weight_rewrite():
    raw = torch.randn(6, 4, 3, dtype=torch.float64).to(torch.bfloat16)
    w = normalize_mp_weight(raw)
    assert w.dtype == torch.float32  # rewritten in fp32, from the stored values
    ref = raw.double()
    fan_in = 4 * 3
    ref = ref / (ref.flatten(1).norm(dim=1)[:, None, None] + 1e-4 * math.sqrt(fan_in))
    torch.testing.assert_close(w.double(), ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("mutation", ["missing", "extra", "misshaped"])
def test_strict_loading_errors(mutation):
    state = random_official_state(TINY_16K, seed=1)
    key = "decoder.mid.block_1.conv1.weight"
    if mutation == "missing":
        del state[key]
    elif mutation == "extra":
        key = "decoder.mid.block_3.conv1.weight"
        state[key] = torch.zeros(1)
    else:
        state[key] = state[key][:, :-1]
    with pytest.raises(CheckpointError) as err:
        VAE(TINY_16K).load_official(state, "v1-16.pth")
    word = {"missing": "missing", "extra": "unexpected", "misshaped": "misshaped"}[mutation]
    assert "v1-16.pth" in str(err.value) and key in str(err.value) and word in str(err.value)


def test_random_state_encode_decode():
    config = TINY_44K
    state = random_official_state(config, seed=2)
    assert state.keys() == VAE(config, with_encoder=True).state_dict().keys()
    assert torch.equal(
        state["encoder.conv_in.weight"], random_official_state(config, 2)["encoder.conv_in.weight"]
    )
    vae = VAE(config, with_encoder=True).load_official(state, "random")
    mel = torch.randn(2, config.data_dim, 2 * 24) - 4
    with torch.inference_mode():
        mean, logvar = vae.encode(mel)
        out = vae.decode(mean)
    assert mean.shape == logvar.shape == (2, config.embed_dim, 24)
    assert logvar.min() >= -30 and logvar.max() <= 20
    assert out.shape == mel.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="without its encoder"):
        VAE(config).encode(mel)


# librosa 0.11.0 `filters.mel(sr, n_fft, n_mels, fmin=0, fmax)`: a few taps (band, bin, value) and
# float64 checksums (sum, sum of value * flat index, sum of squares) of the whole matrix.
LIBROSA_MEL = {
    16000: (
        (1024, 80, 8000.0),
        [(0, 1, 0.011267280206084251), (38, 101, 0.011913103982806206),
         (56, 200, 0.004239778965711594), (79, 511, 0.00017529650358483195)],
        (5.118657639835874, 104534.39577333331, 0.05550472697519716),
    ),
    44100: (
        (2048, 128, 22050.0),
        [(0, 1, 0.02240149676799774), (77, 204, 0.0033527647610753775),
         (121, 794, 7.6498014095705e-05), (127, 1024, 7.677103796954665e-18)],
        (5.941555273058384, 388332.22627195535, 0.06027264170848774),
    ),
}  # fmt: skip


@pytest.mark.parametrize("sample_rate", [16000, 44100])
def test_mel_filterbank_matches_librosa(sample_rate):
    (n_fft, num_mels, fmax), taps, sums = LIBROSA_MEL[sample_rate]
    fb = mel_filterbank(sample_rate, n_fft, num_mels, 0.0, fmax)
    assert fb.dtype == torch.float32 and fb.shape == (num_mels, n_fft // 2 + 1)
    for band, fft_bin, value in taps:
        assert fb[band, fft_bin].item() == value  # bit-exact float32
    fb = fb.double()
    flat_index = torch.arange(fb.numel(), dtype=torch.float64).view(fb.shape)
    got = (fb.sum().item(), (fb * flat_index).sum().item(), fb.pow(2).sum().item())
    assert got == pytest.approx(sums, rel=1e-12)


def official_mel(wav: torch.Tensor, audio, mel_basis: torch.Tensor) -> torch.Tensor:
    """The official MelConverter recipe with torch.stft, in float64 (the reference)."""
    wav = wav.double().clamp(-1, 1)
    pad = (audio.n_fft - audio.hop) // 2
    wav = torch.nn.functional.pad(wav.unsqueeze(1), [pad, pad], mode="reflect").squeeze(1)
    window = torch.hann_window(audio.n_fft, dtype=torch.float64)
    spec = torch.stft(wav, audio.n_fft, audio.hop, audio.n_fft, window, center=False,
                      return_complex=True)  # fmt: skip
    spec = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-9)
    spec = (mel_basis.double() @ spec).clamp(min=1e-5)
    return torch.log10(spec) if audio.log_base == "log10" else torch.log(spec)


@pytest.mark.parametrize("audio", [AUDIO_16K, AUDIO_44K], ids=["16k", "44k"])
def test_mel_converter(audio):
    mel = MelConverter(audio)
    frames = 40
    t = torch.arange(frames * audio.hop, dtype=torch.float64) / audio.sample_rate
    freq = 2500.0
    gen = torch.Generator().manual_seed(3)
    wav = torch.stack([
        0.5 * torch.sin(2 * math.pi * freq * t).float(),
        0.3 * torch.randn(t.shape, generator=gen),
        torch.zeros(t.shape),
    ])  # fmt: skip
    out = mel(wav)
    assert out.shape == (3, audio.num_mels, frames)

    # The mel agrees with the official torch.stft recipe.
    ref = official_mel(wav, audio, mel.mel_basis)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-4
    assert (out.double() - ref).abs().max().item() < 2e-2  # quiet bands of the pure sine

    # The sine's energy sits in the band whose centre is nearest to its frequency.
    centres = mel.mel_basis.argmax(dim=1).double() * audio.sample_rate / audio.n_fft
    peak = out[0, :, 4:-4].mean(dim=1).argmax().item()
    assert abs(peak - (centres - freq).abs().argmin().item()) <= 1
    # Silence sits at the clamp floor.
    floor = math.log10(1e-5) if audio.log_base == "log10" else math.log(1e-5)
    assert torch.allclose(out[2], torch.full_like(out[2], floor), atol=1e-4)


def test_mel_vae_round_trip_shapes():
    """waveform -> mel -> encode -> decode keeps the 2N mel frames of an N-frame latent."""
    audio, config, n = AUDIO_16K, TINY_16K, 12
    vae = VAE(config, with_encoder=True).load_official(random_official_state(config, 4), "random")
    wav = 0.1 * torch.randn(1, 2 * n * audio.hop, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        mel = MelConverter(audio)(wav)
        mean, _ = vae.encode(mel)
        out = vae.decode(mean)
    assert mel.shape == out.shape == (1, audio.num_mels, 2 * n)
    assert mean.shape == (1, config.embed_dim, n)
