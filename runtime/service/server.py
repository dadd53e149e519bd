"""`selva-rt serve`: a local HTTP service for editor panels and pipelines, over warm pipelines.

    selva-rt serve --variant selva-small-16k --root /projects --out /var/selva   # 127.0.0.1:8731
    open http://127.0.0.1:8731/                     # the editor's panel (runtime/service/panel/)
    curl -X POST localhost:8731/v1/jobs -d '{"clip": "/projects/a.mp4", "prompts": ["rain"]}'
    curl localhost:8731/v1/jobs/ID                  # state, stage, progress, outputs, error
    curl -O localhost:8731/v1/jobs/ID/files/a_rain.wav

Why Starlette on uvicorn: a job is the batch runner's typed `Job` (service/jobs.py) with its own
strict parser, so a framework that would re-declare it as a pydantic model adds a second schema,
not safety; one process holding one warm pipeline per device is what a workstation or render
node serves. With `--ray` the same front, journal and queue hand jobs to Ray actors instead
(service/serve_ray.py), one Worker thread per actor.

Secure by default: loopback unless told otherwise, and any other address needs a token
(`Authorization: Bearer`, compared in constant time); a clip is a path that resolves (symlinks
followed) inside a configured root, or an upload; bodies, uploads and prompts have size limits;
outputs go only under the server's folder; cross-origin requests only from listed origins.
Nothing is lost: a job is journaled (SQLite) before 202 is returned, a crash or restart runs
queued and interrupted jobs again, outputs are written all or nothing, and a graceful shutdown
finishes the running job or puts it back in the queue. An uploaded clip is kept while a queued
or running job needs it, and deleted after. Queued jobs for the same clip, window and sampler
options run as one multi-prompt call, so they share its decode and video trunk (each stem equals
the single-job result); on a GPU, such calls over other clips with the same steps and cfg share
the sampler and decoder too.
"""

import asyncio
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import shutil
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from .. import media
from ..delivery.outputs import write_outputs
from ..errors import JobError, SelvaError, UsageError
from .jobs import Job
from .journal import FINAL, Journal, Record

DEFAULT_PORT = 8731
JOURNAL = "journal.sqlite3"
UPLOADS = "uploads"
PANEL = Path(__file__).with_name("panel")  # the editor's panel: plain HTML, CSS and JS
PANEL_FILES = {"panel.css": "text/css", "panel.js": "text/javascript"}
MEDIA_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
MAX_CLIPS = 2000  # clips /v1/clips lists, the first found under the roots
MAX_OFFSET = 2**62  # SQLite's integers are 64-bit
WORKER_DEATHS = 3  # a job whose worker died this often fails instead of being requeued
# Job fields that must agree for queued jobs to share one call (decode, trunk, noise).
SHARED = ("clip", "start", "duration", "seed", "steps", "cfg", "negative_prompt")


@dataclass(frozen=True)
class Limits:
    queue: int = 64  # queued jobs; more is 429
    body: int = 64 << 10  # bytes of a JSON request
    upload: int = 2 << 30  # bytes of an uploaded clip
    prompts_per_call: int = 8  # most prompts that share one call
    jobs_per_call: int | None = None  # clips whose rows share the sampler; None: by device
    drain: float = 30.0  # seconds a shutdown waits for the running job before requeueing it


class Interrupted(Exception):
    """Raised inside a generation to stop it: its jobs go back to the queue, or are cancelled."""


class WorkerDied(Interrupted):
    """The process running the generation died (a Ray actor): its jobs go back to the queue,
    and the Worker waits on `pipe.recover(stopping)` before it claims the next ones."""


class Uploads:
    """Uploaded clips, stored under their content hash in out/uploads while a queued or running
    job needs them. A stored upload stays `pending` until its job is journaled or refused, so a
    sweep never takes a clip from under a request."""

    def __init__(self, folder: Path, journal: Journal):
        self.folder, self.journal = folder, journal
        self.pending: dict[Path, int] = {}
        self.lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)

    def keep(self, source, suffix: str) -> Path:
        """Store an upload under its content hash (and `suffix`, which picks the muxed video's
        container): the same clip uploaded twice is one file, so its jobs share a decode and
        trunk like jobs naming one path."""
        digest = hashlib.sha256()
        tmp = self.folder / f".{secrets.token_hex(8)}.part"
        try:
            with open(tmp, "wb") as f:
                while chunk := source.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
            path = self.folder / f"{digest.hexdigest()[:32]}{suffix}"
            with self.lock:
                self.pending[path] = self.pending.get(path, 0) + 1
                tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def settle(self, path: Path) -> None:
        """The request that stored `path` is journaled or refused: the sweep may judge it."""
        with self.lock:
            self.pending[path] -= 1
            if not self.pending[path]:
                del self.pending[path]
        self.sweep()

    def sweep(self, startup: bool = False) -> None:
        """Delete every upload no queued or running job needs (at startup, also the partial
        files a killed server left)."""
        with self.lock:
            live = self.journal.clips(("queued", "running")) | {str(p) for p in self.pending}
            for path in self.folder.iterdir():
                partial = path.name.startswith(".")
                if (startup or not partial) and str(path) not in live:
                    path.unlink(missing_ok=True)


class Worker(threading.Thread):
    """Runs journaled jobs on one pipeline, oldest first, grouping jobs that can share a call.
    `pipe` is a Pipeline or a stand-in with its `generate` (serve_ray.RayPipe); several Workers
    may share one journal, each claiming its own jobs. `cancelled` is shared by them all."""

    def __init__(
        self,
        pipe,
        journal: Journal,
        out_dir: Path,
        limits: Limits,
        cancelled: set[str] | None = None,
        uploads: Uploads | None = None,
    ):
        super().__init__(name="selva-rt worker", daemon=True)
        self.pipe, self.journal, self.out_dir, self.limits = pipe, journal, out_dir, limits
        self.uploads = uploads
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.requeue = threading.Event()  # set when the drain time is over
        self.cancelled: set[str] = set() if cancelled is None else cancelled
        self.running: list[str] = []
        self.deaths: dict[str, int] = {}  # job id -> times its worker died running it

    @property
    def where(self) -> str:
        """Where the jobs run: local:DEVICE, or ray:NODE:PID (which changes when Ray restarts
        a dead actor)."""
        return getattr(self.pipe, "where", None) or f"local:{self.pipe.device}"

    def run(self) -> None:
        from .batch import jobs_per_call

        if hasattr(self.pipe, "generate_many"):
            together = self.limits.jobs_per_call or jobs_per_call(self.pipe.device)
        else:  # serve_ray.RayPipe: one call at a time
            together = 1
        while not self.stopping.is_set():
            first = self.journal.claim()
            if not first:
                self.wake.wait(0.5)
                self.wake.clear()
                continue
            calls = [self.same_clip(first)]
            # Jobs over other clips with the same sampler settings share the sampler and the
            # decoder with these (where their windows have one length: Pipeline.generate_many).
            while len(calls) < together:
                like = {k: first[0].job[k] for k in ("steps", "cfg")}
                more = self.journal.claim(like, limit=1)
                if not more:
                    break
                calls.append(self.same_clip(more))
            group = [r for call in calls for r in call]
            self.running = [r.id for r in group]
            try:
                self.run_calls(calls)
            except Exception as e:  # noqa: BLE001 - a job fails with one line; the worker lives on
                for r in group:
                    self.journal.finish(r.id, "failed", error=_internal(e))
            finally:
                self.running = []
                if self.uploads is not None:
                    self.uploads.sweep()

    def same_clip(self, first: list[Record]) -> list[Record]:
        """`first` and the queued jobs that can join its multi-prompt call (same clip, window
        and sampler options), up to `prompts_per_call` prompts."""
        job = first[0].job
        room = self.limits.prompts_per_call - len(job["prompts"])
        like = {k: job[k] for k in SHARED}
        group = first + (self.journal.claim(like, limit=room) if room > 0 else [])
        while sum(len(r.job["prompts"]) for r in group) > self.limits.prompts_per_call:
            self.journal.finish(group.pop().id, "queued")  # back, for the next call
        return group

    def run_calls(self, calls: list[list[Record]]) -> None:
        """Each call: one multi-prompt generation over one clip; all of them through
        `Pipeline.generate_many` (a stand-in without it, serve_ray.RayPipe, gets one call at a
        time), then each job's share of its call written."""
        from ..pipeline import Request

        group = [r for call in calls for r in call]
        done = [0] * len(calls)

        def tell(i: int, steps: int) -> None:
            if steps:
                done[i] += steps
                for r in calls[i]:
                    self.journal.progress(r.id, done[i])
            if self.requeue.is_set() or all(r.id in self.cancelled for r in group):
                raise Interrupted

        requests = [
            Request(
                call[0].job["clip"],
                [p for r in call for p in r.job["prompts"]],
                negative_prompt=call[0].job["negative_prompt"],
                seed=call[0].job["seed"],
                steps=call[0].job["steps"],
                cfg=call[0].job["cfg"],
                duration=call[0].job["duration"],
                start=call[0].job["start"],
            )
            for call in calls
        ]
        try:
            if hasattr(self.pipe, "generate_many"):
                results = self.pipe.generate_many(requests, progress=tell)
            else:
                (one,) = requests
                options = {k: v for k, v in vars(one).items() if k not in ("clip", "prompts")}
                try:
                    results = [
                        self.pipe.generate(
                            one.clip, one.prompts, progress=lambda s: tell(0, s), **options
                        )
                    ]
                except SelvaError as e:
                    results = [e]
        except WorkerDied as e:
            for r in group:
                self.deaths[r.id] = deaths = self.deaths.get(r.id, 0) + 1
                if r.id in self.cancelled:
                    self.journal.finish(r.id, "cancelled")
                elif deaths >= WORKER_DEATHS:
                    self.journal.finish(
                        r.id, "failed", error=f"its worker died {deaths} times: {e}"
                    )
                else:
                    self.journal.finish(r.id, "queued")
            self.pipe.recover(self.stopping)  # meanwhile another worker may take the jobs
            return
        except Interrupted:
            for r in group:
                self.journal.finish(r.id, "cancelled" if r.id in self.cancelled else "queued")
            return
        except Exception as e:  # noqa: BLE001 - the jobs fail with one line; the server goes on
            for r in group:
                self.journal.finish(r.id, "failed", error=_internal(e))
            return
        for call, result in zip(calls, results, strict=True):
            if isinstance(result, SelvaError):
                for r in call:
                    self.journal.finish(r.id, "failed", error=str(result))
                continue
            first = 0
            for r in call:
                n = len(r.job["prompts"])
                part = dataclasses.replace(
                    result,
                    audio=result.audio[first : first + n],
                    prompts=result.prompts[first:][:n],
                )
                first += n
                if r.id in self.cancelled:
                    self.journal.finish(r.id, "cancelled")
                    continue
                self.write(r, part)

    def write(self, record: Record, result) -> None:
        folder = self.out_dir / record.id
        shutil.rmtree(folder, ignore_errors=True)  # what a killed run of this job left
        try:
            job = Job.from_dict(record.job, base=Path("/"))  # every field, also of old journals
            plan = job.plan(folder, prompts=result.prompts, force=True)
            delivered = write_outputs(plan, result)
        except SelvaError as e:
            self.journal.finish(record.id, "failed", error=str(e))
            return
        except Exception as e:  # noqa: BLE001 - as above
            self.journal.finish(record.id, "failed", error=_internal(e))
            return
        outputs = [
            {"prompt": d.stem.prompt, "audio": d.stem.audio.name}
            | ({"video": d.stem.video.name} if d.stem.video is not None else {})
            | {"sample_rate": d.sample_rate, "loudness": d.loudness.as_dict()}
            for d in delivered
        ]
        timeline = plan.otio.name if plan.otio is not None else None
        self.journal.finish(record.id, "done", outputs=outputs, timeline=timeline)

    def stop(self) -> None:
        """Finish the running job within the drain time, else stop it and requeue it."""
        self.stopping.set()
        self.wake.set()
        self.join(self.limits.drain)
        if self.is_alive():
            self.requeue.set()
            self.join()


def _internal(e: Exception) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"internal error: {type(e).__name__}: {first}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(
    pipe,
    roots: list[Path],
    out_dir: Path,
    token: str | None = None,
    limits: Limits = Limits(),
    *,
    journal: Journal | None = None,
    cors: tuple[str, ...] = (),
):
    """The ASGI app; its lifespan starts and drains the workers. `pipe`: a Pipeline, or a list
    of pipelines or stand-ins (one Worker each, e.g. Ray actors); `journal`: the one opened
    (and locked) beforehand, default `out_dir/journal.sqlite3`; `cors`: origins allowed to call
    the API from their pages."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Route

    pipes = list(pipe) if isinstance(pipe, list | tuple) else [pipe]
    roots = [Path(r).resolve(strict=True) for r in roots]
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    journal = journal or Journal(out_dir / JOURNAL)
    uploads = Uploads(out_dir / UPLOADS, journal)
    cancelled: set[str] = set()
    workers = [Worker(p, journal, out_dir, limits, cancelled, uploads) for p in pipes]
    first = pipes[0]

    def fail(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def authorized(request: Request) -> bool:
        if token is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def guarded(handler):
        async def route(request: Request):
            if not authorized(request):
                return fail(
                    401,
                    "missing or wrong token: send Authorization: Bearer TOKEN",
                    {"WWW-Authenticate": "Bearer"},
                )
            try:
                return await handler(request)
            except SelvaError as e:  # a bad job or clip: the one-line reason
                return fail(422, str(e))

        return route

    def wake() -> None:
        for w in workers:
            w.wake.set()

    def inside_roots(clip: str) -> Path:
        path = Path(clip)
        if not path.is_absolute():
            raise JobError(f"clip {clip!r} must be an absolute path under a root")
        resolved = path.resolve()  # symlinks followed: a link out of a root is outside
        if not any(resolved.is_relative_to(r) for r in roots):
            raise PermissionError(f"{clip} is outside the served roots")
        if not resolved.is_file():
            raise FileNotFoundError(f"{clip} does not exist or is not a file")
        return resolved

    async def read_body(request: Request, limit: int) -> bytes:
        size = int(request.headers.get("content-length") or 0)
        if size > limit:
            raise HTTPException(413, f"request body of {size} bytes is over {limit}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HTTPException(413, f"request body is over {limit} bytes")
        return bytes(body)

    async def upload(request: Request) -> tuple[object, Path, str]:
        """(the 'job' part decoded, the stored clip, the name the client gave the clip); the
        stored clip is pending until the caller settles it."""
        size = request.headers.get("content-length")
        if size is None:
            raise HTTPException(411, "an upload needs a Content-Length")
        if int(size) > limits.upload:
            raise HTTPException(413, f"upload of {size} bytes is over {limits.upload}")
        form = await request.form(max_files=1, max_fields=1, max_part_size=limits.body)
        try:
            clip, fields = form.get("clip"), form.get("job")
            if clip is None or isinstance(clip, str) or not isinstance(fields, str):
                raise JobError("an upload has two parts: 'job' (JSON) and 'clip' (the file)")
            given = Path(clip.filename or "upload").name
            suffix = Path(given).suffix.lower()
            path = await run_in_threadpool(
                uploads.keep, clip.file, suffix if suffix in MEDIA_SUFFIXES else ".bin"
            )
            try:
                data = _json(fields.encode())
                if isinstance(data, dict) and "name" not in data:
                    data["name"] = Path(given).stem[:100].lstrip(".") or None
            except BaseException:
                uploads.settle(path)
                raise
            return data, path, given
        finally:
            await form.close()

    async def submit(request: Request):
        if journal.count("queued") >= limits.queue:
            return fail(429, "the queue is full; retry later", {"Retry-After": "5"})
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        stored = given = None
        if kind == "multipart/form-data":
            data, stored, given = await upload(request)
            if not isinstance(data, dict):
                uploads.settle(stored)
                raise JobError("the 'job' part must be a JSON object")
            data = {**data, "clip": str(stored)}
        else:  # JSON, whatever the client called it (curl -d says form-urlencoded)
            data = _json(await read_body(request, limits.body))
            if isinstance(data, dict) and isinstance(data.get("clip"), str):
                try:
                    data = {**data, "clip": str(inside_roots(data["clip"]))}
                except PermissionError as e:
                    return fail(403, str(e))
                except FileNotFoundError as e:
                    return fail(404, str(e))
        try:
            job = Job.from_dict(data, base=Path("/"), defaults={"steps": pipes[0].variant.steps})
            await run_in_threadpool(media.probe, job.clip)  # not a video: 422 now, not later
            if journal.count("queued") >= limits.queue:  # again: others came in while it probed
                return fail(429, "the queue is full; retry later", {"Retry-After": "5"})
            job_id = journal.add(job.to_dict())
        except SelvaError as e:
            if stored is None:
                raise
            # The user's file, not the stored hash, is what the message names.
            message = str(e).replace(str(stored), given).replace(stored.name, given)
            raise type(e)(message) from None
        finally:
            if stored is not None:
                uploads.settle(stored)  # a refused upload is deleted here
        wake()
        return JSONResponse({"id": job_id, "state": "queued"}, status_code=202)

    def paging(request: Request) -> tuple[int, int, str | None]:
        query = request.query_params
        try:
            limit, offset = int(query.get("limit", 50)), int(query.get("offset", 0))
        except ValueError:
            raise JobError("limit and offset are whole numbers") from None
        state = query.get("state") or None
        if not 1 <= limit <= 500 or not 0 <= offset <= MAX_OFFSET:
            raise JobError(f"limit is 1..500 and offset 0..{MAX_OFFSET}")
        if state is not None and state not in (*FINAL, "queued", "running"):
            raise JobError(f"state is one of queued, running, {', '.join(FINAL)}")
        return limit, offset, state

    async def listing(request: Request):
        limit, offset, state = paging(request)
        records = journal.page(limit, offset, state)
        total = journal.count(state)
        following = offset + len(records)
        return JSONResponse(
            {
                "jobs": [r.to_dict() for r in records],
                "total": total,
                "next_offset": following if following < total else None,
            }
        )

    async def status(request: Request):
        record = journal.get(request.path_params["id"])
        if record is None:
            return fail(404, "no such job")
        return JSONResponse(record.to_dict())

    async def file(request: Request):
        record = journal.get(request.path_params["id"])
        name = request.path_params["name"]
        if record is None:
            return fail(404, "no such job")
        names = {o[k] for o in record.outputs for k in ("audio", "video") if k in o}
        if name not in names | {record.timeline}:
            return fail(404, f"job {record.id} has no file {name!r}")
        return FileResponse(out_dir / record.id / name, filename=name)

    async def cancel(request: Request):
        job_id = request.path_params["id"]
        was = journal.cancel(job_id)
        if was is None:
            return fail(404, "no such job")
        if was in FINAL:
            return fail(409, f"job {job_id} is already {was}")
        if was == "running":
            cancelled.add(job_id)
        else:
            uploads.sweep()
        return JSONResponse(
            {"id": job_id, "state": "cancelled" if was == "queued" else "cancelling"}
        )

    async def clips(request: Request):
        found = await run_in_threadpool(_clips_under, roots)
        return JSONResponse({"roots": [str(r) for r in roots], "clips": found})

    async def health(request: Request):
        alive = all(w.is_alive() for w in workers)
        return JSONResponse({"status": "ok" if alive else "stopped"})

    async def info(request: Request):
        import torch

        from ... import __version__

        return JSONResponse(
            {
                "variant": first.variant.name,
                "device": str(first.device),
                "precision": first.precision,
                "queued": journal.count("queued"),
                "running": sum(len(w.running) for w in workers),
                "workers": [
                    {"where": w.where, "alive": w.is_alive(), "running": list(w.running)}
                    for w in workers
                ],
                "limits": dataclasses.asdict(limits),
                "versions": {"selva-rt": __version__, "torch": torch.__version__},
            }
        )

    async def panel(request: Request):
        return FileResponse(PANEL / "index.html", media_type="text/html")

    async def panel_file(request: Request):
        name = request.path_params["name"]
        if name not in PANEL_FILES:
            return fail(404, f"the panel has no file {name!r}")
        return FileResponse(PANEL / name, media_type=PANEL_FILES[name])

    async def openapi(request: Request):
        return JSONResponse(openapi_document())

    async def http_error(request: Request, exc: HTTPException):
        return fail(exc.status_code, exc.detail)

    @asynccontextmanager
    async def lifespan(app):
        uploads.sweep(startup=True)
        for w in workers:
            w.start()
        yield
        await asyncio.to_thread(_stop_all, workers)
        journal.close()

    middleware = []
    if cors:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(cors),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["Authorization", "Content-Type"],
            )
        )
    return Starlette(
        routes=[
            Route("/", panel),
            Route("/panel/{name}", panel_file),
            Route("/healthz", health),
            Route("/openapi.json", openapi),
            Route("/v1/info", guarded(info)),
            Route("/v1/clips", guarded(clips)),
            Route("/v1/jobs", guarded(listing), methods=["GET"]),
            Route("/v1/jobs", guarded(submit), methods=["POST"]),
            Route("/v1/jobs/{id}", guarded(status), methods=["GET"]),
            Route("/v1/jobs/{id}", guarded(cancel), methods=["DELETE"]),
            Route("/v1/jobs/{id}/files/{name}", guarded(file)),
        ],
        exception_handlers={HTTPException: http_error},
        middleware=middleware,
        lifespan=lifespan,
    )


def _stop_all(workers: list[Worker]) -> None:
    """Stop every worker: they finish their running calls within one shared drain time, then
    what still runs is stopped and requeued."""
    for w in workers:
        w.stopping.set()
        w.wake.set()
    for w in workers:
        w.join(w.limits.drain)
    for w in workers:
        if w.is_alive():
            w.requeue.set()
            w.join()


def _clips_under(roots: list[Path]) -> list[dict]:
    """Media files under the roots (hidden ones and symlinks out of a root left out), sorted,
    the first MAX_CLIPS of them."""
    found = []
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                path = Path(folder) / name
                if name.startswith(".") or path.suffix.lower() not in MEDIA_SUFFIXES:
                    continue
                if not path.resolve().is_relative_to(root):
                    continue
                found.append({"path": str(path), "name": str(path.relative_to(root))})
                if len(found) >= MAX_CLIPS:
                    return found
    return found


def _json(body: bytes):
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise JobError(f"the request body is not valid JSON: {e}") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def openapi_document() -> dict:
    """The API, as OpenAPI 3.1 (served at /openapi.json): every operation, its parameters and
    every status it answers with, each with its body's schema."""
    from ..delivery.outputs import AUDIO_FORMATS, LOUDNESS_TARGETS, OUT_RATES
    from .journal import STATES

    text = {"type": "string"}
    job_fields = {
        "clip": {"type": "string", "description": "absolute path under a served root"},
        "prompts": {
            "description": "one stem per prompt (a text is one prompt)",
            "oneOf": [{"type": "array", "items": text}, text],
        },
        "negative_prompt": text,
        "seed": {"type": "integer"},
        "steps": {"type": "integer", "minimum": 1},
        "cfg": {"type": ["number", "null"], "description": "null: the variant's default"},
        "start": {"type": "number", "minimum": 0, "description": "seconds into the clip"},
        "duration": {"type": ["number", "null"], "description": "seconds; null: to the end"},
        "name": {"type": ["string", "null"], "description": "output file prefix"},
        "format": {"enum": list(AUDIO_FORMATS)},
        "sample_rate": {"enum": [None, *OUT_RATES], "description": "null: the model's rate"},
        "loudness": {
            "type": ["number", "null"],
            "minimum": LOUDNESS_TARGETS[0],
            "maximum": LOUDNESS_TARGETS[1],
            "description": "LUFS each stem is normalised to; null: as generated",
        },
        "otio": {"type": "boolean", "description": "also write an OpenTimelineIO timeline"},
        "no_video": {"type": "boolean", "description": "stems only, no muxed video"},
    }
    output = {
        "type": "object",
        "required": ["prompt", "audio"],
        "properties": {
            "prompt": text,
            "audio": text,
            "video": text,
            "sample_rate": {"type": "integer"},
            "loudness": {"type": "object"},
        },
    }
    record = {
        "type": "object",
        "required": ["id", "state", "stage", "job", "progress", "outputs", "created", "updated"],
        "properties": {
            "id": text,
            "state": {"enum": list(STATES)},
            "stage": {"enum": [*STATES, "preparing", "sampling", "finishing"]},
            "job": {"type": "object"},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/Output"}},
            "timeline": {"type": ["string", "null"]},
            "error": {"type": ["string", "null"]},
            "created": {"type": "string", "format": "date-time"},
            "updated": {"type": "string", "format": "date-time"},
        },
    }
    schemas = {
        "Job": {
            "type": "object",
            "required": ["clip", "prompts"],
            "additionalProperties": False,
            "properties": job_fields,
        },
        "Output": output,
        "JobRecord": record,
        "JobList": {
            "type": "object",
            "required": ["jobs", "total", "next_offset"],
            "properties": {
                "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/JobRecord"}},
                "total": {"type": "integer", "minimum": 0},
                "next_offset": {"type": ["integer", "null"]},
            },
        },
        "Accepted": {
            "type": "object",
            "required": ["id", "state"],
            "properties": {"id": text, "state": {"const": "queued"}},
        },
        "Cancelled": {
            "type": "object",
            "required": ["id", "state"],
            "properties": {"id": text, "state": {"enum": ["cancelled", "cancelling"]}},
        },
        "Info": {
            "type": "object",
            "required": ["variant", "device", "precision", "queued", "running", "workers"],
            "properties": {
                "variant": text,
                "device": text,
                "precision": text,
                "queued": {"type": "integer"},
                "running": {"type": "integer"},
                "workers": {"type": "array", "items": {"type": "object"}},
                "limits": {"type": "object"},
                "versions": {"type": "object"},
            },
        },
        "Clips": {
            "type": "object",
            "required": ["roots", "clips"],
            "properties": {
                "roots": {"type": "array", "items": text},
                "clips": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["path", "name"],
                        "properties": {"path": text, "name": text},
                    },
                },
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"enum": ["ok", "stopped"]}},
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string", "description": "one line: what and why"}},
        },
    }

    def body(name: str) -> dict:
        return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}

    def answers(ok: tuple[str, str, dict], *errors: tuple[str, str], guarded: bool = True):
        code, why, content = ok
        out = {code: {"description": why, "content": content}}
        for code, why in ((("401", "token missing or wrong"),) if guarded else ()) + errors:
            out[code] = {"description": why, "content": body("Error")}
        return out

    job_id = {"name": "id", "in": "path", "required": True, "schema": text}
    no_job = ("404", "no such job")
    paths = {
        "/": {
            "get": {
                "summary": "the editor's panel (HTML)",
                "security": [],
                "responses": answers(("200", "the panel", {"text/html": {}}), guarded=False),
            }
        },
        "/panel/{name}": {
            "get": {
                "summary": "the panel's style sheet and script",
                "security": [],
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": list(PANEL_FILES)},
                    }
                ],
                "responses": answers(
                    ("200", "the file", {"text/css": {}, "text/javascript": {}}),
                    ("404", "no such file"),
                    guarded=False,
                ),
            }
        },
        "/healthz": {
            "get": {
                "summary": "liveness",
                "security": [],
                "responses": answers(("200", "ok", body("Health")), guarded=False),
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "this document",
                "security": [],
                "responses": answers(
                    ("200", "OpenAPI 3.1", {"application/json": {}}), guarded=False
                ),
            }
        },
        "/v1/info": {
            "get": {
                "summary": "variant, device, queue, workers, versions",
                "responses": answers(("200", "ok", body("Info"))),
            }
        },
        "/v1/clips": {
            "get": {
                "summary": f"media files under the served roots (the first {MAX_CLIPS})",
                "responses": answers(("200", "ok", body("Clips"))),
            }
        },
        "/v1/jobs": {
            "get": {
                "summary": "the journal's jobs, newest first, a page at a time",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                    },
                    {
                        "name": "offset",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
                    },
                    {"name": "state", "in": "query", "schema": {"enum": list(STATES)}},
                ],
                "responses": answers(
                    ("200", "a page of jobs", body("JobList")),
                    ("422", "bad limit, offset or state"),
                ),
            },
            "post": {
                "summary": "submit a job (JSON), or upload a clip (multipart: job, clip)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Job"}},
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["job", "clip"],
                                "properties": {
                                    "job": {"type": "string", "description": "a Job as JSON"},
                                    "clip": {"type": "string", "format": "binary"},
                                },
                            }
                        },
                    },
                },
                "responses": answers(
                    ("202", "accepted and journaled", body("Accepted")),
                    ("400", "malformed multipart body"),
                    ("403", "clip outside the roots"),
                    ("404", "clip not found"),
                    ("411", "an upload without Content-Length"),
                    ("413", "body or upload too large"),
                    ("422", "bad job, or a clip that is no usable video"),
                    ("429", "queue full (Retry-After)"),
                ),
            },
        },
        "/v1/jobs/{id}": {
            "parameters": [job_id],
            "get": {
                "summary": "state, stage, progress, outputs, error",
                "responses": answers(("200", "the job", body("JobRecord")), no_job),
            },
            "delete": {
                "summary": "cancel (a running job stops at its next step)",
                "responses": answers(
                    ("200", "cancelled, or cancelling", body("Cancelled")),
                    no_job,
                    ("409", "the job is already done, failed or cancelled"),
                ),
            },
        },
        "/v1/jobs/{id}/files/{name}": {
            "parameters": [
                job_id,
                {"name": "name", "in": "path", "required": True, "schema": text},
            ],
            "get": {
                "summary": "an output file: a stem, a muxed video, the timeline",
                "responses": answers(
                    ("200", "the file", {"application/octet-stream": {}}),
                    ("404", "no such job, or no such file of the job"),
                ),
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "selva-rt", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, before anything is loaded: a port in use is one line now,
    not a traceback from the web server after the model has loaded."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UsageError(f"--host {host} is no address of this machine ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: no TIME_WAIT wait
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {e.strerror} (another selva-rt serve?); "
            "pass another --port"
        ) from None
    sock.set_inheritable(True)
    return sock


def serve(
    pipe,
    roots: list[Path],
    out_dir: Path,
    sock: socket.socket,
    *,
    journal: Journal | None = None,
    token: str | None = None,
    limits: Limits = Limits(),
    tls: tuple[Path, Path] | None = None,
    cors: tuple[str, ...] = (),
    quiet: bool = False,
) -> None:
    """Serve on `sock` (from `listen`) until interrupted (SIGINT / SIGTERM drain the workers
    first); `tls`: (certificate, key) PEM files for HTTPS."""
    import uvicorn

    app = create_app(pipe, roots, out_dir, token, limits, journal=journal, cors=cors)
    config = uvicorn.Config(
        app,
        log_level="warning" if quiet else "info",
        ssl_certfile=tls and str(tls[0]),
        ssl_keyfile=tls and str(tls[1]),
    )
    if not quiet:
        host, port = sock.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if tls else "http"
        name = (pipe[0] if isinstance(pipe, list) else pipe).variant.name
        print(f"selva-rt serving {name} on {scheme}://{host}:{port}/ (the panel)", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
