"""`selva-rt bench` on the tiny variant: it runs quickly and writes the documented JSON schema
(with speedup_vs_reference for every fast configuration) and the markdown table."""

import json

import pytest
import torch
from clips import make_clip
from selva_rt.benchmarks import bench, limits

torch.set_num_threads(1)

QUICK = ["--variant", "tiny", "--duration", "1", "--steps", "2", "--warmup", "0", "--repeat", "1"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    clip = make_clip(out / "clip.mp4", frames=40)
    argv = [*QUICK, "--prompts", "1,2", "--precisions", "fp32,bf16", "--step-repeat", "1"]
    argv += ["--device", "cpu"]
    assert (
        bench.main([*argv, "--file-to-file", str(clip), "--output", str(out), "--name", "r"]) == 0
    )
    return json.loads((out / "r.json").read_text()), (out / "r.md").read_text()


def test_json_schema(report):
    r, _ = report
    assert r["schema"] == bench.SCHEMA
    env = r["environment"]
    assert {"date", "commit", "device", "versions", "cpu", "load_average_start"} <= set(env)
    assert env["versions"]["torch"] == torch.__version__
    assert r["setup"]["weights"].startswith("random tiny weights")
    names = [x["name"] for x in r["results"]]
    assert names == [
        f"{mode}/{precision}/p{prompts}"
        for precision in ("fp32", "bf16")
        for prompts in (1, 2)
        for mode in ("reference", "fast")
    ]
    assert r["results"][0]["peak_memory_mb"] > 0  # the first run allocates its activations
    for x in r["results"]:
        assert x["backend"] == "torch"
        assert {"median", "p90", "runs"} <= set(x["frames_to_waveform_s"])
        parts = {"text", "video_trunk", "video_select", "dit_conditions", "sampling", "decoder"}
        assert set(x["parts_s"]) == parts
        assert x["rtf"] == pytest.approx(x["frames_to_waveform_s"]["median"] / 1.0)
        assert x["dit_step_ms"]["median"] > 0 and x["peak_memory_mb"] >= 0
        if x["mode"] == "reference":
            assert x["speedup_vs_reference"] is None
        else:
            assert x["speedup_vs_reference"] > 0
            assert set(x["parts_speedup_vs_reference"]) == parts
            if x["precision"] == "fp32":
                assert x["rel_l2_vs_reference"]["audio"] < 2e-3  # the golden e2e tolerance
        if x["precision"] == "bf16":
            assert x["speedup_vs_reference_fp32"] > 0
            # Rounded, yet the same signal; bounds from measurement (test_precision_bounds.py
            # measures the tiny parts and 8.3e-2 end to end at 2 steps; full size, 25 steps:
            # sync 1.6e-2, audio 0.13-0.14 in benchmarks/results/cpu-fp32-bf16.json).
            errors = x["rel_l2_vs_fp32"]
            assert 1e-3 < errors["sync_features"] < 5e-2, errors
            assert 1e-2 < errors["audio"] < 0.25, errors
        else:
            assert "speedup_vs_reference_fp32" not in x and "rel_l2_vs_fp32" not in x
    assert r["results"][3]["cost_vs_one_prompt"] > 0


def test_markdown_and_file_to_file(report):
    r, md = report
    assert "| fast/fp32/p1 |" in md and "speedup vs reference" in md
    assert "| fast/bf16/p1 |" in md and "Reduced precision" in md
    f2f = r["file_to_file"]
    assert f2f["config"] == "fast/fp32/p1"
    assert {
        "probe",
        "decode",
        "text",
        "video_trunk",
        "sampling",
        "decoder",
        "write",
    } <= set(f2f["timings_s"])


def test_limits_count_the_same_arithmetic(report):
    """FLOPs per part: the fast trunk does the reference's arithmetic once per clip, the
    reference's once per prompt; the sampler's and decoder's work grows with the prompts."""
    r, md = report
    rows = {x["name"]: x for x in r["limits"]}
    assert set(rows) == {x["name"] for x in r["results"]}
    gflop = {name: {p: v["gflop"] for p, v in x["parts"].items()} for name, x in rows.items()}
    ref1, ref2 = gflop["reference/fp32/p1"], gflop["reference/fp32/p2"]
    fast1, fast2 = gflop["fast/fp32/p1"], gflop["fast/fp32/p2"]
    assert fast1["video_trunk"] == pytest.approx(ref1["video_trunk"], rel=1e-3)
    assert fast2["video_trunk"] == pytest.approx(fast1["video_trunk"], rel=1e-6)
    assert ref2["video_trunk"] == pytest.approx(2 * ref1["video_trunk"], rel=1e-6)
    for part in ("sampling", "decoder"):
        assert fast2[part] == pytest.approx(2 * fast1[part], rel=1e-6)
        assert fast1[part] == pytest.approx(ref1[part], rel=1e-3)  # CFG batched: ~the same
    for x in rows.values():
        floor = sum(p["gflop"] for p in x["parts"].values()) / x["gemm_peak_gflops"]
        assert x["floor_s"] == pytest.approx(floor) and x["gemm_peak_gflops"] > 0
    assert "Against this machine's limits" in md and "Targets:" in md


def test_targets():
    def result(mode, precision, prompts, seconds, speedup=None, cost=None):
        return {
            "name": f"{mode}/{precision}/p{prompts}",
            "mode": mode,
            "precision": precision,
            "prompts": prompts,
            "speedup_vs_reference": speedup,
            "cost_vs_one_prompt": cost,
        }

    results = [
        result("fast", "bf16", 1, 10, speedup=2.1),
        result("fast", "fp32", 1, 10, speedup=1.2),
        result("fast", "bf16", 4, 10, cost=2.5),
    ]
    got = {t["what"]: (t["measured"], t["met"]) for t in limits.targets(results)}
    assert got == {
        "fast/bf16/p1 over reference/bf16/p1": (2.1, True),
        "fast/fp32/p1 over reference/fp32/p1": (1.2, False),
        "fast/bf16/p4 against fast/bf16/p1": (2.5, False),
    }


def test_bad_arguments_exit_with_a_message():
    with pytest.raises(SystemExit, match="graphs needs a CUDA device"):
        bench.main([*QUICK, "--device", "cpu", "--modes", "graphs"])
    with pytest.raises(SystemExit, match="unknown precision"):
        bench.main([*QUICK, "--device", "cpu", "--precisions", "fp8"])


def test_tiny_flowley(tmp_path):
    """Flowley's parts under the same harness: no video encoder parts, reference vs fast."""
    argv = ["--variant", "tiny-flowley", "--duration", "1", "--steps", "2", "--warmup", "0"]
    argv += ["--repeat", "1", "--prompts", "1", "--precisions", "fp32", "--step-repeat", "1"]
    assert bench.main([*argv, "--device", "cpu", "--output", str(tmp_path), "--name", "f"]) == 0
    r = json.loads((tmp_path / "f.json").read_text())
    assert r["setup"]["cfg"] == 7.5
    ref, fast = r["results"]
    assert (ref["mode"], fast["mode"]) == ("reference", "fast")
    assert set(fast["parts_s"]) == {"text", "clip_image", "dit_conditions", "sampling", "decoder"}
    assert fast["speedup_vs_reference"] > 0
    assert set(fast["rel_l2_vs_reference"]) == {"latent", "mel", "audio"}
    assert fast["rel_l2_vs_reference"]["audio"] < 2e-3


@pytest.mark.slow
def test_long_clip_row(tmp_path):
    argv = [*QUICK, "--device", "cpu", "--prompts", "1", "--step-repeat", "1"]
    argv += [
        "--precisions",
        "fp32",
        "--long-clip",
        "12",
        "--long-clip-size",
        "160x90",
        "--output",
        str(tmp_path),
    ]
    assert bench.main([*argv, "--name", "long"]) == 0
    long = json.loads((tmp_path / "long.json").read_text())["long_clip"]
    assert long["seconds"] == 12
    assert [r["config"] for r in long["rows"]] == ["reference/fp32/p1", "fast/fp32/p1"]
    for r in long["rows"]:
        assert r["audio_s"] == 12.0 and r["windows"] == 2
        assert r["s_per_audio_minute"] == pytest.approx(r["total_s"] * 5)
        assert r["peak_memory_mb"] > 0 and r["cpu_s_per_audio_minute"] > 0
        assert {"decode", "video_trunk", "sampling", "decoder", "write"} <= set(r["timings_s"])
    assert "| fast/fp32/p1 | 2 |" in (tmp_path / "long.md").read_text()


def test_separation_rows_on_tiny_sep(tmp_path):
    """tiny-sep: fast vs reference for 1 and 4 prompts over one mixture, the mixture encoder
    timed as a part, fast within the golden e2e tolerance of reference, and the file-to-file
    run separating the clip's own audio track."""
    clip = bench.synthetic_clip(tmp_path / "clip.mp4", seconds=1.2, size=(64, 48), fps=25)
    argv = [*QUICK[2:], "--variant", "tiny-sep", "--prompts", "1,4", "--step-repeat", "1"]
    argv += ["--device", "cpu", "--precisions", "fp32", "--file-to-file", str(clip)]
    assert bench.main([*argv, "--output", str(tmp_path), "--name", "sep"]) == 0
    r = json.loads((tmp_path / "sep.json").read_text())
    names = [x["name"] for x in r["results"]]
    assert names == [f"{m}/fp32/p{p}" for p in (1, 4) for m in ("reference", "fast")]
    for x in r["results"]:
        assert {"mixture_encoder", "sampling", "decoder"} <= set(x["parts_s"])
        assert x["dit_step_ms"]["median"] > 0
        if x["mode"] == "fast":
            assert x["speedup_vs_reference"] > 0
            assert x["rel_l2_vs_reference"]["audio"] < 2e-3
    assert "mixture_encoder" in r["file_to_file"]["timings_s"]
