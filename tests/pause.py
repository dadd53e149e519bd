"""Stop a job at a known point, so tests that interrupt one (kill -9, shutdown, cancel) interrupt
it there and not wherever a poll happens to catch it.

In process: `at_step(monkeypatch, step, hold)` makes `Pipeline.generate` (and each request of
`Pipeline.generate_many`) call `hold()` once the job's `step`-th Euler step is done (before
the caller's own progress callback sees it);
`after_write(monkeypatch, count, hold)` makes the batch driver call `hold()` right after the
`count`-th job's files were renamed into place, before its `ok` record.

In a subprocess: `python tests/pause.py ARGS...` runs `selva-rt ARGS`, with the point (if any) taken
from $SELVA_RT_TEST_PAUSE, a JSON object {"at": "step" | "write", "count": N, "marker": PATH,
"hold": "forever" | "stop" | "requeue" | "release", "release": PATH}: at that point it writes PATH
(its pid) and then waits forever (for kill -9), until the server's worker is told to stop (a
graceful shutdown), until the worker's drain time is over, or until the test makes the file
"release" (every job passes the point once that file exists)."""

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import selva_rt  # noqa: F401  (first: it takes the checkout's folders off sys.path)
from selva_rt.runtime.pipeline import Pipeline
from selva_rt.runtime.service import batch

ENV = "SELVA_RT_TEST_PAUSE"


def at_step(patch, step: int, hold: Callable[[], None]) -> None:
    """`patch`: a pytest MonkeyPatch (or anything with its setattr)."""
    real = Pipeline.generate

    def generate(self, *args, progress=False, **kwargs):
        done = 0

        def counted(steps: int) -> None:
            nonlocal done
            if done < step <= done + steps:
                hold()
            done += steps
            if callable(progress):
                progress(steps)

        return real(self, *args, progress=counted, **kwargs)

    patch.setattr(Pipeline, "generate", generate)

    real_many = Pipeline.generate_many  # the server's worker runs its jobs through this

    def generate_many(self, requests, progress=None):
        done: dict[int, int] = {}

        def counted(i: int, steps: int) -> None:
            before = done.get(i, 0)
            if before < step <= before + steps:
                hold()
            done[i] = before + steps
            if progress is not None:
                progress(i, steps)

        return real_many(self, requests, progress=counted)

    patch.setattr(Pipeline, "generate_many", generate_many)


def after_write(patch, count: int, hold: Callable[[], None]) -> None:
    real, calls = batch.write_outputs, []

    def write_outputs(*args, **kwargs):
        delivered = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == count:
            hold()
        return delivered

    patch.setattr(batch, "write_outputs", write_outputs)


def worker_event(name: str) -> threading.Event:
    """An event of the server's worker thread (the thread a job's progress runs on)."""
    return getattr(threading.current_thread(), name)


def holder(spec: dict) -> Callable[[], None]:
    def hold() -> None:
        Path(spec["marker"]).write_text(str(os.getpid()))
        if spec["hold"] == "release":
            while not Path(spec["release"]).exists():
                time.sleep(0.05)
            return
        if spec["hold"] == "forever":
            while True:
                time.sleep(60)
        worker_event({"stop": "stopping", "requeue": "requeue"}[spec["hold"]]).wait()

    return hold


class _Patch:
    """MonkeyPatch's setattr for a process that never undoes it."""

    @staticmethod
    def setattr(target, name: str, value) -> None:
        setattr(target, name, value)


def main(argv: list[str]) -> int:
    from selva_rt.__main__ import main as selva_rt_main

    if os.environ.get(ENV):  # unset: plain selva-rt
        spec = json.loads(os.environ[ENV])
        install = at_step if spec["at"] == "step" else after_write
        install(_Patch, spec["count"], holder(spec))
    return selva_rt_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
