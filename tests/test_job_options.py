"""Delivery options in jobs (what `generate` offers: format, sample_rate, loudness, otio,
no_video): checked like the other fields, and written by `selva-rt batch` from JSONL lines,
with the command line's options as defaults for the lines that leave them out."""

import json
from pathlib import Path

import pytest
import soundfile
from batchjobs import FAST, final, make_jobs, visible_files
from selva_rt.runtime import cli
from selva_rt.runtime.errors import JobError
from selva_rt.runtime.service.jobs import parse_line


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"format": "mp3"}, "format must be 'wav' or 'flac'"),
        ({"sample_rate": 44100}, "sample_rate must be null"),
        ({"sample_rate": True}, "sample_rate must be null"),
        ({"loudness": 3}, "loudness must be null or a number of LUFS in -70..0"),
        ({"loudness": "-23"}, "loudness must be null"),
        ({"otio": "yes"}, "otio must be true or false, not text"),
        ({"no_video": 1}, "no_video must be true or false, not a number"),
    ],
)
def test_bad_delivery_fields(fields, message):
    with pytest.raises(JobError) as err:
        parse_line(json.dumps({"clip": "a.mp4", "prompts": ["x"], **fields}), base=Path("/"))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_batch_lines_carry_delivery_options(tmp_path):
    lines = [
        {"clip": "a.mp4", "prompts": ["rain"], "format": "flac", "no_video": True},
        {"clip": "b.mp4", "prompts": ["wind"], "sample_rate": 48000, "otio": True},
        {"clip": "a.mp4", "prompts": ["hum"], "name": "quiet", "loudness": -30},
    ]
    jobs, out = make_jobs(tmp_path / "in", lines), tmp_path / "out"
    assert cli.main(["batch", str(jobs), "--out", str(out), *FAST, "--loudness", "-20"]) == 0
    assert visible_files(out) == {
        "a_rain.flac",
        "b_wind.wav",
        "b_wind.mp4",
        "b.otio",
        "quiet_hum.wav",
        "quiet_hum.mp4",
        "results.jsonl",
    }
    assert soundfile.info(out / "b_wind.wav").samplerate == 48000
    assert soundfile.info(out / "a_rain.flac").samplerate == 16000
    records = {r["line"]: r for r in final(out)}
    assert records[1]["job"]["loudness"] == -20.0  # the command line's default
    assert records[3]["job"]["loudness"] == -30.0  # the line's own
    assert records[2]["sample_rate"] == 48000
