"""A job: one clip, its prompts, the sampler options and the delivery options, as `selva-rt batch`
reads it from a JSONL line and the HTTP server from a request body.

    job = Job.from_dict({"clip": "a.mp4", "prompts": ["dog barking"], "seed": 7}, base=Path("."))
    job.to_dict()  # the canonical form: every field, the clip as an absolute path
    plan = job.plan(out_dir)  # its files, as `generate` with the same options writes them

A job's clip is a file, or an edit: source ranges of several clips played back to back
(`{"segments": [{"path": "a.mov", "start": 12, "duration": "5/2"}, ...]}`, times in seconds,
exact as "num/den"), which is how `selva-rt spot` hands the batch runner a cue that spans a cut.
`timecode` (`{"start": "01:00:10:00", "rate": "25/1"}`) places the stems when the picture's
first frame is not at the clip's own timecode (a cue on the editor's timeline).

Parsing is strict: an unknown field, a wrong type or a bad value is a JobError with one line
that names the field and says what is wanted. Values are checked by runtime/checks.py, as for
`generate`, so a job is refused for exactly the reasons a command line is.
"""

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from ..checks import check_negative_prompt, check_options, check_prompts
from ..delivery.outputs import AUDIO_FORMATS, LOUDNESS_TARGETS, OUT_RATES, OutputPlan, plan_outputs
from ..delivery.timecode import Timecode, rate_text
from ..errors import JobError, SelvaError
from ..media import Edit
from ..pipeline import Request, first_window
from ..variants import DEFAULT_SEED, DEFAULT_STEPS, Variant

MAX_NAME_CHARS = 100


@dataclass(frozen=True)
class Job:
    clip: Path | Edit  # absolute; or an edit of several clips' source ranges
    prompts: tuple[str, ...]  # in JSON a list of text, or one text for one prompt
    negative_prompt: str = ""
    seed: int = DEFAULT_SEED
    steps: int = DEFAULT_STEPS
    cfg: float | None = None  # None: the variant's default (4.5; Flowley 7.5)
    start: float = 0.0
    duration: float | None = None  # seconds from start; None: to the clip's end
    name: str | None = None  # output file prefix; default: the clip's stem
    timecode: Timecode | None = None  # of the picture's first frame; None: the clip's own
    # Delivery, as `generate`'s options of the same names: they change the files, not the sound.
    format: str = "wav"  # wav (Broadcast WAV) or flac
    sample_rate: int | None = None  # None: the model's rate; 48000 for video delivery
    loudness: float | None = None  # LUFS each stem is normalised to; None: as generated
    otio: bool = False  # also write <name>.otio (needs opentimelineio)
    no_video: bool = False  # stems only, no muxed video

    @classmethod
    def from_dict(cls, data: object, *, base: Path, defaults: dict | None = None) -> "Job":
        """A checked Job from a decoded JSON object; a relative clip path is taken from `base`
        (the JSONL file's folder). `defaults` fills the fields `data` leaves out."""
        if not isinstance(data, dict):
            raise JobError(f"a job is a JSON object, not {_json_type(data)}")
        unknown = sorted(set(data) - FIELDS)
        if unknown:
            raise JobError(f"unknown field {unknown[0]!r}; a job has {', '.join(sorted(FIELDS))}")
        values = {**OPTION_DEFAULTS, **(defaults or {}), **data}
        for field in ("clip", "prompts"):
            if field not in values:
                raise JobError(f"missing field {field!r}")
        clip = _clip(values["clip"], base)
        options = {k: values[k] for k in OPTION_DEFAULTS}
        try:
            prompts = tuple(check_prompts(values["prompts"]))
            negative = check_negative_prompt(values.get("negative_prompt", ""))
            check_options(**options)
        except SelvaError as err:
            raise JobError(str(err)) from None
        return cls(
            clip=clip,
            prompts=prompts,
            negative_prompt=negative,
            seed=options["seed"],
            steps=options["steps"],
            cfg=None if options["cfg"] is None else float(options["cfg"]),
            start=float(options["start"]),
            duration=None if options["duration"] is None else float(options["duration"]),
            name=_check_name(values.get("name")),
            timecode=_timecode(values.get("timecode")),
            **_check_delivery(values),
        )

    def to_dict(self) -> dict:
        """The canonical JSON form: every field, the clip as an absolute path (or an edit)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["clip"] = self.clip.to_dict() if isinstance(self.clip, Edit) else str(self.clip)
        d["prompts"] = list(self.prompts)
        if self.timecode is None:
            del d["timecode"]  # absent, not null: ids of jobs without one stay as they were
        else:
            d["timecode"] = {"start": str(self.timecode), "rate": rate_text(self.timecode.rate)}
        return d

    def plan(self, out_dir: Path, *, prompts: list[str] | None = None, force: bool = False):
        """The job's OutputPlan in `out_dir` (`prompts`: those of the result, default the job's);
        refuses what `plan_outputs` refuses."""
        return plan_outputs(
            self.clip,
            list(self.prompts if prompts is None else prompts),
            out_dir,
            fmt=self.format,
            video=not self.no_video,
            sample_rate=self.sample_rate,
            force=force,
            name=self.name,
            otio=self.otio,
            loudness=self.loudness,
            timecode=self.timecode,
        )


FIELDS = {f.name for f in dataclasses.fields(Job)}
DELIVERY = ("format", "sample_rate", "loudness", "otio", "no_video")
OPTION_DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(Job)
    if f.name in ("seed", "steps", "cfg", "start", "duration")
}


def parse_line(line: str, *, base: Path, defaults: dict | None = None) -> Job:
    """One JSONL line -> a Job, or a JobError saying why not."""
    try:
        data = json.loads(line, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise JobError(f"not valid JSON ({err.msg} at column {err.colno})") from None
    except ValueError as err:
        raise JobError(str(err)) from None
    return Job.from_dict(data, base=base, defaults=defaults)


def _clip(clip: object, base: Path) -> Path | Edit:
    """A job's clip: a path (text; relative to `base`) or an edit (an object of segments)."""
    if isinstance(clip, dict):
        try:
            edit = Edit.from_dict(clip, base.absolute())
        except (ValueError, SelvaError) as err:
            raise JobError(f"clip: {err}") from None
        return edit
    if not isinstance(clip, str) or not clip.strip():
        raise JobError(f"clip must be a path (text), not {_json_type(clip)}")
    return Path(clip) if os.path.isabs(clip) else (base / clip).absolute()


def _timecode(value: object) -> Timecode | None:
    """{"start": "01:00:00;00", "rate": "30000/1001"} -> Timecode (None stays None)."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"start", "rate"}:
        raise JobError('timecode is {"start": "hh:mm:ss:ff", "rate": "25/1"}')
    try:
        rate = Fraction(value["rate"])
        return Timecode.parse(value["start"], rate)
    except (TypeError, ValueError, ZeroDivisionError, AttributeError) as err:
        raise JobError(f"timecode: {err}") from None


def _check_name(name: object) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str):
        raise JobError(f"name must be text, not {_json_type(name)}")
    if not name.strip():
        raise JobError("name is empty; leave it out to name the files after the clip")
    if len(name) > MAX_NAME_CHARS or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise JobError(
            f"name {name[:40]!r} must be a file name: at most {MAX_NAME_CHARS} characters, "
            "no slashes, not starting with '.'"
        )
    return name


def _check_delivery(values: dict) -> dict:
    """The delivery fields of `values`, checked (defaults for those it leaves out)."""
    from ..delivery.timeline import require_otio

    out = {
        f.name: values.get(f.name, f.default) for f in dataclasses.fields(Job) if f.name in DELIVERY
    }
    if out["format"] not in AUDIO_FORMATS:
        raise JobError(
            f"format must be {' or '.join(map(repr, AUDIO_FORMATS))}, not {out['format']!r}"
        )
    rate = out["sample_rate"]
    if rate is not None and (isinstance(rate, bool) or rate not in OUT_RATES):
        raise JobError(f"sample_rate must be null (the model's rate) or one of {list(OUT_RATES)}")
    low, high = LOUDNESS_TARGETS
    level = out["loudness"]
    if level is not None:
        if (
            isinstance(level, bool)
            or not isinstance(level, int | float)
            or not low <= level <= high
        ):
            raise JobError(f"loudness must be null or a number of LUFS in {low:g}..{high:g}")
        out["loudness"] = float(level)
    for flag in ("otio", "no_video"):
        if not isinstance(out[flag], bool):
            raise JobError(f"{flag} must be true or false, not {_json_type(out[flag])}")
    if out["otio"]:
        try:
            require_otio()
        except SelvaError as err:
            raise JobError(str(err)) from None
    return out


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number a job can use")


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else "?")


@dataclass
class Entry:
    """One line of the job list: a Job, or the reason it is not one."""

    line: int  # 1-based line of the JSONL file, or position in the folder listing
    job: Job | None
    error: str | None = None
    id: str | None = None  # hash of the job and the settings
    plan: OutputPlan | None = None


def decode(job: Job, variant: Variant):
    """A job's first window (media.Video, which `Pipeline.generate` continues from when the clip
    is longer) and the seconds decoding took; CPU work without model state, run ahead of the
    model by the engines. A SelvaError is returned, not raised, so it reaches the driver as the
    job's outcome."""
    t0 = time.perf_counter()
    try:
        video = first_window(job.clip, variant, job.start, job.duration)
    except SelvaError as err:
        return err, time.perf_counter() - t0
    return video, time.perf_counter() - t0


def generate(pipe, job: Job, decoded):
    """The job's GenerationResult (or its SelvaError) from what `decode` gave."""
    return generate_together(pipe, [(job, decoded)])[0]


def generate_together(pipe, jobs: list[tuple[Job, tuple]]) -> list:
    """Each (job, what `decode` gave it) -> its GenerationResult or SelvaError, as `generate`
    gives it, the jobs sharing the sampler and decoder calls where they can
    (`Pipeline.generate_many`)."""
    outcomes: list = [None] * len(jobs)
    requests, index = [], []
    for i, (job, (video, seconds)) in enumerate(jobs):
        if isinstance(video, SelvaError):
            outcomes[i] = video
            continue
        requests.append(
            Request(
                video,
                list(job.prompts),
                negative_prompt=job.negative_prompt,
                seed=job.seed,
                steps=job.steps,
                cfg=job.cfg,
                duration=job.duration,
                start=job.start,
            )
        )
        index.append((i, seconds))
    for (i, seconds), result in zip(index, pipe.generate_many(requests), strict=True):
        if not isinstance(result, SelvaError):
            result.timings["decode"] = seconds + result.timings.get("decode", 0.0)
        outcomes[i] = result
    return outcomes
