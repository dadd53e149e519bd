"""`selva-rt serve --ray local`: the HTTP front, journal and queue in the server's process, the
jobs on two Ray actors. A job gives the stem the local pipeline gives; an actor killed with
kill -9 in the middle of a job is restarted by Ray and its job, requeued by the journal,
completes; /v1/info shows the workers."""

import io
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

pytest.importorskip("ray", reason="Ray is not installed (pip install 'selva-rt[ray]')")
pytest.importorskip("starlette", reason="the serve extra is not installed")
from selva_rt.runtime.pipeline import Pipeline  # noqa: E402
from servers import Server, wait  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory, sample_clip):
    root = tmp_path_factory.mktemp("ray")
    (root / "clips").mkdir()
    (root / "clips" / "a.mp4").write_bytes(sample_clip.read_bytes())
    server = Server(
        root / "clips", root / "out", "--ray", "local", "--ray-workers", "2", timeout=300
    )
    server.root = root
    yield server
    pids = [int(w["where"].rsplit(":", 1)[1]) for w in workers(server)]
    server.stop()
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in pids):  # the cluster went with it
        assert time.monotonic() < deadline, "the Ray actors outlived the server"
        time.sleep(0.2)


def job(served, **options) -> dict:
    return {"clip": str(served.root / "clips" / "a.mp4"), "prompts": ["rain"], **options}


def stem(served, record: dict) -> np.ndarray:
    name = record["outputs"][0]["audio"]
    data = served.client.get(f"/v1/jobs/{record['id']}/files/{name}").content
    return soundfile.read(io.BytesIO(data), dtype="float32")[0]


def workers(served) -> list[dict]:
    return served.client.get("/v1/info").json()["workers"]


def test_info_shows_the_ray_workers(served):
    found = workers(served)
    assert len(found) == 2 and all(w["where"].startswith("ray:") and w["alive"] for w in found)
    assert len({w["where"] for w in found}) == 2  # two actor processes


def test_a_job_on_ray_gives_the_local_stem_and_survives_a_killed_actor(served):
    options = {"seed": 5, "steps": 2, "duration": 1.0}
    first = served.client.post("/v1/jobs", json=job(served, **options)).json()["id"]
    long = {"seed": 9, "steps": 120, "duration": 1.0}
    second = served.client.post("/v1/jobs", json=job(served, **long)).json()["id"]
    record = wait(served.client, first, timeout=300)
    assert record["state"] == "done", record
    wait(served.client, second, states=("running",), timeout=300)
    deadline = time.monotonic() + 300
    while served.client.get(f"/v1/jobs/{second}").json()["stage"] != "sampling":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (holder,) = [w for w in workers(served) if second in w["running"]]
    os.kill(int(holder["where"].rsplit(":", 1)[1]), signal.SIGKILL)
    killed = served.client.get(f"/v1/jobs/{second}").json()
    assert killed["state"] in ("running", "queued"), killed
    again = wait(served.client, second, timeout=600)
    assert again["state"] == "done", again
    while holder["where"] in {w["where"] for w in workers(served)}:  # until Ray restarted it
        assert time.monotonic() < deadline + 300
        time.sleep(0.2)
    assert len(workers(served)) == 2

    pipe = Pipeline.from_pretrained("tiny", device="cpu", precision="fp32")
    clip = served.root / "clips" / "a.mp4"
    for done, opts in ((record, options), (again, long)):
        local = pipe.generate(clip, "rain", **opts).audio[0]
        remote = stem(served, done)
        assert len(remote) == len(local)
        assert np.abs(remote - local).max() < 1e-4  # the 24-bit stem of the same numbers
