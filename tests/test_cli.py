"""`selva-rt generate` as a user runs it: outputs, the tiny variant end to end, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch
from clips import BAD_INPUTS, make_clip
from selva_rt.runtime import cli
from selva_rt.runtime.pipeline import Pipeline

torch.set_num_threads(1)

SCRIPT = Path(sys.executable).parent / "selva-rt"


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "selva_rt.runtime.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, env=env)


def video_packets(path: Path) -> list[tuple[bytes, int, int]]:
    with av.open(str(path)) as container:
        return [(bytes(p), p.pts, p.dts) for p in container.demux(video=0) if p.size]


@pytest.fixture(scope="module")
def tiny() -> Pipeline:
    return Pipeline.from_pretrained("tiny", device="cpu", precision="fp32")


def test_generate_subprocess_writes_stem_and_bit_identical_video(tmp_path, sample_clip):
    out = tmp_path / "out"
    result = run_cli(
        "generate",
        str(sample_clip),
        "sheep bleating",
        "--variant",
        "tiny",
        "--out",
        str(out),
        "--json",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (entry,) = report["outputs"]
    wav, rate = soundfile.read(entry["audio"], dtype="float32")
    assert rate == 16000 == report["sample_rate"]
    assert len(wav) == round(report["duration"] * rate)
    assert np.isfinite(wav).all() and 0 < np.abs(wav).max() <= 1
    assert video_packets(Path(entry["video"])) == video_packets(sample_clip)
    with av.open(entry["video"]) as muxed:
        (audio,) = muxed.streams.audio
        assert audio.codec_context.name == "aac" and audio.sample_rate == 16000
    assert sorted(p.name for p in out.iterdir()) == sorted(
        Path(entry[k]).name for k in ("audio", "video")
    )
    assert report["variant"] == "tiny" and report["seed"] == 42


def test_flac_48k_and_no_video(tmp_path, sample_clip):
    code = cli.main(
        [
            "generate",
            str(sample_clip),
            "dog barking",
            "--variant",
            "tiny",
            "--quiet",
            "--out",
            str(tmp_path),
            "--format",
            "flac",
            "--sample-rate",
            "48000",
            "--no-video",
            "--duration",
            "1.0",
        ]
    )
    assert code == 0
    (stem,) = tmp_path.iterdir()
    info = soundfile.info(str(stem))
    assert stem.suffix == ".flac" and info.samplerate == 48000 and info.frames == 48000


def test_two_prompts_equal_two_calls_and_share_the_trunk(tiny, sample_clip, monkeypatch):
    calls = []
    trunk = tiny.parts.video_trunk
    monkeypatch.setattr(tiny.parts, "video_trunk", lambda *a: calls.append(1) or trunk(*a))
    both = tiny.generate(sample_clip, ["sheep bleating", "car horn"], seed=3, duration=1.0)
    assert len(calls) == 1
    for i, prompt in enumerate(["sheep bleating", "car horn"]):
        alone = tiny.generate(sample_clip, prompt, seed=3, duration=1.0)
        # Equal up to float rounding (batched GEMMs, T5 padding to the longer prompt).
        diff = np.linalg.norm(both.audio[i] - alone.audio[0]) / np.linalg.norm(alone.audio[0])
        assert diff < 1e-4 and np.abs(both.audio[i] - alone.audio[0]).max() < 1e-4
    assert np.abs(both.audio[0] - both.audio[1]).max() > 1e-3  # the prompt matters


def test_shorter_clip_gives_shorter_audio(tiny, tmp_path):
    clip = make_clip(tmp_path / "c.mp4", frames=30)  # 1.2 s at 25 fps
    result = tiny.generate(clip, "rain", duration=8.0)
    # The official frame-timing rule keeps 29 of the 30 frames at 25 fps here.
    assert 1.1 < result.duration <= 1.2
    assert result.audio.shape == (1, round(result.duration * 16000))


def assert_clean_failure(code: int, capsys, message: str, out_dir: Path, before: set[str]):
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("selva-rt: error: "), err
    assert message in err, err
    assert "Traceback" not in err
    after = {p.name for p in out_dir.iterdir()} if out_dir.exists() else set()
    assert after == before, "a failed run must not write anything"


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_clip(tmp_path, capsys, case):
    make, message = BAD_INPUTS[case]
    (tmp_path / "in").mkdir()
    clip = make(tmp_path / "in")
    out = tmp_path / "out"
    code = cli.main(["generate", str(clip), "rain", "--variant", "tiny", "--out", str(out)])
    assert_clean_failure(code, capsys, message, out, set())


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("", "prompt is empty"),
        ("   ", "prompt is empty"),
        ("x" * 5000, "prompt is 5000 characters long"),
        ("sheep \udcff bleating", "not valid UTF-8"),
    ],
    ids=["empty", "blank", "very long", "not utf-8"],
)
def test_bad_prompt(tmp_path, sample_clip, capsys, prompt, message):
    code = cli.main(
        ["generate", str(sample_clip), prompt, "--variant", "tiny", "--out", str(tmp_path)]
    )
    assert_clean_failure(code, capsys, message, tmp_path, set())


def test_existing_output_needs_force(tmp_path, sample_clip, capsys):
    args = [
        "generate",
        str(sample_clip),
        "rain",
        "--variant",
        "tiny",
        "--out",
        str(tmp_path),
        "--duration",
        "1.0",
        "--quiet",
    ]
    assert cli.main(args) == 0
    stems = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert len(stems) == 2
    (tmp_path / "sample_rain.wav").write_bytes(b"an editor's file")
    code = cli.main(args)
    assert_clean_failure(code, capsys, "already exists", tmp_path, set(stems))
    assert (tmp_path / "sample_rain.wav").read_bytes() == b"an editor's file"
    assert cli.main([*args, "--force"]) == 0
    assert (tmp_path / "sample_rain.wav").read_bytes() != b"an editor's file"


def test_unwritable_output_dir(tmp_path, sample_clip, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    code = cli.main(
        ["generate", str(sample_clip), "rain", "--variant", "tiny", "--out", str(blocked)]
    )
    assert_clean_failure(code, capsys, "is a file, not a directory", tmp_path, {"file"})
    # /proc takes no new folders, even for root.
    code = cli.main(
        ["generate", str(sample_clip), "rain", "--variant", "tiny", "--out", "/proc/selva_out"]
    )
    assert_clean_failure(code, capsys, "is not writable", tmp_path, {"file"})


def test_bad_arguments_are_one_line(tmp_path, sample_clip, capsys):
    code = cli.main(
        [
            "generate",
            str(sample_clip),
            "rain",
            "--variant",
            "tiny",
            "--steps",
            "0",
            "--out",
            str(tmp_path),
        ]
    )
    assert_clean_failure(code, capsys, "steps 0 is out of range", tmp_path, set())
    code = cli.main(
        [
            "generate",
            str(sample_clip),
            "rain",
            "--variant",
            "tiny",
            "--device",
            "tpu",
            "--out",
            str(tmp_path),
        ]
    )
    assert_clean_failure(code, capsys, "device", tmp_path, set())


def test_missing_weights_one_line_without_traceback(tmp_path, sample_clip):
    env_home = tmp_path / "home"
    env = {"SELVA_RT_HOME": str(env_home), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    result = run_cli("generate", str(sample_clip), "rain", "--out", str(tmp_path / "out"), env=env)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "selva-rt weights download selva-small-16k" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "x.mp4", "rain", "--variant", "nope"], "argument --variant: invalid choice"),
        (["generate", "x.mp4", "rain", "--sample-rate", "44100"], "argument --sample-rate"),
        (["generate", "x.mp4", "rain", "--variant", "tiny-sep"], "invalid choice: 'tiny-sep'"),
        (["separate", "x.mp4", "rain", "--variant", "tiny"], "invalid choice: 'tiny'"),
        (["batch", "jobs.jsonl", "--bogus"], "unrecognized arguments: --bogus"),
        (["bench", "--bogus"], "unrecognized arguments: --bogus"),
        (["export", "--variant", "tiny"], "the following arguments are required: --out"),
    ],
)
def test_argument_errors_are_one_line(args, message):
    result = run_cli(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_version():
    from selva_rt import __version__

    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"selva-rt {__version__}"


def test_each_command_offers_its_own_variants_and_defaults():
    wide = {**os.environ, "COLUMNS": "1000"}  # argparse wraps long lines at hyphens
    generate = run_cli("generate", "--help", env=wide).stdout
    separate = run_cli("separate", "--help", env=wide).stdout
    assert "tiny-flowley" in generate and "7.5 for flowley" in generate
    assert "mmaudiosep" not in generate and "tiny-sep" not in generate
    assert "mmaudiosep-large-44k" in separate and "tiny-sep" in separate
    assert "flowley" not in separate.lower() and "7.5" not in separate
    assert "separates" in separate  # it says what it does


def test_json_names_absolute_paths(tmp_path, sample_clip, monkeypatch, capsys):
    """A tool embedding the CLI may run it from any folder: --json paths do not depend on it."""
    monkeypatch.chdir(tmp_path)
    args = ["generate", str(sample_clip), "rain", "--variant", "tiny", "--steps", "2"]
    assert cli.main([*args, "--duration", "1", "--out", "rel", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    (entry,) = report["outputs"]
    for path in (entry["audio"], entry["video"], report["clip"]):
        assert Path(path).is_absolute() and Path(path).exists(), path
    assert Path(entry["audio"]).parent == tmp_path / "rel"
    assert report["threads"] == torch.get_num_threads()
