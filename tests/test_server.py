"""`selva-rt serve` on the tiny_pipe variant, loopback only: the job lifecycle, uploads, grouping of
jobs over one clip, security and bad requests (4xx, nothing written), a full queue, 50
concurrent clients, and a `kill -9` of the server during a job."""

import io
import json
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from selva_rt.runtime import cli
from selva_rt.runtime.pipeline import Pipeline

starlette = pytest.importorskip("starlette", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (dev extra) is not installed")
from selva_rt.runtime.service.server import Limits, create_app  # noqa: E402
from servers import Server, free_port, wait  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

STEPS = 2  # structure, not sound: few Euler steps keep every test fast


def job(clip: Path, *prompts: str, **options) -> dict:
    return {"clip": str(clip), "prompts": list(prompts) or ["rain"], "steps": STEPS, **options}


def test_job_lifecycle(tiny_pipe, clip_root, tmp_path):
    out = tmp_path / "out"
    app = create_app(tiny_pipe, [clip_root], out)
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        info = client.get("/v1/info").json()
        assert (info["variant"], info["device"], info["precision"]) == ("tiny", "cpu", "fp32")
        assert {"/v1/jobs", "/v1/jobs/{id}"} <= set(client.get("/openapi.json").json()["paths"])
        r = client.post("/v1/jobs", json=job(clip_root / "a.mp4", "rain", seed=5, duration=1.0))
        assert r.status_code == 202 and r.json()["state"] == "queued"
        record = wait(client, r.json()["id"])
        assert record["state"] == "done" and record["progress"] == 1.0, record
        (files,) = record["outputs"]
        wav = client.get(f"/v1/jobs/{record['id']}/files/{files['audio']}")
        assert wav.status_code == 200
        audio, rate = soundfile.read(io.BytesIO(wav.content), dtype="float32")
        direct = tiny_pipe.generate(clip_root / "a.mp4", "rain", seed=5, steps=STEPS, duration=1.0)
        assert rate == direct.sample_rate and len(audio) == direct.audio.shape[1]
        assert np.abs(audio - direct.audio[0]).max() < 1e-4  # 24-bit stem of the same numbers
        video = client.get(f"/v1/jobs/{record['id']}/files/{files['video']}")
        assert video.status_code == 200 and len(video.content) > 1000
        assert client.get(f"/v1/jobs/{record['id']}/files/journal.sqlite3").status_code == 404
        assert client.delete(f"/v1/jobs/{record['id']}").status_code == 409
        assert client.get("/v1/jobs/nope").status_code == 404


def test_upload_and_jobs_sharing_one_clip_share_one_call(
    tiny_pipe, clip_root, tmp_path, monkeypatch
):
    app = create_app(tiny_pipe, [clip_root], tmp_path / "out")
    calls = []
    trunk = tiny_pipe.parts.video_trunk
    monkeypatch.setattr(tiny_pipe.parts, "video_trunk", lambda *a: calls.append(1) or trunk(*a))
    client = TestClient(app)  # no lifespan yet: the worker starts with both jobs queued
    clip = (clip_root / "a.mp4").read_bytes()
    ids = []
    for prompt in ("rain", "thunder"):
        form = {"job": json.dumps({"prompts": [prompt], "steps": STEPS, "duration": 1.0})}
        r = client.post("/v1/jobs", data=form, files={"clip": ("take 1.mp4", clip, "video/mp4")})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    with client:
        records = [wait(client, i) for i in ids]
    assert [r["state"] for r in records] == ["done", "done"]
    assert records[0]["outputs"][0]["audio"] == "take 1_rain.wav"
    assert len(calls) == 1  # one decode and one trunk for both jobs


def test_an_unexpected_error_fails_the_job_and_the_worker_goes_on(
    tiny_pipe, clip_root, tmp_path, monkeypatch
):
    import selva_rt.runtime.service.server as server

    real, calls = server.write_outputs, []

    def broken_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ModuleNotFoundError("No module named 'scipy'")
        return real(*args, **kwargs)

    monkeypatch.setattr(server, "write_outputs", broken_once)
    with TestClient(create_app(tiny_pipe, [clip_root], tmp_path / "out")) as client:
        first = client.post("/v1/jobs", json=job(clip_root / "a.mp4", duration=1.0)).json()["id"]
        record = wait(client, first)
        assert record["state"] == "failed" and "internal error" in record["error"], record
        second = client.post("/v1/jobs", json=job(clip_root / "a.mp4", duration=1.0)).json()["id"]
        assert wait(client, second)["state"] == "done"
        assert client.get("/healthz").json() == {"status": "ok"}


def test_cancel_a_queued_job(tiny_pipe, clip_root, tmp_path):
    app = create_app(tiny_pipe, [clip_root], tmp_path / "out")
    client = TestClient(app)
    job_id = client.post("/v1/jobs", json=job(clip_root / "a.mp4")).json()["id"]
    assert client.delete(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
    with client:
        assert wait(client, job_id)["state"] == "cancelled"
    assert not (tmp_path / "out" / job_id).exists()


def test_a_full_queue_answers_429_with_retry_after(tiny_pipe, clip_root, tmp_path):
    client = TestClient(
        create_app(tiny_pipe, [clip_root], tmp_path / "out", limits=Limits(queue=2))
    )
    codes = [client.post("/v1/jobs", json=job(clip_root / "a.mp4")).status_code for _ in range(3)]
    assert codes == [202, 202, 429]
    r = client.post("/v1/jobs", json=job(clip_root / "a.mp4"))
    assert r.status_code == 429 and r.headers["retry-after"].isdigit()


def bad_requests(clip_root: Path, tmp_path: Path) -> dict:
    outside = tmp_path / "outside.mp4"
    outside.write_bytes((clip_root / "a.mp4").read_bytes())
    (clip_root / "link.mp4").symlink_to(outside)
    (clip_root / "notes.txt").write_text("not a video")
    clip = str(clip_root / "a.mp4")
    return {
        "malformed JSON": (b'{"clip": ', 422, "not valid JSON"),
        "unknown field": ({"clip": clip, "prompts": ["a"], "speed": 2}, 422, "unknown field"),
        "outside the roots": ({"clip": str(outside), "prompts": ["a"]}, 403, "outside"),
        "symlink escape": ({"clip": str(clip_root / "link.mp4"), "prompts": ["a"]}, 403, "outside"),
        "relative path": ({"clip": "a.mp4", "prompts": ["a"]}, 422, "absolute path"),
        "missing file": ({"clip": str(clip_root / "b.mp4"), "prompts": ["a"]}, 404, "does not"),
        "not a video": ({"clip": str(clip_root / "notes.txt"), "prompts": ["a"]}, 422, "notes.txt"),
        "long prompt": ({"clip": clip, "prompts": ["a" * 20000]}, 422, "20000 characters"),
        "huge body": ({"clip": clip, "prompts": ["a"] * 20000}, 413, "over"),
        "no prompts": ({"clip": clip, "prompts": []}, 422, "at least one prompt"),
    }


def test_bad_requests_get_a_clear_4xx_and_write_nothing(tiny_pipe, clip_root, tmp_path):
    out = tmp_path / "out"
    client = TestClient(create_app(tiny_pipe, [clip_root], out))
    for case, (body, status, message) in bad_requests(clip_root, tmp_path).items():
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = client.post("/v1/jobs", content=content, headers={"content-type": "application/json"})
        assert r.status_code == status, (case, r.text)
        assert message in r.json()["error"], (case, r.json())
    assert client.get("/v1/info").json()["queued"] == 0
    assert {p.name for p in out.iterdir() if not p.name.startswith("journal.")} == {"uploads"}
    assert list((out / "uploads").iterdir()) == []


def test_a_token_guards_every_endpoint_but_health_openapi_and_the_panel(
    tiny_pipe, clip_root, tmp_path
):
    app = create_app(tiny_pipe, [clip_root], tmp_path / "out", token="s3cret")
    client = TestClient(app)  # no lifespan: the job stays queued
    ok = {"Authorization": "Bearer s3cret"}
    job_id = client.post("/v1/jobs", json=job(clip_root / "a.mp4"), headers=ok).json()["id"]
    guarded = [
        ("GET", "/v1/info", None),
        ("GET", "/v1/clips", None),
        ("GET", "/v1/jobs", None),
        ("POST", "/v1/jobs", job(clip_root / "a.mp4")),
        ("GET", f"/v1/jobs/{job_id}", None),
        ("GET", f"/v1/jobs/{job_id}/files/a_rain.wav", None),
        ("DELETE", f"/v1/jobs/{job_id}", None),
    ]
    routes = {(m, r.path) for r in app.routes for m in r.methods - {"HEAD"}}
    assert routes == {
        ("GET", "/"),
        ("GET", "/panel/{name}"),
        ("GET", "/healthz"),
        ("GET", "/openapi.json"),
        ("GET", "/v1/info"),
        ("GET", "/v1/clips"),
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/{id}"),
        ("DELETE", "/v1/jobs/{id}"),
        ("GET", "/v1/jobs/{id}/files/{name}"),
    }  # every route is either open below or guarded here
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        for method, path, body in guarded:
            r = client.request(method, path, json=body, headers=headers)
            assert r.status_code == 401 and "token" in r.json()["error"], (method, path, headers)
            assert r.headers["www-authenticate"] == "Bearer"
    assert client.get(f"/v1/jobs/{job_id}", headers=ok).json()["state"] == "queued"
    for path in ("/healthz", "/openapi.json", "/", "/panel/panel.js"):  # the panel asks for it
        assert client.get(path).status_code == 200, path
    for method, path, body in guarded:  # the right token gets past the guard
        assert client.request(method, path, json=body, headers=ok).status_code != 401, path


def test_serving_beyond_loopback_needs_a_token(clip_root, tmp_path, capsys):
    argv = ["serve", "--variant", "tiny", "--root", str(clip_root), "--host", "0.0.0.0"]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--token" in err and not (tmp_path / "out").exists()


# -- a real server process --------------------------------------------------------------------


def test_fifty_concurrent_clients_none_lost(clip_root, tmp_path):
    """50 clients at once against a queue of 16, while a first job is held running at its first
    step (tests/pause.py): exactly 16 get 202, the other 34 get 429 with Retry-After (the queue
    fills before anyone is turned away); once the first job goes on, every accepted job is
    journaled and done with its own prompt's stem. The server listens on loopback only (its
    default)."""
    out, marker, release = tmp_path / "out", tmp_path / "paused", tmp_path / "release"
    pause = {"at": "step", "count": 1, "marker": str(marker), "hold": "release"}
    server = Server(clip_root, out, "--max-queue", "16", pause=pause | {"release": str(release)})
    try:
        assert server.listening() == {"0100007F"}  # 127.0.0.1, and nothing else
        held = server.client.post(
            "/v1/jobs", json=job(clip_root / "a.mp4", "sound 50", duration=1.0)
        )
        assert held.status_code == 202, held.text
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert time.monotonic() < deadline, "the first job never reached its first step"
            time.sleep(0.05)
        answers: dict[int, httpx.Response] = {}
        start = threading.Barrier(50)

        def submit(i: int) -> None:
            with httpx.Client(base_url=server.client.base_url, timeout=60) as c:
                start.wait()
                answers[i] = c.post(
                    "/v1/jobs", json=job(clip_root / "a.mp4", f"sound {i}", duration=1.0)
                )

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert sorted(answers) == list(range(50))
        assert {r.status_code for r in answers.values()} <= {202, 429}
        accepted = {i: r.json()["id"] for i, r in answers.items() if r.status_code == 202}
        refused = [r for r in answers.values() if r.status_code == 429]
        assert len(accepted) == len(set(accepted.values())) == 16 and len(refused) == 34
        assert all(r.headers["retry-after"].isdigit() for r in refused)
        accepted[50] = held.json()["id"]
        with sqlite3.connect(out / "journal.sqlite3") as db:
            journaled = {row[0] for row in db.execute("SELECT id FROM jobs")}
        assert journaled == set(accepted.values())
        release.touch()
        for i, job_id in accepted.items():
            record = wait(server.client, job_id, timeout=600)
            assert record["state"] == "done", record
            (output,) = record["outputs"]
            assert output["prompt"] == f"sound {i}" and output["audio"] == f"a_sound_{i}.wav"
            assert (
                server.client.get(f"/v1/jobs/{job_id}/files/{output['audio']}").status_code == 200
            )
        assert server.client.get("/v1/info").json()["queued"] == 0
    finally:
        server.stop()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill -9", "SIGTERM"])
def test_a_job_interrupted_by_a_crash_or_shutdown_completes(clip_root, tmp_path, sig):
    """The job is stopped at its first step (tests/pause.py), then the server gets the signal.
    kill -9: the job is left running in the journal, and the next start requeues and runs it.
    SIGTERM: the server drains, finishing the job before it exits."""
    out = tmp_path / "out"
    marker = tmp_path / "paused"
    hold = "forever" if sig == signal.SIGKILL else "stop"
    server = Server(
        clip_root, out, pause={"at": "step", "count": 1, "marker": str(marker), "hold": hold}
    )
    try:
        clip = clip_root / "a.mp4"
        job_id = server.client.post("/v1/jobs", json=job(clip, steps=4, duration=1.0)).json()["id"]
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert time.monotonic() < deadline, "the job never reached its first step"
            time.sleep(0.05)
        assert server.client.get(f"/v1/jobs/{job_id}").json()["state"] == "running"
    finally:
        server.stop(sig)
    with sqlite3.connect(out / "journal.sqlite3") as db:
        (left,) = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
    assert left == ("running" if sig == signal.SIGKILL else "done")
    server = Server(clip_root, out)
    try:
        record = wait(server.client, job_id, timeout=600)
        assert record["state"] == "done", record
        wav = server.client.get(f"/v1/jobs/{job_id}/files/{record['outputs'][0]['audio']}")
        assert wav.status_code == 200
        assert not [p for p in (out / job_id).iterdir() if ".part" in p.name]
    finally:
        server.stop()


def test_delivery_options_of_a_job(tiny_pipe, clip_root, tmp_path):
    """What `generate --format flac --sample-rate 48000 --loudness -23 --otio --no-video`
    writes, asked in a job."""
    options = dict(format="flac", sample_rate=48000, loudness=-23, otio=True, no_video=True)
    with TestClient(create_app(tiny_pipe, [clip_root], tmp_path / "out")) as client:
        r = client.post("/v1/jobs", json=job(clip_root / "a.mp4", "rain", duration=1.0, **options))
        record = wait(client, r.json()["id"])
        assert record["state"] == "done", record
        (stem,) = record["outputs"]
        assert stem["audio"] == "a_rain.flac" and "video" not in stem
        assert stem["sample_rate"] == 48000
        assert abs(stem["loudness"]["integrated_lufs"] - -23) < 0.1
        audio = client.get(f"/v1/jobs/{record['id']}/files/a_rain.flac")
        assert soundfile.info(io.BytesIO(audio.content)).samplerate == 48000
        assert record["timeline"] == "a.otio"
        otio = client.get(f"/v1/jobs/{record['id']}/files/a.otio")
        assert otio.status_code == 200 and b"a_rain.flac" in otio.content
        bad = client.post("/v1/jobs", json=job(clip_root / "a.mp4", format="mp3"))
        assert bad.status_code == 422 and "format" in bad.json()["error"]


def test_the_journal_lists_jobs_newest_first_a_page_at_a_time(tiny_pipe, clip_root, tmp_path):
    from datetime import datetime

    client = TestClient(
        create_app(tiny_pipe, [clip_root], tmp_path / "out")
    )  # no worker: all queued
    ids = [
        client.post("/v1/jobs", json=job(clip_root / "a.mp4", f"s{i}")).json()["id"]
        for i in range(3)
    ]
    client.delete(f"/v1/jobs/{ids[0]}")
    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["jobs"]] == ids[:0:-1] and page["total"] == 3
    assert page["next_offset"] == 2
    rest = client.get("/v1/jobs", params={"limit": 2, "offset": 2}).json()
    assert [j["id"] for j in rest["jobs"]] == ids[:1] and rest["next_offset"] is None
    queued = client.get("/v1/jobs", params={"state": "queued"}).json()
    assert {j["id"] for j in queued["jobs"]} == set(ids[1:]) and queued["total"] == 2
    created = datetime.fromisoformat(page["jobs"][0]["created"])
    assert created.utcoffset().total_seconds() == 0 and page["jobs"][0]["created"].endswith("Z")
    for query in ({"limit": 0}, {"offset": -1}, {"limit": "x"}, {"state": "lost"}):
        assert client.get("/v1/jobs", params=query).status_code == 422


def test_progress_reaches_one_only_when_done(tmp_path):
    from selva_rt.runtime.service.journal import Journal

    journal = Journal(tmp_path / "journal.sqlite3")
    job_id = journal.add({"clip": "/a.mp4", "prompts": ["x"], "steps": 10})
    (claimed,) = journal.claim()
    stages = [claimed.to_dict()["stage"]]
    for done in (4, 10):
        journal.progress(job_id, done)
        record = journal.get(job_id).to_dict()
        stages.append(record["stage"])
        assert record["progress"] < 1.0
    journal.finish(job_id, "done")
    assert stages == ["preparing", "sampling", "finishing"]
    assert journal.get(job_id).to_dict()["progress"] == 1.0


def test_uploads_are_kept_only_while_a_job_needs_them(tiny_pipe, clip_root, tmp_path):
    uploads = tmp_path / "out" / "uploads"
    client = TestClient(create_app(tiny_pipe, [clip_root], tmp_path / "out"))
    form = {"job": json.dumps({"prompts": ["rain"], "steps": STEPS, "duration": 1.0})}
    refused = client.post("/v1/jobs", data=form, files={"clip": ("my notes.txt", b"not a video")})
    assert refused.status_code == 422, refused.text
    assert "my notes.txt" in refused.json()["error"] and "uploads" not in refused.json()["error"]
    assert list(uploads.iterdir()) == []  # a refused upload is not kept
    clip = (clip_root / "a.mp4").read_bytes()
    ids = [
        client.post("/v1/jobs", data=form, files={"clip": ("take.mp4", clip)}).json()["id"]
        for _ in range(2)
    ]
    assert len(list(uploads.iterdir())) == 1  # one clip, by content, for both jobs
    client.delete(f"/v1/jobs/{ids[0]}")
    assert len(list(uploads.iterdir())) == 1  # the other job still needs it
    with client:
        assert wait(client, ids[1])["state"] == "done"
    assert list(uploads.iterdir()) == []  # done: gone


def test_cors_only_for_the_listed_origins(tiny_pipe, clip_root, tmp_path):
    app = create_app(tiny_pipe, [clip_root], tmp_path / "out", cors=("https://panel.local:8443",))
    client = TestClient(app)
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    ok = client.options("/v1/jobs", headers={"Origin": "https://panel.local:8443", **ask})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://panel.local:8443"
    other = client.options("/v1/jobs", headers={"Origin": "https://evil.example", **ask})
    assert "access-control-allow-origin" not in other.headers
    plain = client.get("/v1/info", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in plain.headers
    default = TestClient(create_app(tiny_pipe, [clip_root], tmp_path / "out2"))
    assert (
        "access-control-allow-origin"
        not in default.get("/v1/info", headers={"Origin": "https://panel.local:8443"}).headers
    )


def test_a_second_server_is_refused_before_it_loads_anything(
    clip_root, tmp_path, capsys, monkeypatch
):
    """Same --out: the journal is locked; same port: it is taken. Either is one line, before
    the model loads and before the first server's running jobs could be requeued."""
    from selva_rt.runtime.service.journal import Journal

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Pipeline, "from_pretrained", no_loading)
    out = tmp_path / "out"
    out.mkdir()
    first = Journal(out / "journal.sqlite3")  # the first server's
    job_id = first.add({"clip": "/a.mp4", "prompts": ["x"], "steps": 10})
    first.claim()
    argv = ["serve", "--variant", "tiny", "--root", str(clip_root), "--quiet"]
    assert cli.main([*argv, "--out", str(out), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another selva-rt serve uses" in err, err
    assert first.get(job_id).state == "running"  # untouched
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main([*argv, "--out", str(tmp_path / "other"), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err, err
    first.close()


def test_make_cert_then_serve_https(clip_root, tmp_path, capsys):
    """`--make-cert DIR` writes a pair for localhost that a client verifying against it
    accepts; the key is the owner's only; a bad pair is refused in one line."""
    assert cli.main(["serve", "--make-cert", str(tmp_path / "tls")]) == 0
    cert = tmp_path / "tls" / "selva-rt-localhost.pem"
    key = tmp_path / "tls" / "selva-rt-localhost-key.pem"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert cli.main(["serve", "--make-cert", str(tmp_path / "tls")]) == 1  # no clobbering
    capsys.readouterr()
    argv = ["serve", "--variant", "tiny", "--root", str(clip_root), "--out", str(tmp_path / "o")]
    assert cli.main([*argv, "--tls-cert", str(cert), "--tls-key", str(cert)]) == 2
    assert "not a usable certificate" in capsys.readouterr().err
    server = Server(
        clip_root,
        tmp_path / "out",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        https=True,
        verify=str(cert),
    )
    try:
        assert server.client.get("/healthz").json() == {"status": "ok"}
        assert b"selva-rt" in server.client.get("/").content
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
    finally:
        server.stop()
