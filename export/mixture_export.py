"""ONNX graph of MMAudioSep's mixture encoder (waveform -> posterior mean and std), checked
against the torch part with ONNX Runtime.

Graph: `waveform` [1, samples] float32 -> `mixture_mean`, `mixture_std` [1, E, latent], with
samples = 2 * hop * latent dynamic. It stays fp32 whatever the build's precision (the official
fp32 mel; the encoder is a few percent of a request). Inside the export the STFT is the
DFT-basis convolution of `MelConverter` (ONNX has no complex tensors), about 1e-5 from torch.stft
in the quiet bands. The posterior *sample* is not in the graph: eps comes from the request's
seeded torch generator (`models.mixture.sample_mixture`), which a graph cannot replay.

Not yet wired into `build_engines` / the manifest or an ONNX Runtime separation backend.
"""

import warnings
from pathlib import Path

import torch
from torch import nn

from ..runtime.backends.torch_parts import TorchParts
from ..runtime.models.mixture import MixtureEncoder
from .onnx_export import errors  # also quiets the exporter's torchvision warnings

OPSET = 18
INPUTS = ("waveform",)
OUTPUTS = ("mixture_mean", "mixture_std")


class MixtureEncoderPart(nn.Module):
    def __init__(self, encoder: MixtureEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(waveform)


def export_mixture_encoder(parts: TorchParts, path: Path) -> Path:
    """Trace `parts.mixture` (fp32 CPU TorchParts of a separation variant) to `path`."""
    audio = parts.variant.audio
    samples_per_latent = 2 * audio.hop
    latent = torch.export.Dim("latent", min=2, max=8192)
    example = torch.randn(1, 7 * samples_per_latent, generator=torch.Generator().manual_seed(0))
    module = MixtureEncoderPart(parts.mixture).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (0.5 * example,),
            dynamic_shapes=({1: samples_per_latent * latent},),
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    path.unlink(missing_ok=True)
    program.save(str(path))
    return path


def check_mixture_encoder(parts: TorchParts, path: Path, latents: tuple[int, ...] = (5, 63)):
    """ONNX Runtime against the torch part on fresh waveforms of other lengths than the traced
    one: output -> worst {rel_l2, max_abs}."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    samples_per_latent = 2 * parts.variant.audio.hop
    worst: dict[str, dict[str, float]] = {}
    for i, n in enumerate(latents):
        g = torch.Generator().manual_seed(10 + i)
        wav = 0.3 * torch.randn(1, n * samples_per_latent, generator=g)
        expected = parts.mixture_encoder(wav)
        actual = session.run(list(OUTPUTS), {"waveform": wav.numpy()})
        for name, a, e in zip(OUTPUTS, actual, expected, strict=True):
            err = errors(torch.from_numpy(a), e)
            if name not in worst or err["rel_l2"] > worst[name]["rel_l2"]:
                worst[name] = err
    return worst
