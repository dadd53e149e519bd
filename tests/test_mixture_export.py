"""The mixture encoder's ONNX graph (tiny-sep) agrees with the torch part in ONNX Runtime at
lengths other than the traced one, with no STFT or complex op in it."""

import pytest
import torch
from selva_rt.runtime.backends import load_parts
from selva_rt.runtime.variants import get_variant

torch.set_num_threads(1)
onnx = pytest.importorskip("onnx", reason="the export extra is not installed")
pytest.importorskip("onnxruntime", reason="the export extra is not installed")


def test_mixture_encoder_onnx_matches_torch(tmp_path):
    from selva_rt.export.mixture_export import check_mixture_encoder, export_mixture_encoder

    parts = load_parts(get_variant("tiny-sep"), "torch", device="cpu", precision="fp32")
    path = export_mixture_encoder(parts, tmp_path / "mixture_encoder.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "STFT" not in ops and "DFT" not in ops and "Conv" in ops
    worst = check_mixture_encoder(parts, path, latents=(5, 40))
    assert set(worst) == {"mixture_mean", "mixture_std"}
    for name, err in worst.items():
        assert err["rel_l2"] < 1e-5 and err["max_abs"] < 1e-4, (name, err)
