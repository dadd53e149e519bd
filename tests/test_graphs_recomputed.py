"""The separation and Flowley graphs checked by this test, not by the exporter's own check: each
.onnx file run in an ONNX Runtime session opened here, on inputs made here at sizes the exporter's
check does not use, against the torch part, with this file's relative L2."""

import numpy as np
import pytest
import torch
from selva_rt.runtime.backends import load_parts
from selva_rt.runtime.backends.flowley_parts import FlowleyTorchParts
from selva_rt.runtime.models.networks import build_networks
from selva_rt.runtime.variants import TINY_FLOWLEY, get_variant

ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed")
pytest.importorskip("onnx", reason="the export extra is not installed")

torch.set_num_threads(2)


def rel_l2(actual: np.ndarray, expected: torch.Tensor) -> float:
    a, e = np.asarray(actual, np.float64), expected.detach().double().numpy()
    assert a.shape == e.shape
    return float(np.linalg.norm(a - e) / np.linalg.norm(e))


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_mixture_encoder_graph(tmp_path):
    from selva_rt.export.mixture_export import export_mixture_encoder

    parts = load_parts(get_variant("tiny-sep"), "torch", device="cpu", precision="fp32")
    graph = session(export_mixture_encoder(parts, tmp_path / "mixture_encoder.onnx"))
    per_latent = 2 * parts.variant.audio.hop
    (waveform,) = graph.get_inputs()
    for latents, seed in ((3, 1), (17, 2), (40, 3)):
        wav = 0.3 * torch.randn(
            1, latents * per_latent, generator=torch.Generator().manual_seed(seed)
        )
        names = [o.name for o in graph.get_outputs()]
        actual = dict(zip(names, graph.run(None, {waveform.name: wav.numpy()}), strict=True))
        mean, std = parts.mixture_encoder(wav)
        assert actual["mixture_mean"].shape == tuple(mean.shape) == (1, 20, latents)
        assert rel_l2(actual["mixture_mean"], mean) < 1e-5, latents
        assert rel_l2(actual["mixture_std"], std) < 1e-5, latents


def test_flowley_step_graph(tmp_path):
    from selva_rt.export import flowley_onnx
    from selva_rt.export.onnx_export import Sizes

    nets = build_networks(TINY_FLOWLEY, {})
    parts = FlowleyTorchParts(TINY_FLOWLEY, nets, torch.device("cpu"), torch.float32)
    path = tmp_path / "dit_step.onnx"
    flowley_onnx.export_step(TINY_FLOWLEY, nets.generator, path)
    graph = session(path)
    names = {i.name for i in graph.get_inputs()}
    for i, sizes in enumerate((Sizes(prompts=2, tokens=77, duration=2.2), Sizes(1, 77, 4.0))):
        latent, t, conditions, cfg = flowley_onnx.sample_args(TINY_FLOWLEY, sizes, seed=300 + i)
        nets.generator.update_seq_lengths(latent.shape[1], conditions["visual_f"].shape[1])
        expected = parts.dit_step(latent, t, conditions, cfg)
        feeds = flowley_onnx.step_inputs(nets.generator, latent, t, conditions, cfg)
        assert names <= set(feeds)
        (actual,) = graph.run(None, {k: v.numpy() for k, v in feeds.items() if k in names})
        assert actual.shape == tuple(expected.shape) == tuple(latent.shape)
        assert rel_l2(actual, expected) < 1e-5, sizes
