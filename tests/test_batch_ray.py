"""`selva-rt batch --ray` on a local Ray cluster of 3 logical CPUs: the same stems as in process,
resume in either mode after an interrupted run, --ray-workers, and a worker process killed
at a known point of a job."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from batchjobs import BAD, FAST, final, hidden_files, make_jobs, records, rel_l2, stems
from pause import after_write
from selva_rt.runtime import cli

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'selva-rt[ray]')")

torch.set_num_threads(1)

SAMPLE = Path(cli.__file__).parent / "assets" / "sample.mp4"
# Four jobs: the killed actor has done two before the paused third (its pid is in their records)
# and has one more queued (DEPTH 2); an interrupted run has one done, one half written, one left.
KILL_JOBS = [{"clip": "a.mp4", "prompts": ["rain"], "seed": s, "name": f"j{s}"} for s in range(4)]


def actor_pause_hook(spec: str):
    """A setup hook for Ray's worker processes (pickled by value: it imports what it uses):
    while the JSON file `spec` exists, the actor's call for the job with its "seed" writes its
    pid to "marker" and waits there, once, so a test kills it at that known point."""

    def setup() -> None:
        import json
        import os
        import time
        from pathlib import Path

        from selva_rt.runtime.pipeline import Pipeline

        real = Pipeline.generate_many  # how an actor runs its jobs

        def generate_many(self, requests, *args, **kwargs):
            path = Path(spec)
            want = json.loads(path.read_text()) if path.is_file() else None
            if want and any(r.seed == want["seed"] for r in requests):
                try:
                    fd = os.open(want["marker"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:  # paused once already: this is the retry
                    return real(self, requests, *args, **kwargs)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                while True:
                    time.sleep(60)
            return real(self, requests, *args, **kwargs)

        Pipeline.generate_many = generate_many

    return setup


@pytest.fixture(scope="module")
def pause_spec(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pause") / "spec.json"


@pytest.fixture(scope="module")
def cluster(pause_spec, ray_temp_dir):
    """A local cluster of 3 logical CPUs (default: 2 workers and a CPU for decoding); its
    session folders go to the run's RAY_TMPDIR (conftest.py), not /tmp/ray."""
    ray.init(
        num_cpus=3,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"worker_process_setup_hook": actor_pause_hook(str(pause_spec))},
    )
    assert list((ray_temp_dir / "ray").glob("session_2*")), "Ray's session is not in RAY_TMPDIR"
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def in_process(tmp_path_factory) -> Path:
    """The in-process runs of the six-job list (in/, out/) and of the kill test's jobs (kill_in/,
    kill_out/): the references. The Ray runs read the same clips (x264 does not promise the same
    bytes twice). two/: the kill test's first two jobs, for counting actors."""
    root = tmp_path_factory.mktemp("local")
    jobs = make_jobs(root / "in")
    assert cli.main(["batch", str(jobs), "--out", str(root / "out"), *FAST]) == 1
    kill_jobs = make_jobs(root / "kill_in", KILL_JOBS)
    assert cli.main(["batch", str(kill_jobs), "--out", str(root / "kill_out"), *FAST]) == 0
    make_jobs(root / "two", KILL_JOBS[:2])
    return root


def test_six_jobs_on_ray_same_stems_then_resume(cluster, in_process, tmp_path):
    jobs, out = in_process / "in" / "jobs.jsonl", tmp_path / "out"
    assert cli.main(["batch", str(jobs), "--out", str(out), *FAST, "--ray", "local"]) == 1
    first = final(out)
    failed = {r["line"]: r["error"] for r in first if r["status"] == "failed"}
    assert set(failed) == {3, 5}
    assert BAD[0][1] in failed[3] and BAD[1][1] in failed[5]
    assert all(r["worker"].startswith("ray:") for r in first if r["status"] == "ok")
    assert len({r["worker"] for r in first if r["status"] == "ok"}) == 2  # the default here
    local, remote = stems(in_process / "out"), stems(out)
    assert set(local) == set(remote) and len(local) == 5
    for name in local:
        assert rel_l2(remote[name], local[name]) <= 1e-4, name
    # Resume on Ray: the 4 are skipped.
    assert cli.main(["batch", str(jobs), "--out", str(out), *FAST, "--ray", "local"]) == 1
    second = final(out)[len(first) :]
    assert sorted(r["line"] for r in second if r["status"] == "skipped") == [1, 2, 4, 6]


def test_worker_killed_mid_batch(cluster, in_process, pause_spec, tmp_path):
    """kill -9 of the one actor's process in its call for the third job (paused there, see
    actor_pause_hook): Ray restarts it and reruns its jobs; every job is done once, and the
    stems equal the in-process ones."""
    jobs, out = in_process / "kill_in" / "jobs.jsonl", tmp_path / "out"
    marker = tmp_path / "paused"
    pause_spec.write_text(json.dumps({"seed": 2, "marker": str(marker)}))
    codes = []
    args = ["batch", str(jobs), "--out", str(out), *FAST, "--ray", "local", "--ray-workers", "1"]
    run = threading.Thread(target=lambda: codes.append(cli.main(args)), daemon=True)
    run.start()
    try:
        deadline = time.monotonic() + 900
        while not marker.exists():
            assert run.is_alive() and time.monotonic() < deadline, "no actor reached the job"
            time.sleep(0.05)
        time.sleep(0.1)  # the pid is written right after the file is made
        killed = int(marker.read_text())
        os.kill(killed, signal.SIGKILL)
    finally:
        pause_spec.unlink()
    run.join(timeout=300)
    assert not run.is_alive() and codes == [0]
    ok = [r for r in final(out) if r["status"] == "ok"]
    assert len(ok) == len({r["id"] for r in ok}) == len(KILL_JOBS) == len(final(out))
    workers = {r["worker"] for r in ok}
    assert any(w.endswith(f":{killed}") for w in workers) and len(workers) == 2
    assert not any(r["worker"].endswith(f":{killed}") for r in ok if r["job"]["seed"] == 2)
    assert not hidden_files(out)
    local, remote = stems(in_process / "kill_out"), stems(out)
    assert set(local) == set(remote) and len(local) == len(KILL_JOBS)
    for name in local:
        assert rel_l2(remote[name], local[name]) <= 1e-4, name


def test_stems_equal_in_process_and_on_ray_whatever_ray_reserves(tmp_path, ray_temp_dir):
    """The CPU's rounding follows the thread count (oneDNN's blocking; more so in bf16); a Ray
    CPU actor reserves one CPU (Ray sets OMP_NUM_THREADS=1) while `selva-rt` computes with the
    machine's physical cores: the actor takes the driver's count, so the stems are the same
    bits in the default precision (25 steps over the 3 s sample, as users run it: 1.2e-5 apart
    in fp32 before, on a 2-core EPYC without AVX-512)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.mp4").symlink_to(SAMPLE)
    jobs = tmp_path / "in" / "jobs.jsonl"
    jobs.write_text('{"clip": "a.mp4", "prompts": ["rain"], "seed": 3}\n')
    script = Path(sys.executable).parent / "selva-rt"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    args = [str(script), "batch", str(jobs), "--variant", "tiny"]
    sessions = set((ray_temp_dir / "ray").glob("session_2*"))
    for out, extra in (("local", []), ("ray", ["--ray", "local"])):
        run = subprocess.run(
            [*args, "--quiet", "--out", str(tmp_path / out), *extra],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert run.returncode == 0, run.stderr
    # The subprocess's cluster kept its session folders in the run's RAY_TMPDIR (conftest.py).
    assert len(set((ray_temp_dir / "ray").glob("session_2*")) - sessions) == 1
    local, remote = stems(tmp_path / "local"), stems(tmp_path / "ray")
    assert set(local) == set(remote) == {"a_rain.wav"}
    assert np.array_equal(local["a_rain.wav"], remote["a_rain.wav"])


def test_ray_workers_sets_the_actors(cluster, in_process, tmp_path, capsys):
    """Default on this 3-CPU cluster: two actors (one CPU left for decoding); --ray-workers 1:
    one; 0: a one-line error before any work. Two jobs are enough: the first round hands one
    job to each actor (RayEngine.run), so two actors show as two workers in the records."""
    jobs = in_process / "two" / "jobs.jsonl"
    for extra, count in (([], 2), (["--ray-workers", "1"], 1)):
        out = tmp_path / f"out{count}"
        assert (
            cli.main(["batch", str(jobs), "--out", str(out), *FAST, "--ray", "local", *extra]) == 0
        )
        assert len({r["worker"] for r in final(out)}) == count, extra
    out = tmp_path / "none"
    capsys.readouterr()
    args = ["batch", str(jobs), "--out", str(out), *FAST, "--ray", "local", "--ray-workers", "0"]
    assert cli.main(args) == 2
    assert capsys.readouterr().err == "selva-rt: error: --ray-workers must be at least 1\n"
    assert [r for r in final(out) if r["status"] != "skipped"] == []


def interrupted_at_the_second_write(monkeypatch) -> None:
    """The driver stops (Ctrl-C) right after the second job's files are in place, before its
    ok record: as a kill of the driver there would leave things."""

    def interrupt():
        raise KeyboardInterrupt

    after_write(monkeypatch, 2, interrupt)


@pytest.mark.parametrize("first, then", [("ray", "process"), ("process", "ray")])
def test_an_interrupted_run_resumes_in_the_other_mode(
    cluster, in_process, tmp_path, monkeypatch, first, then
):
    """One results.jsonl for both modes: what one mode finished is skipped by the other, the
    job it was writing is rewritten (its writing record), the rest runs."""
    jobs, out = in_process / "kill_in" / "jobs.jsonl", tmp_path / "out"
    mode = {"ray": ["--ray", "local"], "process": []}
    interrupted_at_the_second_write(monkeypatch)
    assert cli.main(["batch", str(jobs), "--out", str(out), *FAST, *mode[first]]) == 130
    monkeypatch.undo()
    assert [r["status"] for r in records(out)] == ["writing", "ok", "writing"]
    assert cli.main(["batch", str(jobs), "--out", str(out), *FAST, *mode[then]]) == 0
    later = final(out)[1:]
    done = records(out)[0]["line"]
    assert sorted((r["line"], r["status"]) for r in later) == sorted(
        (line, "skipped" if line == done else "ok") for line in range(1, len(KILL_JOBS) + 1)
    )
    where = "ray:" if then == "ray" else "local:"
    assert all(r["worker"].startswith(where) for r in later if r["status"] == "ok")
    local, resumed = stems(in_process / "kill_out"), stems(out)
    assert set(local) == set(resumed)
    for name in local:
        assert rel_l2(resumed[name], local[name]) <= 1e-4, name
