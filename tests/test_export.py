"""`python export/build_engines.py` / `selva-rt export` on the tiny variant: every part exports,
ONNX Runtime matches torch, the graphs are TensorRT-ready, the manifest says what was built,
nothing is overwritten without --force, and bad arguments fail in one line."""

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from selva_rt.export import build_engines, onnx_export, plan, trt_build
from selva_rt.runtime.backends.graphs import Manifest, PartEntry
from selva_rt.runtime.backends.ort_parts import OrtParts
from selva_rt.runtime.models.networks import build_networks
from selva_rt.runtime.variants import SEGMENT_TOKENS, get_variant

torch.set_num_threads(2)

SCRIPT = Path(build_engines.__file__)
TINY = get_variant("tiny")


@pytest.fixture(scope="module")
def manifest(tiny_engines) -> dict:
    return json.loads((tiny_engines / "manifest.json").read_text())


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600
    )


def test_every_part_exported_and_described(tiny_engines, manifest):
    assert manifest["variant"] == "tiny" and manifest["precision"] == "fp32"
    assert manifest["opset"] == onnx_export.OPSET
    assert set(manifest["parts"]) == set(plan.part_names(TINY))
    assert manifest["limits"] == {"max_batch": 4, "max_duration": 10.0, "max_tokens": 512}
    for tool in ("torch", "onnx", "onnxruntime", "onnxscript", "python"):
        assert manifest["tools"][tool]
    assert manifest["tools"]["tensorrt"] is None or isinstance(manifest["tools"]["tensorrt"], str)
    for name, entry in manifest["parts"].items():
        path = tiny_engines / entry["onnx"]
        assert path.is_file() and onnx_export.sha256_file(path) == entry["sha256"]
        inputs, outputs = plan.part_io(name, TINY)
        assert [i["name"] for i in entry["inputs"]] == [s.name for s in inputs]
        assert [o["name"] for o in entry["outputs"]] == [s.name for s in outputs]
        assert [i["shape"] for i in entry["inputs"]] == [list(s.shape) for s in inputs]


def test_written_files_follow_the_umask(tiny_engines):
    """safetensors makes its file 0600; every file of a build gets what the umask gives."""
    modes = {p.name: p.stat().st_mode & 0o777 for p in tiny_engines.iterdir() if p.is_file()}
    assert "constants.safetensors" in modes and "manifest.json" in modes
    assert len(set(modes.values())) == 1, modes


def test_model_hash_is_of_the_weights(manifest):
    nets = build_networks(TINY, {})
    assert manifest["model_hash"] == onnx_export.model_hash(nets)
    with torch.no_grad():
        nets.vae.decoder.conv_in.weight[0, 0, 0] += 1e-3
    assert onnx_export.model_hash(nets) != manifest["model_hash"]


def test_onnx_runtime_matches_torch_per_output(manifest):
    """The build ran each graph on fresh inputs of sizes it was not traced at (one prompt
    among them) and recorded the worst error per output against the torch backend."""
    for name, entry in manifest["parts"].items():
        check = entry["check"]
        assert check["provider"] == "CPUExecutionProvider"
        assert {s["prompts"] for s in check["sizes"]} >= {1}
        _, outputs = plan.part_io(name, TINY)
        assert set(check["errors"]) == {s.name for s in outputs}
        for output, err in check["errors"].items():
            assert err["rel_l2"] <= 1e-4, f"{name}.{output}: {err}"


def test_graphs_are_tensorrt_ready(tiny_engines, manifest):
    """Opset in TensorRT's range, only operators its ONNX parser documents, no data-dependent
    shapes, constant axes, and every graph input/output dim static or named."""
    for name, entry in manifest["parts"].items():
        model = onnx.load(str(tiny_engines / entry["onnx"]))
        onnx.checker.check_model(model, full_check=True)
        assert plan.trt_problems(model) == [], name
        graph_inputs = {v.name: v for v in model.graph.input}
        for spec in plan.part_io(name, TINY)[0]:
            dims = graph_inputs[spec.name].type.tensor_type.shape.dim
            for axis, want in enumerate(spec.shape):
                got = dims[axis].dim_param if isinstance(want, str) else dims[axis].dim_value
                assert got == want, (name, spec.name, axis)


def test_refuses_to_overwrite_without_force(tiny_engines, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_engines.iterdir()}
    rc = build_engines.main(["--variant", "tiny", "--out", str(tiny_engines), "--onnx-only"])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.count("\n") == 1 and "already exists" in err and "--force" in err
    assert {p.name: p.stat().st_mtime_ns for p in tiny_engines.iterdir()} == before


def test_force_rebuilds_some_parts_and_keeps_the_others(tiny_engines, manifest, tmp_path):
    out = tmp_path / "tiny"
    shutil.copytree(tiny_engines, out)
    rc = build_engines.main(
        [
            "--variant",
            "tiny",
            "--out",
            str(out),
            "--onnx-only",
            "--force",
            "--parts",
            "clip_text",
            "--threads",
            "2",
            "--quiet",
        ]
    )
    assert rc == 0
    rebuilt = json.loads((out / "manifest.json").read_text())
    assert set(rebuilt["parts"]) == set(manifest["parts"])
    assert rebuilt["parts"]["clip_text"]["sha256"] == manifest["parts"]["clip_text"]["sha256"]
    assert rebuilt["parts"]["decoder"] == manifest["parts"]["decoder"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variant", "tiny"], "required: --out"),
        (["--variant", "nope", "--out", "x"], "invalid choice"),
        (["--variant", "tiny", "--out", "x", "--precision", "fp8"], "invalid choice"),
        (["--variant", "tiny", "--out", "x", "--parts", "vae"], "unknown part 'vae'"),
        (["--variant", "tiny", "--out", "x", "--parts", "clip_image"], "has no 'clip_image'"),
        (["--variant", "tiny", "--out", "x", "--max-batch", "0"], "--max-batch"),
        (["--variant", "tiny", "--out", "x", "--max-duration", "0.1"], "--max-duration"),
        (["--variant", "tiny", "--out", "x", "--max-duration", "ten"], "invalid float"),
    ],
)
def test_bad_arguments_fail_in_one_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        rc = build_engines.main(args)
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x").exists()


def test_out_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    rc = build_engines.main(["--variant", "tiny", "--out", str(tmp_path / "f"), "--onnx-only"])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "is a file" in err


@pytest.mark.skipif(trt_build.tensorrt_version() is not None, reason="TensorRT is installed")
def test_without_tensorrt_asks_for_onnx_only_before_any_work(tmp_path, capsys):
    rc = build_engines.main(["--variant", "tiny", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "--onnx-only" in err
    assert not (tmp_path / "e").exists()


def test_runs_as_a_script():
    """`python export/build_engines.py` (export/ on sys.path, not the package) runs and fails
    cleanly on bad arguments."""
    bad = run_script("--variant", "tiny", "--out", "x", "--parts", "nope")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "nope" in bad.stderr


def test_fp16_build_checks_against_fp32_torch(tmp_path):
    """fp16 graphs run on the CPU execution provider and stay within the fp16 tolerance of the
    fp32 torch backend; the decoder (vocoder overflow) and T5 stay fp32."""
    out = tmp_path / "fp16"
    rc = build_engines.main(
        [
            "--variant",
            "tiny",
            "--out",
            str(out),
            "--onnx-only",
            "--precision",
            "fp16",
            "--parts",
            "clip_text",
            "dit_conditions",
            "--threads",
            "2",
            "--quiet",
        ]
    )
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    for name, entry in manifest["parts"].items():
        assert entry["precision"] == "fp16"
        assert {i["dtype"] for i in entry["outputs"]} == {"float16"}
        worst = max(e["rel_l2"] for e in entry["check"]["errors"].values())
        assert 1e-5 < worst <= build_engines.CHECK_RTOL["fp16"], name
        assert plan.trt_problems(onnx.load(str(out / entry["onnx"]))) == []


def test_bf16_build_records_why_it_was_not_checked(tmp_path):
    out = tmp_path / "bf16"
    rc = build_engines.main(
        [
            "--variant",
            "tiny",
            "--out",
            str(out),
            "--onnx-only",
            "--precision",
            "bf16",
            "--parts",
            "clip_text",
            "--threads",
            "2",
            "--quiet",
        ]
    )
    assert rc == 0
    entry = json.loads((out / "manifest.json").read_text())["parts"]["clip_text"]
    model = onnx.load(str(out / entry["onnx"]))
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
    assert plan.trt_problems(model) == []
    if "errors" not in entry["check"]:
        assert "bfloat16" in entry["check"]["skipped"]


def test_plain_mmaudio_parts(tmp_path):
    """The parts only plain MMAudio variants have: CLIP video frames, and sync features pooled
    without a prompt (a tiny variant of that structure, made here)."""
    variant = dataclasses.replace(
        TINY,
        name="tiny-mmaudio",
        t5=None,
        uses_clip_video=True,
        video_encoder=dataclasses.replace(TINY.video_encoder, num_sup_tokens=0, xattn_depth=0),
        clip=dataclasses.replace(
            TINY.clip,
            image_layers=1,
            image_width=32,
            image_heads=2,
            embed_dim=TINY.generator.clip_dim,
        ),
    )
    nets = build_networks(variant, {})
    parts = ["clip_image", "video_select"]
    entries = {}
    for name in parts:
        path = tmp_path / f"{name}.onnx"
        onnx_export.export_part(name, variant, nets, path, "fp32")
        assert plan.trt_problems(onnx.load(str(path))) == []
        entries[name] = PartEntry(
            onnx=path.name,
            sha256="",
            precision="fp32",
            **onnx_export.io_entries(name, variant, "fp32"),
        )
    manifest = Manifest("tiny-mmaudio", "fp32", "", onnx_export.OPSET, {}, {}, "", entries)
    ort_parts = OrtParts(
        variant,
        manifest,
        {n: tmp_path / f"{n}.onnx" for n in parts},
        onnx_export.graph_constants(variant, nets),
        threads=2,
    )
    report = onnx_export.check_parts(parts, variant, nets, ort_parts)
    for name, outputs in report.items():
        for output, err in outputs.items():
            assert err["rel_l2"] <= 1e-4, (name, output, err)
    sync = ort_parts.video_select(torch.randn(3, SEGMENT_TOKENS, 64), None, None, 2)
    assert sync.shape == (2, 24, 64)


@pytest.mark.skipif(
    trt_build.tensorrt_version() is None or not torch.cuda.is_available(),
    reason="needs TensorRT and a CUDA GPU (TensorRT's wheels come from NVIDIA's index)",
)
def test_tensorrt_engines_build_and_match(tmp_path):
    from selva_rt.runtime.backends.torch_parts import TorchParts
    from selva_rt.runtime.backends.trt_parts import TrtParts

    out = tmp_path / "trt"
    assert build_engines.main(["--variant", "tiny", "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(entry.get("tensorrt") for entry in manifest["parts"].values())
    nets = build_networks(TINY, {})
    trt_parts = TrtParts.load(out, TINY, device="cuda")
    torch_parts = TorchParts(TINY, nets, torch.device("cuda"), torch.float32)
    for name in manifest["parts"]:
        args = onnx_export.sample_args(name, TINY, onnx_export.CHECK_SIZES[0], seed=7)
        args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
        if name == "dit_step":
            args = (*args[:2], {k: v.cuda() for k, v in args[2].items()}, args[3])
            d = plan.dims(TINY, 1, 11, 3.0)
            nets.generator.update_seq_lengths(d["latent"], d["clip_frames"], d["8*segments"])
        expected = onnx_export._outputs(getattr(torch_parts, name)(*args))
        actual = onnx_export._outputs(getattr(trt_parts, name)(*args))
        for a, e in zip(actual, expected, strict=True):
            assert onnx_export.errors(a, e)["rel_l2"] <= 1e-2, name
