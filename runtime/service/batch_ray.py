"""`selva-rt batch --ray`: the same jobs on a Ray cluster (imported only on that path).

Layout: each job is a decode task (CPU, anywhere in the cluster) whose result feeds a call on a
`BatchWorker` actor, one per GPU (or per CPU slot), each holding a warm Pipeline. Every actor is
kept `DEPTH` jobs deep, so its next clip is decoded while it generates. Results stream back to the
driver (batch.run_batch), which writes the outputs and the records, exactly as in process. Ray
restarts a worker process that dies and retries the calls it held; a worker that keeps dying is
dropped and its jobs are recorded as failed, to be retried by the next run.

Clip paths must be readable where the decode tasks run (on a real cluster: a shared mount), and
selva-rt installed on every node; outputs are written by the driver only.

`selva-rt serve --ray` uses the same actors (`start_workers`) through `BatchWorker.call`: one
request at a time per actor, with its progress (`steps`) and a stop (`stop`) answered while it
runs (service/serve_ray.py).
"""

import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator

import torch

from ..errors import SelvaError, UsageError

try:
    import ray
except ImportError:
    raise UsageError("--ray needs Ray: pip install 'selva-rt[ray]'") from None

from . import jobs

ACTOR_RESTARTS = 2  # a worker process that dies is restarted this often, its calls retried
DEPTH = 2  # jobs queued on each actor: the next one decodes while the current one generates


@ray.remote(num_cpus=1)
def _decode(job, variant):
    return jobs.decode(job, variant)


@ray.remote(max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)
class BatchWorker:
    """A warm pipeline in a Ray worker process, computing with `threads` CPU threads: the
    driver's count, whatever Ray reserved, so a stem equals the in-process one (bf16 on the CPU
    rounds by oneDNN's blocking, which follows the thread count)."""

    def __init__(
        self, variant: str, device: str, precision: str, backend: str, engines, threads: int
    ):
        from ..pipeline import Pipeline

        torch.set_num_threads(threads)
        self.where = f"ray:{ray.util.get_node_ip_address()}:{os.getpid()}"
        self.error = None
        try:
            self.pipe = Pipeline.from_pretrained(
                variant, device=device, precision=precision, backend=backend, engines=engines
            )
        except SelvaError as err:  # reported by ready(), as one line
            self.error = str(err)

    def ready(self) -> str | None:
        return self.error

    def generate(self, job, decoded):
        return jobs.generate(self.pipe, job, decoded), self.where

    def describe(self) -> dict:
        return {
            "where": self.where,
            "device": str(self.pipe.device),
            "precision": self.pipe.precision,
        }

    def call(self, key: str, clip: str, prompts: list[str], options: dict):
        """`Pipeline.generate(clip, prompts, **options)` -> (GenerationResult, SelvaError, or
        None when stopped; where it ran). The server's actors are threaded (max_concurrency 2):
        `steps(key)` and `stop` are answered while the call named `key` runs."""
        self.key, self.done, self.halt = key, 0, False

        def tell(steps: int) -> None:
            self.done += steps
            if self.halt:
                raise _Halted

        try:
            return self.pipe.generate(clip, prompts, progress=tell, **options), self.where
        except _Halted:
            return None, self.where
        except SelvaError as err:
            return err, self.where

    def steps(self, key: str) -> int:
        """Euler steps the call named `key` has done (0 until it starts)."""
        return self.done if getattr(self, "key", None) == key else 0

    def stop(self) -> None:
        """Stop the running call at its next step."""
        self.halt = True


class _Halted(Exception):
    """Raised inside a call that `BatchWorker.stop` stopped."""


def start_workers(
    count: int, on_gpu: bool, variant: str, precision: str, backend: str, engines, **actor_options
) -> list:
    """`count` BatchWorker actors, each loaded and ready (one per GPU, or one CPU each); a load
    that fails is one SelvaError, with the actors gone."""
    place = {"num_gpus": 1, "num_cpus": 1} if on_gpu else {"num_cpus": 1}
    device = "cuda" if on_gpu else "cpu"  # each actor sees only its own GPU
    actors = [
        BatchWorker.options(**place, **actor_options).remote(
            variant, device, precision, backend, engines, torch.get_num_threads()
        )
        for _ in range(count)
    ]
    errors = [e for e in ray.get([a.ready.remote() for a in actors]) if e]
    if errors:
        for actor in actors:
            ray.kill(actor)
        raise SelvaError(errors[0])
    return actors


class RayCluster:
    """A connection to a cluster: `address` as ray.init takes it, or "local" to start one here.
    An already initialised Ray (a test, a notebook) is used as it is."""

    def __init__(self, address: str, quiet: bool = False):
        self.started = not ray.is_initialized()
        if self.started:
            options = dict(log_to_driver=False, logging_level=logging.WARNING)
            try:
                if address == "local":
                    ray.init(include_dashboard=False, **options)
                else:
                    ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise UsageError(f"cannot reach the Ray cluster at {address}: {first}") from None

    def device(self, device: str) -> torch.device:
        """Where the workers will run: a GPU when the cluster has one (for auto or cuda)."""
        gpus = ray.cluster_resources().get("GPU", 0)
        if device == "auto":
            return torch.device("cuda" if gpus else "cpu")
        kind = torch.device(device).type if device in ("cpu", "cuda") else device.split(":")[0]
        if kind == "cuda" and not gpus:
            raise UsageError("the Ray cluster has no GPU; use --device cpu")
        if kind not in ("cpu", "cuda"):
            raise UsageError(f"unsupported device {device!r}; use cpu, cuda or auto")
        return torch.device(kind)

    def workers(self, device: str, workers: int | None) -> tuple[int, bool]:
        """(how many actors, on GPUs?): one per GPU, or one per CPU but one left for decoding."""
        on_gpu = self.device(device).type == "cuda"
        resources = ray.cluster_resources()
        if workers is None:
            workers = int(resources["GPU"]) if on_gpu else max(1, int(resources["CPU"]) - 1)
        if workers < 1:
            raise UsageError("--ray-workers must be at least 1")
        return workers, on_gpu

    def engine(self, *, device: str, workers: int | None, variant: str, **options) -> "RayEngine":
        return RayEngine(*self.workers(device, workers), variant, **options)

    def close(self) -> None:
        if self.started:
            ray.shutdown()


class RayEngine:
    """`workers` actors; `run` yields results as they complete (not in job order)."""

    def __init__(self, workers: int, on_gpu: bool, variant: str, **options):
        from ..variants import get_variant

        self.variant = get_variant(variant)
        self.actors = start_workers(
            workers, on_gpu, variant, options["precision"], options["backend"], options["engines"]
        )

    def run(self, entries: Iterable[jobs.Entry]) -> Iterator[tuple[jobs.Entry, object, str]]:
        todo = deque(entries)
        live = list(self.actors)
        load = dict.fromkeys(live, 0)
        running: dict = {}  # call ref -> (entry, actor)

        def submit(actor) -> None:
            entry = todo.popleft()
            frames = _decode.remote(entry.job, self.variant)
            running[actor.generate.remote(entry.job, frames)] = (entry, actor)
            load[actor] += 1

        for _ in range(DEPTH):
            for actor in live:
                if todo:
                    submit(actor)
        while running:
            (ready,), _ = ray.wait(list(running), num_returns=1)
            entry, actor = running.pop(ready)
            load[actor] -= 1
            try:
                outcome, where = ray.get(ready)
            except ray.exceptions.RayActorError as err:
                if actor in live:
                    live.remove(actor)
                outcome, where = SelvaError(f"its Ray worker died ({_first_line(err)})"), "ray"
            except ray.exceptions.RayError as err:
                outcome, where = SelvaError(f"internal error on Ray: {_first_line(err)}"), "ray"
            yield entry, outcome, where
            while todo and live and min(load[a] for a in live) < DEPTH:
                submit(min(live, key=load.get))
        for entry in todo:
            yield entry, SelvaError("no Ray worker is left (all died); rerun to retry"), "ray"

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
