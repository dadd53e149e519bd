"""`selva-rt batch` in process: the job schema, good and bad jobs, resume, a kill -9 mid-batch, a
folder of clips; outputs equal to what `generate` writes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest
import soundfile
import torch
from batchjobs import BAD, FAST, final, hidden_files, make_jobs, records, stems, visible_files
from clips import make_clip
from selva_rt.runtime import cli
from selva_rt.runtime.delivery.outputs import plan_outputs, write_outputs
from selva_rt.runtime.errors import JobError, OutputError
from selva_rt.runtime.pipeline import Pipeline
from selva_rt.runtime.service.batch import Results
from selva_rt.runtime.service.jobs import Job, parse_line

torch.set_num_threads(1)

SCRIPT = Path(sys.executable).parent / "selva-rt"
CMD = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "selva_rt.runtime.cli"]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"clip": "a.mp4", "prompts": ["x"], "colour": 1}', "unknown field 'colour'"),
        ('{"prompts": ["x"]}', "missing field 'clip'"),
        ('{"clip": 3, "prompts": ["x"]}', "clip must be a path (text), not a number"),
        ('{"clip": "a.mp4", "prompts": []}', "give at least one prompt"),
        ('{"clip": "a.mp4", "prompts": [""]}', "prompt is empty"),
        ('{"clip": "a.mp4", "prompts": ["x"], "seed": "7"}', "seed '7' must be a 64-bit integer"),
        ('{"clip": "a.mp4", "prompts": ["x"], "steps": 2.0}', "steps 2.0 is out of range"),
        ('{"clip": "a.mp4", "prompts": ["x"], "cfg": NaN}', "NaN is not a number"),
        ('{"clip": "a.mp4", "prompts": ["x"], "duration": 0}', "duration 0 must be"),
        ('{"clip": "a.mp4", "prompts": ["x"], "name": "../up"}', "must be a file name"),
        ('{"clip": "a.mp4", "prompts": ["x"]', "not valid JSON"),
        ('["a.mp4", "x"]', "a job is a JSON object, not a list"),
    ],
)
def test_bad_job_lines(line, message):
    with pytest.raises(JobError) as err:
        parse_line(line, base=Path("/clips"))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_job_fields_defaults_and_canonical_form():
    job = parse_line(
        '{"clip": "sub/a.mp4", "prompts": "rain", "cfg": 3}',
        base=Path("/clips"),
        defaults={"seed": 9, "cfg": 1.0},
    )
    assert job.clip == Path("/clips/sub/a.mp4") and job.prompts == ("rain",)
    assert (job.seed, job.cfg, job.steps) == (9, 3.0, 25)  # the line wins over the default
    assert Job.from_dict(job.to_dict(), base=Path("/elsewhere")) == job
    assert json.loads(json.dumps(job.to_dict())) == job.to_dict()


def test_six_jobs_two_bad_then_resume_then_retry(tmp_path, capsys):
    """The done-when of issue 13, in process (the Ray half is in test_batch_ray.py)."""
    jobs, out = make_jobs(tmp_path / "in"), tmp_path / "out"
    assert "--quiet" in FAST
    assert cli.main(["batch", str(jobs), "--out", str(out), *FAST]) == 1
    # --quiet hides progress and the summary, not the failures.
    errors = capsys.readouterr().err.splitlines()
    assert [e for e in errors if e.startswith("failed: ")] == [
        f"failed: {r['error']}" for r in final(out) if r["status"] == "failed"
    ]
    first = final(out)
    assert sorted(r["status"] for r in first) == ["failed"] * 2 + ["ok"] * 4
    failed = {r["line"]: r["error"] for r in first if r["status"] == "failed"}
    assert set(failed) == {3, 5}
    assert BAD[0][1] in failed[3] and BAD[1][1] in failed[5]
    names = ["a_sheep_bleating", "a_two_dog_barking", "a_two_car_horn", "b_rain", "b_late_wind"]
    assert visible_files(out) == {f"{n}.{x}" for n in names for x in ("wav", "mp4")} | {
        "results.jsonl"
    }
    assert not hidden_files(out)
    assert all(len(wav) == 16000 for wav in stems(out).values())
    for r in first:
        if r["status"] == "ok":
            assert r["settings"]["variant"] == "tiny" and r["worker"] == "local:cpu"
            assert {"decode", "sampling", "decoder", "write"} <= set(r["timings_s"])
    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    # Second run: the 4 are skipped (files untouched), the 2 are tried again and fail again.
    assert cli.main(["batch", str(jobs), "--out", str(out), *FAST]) == 1
    second = final(out)[len(first) :]
    assert sorted((r["line"], r["status"]) for r in second) == [
        (1, "skipped"), (2, "skipped"), (3, "failed"), (4, "skipped"), (5, "failed"),
        (6, "skipped"),
    ]  # fmt: skip
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix != ".jsonl"} == {
        k: v for k, v in written.items() if not k.endswith(".jsonl")
    }
    # Mend the two clips: a third run does only them and succeeds.
    make_clip(tmp_path / "in" / "missing.mp4", frames=40)
    make_clip(tmp_path / "in" / "broken.mp4", frames=40)
    assert cli.main(["batch", str(jobs), "--out", str(out), *FAST]) == 0
    third = final(out)[len(first) + len(second) :]
    assert sorted((r["line"], r["status"]) for r in third if r["status"] != "skipped") == [
        (3, "ok"),
        (5, "ok"),
    ]
    oks = [r["id"] for r in final(out) if r["status"] == "ok"]
    assert len(oks) == len(set(oks)) == 6  # each job done once


def test_kill_mid_batch_loses_nothing_and_resumes(tmp_path):
    """kill -9 of a running batch: what was recorded stays, no visible file is partial, and the
    rerun does only what is left, each job once."""
    jobs = [{"clip": "a.mp4", "prompts": ["rain"], "seed": s, "name": f"j{s}"} for s in range(8)]
    path, out = make_jobs(tmp_path / "in", jobs), tmp_path / "out"
    args = [*CMD, "batch", str(path), "--out", str(out), *FAST, "--steps", "6"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "results.jsonl").exists() and sum(
                r["status"] == "ok" for r in records(out)
            ) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the batch ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    before = (out / "results.jsonl").read_bytes()
    done = {r["id"] for r in records(out) if r["status"] == "ok"}
    assert 2 <= len(done) < 8
    for name in visible_files(out) - {"results.jsonl"}:  # whatever has its name is whole
        if name.endswith(".wav"):
            assert soundfile.info(str(out / name)).frames == 16000
        else:
            with av.open(str(out / name)) as c:
                assert c.streams.audio and c.streams.video

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert (out / "results.jsonl").read_bytes().startswith(before)
    assert visible_files(out) == {f"j{s}_rain.{x}" for s in range(8) for x in ("wav", "mp4")} | {
        "results.jsonl"
    }
    assert not hidden_files(out), "temporaries of the killed run must be gone"
    later = [r for r in final(out) if r["run"] != records(out)[0]["run"]]
    oks = [r["id"] for r in final(out) if r["status"] == "ok"]
    assert len(oks) == len(set(oks)) == 8
    assert {r["id"] for r in later if r["status"] == "skipped"} == done


def test_folder_of_clips_equals_generate(tmp_path):
    """A folder batch writes what `generate` writes for each clip; clips whose outputs would
    collide, and broken ones, fail alone."""
    folder, out = tmp_path / "clips", tmp_path / "out"
    folder.mkdir()
    make_clip(folder / "a.mp4", frames=40)
    make_clip(folder / "b.mkv", frames=40, size=(48, 64))
    make_clip(folder / "b.mp4", frames=40)  # same name "b" as b.mkv
    (folder / "notes.txt").write_text("not a clip")
    (folder / "c.mp4").write_bytes(b"\0" * 100)
    prompts = ["--prompt", "rain", "--prompt", "dog barking"]
    args = ["batch", str(folder), "--out", str(out), *prompts, *FAST, "--no-video"]
    assert cli.main([*args, "--format", "flac", "--seed", "3"]) == 1
    status = {Path(r["job"]["clip"]).name: r for r in final(out)}
    assert set(status) == {"a.mp4", "b.mkv", "b.mp4", "c.mp4"}
    assert "writes the same files as line 2" in status["b.mp4"]["error"]
    assert "c.mp4 is not a media file" in status["c.mp4"]["error"]
    assert visible_files(out) == {
        "a_rain.flac", "a_dog_barking.flac", "b_rain.flac", "b_dog_barking.flac", "results.jsonl",
    }  # fmt: skip

    pipe = Pipeline.from_pretrained("tiny", device="cpu")  # the batch default: auto
    result = pipe.generate(folder / "a.mp4", ["rain", "dog barking"], seed=3, steps=2, duration=1)
    plan = plan_outputs(folder / "a.mp4", result.prompts, tmp_path / "gen", fmt="flac", video=False)
    write_outputs(plan, result)
    for stem in plan.stems:
        assert stem.audio.read_bytes() == (out / stem.audio.name).read_bytes()


def test_results_file_lock_and_torn_line(tmp_path):
    with Results(tmp_path) as results:
        results.append({"id": "x", "status": "failed", "error": "e"})
        with pytest.raises(OutputError, match="another batch is writing"):
            Results(tmp_path)
    with open(tmp_path / "results.jsonl", "ab") as f:
        f.write(b'{"id": "y", "sta')  # what a kill in the middle of a write could leave
    with Results(tmp_path) as results:
        assert [r["id"] for r in results.records] == ["x"]
        results.append({"id": "z", "status": "failed", "error": "e"})
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["id"] == "x" and json.loads(lines[-1])["id"] == "z"
    assert len(lines) == 3 and lines[1] == '{"id": "y", "sta'


def test_missing_job_list_is_one_line(tmp_path, capsys):
    code = cli.main(["batch", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("selva-rt: error: ") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
    assert os.listdir(tmp_path) == []


def test_ray_missing_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    monkeypatch.delitem(sys.modules, "selva_rt.runtime.service.batch_ray", raising=False)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"clip": "a.mp4", "prompts": ["rain"]}\n')
    code = cli.main(["batch", str(jobs), "--out", str(tmp_path / "o"), *FAST, "--ray", "local"])
    err = capsys.readouterr().err
    assert code == 2 and err == "selva-rt: error: --ray needs Ray: pip install 'selva-rt[ray]'\n"
