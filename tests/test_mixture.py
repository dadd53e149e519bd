"""MMAudioSep's mixture front end against the golden `mel_vae_enc_16k` case (official
mel converter with the fp32 STFT, VAE encoder, posterior sample and the RNG draw order)."""

import pytest
import torch
from golden import assert_close, audio_config, case_path, load_case, vae_from_call
from selva_rt.runtime.models.checkpoint import read_state_dict
from selva_rt.runtime.models.mel import MelConverter
from selva_rt.runtime.models.mixture import MixtureEncoder, sample_mixture
from selva_rt.runtime.models.vae import VAE
from selva_rt.runtime.variants import AUDIO_16K, VAEConfig

torch.set_num_threads(1)

MEL = (1e-5, 1e-4)
ENC = (1e-4, 1e-3)


def golden_encoder(case: str, meta: dict) -> MixtureEncoder:
    """The case's mel converter and VAE (the sizes its json records), the VAE through the
    real-checkpoint loader; its state holds the encoder and the data statistics only; the
    decoder (unused here) gets zeros."""
    config = vae_from_call(meta["constructor"]["vae"])
    audio = audio_config(config.data_dim)
    mel = meta["mel_converter_config"]  # the official mode's settings: ours must be those
    keys = ("sampling_rate", "n_fft", "win_size", "hop_size", "num_mels", "fmin", "fmax")
    ours = (audio.sample_rate, audio.n_fft, audio.n_fft, audio.hop, audio.num_mels, 0, audio.fmax)
    assert tuple(mel[k] for k in keys) == ours
    vae = VAE(config, with_encoder=True)
    state = read_state_dict(case_path(case), prefix="state.")
    decoder = {k: torch.zeros_like(v) for k, v in vae.state_dict().items() if "decoder." in k}
    vae.load_official({**decoder, **state}, case)
    return MixtureEncoder(MelConverter(audio), vae).eval()


@torch.inference_mode()
def test_mel_vae_enc_golden():
    meta, T = load_case("mel_vae_enc_16k")
    enc = golden_encoder("mel_vae_enc_16k", meta)
    wav = T["in.waveform"]
    assert wav.abs().max() > 1  # the case exercises the clamp

    mel = enc.mel(wav)
    assert_close("mel_vae_enc_16k:mel", mel, T["out.mel"], *MEL)
    mean, logvar = enc.vae.encode(mel)
    mean2, std = enc(wav)
    assert torch.equal(mean, mean2)
    assert_close("mel_vae_enc_16k:mean", mean, T["out.mean"], *ENC)
    assert_close("mel_vae_enc_16k:logvar", logvar, T["out.logvar"], *ENC)
    assert_close("mel_vae_enc_16k:std", std, T["out.std"], *ENC)

    g = torch.Generator().manual_seed(int(T["in.rng_seed"]))
    x_cond, eps = sample_mixture(mean, std, g)
    assert torch.equal(eps, T["out.eps"]), "eps must be the official channel-major draw"
    assert_close("mel_vae_enc_16k:sample", x_cond, T["out.sample"], *ENC)
    x0 = torch.randn(T["out.x0_next"].shape, generator=g)
    assert torch.equal(x0, T["out.x0_next"]), "x0 is the generator's second draw"


def test_eps_order_is_not_a_plain_randn():
    """The draw order matters: the contiguous draws give other numbers (what the test above
    would catch if sample_mixture drew them that way)."""
    _, T = load_case("mel_vae_enc_16k")
    B, N, C = T["out.eps"].shape
    seed = int(T["in.rng_seed"])
    plain = torch.randn(B, N, C, generator=torch.Generator().manual_seed(seed))
    transposed = torch.randn(B, C, N, generator=torch.Generator().manual_seed(seed))
    assert not torch.equal(plain, T["out.eps"])
    assert not torch.equal(transposed.transpose(1, 2), T["out.eps"])


def test_encoder_needs_its_weights():
    with pytest.raises(ValueError, match="with_encoder"):
        MixtureEncoder(MelConverter(AUDIO_16K), VAE(VAEConfig(80, 20, 8)))
