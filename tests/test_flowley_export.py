"""Flowley's step traced to ONNX: dynamic prompts and duration, checked in ONNX Runtime against
`FlowleyTorchParts.dit_step` at other sizes, and TensorRT-ready."""

import onnx
import torch
from selva_rt.export import flowley_onnx, plan
from selva_rt.runtime.backends.flowley_parts import FlowleyTorchParts
from selva_rt.runtime.models.networks import build_networks
from selva_rt.runtime.variants import TINY_FLOWLEY

torch.set_num_threads(2)


def test_step_exports_and_matches_torch(tmp_path):
    nets = build_networks(TINY_FLOWLEY, {})
    parts = FlowleyTorchParts(TINY_FLOWLEY, nets, torch.device("cpu"), torch.float32)
    path = tmp_path / "dit_step.onnx"
    sha, _ = flowley_onnx.export_step(TINY_FLOWLEY, nets.generator, path)
    assert sha == flowley_onnx.sha256_file(path)
    model = onnx.load(str(path))
    inputs, outputs = plan.part_io("dit_step", TINY_FLOWLEY)
    assert [i.name for i in model.graph.input] == [s.name for s in inputs]
    assert [o.name for o in model.graph.output] == ["velocity"]
    assert plan.trt_problems(model) == []
    # The tied block's weights are in the file once, not once per application.
    linear1 = [i for i in model.graph.initializer if tuple(i.dims) == (64, 64, 3)]
    assert len(linear1) == 2 * 2 + 1  # audio+visual linear1 of 2 joint blocks, the tied block
    worst = flowley_onnx.check_step(TINY_FLOWLEY, parts, path)
    assert worst["rel_l2"] < 1e-5 and worst["max_abs"] < 1e-4, worst


def test_engine_build_refused_in_one_line(tmp_path, capsys):
    from selva_rt.__main__ import main

    code = main(["export", "--variant", "tiny-flowley", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code != 0 and "no engine backend" in err and err.count("\n") == 1
    assert not (tmp_path / "e").exists()
