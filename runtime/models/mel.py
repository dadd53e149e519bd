"""Log-mel spectrograms in the VAE's training format (spec §6.1, the official MelConverter).

waveform [B, L] in [-1, 1] -> log-mel [B, M, L // hop]: reflect-pad (n_fft - hop) / 2 on each
side, Hann-windowed STFT without centring, magnitude sqrt(re² + im² + 1e-9), slaney mel
filterbank (librosa's `filters.mel` defaults, rebuilt here without librosa), then log10 (16 kHz)
or ln (44.1 kHz) of max(x, 1e-5). Only encoding needs this; generation never computes a mel.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..variants import AudioConfig

FMIN = 0.0
CLAMP_MIN = 1e-5
MAGNITUDE_EPS = 1e-9

# Slaney's mel scale (librosa htk=False): linear below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    mel = hz / _F_SP
    high = hz >= _MIN_LOG_HZ
    mel[high] = _MIN_LOG_MEL + np.log(hz[high] / _MIN_LOG_HZ) / _LOGSTEP
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    hz = _F_SP * mel
    high = mel >= _MIN_LOG_MEL
    hz[high] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel[high] - _MIN_LOG_MEL))
    return hz


def mel_filterbank(
    sample_rate: int, n_fft: int, num_mels: int, fmin: float, fmax: float
) -> torch.Tensor:
    """librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax) with its defaults (slaney scale and
    area norm, float32): [M, n_fft // 2 + 1]. Same float64 steps, so the float32 taps agree."""
    fft_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    edges = _hz_to_mel(np.array([fmin, fmax], dtype=np.float64))
    mel_hz = _mel_to_hz(np.linspace(edges[0], edges[1], num_mels + 2))  # band edges and centres
    widths = np.diff(mel_hz)
    ramps = np.subtract.outer(mel_hz, fft_hz)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    # librosa stores the triangles as float32 first, then scales them in place.
    weights = np.maximum(0, np.minimum(lower, upper)).astype(np.float32)
    weights *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]  # slaney: equal area per band
    return torch.from_numpy(weights)


class MelConverter(nn.Module):
    """waveform [B, L] float32 -> log-mel [B, M, L // hop] float32 (the official MelConverter).

    The STFT is torch.stft in fp32, the official op (bit-exact with it on the CPU; the official
    fp32 STFT is itself 1e-5 from a float64 one on real mixtures, in the quiet bands, and the
    golden tolerance is tighter than that). The graph backends run this module on the host too:
    ONNX has no complex tensors, and a DFT written as a convolution strayed from torch.stft by
    2.3e-3 in the quiet bands of a 330 Hz tone (log10 mel; 4e-5 relative over the whole mel),
    which moved tiny-sep's separated stems by 1.2e-4 to 1.8e-4 (relative L2). Keep the module in
    fp32 (MMAudioSep's bf16 patch): a bf16 STFT buries the quiet mel bands.
    """

    def __init__(self, audio: AudioConfig):
        super().__init__()
        self.n_fft = audio.n_fft
        self.hop = audio.hop
        self.log = torch.log10 if audio.log_base == "log10" else torch.log
        # Constants built with numpy (real values even under a meta-device context); no
        # checkpoint holds them, so they are not persistent.
        basis = mel_filterbank(audio.sample_rate, audio.n_fft, audio.num_mels, FMIN, audio.fmax)
        self.register_buffer("mel_basis", basis, persistent=False)
        window = torch.hann_window(audio.n_fft, device="cpu")  # the official (periodic) window
        self.register_buffer("window", window, persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """wav: [B, L] float32, L > (n_fft - hop) / 2 -> log-mel [B, M, L // hop]."""
        pad = (self.n_fft - self.hop) // 2
        x = F.pad(wav.clamp(-1.0, 1.0).unsqueeze(1), (pad, pad), mode="reflect")
        spec = torch.stft(
            x[:, 0], self.n_fft, self.hop, window=self.window, center=False, return_complex=True
        )
        magnitude = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + MAGNITUDE_EPS)
        return self.log(torch.matmul(self.mel_basis, magnitude).clamp(min=CLAMP_MIN))
