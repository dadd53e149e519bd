"""MMAudioSep's mixture front end: waveform -> log-mel -> VAE encoder -> posterior -> the sampled
mixture latent x_cond the generator reads (spec SEEDS.md §1.3, §1.6, §1.7).

The posterior is sampled, not averaged: x_cond = mean + std * eps, with eps the first draw of the
request's generator (x0 is the second), in the official memory order (see `sample_mixture`).
"""

import torch
from torch import nn

from .mel import MelConverter
from .vae import VAE


class MixtureEncoder(nn.Module):
    """waveform [B, S] -> posterior (mean, std), each [B, E, S / (2 hop)] channels first.

    The mel converter always runs in fp32 (MMAudioSep's own patch: a bf16 STFT buries the
    quiet bands); the encoder runs in the VAE's dtype.
    """

    def __init__(self, mel: MelConverter, vae: VAE):
        super().__init__()
        if vae.encoder is None:
            raise ValueError("the mixture encoder needs a VAE built with_encoder=True")
        self.mel = mel
        self.vae = vae

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mixture_posterior(self.vae, self.mel(wav.float()))


def mixture_posterior(vae: VAE, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log-mel [B, M, T] -> posterior (mean, std) [B, E, T // 2] in the VAE's dtype (the
    mixture encoder's graph part: the graph backends make the mel on the host)."""
    mean, logvar = vae.encode(mel.to(vae.data_mean.dtype))
    return mean, torch.exp(0.5 * logvar)


def sample_mixture(
    mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior sample of the mixture: mean, std [B, E, N] -> (x_cond, eps), each [B, N, E].

    eps fills a channel-last *view* of channel-first memory, as the official
    `empty_like(mean.transpose(1, 2)).normal_(generator)`: torch then draws element by element
    in memory order (channel-major), which a contiguous randn(B, N, E) does not reproduce.
    x_cond is not normalised with the generator's latent statistics (official inference).
    """
    a_mean, a_std = mean.transpose(1, 2), std.transpose(1, 2)
    eps = torch.empty_like(a_mean).normal_(generator=generator)
    return a_mean + a_std * eps, eps
