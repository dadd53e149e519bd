"""`selva-rt batch`: many jobs through one warm pipeline per device, resumable and lossless.

    entries = read_jobs(Path("jobs.jsonl"))        # or a folder of clips with prompts
    with Results(out_dir) as results:               # DIR/results.jsonl, locked, append-only
        summary = run_batch(entries, out_dir, settings, LocalEngine(...), results)

The driver (this module) is the only writer: it plans every job's outputs before any model
loads, skips jobs already done with the same parameters, hands the rest to an engine (in
process: decode threads feeding the model; or `batch_ray.RayEngine`), writes each result through
runtime/delivery/outputs.py exactly as `generate` does, and appends one record per job to
DIR/results.jsonl, flushed to disk before the next job is counted.

Why a kill loses nothing: outputs are renamed into place only when complete; a record is
appended with one write() and fsync'd; a `writing` record (the job's id and its files) precedes
the renames, so a run killed between renaming and recording finds the files are this very job's
and rewrites them instead of refusing to clobber them. Temporaries a killed run left beside its
outputs are deleted when the next run starts.
"""

import fcntl
import hashlib
import json
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path

from tqdm import tqdm

from ..delivery.outputs import OutputPlan, write_outputs
from ..errors import JobError, OutputError, SelvaError, UsageError
from ..variants import get_variant
from .jobs import DELIVERY, Entry, Job, decode, generate_together, parse_line

RESULTS = "results.jsonl"
CLIP_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")


@dataclass(frozen=True)
class Settings:
    """What, besides the job, decides its outputs; part of every job's identity."""

    variant: str
    precision: str  # resolved: fp32 / bf16 / fp16


def read_jobs(
    source: str | os.PathLike, prompts: list[str] | None = None, defaults: dict | None = None
) -> list[Entry]:
    """The entries of a JSONL file (one job a line; relative clip paths are taken from the
    file's folder) or of a folder of clips (each with `prompts`). `defaults` fills the fields a
    job leaves out (the command line's --seed, --steps, ...)."""
    source = Path(source)
    defaults = dict(defaults or {})
    if source.is_dir():
        if not prompts:
            raise UsageError(f"{source} is a folder of clips: give --prompt for them")
        clips = sorted(p for p in source.iterdir() if p.suffix.lower() in CLIP_SUFFIXES)
        if not clips:
            raise UsageError(f"{source} holds no clips ({', '.join(CLIP_SUFFIXES)})")
        data = [{"clip": p.name} for p in clips]
        return [
            _entry(i, d, source, {**defaults, "prompts": prompts}) for i, d in enumerate(data, 1)
        ]
    if not source.is_file():
        raise UsageError(f"{source} does not exist; pass a JSONL file or a folder of clips")
    if prompts:
        defaults["prompts"] = prompts
    entries = []
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UsageError(f"{source} is not UTF-8 text; pass a JSONL file") from None
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                entries.append(
                    Entry(number, parse_line(line, base=source.parent, defaults=defaults))
                )
            except JobError as err:
                entries.append(Entry(number, None, f"line {number}: {err}"))
    if not entries:
        raise UsageError(f"{source} holds no jobs (one JSON object a line)")
    return entries


def _entry(number: int, data: dict, base: Path, defaults: dict) -> Entry:
    try:
        return Entry(number, Job.from_dict(data, base=base, defaults=defaults))
    except JobError as err:
        return Entry(number, None, f"{data['clip']}: {err}")


def job_id(job: Job, settings: Settings) -> str:
    """Same job, same settings, same id: what `skipped` is decided on."""
    canonical = json.dumps({"job": job.to_dict(), "settings": vars(settings)}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class Results:
    """DIR/results.jsonl: append-only, one JSON record a line, each fsync'd; held under an
    exclusive lock so two batches never write one folder (the lock dies with its process)."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.out_dir / RESULTS, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as err:
            raise OutputError(f"cannot write {self.out_dir / RESULTS}: {err.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise OutputError(
                f"another batch is writing to {self.out_dir}; wait for it or pass another --out"
            ) from None
        self.records: list[dict] = []
        self._ok: dict[str, dict] = {}  # job id -> its last ok record
        self._owned: set[str] = set()  # ids of jobs that named their files here
        self._files: set[str] = set()  # files (names in the folder) a job here has written
        for record in self._read():
            self._index(record)
        self.run = f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}/{os.getpid()}"

    def _read(self) -> list[dict]:
        with open(self.out_dir / RESULTS, "rb") as f:
            data = f.read()
        if data and not data.endswith(b"\n"):  # a line torn by a kill: end it, then skip it
            os.write(self.fd, b"\n")
        records = []
        for line in data.splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def done(self, job_id: str) -> dict | None:
        """The last `ok` record of the job, if all its files are still there."""
        r = self._ok.get(job_id)
        if r is None:
            return None
        files = [f for o in r["outputs"] for f in (o["audio"], o.get("video")) if f]
        return r if all((self.out_dir / f).exists() for f in files) else None

    def owns(self, job_id: str) -> bool:
        """Whether a run of this same job named its files here: they may be rewritten."""
        return job_id in self._owned

    def wrote(self, path: Path) -> bool:
        """Whether a job of this folder wrote (or was writing) `path`: the batch's own file,
        which a job whose parameters changed since (a new seed, a re-spotted cue) replaces."""
        return path.parent == self.out_dir and path.name in self._files

    def append(self, record: dict) -> dict:
        now = datetime.now(timezone.utc)
        record = {"run": self.run, "time": f"{now:%Y-%m-%dT%H:%M:%S.%fZ}"} | record
        os.write(self.fd, (json.dumps(record) + "\n").encode())  # one write: whole or absent
        os.fsync(self.fd)
        self._index(record)
        return record

    def _index(self, record: dict) -> None:
        self.records.append(record)
        if record.get("status") in ("writing", "ok", "timeline"):  # timeline: spot's
            if record.get("id"):
                self._owned.add(record.get("id"))
            for output in record.get("outputs") or ():
                self._files.update(f for f in (output.get("audio"), output.get("video")) if f)
        if record.get("status") == "ok":
            self._ok[record.get("id")] = record

    def close(self) -> None:
        os.close(self.fd)  # releases the lock

    def __enter__(self) -> "Results":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Summary:
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def jobs(self) -> int:
        return self.ok + self.failed + self.skipped

    def to_dict(self) -> dict:
        hours = self.elapsed_s / 3600
        return {
            "jobs": self.jobs,
            "ok": self.ok,
            "failed": self.failed,
            "skipped": self.skipped,
            "elapsed_s": round(self.elapsed_s, 3),
            "clips_per_hour": round(self.ok / hours, 1) if self.ok and hours else None,
        }


def jobs_per_call(device) -> int:
    """How many jobs share a sampler and decoder call by default: on CUDA a batch of rows
    keeps the GPU busy; on the CPU one job at a time, until `selva-rt bench --jobs-together N`
    at full size shows rows together pay there (not measured yet: see the README)."""
    return JOBS_PER_CALL.get(device.type, 1)


JOBS_PER_CALL = {"cuda": 4}


class LocalEngine:
    """One warm pipeline in this process; `workers` threads decode the next clips meanwhile.
    Up to `together` jobs at a time share the sampler and decoder calls where their pictures
    are windows of one length (`Pipeline.generate_many`); None: `jobs_per_call(device)`."""

    def __init__(self, pipe, workers: int = 2, together: int | None = None):
        self.pipe, self.workers = pipe, workers
        self.together = together or jobs_per_call(pipe.device)
        self.where = f"local:{pipe.device}"

    def run(self, entries: Iterable[Entry]) -> Iterator[tuple[Entry, object, str]]:
        """(entry, GenerationResult or SelvaError, where it ran) per entry, in order."""
        variant = self.pipe.variant
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="selva-decode")
        try:
            todo = iter(entries)
            ahead = deque(
                (e, pool.submit(decode, e.job, variant))
                for e in islice(todo, self.workers + self.together)
            )
            while ahead:
                batch = [ahead.popleft() for _ in range(min(self.together, len(ahead)))]
                for e in islice(todo, len(batch)):
                    ahead.append((e, pool.submit(decode, e.job, variant)))
                outcomes = generate_together(self.pipe, [(e.job, d.result()) for e, d in batch])
                for (entry, _), outcome in zip(batch, outcomes, strict=True):
                    yield entry, outcome, self.where
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        pass


def prepare(entries: list[Entry], out_dir: Path, settings: Settings, results: Results, force: bool):
    """Give each job its id and output plan; jobs that would write another job's files, or
    files that are not the batch's (without `force`), get their error here, before any work.
    A file an earlier job in this folder wrote (results.jsonl says so) is the batch's own: a job
    whose parameters changed since replaces it."""
    claimed: dict[Path, int] = {}
    for e in entries:
        if e.job is None:
            continue
        e.id = job_id(e.job, settings)
        try:
            e.plan = e.job.plan(out_dir, force=True)  # checked below, against the records
            mine = force or results.owns(e.id)
            foreign = [p for p in e.plan.paths() if p.exists() and not (mine or results.wrote(p))]
            if foreign:
                raise OutputError(
                    f"{foreign[0]} already exists and no job here wrote it; pass --force to "
                    "overwrite it or --out to write elsewhere"
                )
        except SelvaError as err:  # a clip that cannot be read, or outputs that cannot be written
            e.error = f"line {e.line}: {err}"
            e.plan = None
            continue
        clash = next((claimed[p] for p in e.plan.paths() if p in claimed), None)
        if clash is not None:
            e.error = (
                f'line {e.line}: writes the same files as line {clash}; give it another "name"'
            )
            continue
        claimed.update(dict.fromkeys(e.plan.paths(), e.line))
    _remove_temporaries(out_dir, entries)


# What write_outputs and media stage beside an output: .STEM.PID.part.EXT and ..STEM.PID.part.EXT.*
_TEMPORARY = re.compile(r"^\.\.?(?P<stem>.+)\.\d+\.part\.")


def _remove_temporaries(out_dir: Path, entries: list[Entry]) -> None:
    """Delete what a killed run was writing for these jobs' outputs (we hold the folder's lock,
    so no live run is writing them)."""
    if not out_dir.is_dir():
        return
    stems = {p.stem for e in entries if e.plan is not None for p in e.plan.paths()}
    for path in out_dir.iterdir():
        match = _TEMPORARY.match(path.name)
        if match and match["stem"] in stems:
            path.unlink(missing_ok=True)


def run_batch(
    entries: list[Entry],
    out_dir: str | os.PathLike,
    settings: Settings,
    engine_factory,
    results: Results,
    *,
    force: bool = False,
    progress: bool = True,
) -> Summary:
    """Run every entry; `engine_factory()` is called (loading the model) only if a job needs
    running. Returns the counts; every job's record is in results.jsonl."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    summary = Summary()
    prepare(entries, out_dir, settings, results, force)
    bar = tqdm(
        total=len(entries),
        unit="job",
        desc="batch",
        disable=not (progress and sys.stderr.isatty()),
    )

    def record(entry: Entry, status: str, **fields) -> None:
        results.append(
            {"line": entry.line, "id": entry.id, "status": status}
            | ({"job": entry.job.to_dict()} if entry.job else {})
            | ({"settings": vars(settings)} if entry.id else {})
            | fields
        )
        setattr(summary, status, getattr(summary, status) + 1)
        if status == "failed":
            summary.errors.append(fields["error"])
        bar.update(1)
        bar.set_postfix(ok=summary.ok, failed=summary.failed, skipped=summary.skipped)

    todo = []
    for e in entries:
        if e.error is not None:
            record(e, "failed", error=e.error)
        elif (done := results.done(e.id)) is not None:
            record(e, "skipped", outputs=done["outputs"])
        else:
            todo.append(e)
    engine = engine_factory() if todo else None
    try:
        for entry, outcome, where in engine.run(todo) if engine else ():
            if isinstance(outcome, SelvaError):
                record(entry, "failed", error=f"line {entry.line}: {outcome}", worker=where)
                continue
            outputs = _outputs(entry.plan)
            results.append(
                {"line": entry.line, "id": entry.id, "status": "writing", "outputs": outputs}
            )
            t_write = time.perf_counter()
            try:
                write_outputs(entry.plan, outcome)
            except SelvaError as err:
                record(entry, "failed", error=f"line {entry.line}: {err}", worker=where)
                continue
            timings = dict(outcome.timings, write=time.perf_counter() - t_write)
            record(
                entry,
                "ok",
                outputs=outputs,
                duration=outcome.duration,
                sample_rate=entry.job.sample_rate or outcome.sample_rate,
                timings_s={k: round(v, 4) for k, v in timings.items()},
                worker=where,
            )
    finally:
        bar.close()
        if engine is not None:
            engine.close()
    summary.elapsed_s = time.perf_counter() - t0
    return summary


def _outputs(plan: OutputPlan) -> list[dict]:
    """The files of a job, named relative to the output folder."""
    return [
        {"prompt": s.prompt, "audio": s.audio.name} | ({"video": s.video.name} if s.video else {})
        for s in plan.stems
    ]


def add_engine_arguments(parser) -> None:
    """Where the jobs of `batch` and `spot` run (see `engines`)."""
    parser.add_argument("--decode-workers", type=int, default=2, help="threads decoding ahead")
    parser.add_argument(
        "--jobs-per-call",
        type=int,
        default=None,
        metavar="N",
        help="jobs whose pictures are windows of one length share each sampler and decoder "
        "call, up to N (default: 4 on CUDA; 1 on the CPU)",
    )
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        default=None,
        help="run on a Ray cluster (ADDRESS: auto, ray://HOST:10001, ...) or start one: local",
    )
    parser.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        help="Ray actors (default: one per GPU, or one per CPU but one left for decoding)",
    )


def add_arguments(parser) -> None:
    """`selva-rt batch`'s options: those of `generate`, job fields as defaults for every job."""
    from ..backends import BACKENDS
    from ..delivery.outputs import AUDIO_FORMATS, OUT_RATES
    from ..variants import generating_variants

    parser.add_argument("jobs", help="a JSONL file (one job a line) or a folder of clips")
    parser.add_argument(
        "--prompt",
        action="append",
        dest="prompts",
        help="prompt for every clip of a folder (repeatable); a default for JSONL jobs",
    )
    parser.add_argument("--out", default="selva_out", help="output directory (default selva_out)")
    job = parser.add_argument_group("defaults for jobs that do not set them")
    job.add_argument("--negative-prompt", default=None)
    job.add_argument("--seed", type=int, default=None)
    job.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default: the variant's)"
    )
    job.add_argument("--cfg", type=float, default=None, help="classifier-free guidance")
    job.add_argument("--duration", type=float, default=None, help="seconds")
    job.add_argument("--start", type=float, default=None, help="start time in the clip (s)")
    job.add_argument("--format", default=None, choices=AUDIO_FORMATS, help="wav (default) or flac")
    job.add_argument("--sample-rate", type=int, choices=OUT_RATES, default=None)
    job.add_argument("--loudness", type=float, default=None, metavar="LUFS", help="normalise stems")
    job.add_argument("--otio", action="store_true", default=None, help="write a timeline per job")
    job.add_argument(
        "--no-video", action="store_true", default=None, help="write stems only, no muxed video"
    )
    parser.add_argument(
        "--variant",
        default="selva-small-16k",
        choices=generating_variants(),
        metavar="VARIANT",
        help=f"one of {', '.join(generating_variants())}",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="auto: bf16 on CUDA and on CPUs with native bf16 (AVX-512 BF16, AMX), else fp32",
    )
    parser.add_argument("--backend", default="torch", choices=BACKENDS)
    parser.add_argument("--engines", default=None, help="folder built by `selva-rt export`")
    add_engine_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar or messages (failures still shown)"
    )
    parser.add_argument(
        "--force", action="store_true", help="let jobs overwrite files that are not their own"
    )


@contextmanager
def engines(args) -> Iterator[tuple[Callable[[], object], Settings]]:
    """The engine factory and the settings of `batch` and `spot` (from their shared options):
    workers on a Ray cluster with --ray (closed on exit), else one pipeline in this process."""
    from ..cache import SERVICE_MEMORY_GB, open_cache
    from ..device import resolve_device, resolve_precision

    if args.decode_workers < 1:
        raise UsageError("--decode-workers must be at least 1")
    if args.jobs_per_call is not None and args.jobs_per_call < 1:
        raise UsageError("--jobs-per-call must be at least 1")
    options = dict(
        variant=args.variant, precision=args.precision, backend=args.backend, engines=args.engines
    )
    cluster = None
    if args.ray:
        from .batch_ray import RayCluster

        cluster = RayCluster(args.ray, quiet=args.quiet)
        device = cluster.device(args.device)

        def factory():
            return cluster.engine(device=args.device, workers=args.ray_workers, **options)

    else:
        from ..pipeline import Pipeline

        device = resolve_device(args.device)

        def factory():
            pipe = Pipeline.from_pretrained(
                device=args.device,
                quiet=args.quiet,
                cache=open_cache(not args.no_cache, args.cache_gb, SERVICE_MEMORY_GB),
                low_memory=args.low_memory,
                **options,
            )
            return LocalEngine(pipe, args.decode_workers, args.jobs_per_call)

    try:
        yield factory, Settings(args.variant, resolve_precision(args.precision, device))
    finally:
        if cluster is not None:
            cluster.close()


def cmd_batch(args) -> int:
    fields = ("negative_prompt", "seed", "steps", "cfg", "duration", "start", *DELIVERY)
    defaults = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
    defaults.setdefault("steps", get_variant(args.variant).steps)
    entries = read_jobs(args.jobs, args.prompts, defaults)
    with engines(args) as (factory, settings), Results(args.out) as results:
        summary = run_batch(
            entries, args.out, settings, factory, results, force=args.force, progress=not args.quiet
        )
    for error in summary.errors:  # in every mode: --quiet hides progress, not failures
        print(f"failed: {error}", file=sys.stderr)
    if args.json:
        results_file = (Path(args.out) / RESULTS).resolve()
        print(json.dumps(summary.to_dict() | {"results": str(results_file)}))
    elif not args.quiet:
        rate = summary.to_dict()["clips_per_hour"]
        print(
            f"{summary.jobs} jobs: {summary.ok} ok, {summary.failed} failed, {summary.skipped} "
            f"skipped in {summary.elapsed_s:.1f} s"
            + (f" ({rate:.0f} clips/hour)" if rate else "")
            + f"; records in {Path(args.out) / RESULTS}"
        )
    return 0 if summary.failed == 0 else 1
