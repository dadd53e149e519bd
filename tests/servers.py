"""`selva-rt serve --variant tiny` as a real server process on a free loopback port, for the
tests that need one (a kill -9, a browser, TLS, Ray)."""

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The server in a subprocess; `client` talks to it (`verify`: a CA file for HTTPS)."""

    def __init__(
        self,
        roots: Path,
        out: Path,
        *extra: str,
        https: bool = False,
        verify: str | bool = True,
        port: int | None = None,
        timeout: float = 120,
    ):
        self.port = port or free_port()
        argv = ["serve", "--variant", "tiny", "--root", str(roots), "--out", str(out)]
        argv += ["--port", str(self.port), "--device", "cpu", "--quiet", *extra]
        code = "import sys; from selva_rt.runtime.cli import main; sys.exit(main(sys.argv[1:]))"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", code, *argv], env=env)
        self.url = f"{'https' if https else 'http'}://127.0.0.1:{self.port}"
        if isinstance(verify, str):  # a certificate to trust: the server's self-signed one
            verify = ssl.create_default_context(cafile=verify)
        self.client = httpx.Client(base_url=self.url, timeout=30, verify=verify)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the server exited"
            try:
                if self.client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop(signal.SIGKILL)
        raise AssertionError(f"the server did not come up in {timeout} s")

    def stop(self, sig=signal.SIGTERM) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=120)
        self.client.close()


def wait(client, job_id: str, states=("done", "failed", "cancelled"), timeout=120) -> dict:
    """The job's record once it is in one of `states`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = client.get(f"/v1/jobs/{job_id}").json()
        if record["state"] in states:
            return record
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {record['state']} after {timeout} s")
