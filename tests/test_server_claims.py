"""README claims of `selva-rt serve` that test_server.py leaves open: the upload size limit and
its option, no way out of the output folder through a file name (requested or uploaded), the
loopback default, cancelling a running job, and a graceful shutdown that finishes the running
job or requeues it, each at a known step of the job (tests/pause.py)."""

import io
import json
import sqlite3
import threading
from pathlib import Path

import pytest
import soundfile
from pause import at_step, worker_event
from selva_rt.runtime import cli

pytest.importorskip("starlette", reason="the serve extra is not installed")
from selva_rt.runtime.service import server  # noqa: E402
from selva_rt.runtime.service.server import Limits, create_app  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

STEPS = 2


def job(clip: Path, **options) -> dict:
    return {"clip": str(clip), "prompts": ["rain"], "steps": STEPS, "duration": 1.0, **options}


def state(out: Path, job_id: str) -> str:
    with sqlite3.connect(out / server.JOURNAL) as db:
        return db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()[0]


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_uploads_over_the_limit_are_refused_and_leave_nothing(tiny_pipe, clip_root, tmp_path):
    clip = (clip_root / "a.mp4").read_bytes()
    out = tmp_path / "out"
    limit = len(clip) + 1000  # the clip and the multipart framing around it fit, barely
    client = TestClient(create_app(tiny_pipe, [clip_root], out, limits=Limits(upload=limit)))
    form = {"job": json.dumps({"prompts": ["rain"], "steps": STEPS})}

    def send(data: bytes):
        return client.post("/v1/jobs", data=form, files={"clip": ("a.mp4", data, "video/mp4")})

    big = send(clip + b"\0" * 2000)
    assert big.status_code == 413 and f"over {limit}" in big.json()["error"]
    assert list((out / server.UPLOADS).iterdir()) == []
    assert send(clip).status_code == 202
    assert len(list((out / server.UPLOADS).iterdir())) == 1


def test_serve_options_reach_the_server(clip_root, tmp_path, monkeypatch):
    """--max-upload-mb and --max-queue become the limits; the bind address defaults to
    loopback (the real socket's address is checked in test_server.py's process tests)."""
    seen = {}

    def serve(pipe, roots_, out, sock, **options):
        seen.update(pipe=pipe, address=sock.getsockname(), **options)
        sock.close()

    monkeypatch.setattr(server, "serve", serve)
    argv = ["serve", "--variant", "tiny", "--root", str(clip_root), "--out", str(tmp_path / "o")]
    argv += ["--port", "0"]  # any free port: the address is what is checked
    assert cli.main([*argv, "--max-upload-mb", "1.5", "--max-queue", "3", "--quiet"]) == 0
    host = seen["address"][0]
    assert host == "127.0.0.1" and seen["token"] is None
    assert seen["limits"] == Limits(queue=3, upload=int(1.5 * 2**20))
    assert server.is_loopback(host) and seen["pipe"].variant.name == "tiny"


def test_file_names_cannot_leave_the_job_folder(tiny_pipe, clip_root, tmp_path):
    """Requested names: only a job's own outputs are served, whatever the path says. Uploaded
    names: the clip is stored under its hash, the outputs under the job's folder with a plain
    name made of the upload's."""
    out = tmp_path / "out"
    (tmp_path / "secret.txt").write_text("not yours")
    app = create_app(tiny_pipe, [clip_root], out)
    clip = (clip_root / "a.mp4").read_bytes()
    # A server error is an answer too (500): the assertions below say which name got through.
    with TestClient(app, raise_server_exceptions=False) as client:
        form = {"job": json.dumps({"prompts": ["rain"], "steps": STEPS, "duration": 1.0})}
        name = "../../../secret.mp4"
        r = client.post("/v1/jobs", data=form, files={"clip": (name, clip, "video/mp4")})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        other = client.post("/v1/jobs", json=job(clip_root / "a.mp4", seed=9)).json()["id"]
        records = {}
        for i in (job_id, other):
            while (record := client.get(f"/v1/jobs/{i}").json())["state"] not in ("done", "failed"):
                threading.Event().wait(0.05)
            records[i] = record
        assert records[job_id]["state"] == records[other]["state"] == "done"
        (outputs,) = records[job_id]["outputs"]
        assert outputs["audio"] == "secret_rain.wav"
        base = f"/v1/jobs/{job_id}/files/"
        assert client.get(base + "secret_rain.wav").status_code == 200
        for bad in (
            "..%2F..%2Fsecret.txt",
            "..%2F" + server.JOURNAL,
            "%2E%2E%2F%2E%2E%2Fsecret.txt",
            f"..%2F{other}%2F{records[other]['outputs'][0]['audio']}",
            records[other]["outputs"][0]["audio"],  # another job's file, by its bare name
        ):
            r = client.get(base + bad)
            assert r.status_code == 404 and b"not yours" not in r.content, bad
    written = files_under(tmp_path) - files_under(clip_root) - {tmp_path / "secret.txt"}
    assert all(out in p.parents for p in written), written
    assert list((out / server.UPLOADS).iterdir()) == []  # deleted once no job needs it


def test_cancel_a_running_job(tiny_pipe, clip_root, tmp_path, monkeypatch):
    """DELETE while the job is at its first step: it stops at the next, writes nothing, and is
    recorded cancelled; the worker goes on with the next job."""
    paused, go = threading.Event(), threading.Event()
    at_step(monkeypatch, 1, lambda: paused.set() or go.wait(60))
    out = tmp_path / "out"
    with TestClient(create_app(tiny_pipe, [clip_root], out)) as client:
        job_id = client.post("/v1/jobs", json=job(clip_root / "a.mp4", steps=5)).json()["id"]
        assert paused.wait(120), "the job never reached its first step"
        assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "running"
        assert client.delete(f"/v1/jobs/{job_id}").json()["state"] == "cancelling"
        go.set()
        while (record := client.get(f"/v1/jobs/{job_id}").json())["state"] == "running":
            threading.Event().wait(0.05)
        assert record["state"] == "cancelled" and record["outputs"] == [], record
        assert record["progress"] < 1.0
        assert not (out / job_id).exists()
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 409
        paused.clear()
        later = client.post("/v1/jobs", json=job(clip_root / "a.mp4")).json()["id"]
        while (record := client.get(f"/v1/jobs/{later}").json())["state"] not in ("done", "failed"):
            threading.Event().wait(0.05)
        assert record["state"] == "done"


@pytest.mark.parametrize("case", ["finishes", "requeued"])
def test_shutdown_finishes_the_running_job_or_requeues_it(
    tiny_pipe, clip_root, tmp_path, monkeypatch, case
):
    """The job is at its first step when the server is told to stop. Within the drain time it
    finishes (done, its stem written); past it, it stops and goes back to the queue, and the
    next start runs it."""
    paused = threading.Event()
    wait_for = "stopping" if case == "finishes" else "requeue"
    at_step(monkeypatch, 1, lambda: paused.set() or worker_event(wait_for).wait(60))
    out = tmp_path / "out"
    drain = 60.0 if case == "finishes" else 0.1
    with TestClient(create_app(tiny_pipe, [clip_root], out, limits=Limits(drain=drain))) as client:
        job_id = client.post("/v1/jobs", json=job(clip_root / "a.mp4", steps=3)).json()["id"]
        assert paused.wait(120), "the job never reached its first step"
    if case == "finishes":
        assert state(out, job_id) == "done"
        assert (out / job_id / "a_rain.wav").is_file()
        return
    assert state(out, job_id) == "queued" and not (out / job_id).exists()
    monkeypatch.undo()
    with TestClient(create_app(tiny_pipe, [clip_root], out)) as client:
        while (record := client.get(f"/v1/jobs/{job_id}").json())["state"] != "done":
            assert record["state"] in ("queued", "running"), record
            threading.Event().wait(0.05)
        wav = client.get(f"/v1/jobs/{job_id}/files/{record['outputs'][0]['audio']}")
        assert soundfile.read(io.BytesIO(wav.content))[0].shape == (16000,)
