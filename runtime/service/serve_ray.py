"""`selva-rt serve --ray ADDRESS`: the server's jobs run on Ray actors (imported only here).

    cluster = RayCluster("local")                   # or auto, ray://HOST:10001, ...
    pipes = ray_pipes(cluster, "tiny", "auto", "auto", workers=None)   # one per GPU / CPU slot
    create_app(pipes, roots, out_dir)               # one Worker thread per actor

The HTTP front, the journal and the queue stay in the server's process, the one source of truth:
each actor gets a Worker thread there that claims jobs from the journal exactly as the local
worker does (jobs over one clip still share a call) and writes their outputs. Only
`Pipeline.generate` runs on the actor: `RayPipe` stands in for a Pipeline. The actors are
batch_ray's `BatchWorker`s, threaded so that a running call reports its steps and can be
stopped (cancel, shutdown). An actor that dies is restarted by Ray, and the jobs it held go back
to the queue (a job whose worker died `WORKER_DEATHS` times fails).

The actors read clips by path: on a real cluster the roots and the server's --out (uploads) must
be on a shared mount at the same paths, and selva-rt installed on every node.
"""

import secrets
import threading
import time

from ..errors import SelvaError
from ..variants import get_variant
from .batch_ray import RayCluster, ray, start_workers
from .server import Interrupted, WorkerDied

POLL_S = 0.2  # how often a running call's steps are read (progress, cancel)
RECOVER_S = 600.0  # longest wait for Ray to restart a dead actor (it loads the model again)


class RayPipe:
    """A Pipeline's `generate` on one Ray actor, for the server's Worker."""

    def __init__(self, actor, variant: str):
        self.actor, self.variant = actor, get_variant(variant)
        described = ray.get(actor.describe.remote())
        self.where, self.device = described["where"], described["device"]
        self.precision = described["precision"]

    def generate(self, clip, prompts: list[str], *, progress, **options):
        """As Pipeline.generate; `progress(steps)` is told the steps done (and may raise
        Interrupted to stop the call); WorkerDied if the actor died meanwhile."""
        key = secrets.token_hex(8)
        ref = self.actor.call.remote(key, str(clip), list(prompts), options)
        told = 0
        try:
            while not ray.wait([ref], timeout=POLL_S)[0]:
                done = ray.get(self.actor.steps.remote(key))
                progress(done - told)  # also 0: it checks for a cancel or a shutdown
                told = max(told, done)
            outcome, self.where = ray.get(ref)
        except Interrupted:
            self.actor.stop.remote()
            ray.wait([ref])  # the actor returns at its next step; the journal takes it from here
            raise
        except ray.exceptions.RayActorError as err:
            raise WorkerDied(f"its Ray worker {self.where} died ({_first_line(err)})") from None
        except ray.exceptions.RayTaskError as err:
            raise RuntimeError(_first_line(err)) from None
        if outcome is None:  # stopped by a stop that came after the last poll
            raise Interrupted
        if isinstance(outcome, SelvaError):
            raise outcome
        try:
            progress(max(0, outcome.steps - told))  # the steps since the last poll
        except Interrupted:
            pass  # the result is here: the Worker decides by its cancelled set
        return outcome

    def recover(self, stopping: threading.Event, timeout: float = RECOVER_S) -> None:
        """Wait until Ray has restarted the actor (or `stopping` is set, or `timeout` passes:
        then the next call fails fast and its jobs are requeued again)."""
        deadline = time.monotonic() + timeout
        while not stopping.is_set() and time.monotonic() < deadline:
            try:
                self.where = ray.get(self.actor.describe.remote(), timeout=POLL_S * 10)["where"]
                return
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                stopping.wait(POLL_S)


def ray_pipes(
    cluster: RayCluster, variant: str, device: str, precision: str, workers: int | None
) -> list[RayPipe]:
    """One RayPipe per actor: one per GPU of the cluster, or per CPU slot (`workers` to choose),
    each with a warm pipeline."""
    count, on_gpu = cluster.workers(device, workers)
    actors = start_workers(
        count,
        on_gpu,
        variant,
        precision,
        "torch",
        None,
        max_concurrency=2,  # `steps` and `stop` while a call runs
        max_restarts=-1,  # a dead actor comes back; its jobs are requeued by the journal
        max_task_retries=0,  # ... not rerun behind the journal's back
    )
    return [RayPipe(actor, variant) for actor in actors]


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
