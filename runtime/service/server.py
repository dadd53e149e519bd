"""`selva-rt serve`: a local HTTP service for editor panels and pipelines, over one warm pipeline.

    selva-rt serve --variant selva-small-16k --root /projects --out /var/selva   # 127.0.0.1:8731
    curl -X POST localhost:8731/v1/jobs -d '{"clip": "/projects/a.mp4", "prompts": ["rain"]}'
    curl localhost:8731/v1/jobs/ID                  # state, progress, outputs, error
    curl -O localhost:8731/v1/jobs/ID/files/a_rain.wav

Why Starlette on uvicorn: a job is the batch runner's typed `Job` (service/jobs.py) with its own
strict parser, so a framework that would re-declare it as a pydantic model adds a second schema,
not safety; one process holding one warm pipeline per device is what a workstation or render
node serves. Clusters are the batch path's business (Ray).

Secure by default: loopback unless told otherwise, and any other address needs a token
(`Authorization: Bearer`, compared in constant time); a clip is a path that resolves (symlinks
followed) inside a configured root, or an upload; bodies, uploads and prompts have size limits;
outputs go only under the server's folder. Nothing is lost: a job is journaled (SQLite) before
202 is returned, a crash or restart runs queued and interrupted jobs again, outputs are written
all or nothing, and a graceful shutdown finishes the running job or puts it back in the queue.
Queued jobs for the same clip, window and sampler options run as one multi-prompt call, so they
share its decode and video trunk (each stem equals the single-job result); on a GPU, such calls
over other clips with the same steps and cfg share the sampler and decoder too.
"""

import asyncio
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import secrets
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from .. import media
from ..delivery.outputs import plan_outputs, write_outputs
from ..errors import JobError, SelvaError
from .jobs import Job
from .journal import FINAL, Journal, Record

DEFAULT_PORT = 8731
JOURNAL = "journal.sqlite3"
UPLOADS = "uploads"
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


class _Stop(Exception):
    """Raised inside a generation to stop it: the job goes back to the queue or is cancelled."""


class Worker(threading.Thread):
    """Runs journaled jobs on one pipeline, oldest first, grouping jobs that can share a call."""

    def __init__(self, pipe, journal: Journal, out_dir: Path, limits: Limits):
        super().__init__(name="selva-rt worker", daemon=True)
        self.pipe, self.journal, self.out_dir, self.limits = pipe, journal, out_dir, limits
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.requeue = threading.Event()  # set when the drain time is over
        self.cancelled: set[str] = set()
        self.running: list[str] = []

    def run(self) -> None:
        from .batch import jobs_per_call

        together = self.limits.jobs_per_call or jobs_per_call(self.pipe.device)
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
        `Pipeline.generate_many`, then each job's share of its call written."""
        from ..pipeline import Request

        group = [r for call in calls for r in call]
        done = [0] * len(calls)

        def tell(i: int, steps: int) -> None:
            done[i] += steps
            for r in calls[i]:
                self.journal.progress(r.id, done[i])
            if self.requeue.is_set() or all(r.id in self.cancelled for r in group):
                raise _Stop

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
            results = self.pipe.generate_many(requests, progress=tell)
        except _Stop:
            for r in group:
                self.journal.finish(r.id, "cancelled" if r.id in self.cancelled else "queued")
            return
        except Exception as e:  # noqa: BLE001 - the jobs fail with one line; the server goes on
            for r in group:
                self.journal.finish(
                    r.id, "failed", error=f"internal error: {type(e).__name__}: {e}"
                )
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
            plan = plan_outputs(
                record.job["clip"], result.prompts, folder, name=record.job["name"], force=True
            )
            write_outputs(plan, result, variant=self.pipe.variant.name)
        except SelvaError as e:
            self.journal.finish(record.id, "failed", error=str(e))
            return
        except Exception as e:  # noqa: BLE001 - as above
            self.journal.finish(record.id, "failed", error=_internal(e))
            return
        outputs = [
            {"prompt": s.prompt, "audio": s.audio.name}
            | ({"video": s.video.name} if s.video is not None else {})
            for s in plan.stems
        ]
        self.journal.finish(record.id, "done", outputs=outputs)

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
):
    """The ASGI app; its lifespan starts and drains the worker."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Route

    roots = [Path(r).resolve(strict=True) for r in roots]
    out_dir = Path(out_dir).resolve()
    (out_dir / UPLOADS).mkdir(parents=True, exist_ok=True)
    journal = Journal(out_dir / JOURNAL)
    worker = Worker(pipe, journal, out_dir, limits)

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

    async def upload(request: Request) -> tuple[dict, Path]:
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
            suffix = Path(clip.filename or "").suffix.lower()
            suffix = suffix if suffix in media_suffixes() else ".bin"
            path = await run_in_threadpool(_keep_upload, clip.file, out_dir / UPLOADS, suffix)
            data = _json(fields.encode())
            if isinstance(data, dict) and "name" not in data and clip.filename:
                data["name"] = Path(clip.filename).stem[:100].lstrip(".") or None
            return data, path
        finally:
            await form.close()

    async def submit(request: Request):
        if journal.count("queued") >= limits.queue:
            return fail(429, "the queue is full; retry later", {"Retry-After": "5"})
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        if kind == "multipart/form-data":
            data, path = await upload(request)
            if not isinstance(data, dict):
                raise JobError("the 'job' part must be a JSON object")
            data = {**data, "clip": str(path)}
        else:  # JSON, whatever the client called it (curl -d says form-urlencoded)
            data = _json(await read_body(request, limits.body))
            if isinstance(data, dict) and isinstance(data.get("clip"), str):
                try:
                    data = {**data, "clip": str(inside_roots(data["clip"]))}
                except PermissionError as e:
                    return fail(403, str(e))
                except FileNotFoundError as e:
                    return fail(404, str(e))
        job = Job.from_dict(data, base=Path("/"))
        await run_in_threadpool(media.probe, job.clip)  # not a video: 422 now, not a failed job
        job_id = journal.add(job.to_dict())
        worker.wake.set()
        return JSONResponse({"id": job_id, "state": "queued"}, status_code=202)

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
        if name not in names:
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
            worker.cancelled.add(job_id)
        return JSONResponse(
            {"id": job_id, "state": "cancelled" if was == "queued" else "cancelling"}
        )

    async def health(request: Request):
        return JSONResponse({"status": "ok" if worker.is_alive() else "stopped"})

    async def info(request: Request):
        import torch

        from ... import __version__

        return JSONResponse(
            {
                "variant": pipe.variant.name,
                "device": str(pipe.device),
                "precision": pipe.precision,
                "queued": journal.count("queued"),
                "running": len(worker.running),
                "limits": dataclasses.asdict(limits),
                "versions": {"selva-rt": __version__, "torch": torch.__version__},
            }
        )

    async def openapi(request: Request):
        return JSONResponse(openapi_document())

    async def http_error(request: Request, exc: HTTPException):
        return fail(exc.status_code, exc.detail)

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        await asyncio.to_thread(worker.stop)
        journal.close()

    return Starlette(
        routes=[
            Route("/healthz", health),
            Route("/openapi.json", openapi),
            Route("/v1/info", guarded(info)),
            Route("/v1/jobs", guarded(submit), methods=["POST"]),
            Route("/v1/jobs/{id}", guarded(status), methods=["GET"]),
            Route("/v1/jobs/{id}", guarded(cancel), methods=["DELETE"]),
            Route("/v1/jobs/{id}/files/{name}", guarded(file)),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )


def _keep_upload(source, folder: Path, suffix: str) -> Path:
    """Store an upload under its content hash: the same clip uploaded twice is one file, so
    its jobs share a decode and trunk like jobs naming one path."""
    digest = hashlib.sha256()
    tmp = folder / f".{secrets.token_hex(8)}.part"
    with open(tmp, "wb") as f:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            f.write(chunk)
    path = folder / f"{digest.hexdigest()[:32]}{suffix}"
    tmp.replace(path)
    return path


def _json(body: bytes):
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise JobError(f"the request body is not valid JSON: {e}") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def media_suffixes() -> tuple[str, ...]:
    return (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")


def openapi_document() -> dict:
    """The API, as OpenAPI 3.1 (served at /openapi.json)."""
    job_fields = {
        "clip": {"type": "string", "description": "absolute path under a served root"},
        "prompts": {"type": "array", "items": {"type": "string", "maxLength": 1000}},
        "negative_prompt": {"type": "string"},
        "seed": {"type": "integer"},
        "steps": {"type": "integer", "minimum": 1, "maximum": 1000},
        "cfg": {"type": "number"},
        "start": {"type": "number", "minimum": 0},
        "duration": {"type": ["number", "null"], "description": "seconds; null: to the end"},
        "name": {"type": "string", "description": "output file prefix"},
    }
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    job_ref = {"$ref": "#/components/schemas/Job"}
    ok = {"200": {"description": "ok"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "selva-rt", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Job": {
                    "type": "object",
                    "required": ["clip", "prompts"],
                    "additionalProperties": False,
                    "properties": job_fields,
                },
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": {"summary": "liveness", "security": [], "responses": ok}},
            "/v1/info": {"get": {"summary": "variant, device, queue, versions", "responses": ok}},
            "/v1/jobs": {
                "post": {
                    "summary": "submit a job (JSON), or upload a clip (multipart: job, clip)",
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": job_ref},
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "job": {"type": "string"},
                                        "clip": {"type": "string", "format": "binary"},
                                    },
                                }
                            },
                        }
                    },
                    "responses": {
                        "202": {"description": "accepted and journaled: {id, state}"},
                        **{
                            code: {"description": why, "content": error}
                            for code, why in (
                                ("401", "token missing or wrong"),
                                ("403", "clip outside the roots"),
                                ("404", "clip not found"),
                                ("413", "body or upload too large"),
                                ("422", "bad job"),
                                ("429", "queue full (Retry-After)"),
                            )
                        },
                    },
                }
            },
            "/v1/jobs/{id}": {
                "get": {"summary": "state, progress, outputs, error", "responses": ok},
                "delete": {"summary": "cancel", "responses": ok},
            },
            "/v1/jobs/{id}/files/{name}": {"get": {"summary": "an output file", "responses": ok}},
        },
    }


def serve(
    pipe,
    roots: list[Path],
    out_dir: Path,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
    limits: Limits = Limits(),
    quiet: bool = False,
) -> None:
    """Serve until interrupted (SIGINT / SIGTERM drain the worker first)."""
    import uvicorn

    app = create_app(pipe, roots, out_dir, token, limits)
    if not quiet:
        print(f"selva-rt serving {pipe.variant.name} on http://{host}:{port}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info")
