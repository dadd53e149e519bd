"""`selva-rt bench --variant tiny-vatt`: reference and fast rows, per part, with the outputs'
agreement with reference mode (the ONNX Runtime rows run the graphs test_vatt_export checks)."""

import json

import torch
from selva_rt.__main__ import main

torch.set_num_threads(1)


def test_tiny_vatt_rows(tmp_path):
    argv = ["bench", "--variant", "tiny-vatt", "--steps", "2", "--warmup", "0", "--repeat", "1"]
    argv += ["--prompts", "1,2", "--precisions", "fp32", "--device", "cpu"]
    argv += ["--output", str(tmp_path), "--name", "r"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    names = [r["name"] for r in report["results"]]
    assert names == [f"{c}/p{p}" for p in (1, 2) for c in ("reference/fp32", "fast/fp32")]
    for r in report["results"]:
        assert set(r["parts_s"]) == {"text", "image", "converter", "sampling", "decoder"}
        if not r["name"].startswith("reference"):
            assert r["speedup_vs_reference"] > 0
            # fp32 both: the same rows computed the same way (batched or not), the same tokens.
            assert r["tokens_equal_to_reference"] >= 0.999
    fast = next(r for r in report["results"] if r["name"] == "fast/fp32/p2")
    assert fast["tokens_equal_to_reference"] == 1.0 and fast["audio_rel_l2_vs_reference"] < 1e-4
    assert "| fast/fp32/p2 |" in (tmp_path / "r.md").read_text()
