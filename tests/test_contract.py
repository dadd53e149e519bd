"""The contract every backend and entry point shares: the Parts protocol, the request checks
(the Python API says what the CLI says), and outputs written all or nothing."""

import inspect
import os
from pathlib import Path

import numpy as np
import pytest
from selva_rt.runtime import cli, media
from selva_rt.runtime.backends import Parts
from selva_rt.runtime.backends.graphs import GraphParts
from selva_rt.runtime.backends.ort_parts import OrtParts
from selva_rt.runtime.backends.torch_parts import TorchParts
from selva_rt.runtime.backends.trt_parts import TrtParts
from selva_rt.runtime.delivery.outputs import plan_outputs, write_outputs
from selva_rt.runtime.errors import OutputError, SelvaError
from selva_rt.runtime.pipeline import Pipeline

PART_METHODS = [
    name for name, v in vars(Parts).items() if inspect.isfunction(v) and not name.startswith("_")
]


@pytest.mark.parametrize("backend", [TorchParts, OrtParts, TrtParts], ids=lambda c: c.__name__)
def test_every_backend_offers_every_part_with_the_protocol_signature(backend):
    assert set(PART_METHODS) == {
        "t5",
        "clip_text",
        "clip_image",
        "video_trunk",
        "video_select",
        "dit_conditions",
        "mixture_encoder",
        "mixture_conditions",
        "dit_step",
        "sample",
        "decoder",
    }
    for name in PART_METHODS:
        want = list(inspect.signature(getattr(Parts, name)).parameters)
        got = list(inspect.signature(getattr(backend, name)).parameters)
        assert got == want, f"{backend.__name__}.{name}{got} != Parts.{name}{want}"
    assert issubclass(OrtParts, GraphParts) and issubclass(TrtParts, GraphParts)


@pytest.fixture(scope="module")
def tiny() -> Pipeline:
    return Pipeline.from_pretrained("tiny", device="cpu", precision="fp32")


# (generate keyword arguments, CLI arguments, the message both give)
BAD_REQUESTS = {
    "blank prompt": ({"prompts": "   "}, ["   "], "prompt is empty"),
    "no prompts": ({"prompts": []}, None, "give at least one prompt"),
    "non-text prompt": ({"prompts": [3]}, None, "prompt must be text, not int"),
    "long prompt": ({"prompts": "a" * 1001}, ["a" * 1001], "1001 characters long"),
    "steps 0": ({"steps": 0}, ["rain", "--steps", "0"], "steps 0 is out of range"),
    "negative cfg": ({"cfg": -1.0}, ["rain", "--cfg", "-1"], "cfg -1.0 is out of range"),
    "nan cfg": ({"cfg": float("nan")}, ["rain", "--cfg", "nan"], "cfg nan is out of range"),
    "zero duration": ({"duration": 0.0}, ["rain", "--duration", "0"], "duration 0.0 must be"),
    "negative start": ({"start": -1.0}, ["rain", "--start", "-1"], "start -1.0 must be"),
    "blank negative": ({"negative_prompt": 5}, None, "negative prompt must be text"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_api_and_cli_refuse_bad_requests_with_the_same_line(
    case, tiny, sample_clip, tmp_path, capsys
):
    kwargs, argv, message = BAD_REQUESTS[case]
    kwargs = {"prompts": "rain", **kwargs}
    with pytest.raises(SelvaError, match=message) as err:
        tiny.generate(sample_clip, **kwargs)
    assert "\n" not in str(err.value)
    if argv is not None:
        out = tmp_path / "out"
        capsys.readouterr()
        code = cli.main(
            ["generate", str(sample_clip), *argv, "--variant", "tiny", "--out", str(out)]
        )
        assert code == err.value.exit_code and not out.exists()
        assert capsys.readouterr().err == f"selva-rt: error: {err.value}\n"


def test_outputs_are_written_all_or_nothing(tiny, sample_clip, tmp_path, monkeypatch):
    out = tmp_path / "out"
    result = tiny.generate(sample_clip, ["rain", "thunder"], steps=2, duration=1.0)
    plan = plan_outputs(sample_clip, result.prompts, out)
    real_mux, calls = media.mux, []

    def mux_failing_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OutputError("disk full")
        return real_mux(*args, **kwargs)

    monkeypatch.setattr(media, "mux", mux_failing_second)
    with pytest.raises(OutputError, match="disk full"):
        write_outputs(plan, result)
    assert os.listdir(out) == []  # the first stem and video were staged, never renamed
    monkeypatch.setattr(media, "mux", real_mux)
    write_outputs(plan, result)
    assert sorted(os.listdir(out)) == sorted(p.name for p in plan.paths())
    with pytest.raises(OutputError, match="already exists"):
        plan_outputs(sample_clip, result.prompts, out)
    forced = plan_outputs(sample_clip, result.prompts, out, force=True)
    write_outputs(forced, result)
    wav, rate = media_read(forced.stems[0].audio)
    assert rate == result.sample_rate and np.allclose(wav, result.audio[0], atol=2**-22)


def media_read(path: Path):
    import soundfile

    return soundfile.read(str(path), dtype="float32")
