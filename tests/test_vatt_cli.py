"""VATT from the command line, in batches and from the server, unchanged through the contract:
the done-when of issue 22 (`selva-rt generate runtime/assets/sample.mp4 "sheep bleating"
--variant tiny-vatt` writes a stem), VATT's own defaults (16 MaskGIT steps, CFG 5), one-line
errors (a negative prompt, missing weights)."""

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from selva_rt.runtime import cli
from selva_rt.runtime.pipeline import Pipeline

SAMPLE = Path(__file__).resolve().parents[1] / "runtime" / "assets" / "sample.mp4"


@pytest.fixture(scope="module")
def tiny_vatt() -> Pipeline:
    return Pipeline.from_pretrained("tiny-vatt", device="cpu", precision="fp32")


def test_done_when_writes_a_stem(tmp_path, capsys):
    """The issue's command, with its defaults: a 16 kHz stem as long as the picture and the
    muxed clip; --json reports the variant's 16 steps and CFG 5."""
    out = tmp_path / "out"
    argv = ["generate", str(SAMPLE), "sheep bleating", "--variant", "tiny-vatt", "--out", str(out)]
    assert cli.main([*argv, "--json", "--precision", "fp32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["steps"], report["cfg"], report["sample_rate"]) == (16, 5.0, 16000)
    stem, muxed = out / "sample_sheep_bleating.wav", out / "sample_sheep_bleating.mp4"
    audio, rate = soundfile.read(stem, dtype="float32")
    assert rate == 16000 and len(audio) == round(report["duration"] * 16000)
    assert np.abs(audio).max() > 0 and muxed.is_file()


def test_steps_and_cfg_override_and_one_line_errors(tmp_path, capsys):
    out = tmp_path / "out"
    base = ["generate", str(SAMPLE), "rain", "--variant", "tiny-vatt", "--out", str(out)]
    assert cli.main([*base, "--steps", "2", "--cfg", "3", "--json", "--precision", "fp32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["steps"], report["cfg"]) == (2, 3.0)
    assert cli.main([*base, "--negative-prompt", "music", "--force"]) == 2
    err = capsys.readouterr().err
    assert "takes no negative prompt" in err and err.count("\n") == 1


def test_help_names_vatt_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping inside the variants' names
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "MaskGIT (default: 25; 16 for vatt-llama, vatt-gemma, tiny-vatt)" in text
    assert "5 for vatt-llama, vatt-gemma, tiny-vatt" in text


@pytest.mark.parametrize("name", ["vatt-llama", "vatt-gemma"])
def test_a_run_without_the_files_is_one_line(tmp_path, capsys, monkeypatch, name):
    monkeypatch.setenv("SELVA_RT_HOME", str(tmp_path / "home"))
    argv = ["generate", str(SAMPLE), "dog barking", "--variant", name, "--out", str(tmp_path)]
    assert cli.main([*argv, "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"weights of {name} are missing" in err
    assert f"selva-rt weights download {name}" in err


def test_batch(tmp_path):
    """Two jobs over the sample clip, one with its own steps, one taking the variant's; each stem
    equals what `generate` gives."""
    lines = [
        {"clip": str(SAMPLE), "prompts": ["sheep bleating"], "seed": 3, "steps": 2},
        {"clip": str(SAMPLE), "prompts": ["rain"], "seed": 4, "duration": 1.0},
    ]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(j) + "\n" for j in lines))
    out = tmp_path / "out"
    argv = ["batch", str(jobs), "--out", str(out), "--variant", "tiny-vatt", "--quiet"]
    assert cli.main([*argv, "--precision", "fp32", "--device", "cpu"]) == 0
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    done = [r for r in records if r["status"] == "ok"]
    assert len(done) == 2
    pipe = Pipeline.from_pretrained("tiny-vatt", device="cpu", precision="fp32")
    for line in lines:
        prompt = line["prompts"][0]
        stem = out / f"sample_{prompt.replace(' ', '_')}.wav"
        audio, _ = soundfile.read(stem, dtype="float32")
        direct = pipe.generate(
            SAMPLE,
            prompt,
            seed=line["seed"],
            steps=line.get("steps"),
            duration=line.get("duration"),
        )
        assert len(audio) == direct.audio.shape[1]
        # A 24-bit stem of the same numbers (random weights' noise reaches past full scale).
        assert np.abs(audio - direct.audio[0].clip(-1, 1)).max() < 1e-4


def test_server(tiny_vatt, tmp_path):
    """A job without steps runs the variant's; its stem is `generate`'s."""
    pytest.importorskip("starlette", reason="the serve extra is not installed")
    pytest.importorskip("httpx", reason="httpx (dev extra) is not installed")
    from selva_rt.runtime.service.server import create_app
    from starlette.testclient import TestClient

    root = tmp_path / "clips"
    root.mkdir()
    clip = root / "a.mp4"
    clip.write_bytes(SAMPLE.read_bytes())
    with TestClient(create_app(tiny_vatt, [root], tmp_path / "out")) as client:
        info = client.get("/v1/info").json()
        assert info["variant"] == "tiny-vatt"
        body = {"clip": str(clip), "prompts": ["rain"], "seed": 5, "duration": 1.0}
        r = client.post("/v1/jobs", json=body)
        assert r.status_code == 202
        deadline = time.monotonic() + 600
        while (record := client.get(f"/v1/jobs/{r.json()['id']}").json())["state"] not in (
            "done",
            "failed",
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert record["state"] == "done" and record["progress"] == 1.0, record.get("error")
        assert record["job"]["steps"] == 16
        (files,) = record["outputs"]
        wav = client.get(f"/v1/jobs/{record['id']}/files/{files['audio']}")
        audio, rate = soundfile.read(io.BytesIO(wav.content), dtype="float32")
    direct = tiny_vatt.generate(clip, "rain", seed=5, duration=1.0)
    assert rate == 16000 and len(audio) == direct.audio.shape[1]
    assert np.abs(audio - direct.audio[0].clip(-1, 1)).max() < 1e-4
