"""VATT's graphs (eva02, one VATT Audio step with a dynamic condition length, the Encodec
decoder) through `selva-rt export`, checked here in ONNX Runtime against the torch parts on
inputs the export never saw (errors recomputed, not read from the manifest), and the ONNX Runtime
backend through the pipeline."""

import json

import onnxruntime as ort
import pytest
import torch
from golden import assert_close
from selva_rt.__main__ import main
from selva_rt.export import vatt_onnx
from selva_rt.runtime.backends.vatt_parts import VattTorchParts
from selva_rt.runtime.families.vatt import FRAMES, VattText
from selva_rt.runtime.models.vatt_networks import build_vatt_networks
from selva_rt.runtime.pipeline import Pipeline
from selva_rt.runtime.variants import TINY_VATT

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def engines(tmp_path_factory):
    out = tmp_path_factory.mktemp("vatt_engines") / "tiny-vatt"
    argv = ["export", "--variant", "tiny-vatt", "--out", str(out), "--onnx-only", "--quiet"]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def torch_parts():
    nets = build_vatt_networks(TINY_VATT, {})
    return VattTorchParts(TINY_VATT, nets, torch.device("cpu"), torch.float32)


def test_manifest(engines):
    manifest = json.loads((engines / "manifest.json").read_text())
    assert manifest["variant"] == "tiny-vatt" and manifest["precision"] == "fp32"
    assert set(manifest["parts"]) == {"eva02", "vatt_step", "encodec_decoder"}
    step = manifest["parts"]["vatt_step"]
    cond = next(i for i in step["inputs"] if i["name"] == "cond")
    assert cond["shape"][:2] == ["prompts", "condition"]


@pytest.mark.parametrize(
    "part, sizes",
    [
        ("eva02", vatt_onnx.Sizes(prompts=1, condition=11, frames=4)),
        ("vatt_step", vatt_onnx.Sizes(prompts=2, condition=13, frames=2)),
        ("vatt_step", vatt_onnx.Sizes(prompts=1, condition=45, frames=2)),
        ("encodec_decoder", vatt_onnx.Sizes(prompts=2, condition=11, frames=7)),
    ],
)
def test_graph_against_torch(engines, torch_parts, part, sizes):
    """Sizes other than the traced and the build's checks (a new condition length, prompt
    count, frame count): fp32 rounding only (golden README: 1e-4)."""
    session = ort.InferenceSession(
        str(engines / f"{part}.onnx"), providers=["CPUExecutionProvider"]
    )
    feeds = vatt_onnx.sample_inputs(part, TINY_VATT, sizes, seed=777)
    expected = vatt_onnx.torch_outputs(part, torch_parts, feeds)
    actual = session.run(None, {k: v.numpy() for k, v in feeds.items()})
    for a, e in zip(actual, expected, strict=True):
        a = torch.from_numpy(a)
        assert a.shape == e.shape
        assert_close(f"tiny-vatt onnx {part} {sizes}", a, e, 1e-4, 1e-3)


def test_onnxruntime_backend_through_the_pipeline(engines):
    """The same request on the ORT backend and on torch: tokens >= 99.9 % equal (logits differ
    by float rounding only), stems close where every token agrees."""
    onnx = Pipeline.from_pretrained(
        "tiny-vatt", device="cpu", precision="fp32", backend="onnxruntime", engines=engines
    )
    ref = Pipeline.from_pretrained("tiny-vatt", device="cpu", precision="fp32")
    s = TINY_VATT.generator.image.image_size
    crops = torch.randint(0, 256, (7, 3, s, s), generator=torch.Generator().manual_seed(3)).byte()
    text = ref.family.encode_text(["sheep bleating"])
    assert isinstance(text, VattText)
    layout = ref.family.plan(1.4)
    a = onnx.synthesize([{FRAMES: crops}], text, layout, seed=9, steps=3)
    b = ref.synthesize([{FRAMES: crops}], text, layout, seed=9, steps=3)
    equal = (a.latent == b.latent).float().mean().item()
    assert equal >= 0.999, equal
    if equal == 1.0:
        assert_close("tiny-vatt onnxruntime backend audio", a.audio, b.audio, 1e-4, 1e-3)


def test_refusals_are_one_line(engines, capsys, tmp_path):
    argv = ["export", "--variant", "tiny-vatt", "--out", str(tmp_path / "x")]
    assert main(argv) == 2  # TensorRT is not built for VATT
    assert main([*argv, "--onnx-only", "--precision", "fp16"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "add --onnx-only" in err[0] and "fp32 only" in err[1]
