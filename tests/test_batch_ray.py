"""`selva-rt batch --ray` on a local 2-CPU Ray cluster: the same stems as in process, resume,
and a worker process killed mid-batch."""

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
from selva_rt.runtime import cli

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'selva-rt[ray]')")

torch.set_num_threads(1)

SAMPLE = Path(cli.__file__).parent / "assets" / "sample.mp4"
KILL_JOBS = [{"clip": "a.mp4", "prompts": ["rain"], "seed": s, "name": f"j{s}"} for s in range(6)]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def in_process(tmp_path_factory) -> Path:
    """The in-process runs of the six-job list (in/, out/) and of the kill test's jobs (kill_in/,
    kill_out/): the references. The Ray runs read the same clips (x264 does not promise the same
    bytes twice)."""
    root = tmp_path_factory.mktemp("local")
    jobs = make_jobs(root / "in")
    assert cli.main(["batch", str(jobs), "--out", str(root / "out"), *FAST]) == 1
    kill_jobs = make_jobs(root / "kill_in", KILL_JOBS)
    assert cli.main(["batch", str(kill_jobs), "--out", str(root / "kill_out"), *FAST]) == 0
    return root


def test_six_jobs_on_ray_same_stems_then_resume(cluster, in_process, tmp_path):
    jobs, out = in_process / "in" / "jobs.jsonl", tmp_path / "out"
    assert cli.main(["batch", str(jobs), "--out", str(out), *FAST, "--ray", "local"]) == 1
    first = final(out)
    failed = {r["line"]: r["error"] for r in first if r["status"] == "failed"}
    assert set(failed) == {3, 5}
    assert BAD[0][1] in failed[3] and BAD[1][1] in failed[5]
    assert all(r["worker"].startswith("ray:") for r in first if r["status"] == "ok")
    local, remote = stems(in_process / "out"), stems(out)
    assert set(local) == set(remote) and len(local) == 5
    for name in local:
        assert rel_l2(remote[name], local[name]) <= 1e-4, name
    # Resume on Ray: the 4 are skipped.
    assert cli.main(["batch", str(jobs), "--out", str(out), *FAST, "--ray", "local"]) == 1
    second = final(out)[len(first) :]
    assert sorted(r["line"] for r in second if r["status"] == "skipped") == [1, 2, 4, 6]


def _generating_worker_pids() -> list[int]:
    """Processes of BatchWorker actors in the middle of a call (Ray titles them so)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"ray::BatchWorker.generate"):
            pids.append(int(pid))
    return pids


def test_worker_killed_mid_batch(cluster, in_process, tmp_path):
    """kill -9 of the actor's process while it holds jobs: Ray restarts it and reruns them; every
    job is done once, and the stems equal the in-process ones."""
    jobs, out = in_process / "kill_in" / "jobs.jsonl", tmp_path / "out"
    codes = []
    args = ["batch", str(jobs), "--out", str(out), *FAST, "--ray", "local"]
    run = threading.Thread(target=lambda: codes.append(cli.main(args)), daemon=True)
    run.start()
    killed = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.is_alive():
        if (out / "results.jsonl").exists() and any(r["status"] == "ok" for r in records(out)):
            pids = _generating_worker_pids()
            if pids:
                (killed,) = pids
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.05)
    run.join(timeout=300)
    assert killed is not None and not run.is_alive() and codes == [0]
    ok = [r for r in final(out) if r["status"] == "ok"]
    assert len(ok) == len({r["id"] for r in ok}) == 6 and len(final(out)) == 6
    workers = {r["worker"] for r in ok}
    assert any(w.endswith(f":{killed}") for w in workers) and len(workers) == 2
    assert not hidden_files(out)
    local, remote = stems(in_process / "kill_out"), stems(out)
    assert set(local) == set(remote) and len(local) == 6
    for name in local:
        assert rel_l2(remote[name], local[name]) <= 1e-4, name


def test_stems_equal_in_process_and_on_ray_whatever_ray_reserves(tmp_path):
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
    for out, extra in (("local", []), ("ray", ["--ray", "local"])):
        run = subprocess.run(
            [*args, "--quiet", "--out", str(tmp_path / out), *extra],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert run.returncode == 0, run.stderr
    local, remote = stems(tmp_path / "local"), stems(tmp_path / "ray")
    assert set(local) == set(remote) == {"a_rain.wav"}
    assert np.array_equal(local["a_rain.wav"], remote["a_rain.wav"])
