"""The outputs of a generation: planned and checked before any model loads, written all or
nothing, and reported (for people and, with `--json`, for tools).

    plan = plan_outputs(clip, prompts, Path("out"), fmt="wav", video=True)   # refuses early
    pipe = Pipeline.from_pretrained(...); result = pipe.generate(clip, prompts)
    delivered = write_outputs(plan, result)                                  # all or nothing
    print(json.dumps(report(plan, result, pipe, delivered=delivered)))

WAV stems are Broadcast WAVs: `bext` (prompt, origin, TimeReference = the clip's start timecode
plus `start`, R 128 loudness) and `iXML` (timecode rate, drop frame). With `otio=True` a
timeline per clip places the picture and every stem at its timecode; with `loudness=LUFS` each
stem is normalised to that integrated loudness (off by default: stems are mixed later).

The CLI, the benchmark's file-to-file run, batch jobs and the server all go through here.
"""

import math
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ... import __version__
from ..errors import OutputError, UsageError
from ..media import FALLBACK_CONTAINER, MUX_FORMATS
from .timecode import Timecode, timecode_rate

if TYPE_CHECKING:
    from ..media import Edit
    from .loudness import Loudness

AUDIO_FORMATS = ("wav", "flac")
OUT_RATES = (48000,)  # stems may be resampled to these for video delivery
LOUDNESS_TARGETS = (-70.0, 0.0)  # LUFS a stem may be normalised to
STEM_BITS = 24  # media.write_audio writes 24-bit PCM


@dataclass(frozen=True)
class Stem:
    """The files of one prompt: the audio stem and, unless disabled, the muxed video."""

    prompt: str
    audio: Path
    video: Path | None = None


@dataclass(frozen=True)
class OutputPlan:
    clip: "Path | Edit"
    stems: tuple[Stem, ...]
    fmt: str = "wav"
    sample_rate: int | None = None  # None: the model's rate
    force: bool = False
    timecode: Timecode | None = None  # of the clip's first frame; None: read when writing
    otio: Path | None = None  # the timeline file, if one is wanted
    loudness: float | None = None  # LUFS each stem is normalised to; None: as generated

    def paths(self) -> list[Path]:
        stems = [p for s in self.stems for p in (s.audio, s.video) if p is not None]
        return stems + ([self.otio] if self.otio else [])


@dataclass(frozen=True)
class Delivered:
    """One written stem, as measured in the file."""

    stem: Stem
    sample_rate: int
    samples: int
    loudness: "Loudness"
    time_reference: int  # samples since midnight at which the stem starts (BWF TimeReference)
    gain_db: float = 0.0  # applied to reach plan.loudness
    peak_limited: bool = False  # the gain stopped short of the target: more would clip


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe form of a prompt."""
    s = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return s[:limit].rstrip("_") or "prompt"


def plan_outputs(
    clip: "str | os.PathLike | Edit",
    prompts: list[str],
    out_dir: str | os.PathLike,
    *,
    fmt: str = "wav",
    video: bool = True,
    sample_rate: int | None = None,
    force: bool = False,
    name: str | None = None,
    otio: bool = False,
    loudness: float | None = None,
    timecode: Timecode | None = None,
) -> OutputPlan:
    """Output paths per prompt (`<name or clip stem>_<prompt slug>.<fmt>` and the muxed video,
    plus `<name or clip stem>.otio` with `otio`), refusing before any work to clobber files
    (without `force`), to write where it cannot, or to use a clip timecode it cannot read.
    `timecode`: of the picture's first frame (default: the clip's own); an edit's stems are
    placed by it (00:00:00:00 without), and get no muxed video or timeline of their own."""
    from .. import media
    from .timecode import clip_timecode
    from .timeline import require_otio

    out_dir = Path(out_dir)
    if isinstance(clip, media.Edit):
        if video or otio:
            raise UsageError(
                f"{clip.name} is an edit of several clips: it gets stems only (pass --no-video)"
            )
        for segment in clip.segments:
            media.existing_file(segment.path)
        if timecode is None:
            timecode = Timecode(0, timecode_rate(media.probe(clip.segments[0].path).fps))
    else:
        clip = Path(clip)
    low, high = LOUDNESS_TARGETS
    if loudness is not None and not (isinstance(loudness, int | float) and low <= loudness <= high):
        raise UsageError(f"loudness {loudness!r} is out of range; use {low:g}..{high:g} LUFS")
    if otio:
        require_otio()
    if fmt not in AUDIO_FORMATS:
        raise OutputError(f"stems are written as {' or '.join(AUDIO_FORMATS)}, not {fmt!r}")
    if sample_rate is not None and sample_rate not in OUT_RATES:
        raise OutputError(f"stems can be resampled to {OUT_RATES}, not {sample_rate}")
    _check_writable(out_dir)
    container = None
    if video:
        from .. import media

        suffix = clip.suffix.lower()
        container = media.mux_suffix(clip, suffix if suffix in MUX_FORMATS else FALLBACK_CONTAINER)
    stems, seen = [], {}
    for prompt in prompts:
        stem = f"{name or clip.stem}_{slug(prompt)}"
        seen[stem] = seen.get(stem, 0) + 1
        if seen[stem] > 1:
            stem = f"{stem}_{seen[stem]}"
        video_path = out_dir / f"{stem}{container}" if video else None
        stems.append(Stem(prompt, out_dir / f"{stem}.{fmt}", video_path))
    plan = OutputPlan(
        clip,
        tuple(stems),
        fmt,
        sample_rate,
        force,
        timecode=timecode or clip_timecode(clip),
        otio=out_dir / f"{name or clip.stem}.otio" if otio else None,
        loudness=loudness,
    )
    if not force:
        existing = [str(p) for p in plan.paths() if p.exists()]
        if existing:
            raise OutputError(
                f"{existing[0]} already exists{' (and more)' if len(existing) > 1 else ''}; "
                "pass --force to overwrite or --out to write elsewhere"
            )
    return plan


def _check_writable(out_dir: Path) -> None:
    # Nothing is created until there is something to write: check the nearest existing folder.
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"output path {existing} is a file, not a directory; pass --out DIR")
    if not os.access(existing, os.W_OK | os.X_OK) or _read_only(existing):
        raise OutputError(f"output directory {out_dir} is not writable; pass --out DIR")


def _read_only(path: Path) -> bool:
    """True for folders even root cannot write (read-only mounts, /proc)."""
    try:
        with tempfile.TemporaryFile(dir=path):
            return False
    except OSError:
        return True


def write_outputs(plan: OutputPlan, result, variant: str = "") -> list[Delivered]:
    """Write every stem (and muxed video, and the timeline) of `result` (a GenerationResult for
    the plan's prompts; `variant` names the model in the stems' coding history): each file goes
    to a temporary name beside its target, and only when all are complete are they renamed into
    place, so a failure leaves none of them."""
    from .. import media
    from .timecode import clip_timecode
    from .timeline import StemTrack, build_timeline, write_timeline

    if len(result.audio) != len(plan.stems):
        raise ValueError(f"{len(result.audio)} stems for {len(plan.stems)} planned outputs")
    out_dir = plan.stems[0].audio.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    timecode = plan.timecode or clip_timecode(plan.clip)
    staged: list[tuple[Path, Path]] = []  # (temporary, final)

    def stage(final: Path) -> Path:
        if final.exists() and not plan.force:
            raise OutputError(f"{final} exists; pass --force to overwrite it")
        tmp = final.with_name(f".{final.stem}.{os.getpid()}.part{final.suffix}")
        staged.append((tmp, final))
        return tmp

    try:
        delivered = []
        for stem, wav in zip(plan.stems, result.audio, strict=True):
            done, audio = _write_stem(plan, stem, wav, result, timecode, variant, stage)
            delivered.append(done)
            if stem.video is not None:  # the stem as written: the same rate, gain and length
                media.mux(
                    plan.clip,
                    audio,
                    done.sample_rate,
                    stage(stem.video),
                    start=result.start,
                    duration=result.duration,
                    force=True,
                    timecode=timecode,
                )
        if plan.otio is not None:
            tracks = [
                StemTrack(d.stem.prompt, d.stem.audio, d.sample_rate, d.samples) for d in delivered
            ]
            timeline = build_timeline(
                name=plan.otio.stem,
                clip=plan.clip,
                timecode=timecode,
                start=result.start,
                duration=result.duration,
                stems=tracks,
                folder=plan.otio.parent,
                clip_seconds=media.probe(plan.clip).seconds,
            )
            write_timeline(timeline, stage(plan.otio))
        for tmp, final in staged:
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    return delivered


def _write_stem(plan, stem, wav, result, timecode, variant, stage) -> tuple[Delivered, np.ndarray]:
    """Write one stem at the plan's rate, normalised if asked, and measure the file as written;
    WAV stems get their bext and iXML chunks. -> (what was written, the audio [C, T] written:
    resampled and gained, what the muxed video carries)."""
    import soundfile

    from .. import media
    from . import bwf, loudness, vorbis
    from .timecode import rate_text

    x = np.atleast_2d(np.asarray(wav, dtype=np.float32))  # [C, T] at the model's rate
    rate = plan.sample_rate or result.sample_rate
    if rate != result.sample_rate:
        x = media.resample(torch.from_numpy(x), result.sample_rate, rate).numpy()
        # As long as the picture, to the sample, at the new rate too.
        n = round(Fraction(result.duration) * rate)
        x = np.pad(x[:, :n], ((0, 0), (0, max(0, n - x.shape[1]))))
    gain_db, limited = 0.0, False
    if plan.loudness is not None:
        gain_db, limited = loudness.normalising_gain(x, rate, plan.loudness)
    gain = 10 ** (gain_db / 20)
    tmp = stage(stem.audio)
    media.write_audio(tmp, x * gain, rate, fmt=plan.fmt, force=True)
    written, _ = soundfile.read(tmp, dtype="float32", always_2d=True)
    measured = loudness.measure(written.T, rate)
    time_reference = timecode.samples(rate, result.start)
    if plan.fmt == "flac":
        at = Timecode(
            timecode.frames + math.floor(Fraction(result.start) * timecode.rate),
            timecode.rate,
            timecode.drop_frame,
        )
        comments = [
            ("TITLE", stem.prompt),
            ("DESCRIPTION", stem.prompt),
            ("ENCODER", f"selva-rt {__version__}"),
            ("SELVA_VARIANT", variant),
            ("SELVA_SEED", str(result.seed)),
            ("SELVA_STEPS", str(result.steps)),
            ("SELVA_CFG", f"{result.cfg:g}"),
            ("TIMECODE", str(at)),
            ("TIMECODE_RATE", rate_text(timecode.rate)),
            ("TIME_REFERENCE", str(time_reference)),
        ]
        vorbis.flac_comments(tmp, f"selva-rt {__version__}", comments)
    if plan.fmt == "wav":
        model = " ".join(
            str(p) for p in ("selva-rt", __version__, variant, "seed", result.seed) if p
        )
        history = [bwf.coding_history_line(result.sample_rate, 32, len(x), model)]
        if rate != result.sample_rate:
            history.append(bwf.coding_history_line(rate, 32, len(x), "resampled: windowed sinc"))
        level = ""
        if plan.loudness is not None:
            level = (
                f"gain {gain_db:+.2f} dB to {plan.loudness:g} LUFS" + " (peak-limited)" * limited
            )
        history.append(bwf.coding_history_line(rate, STEM_BITS, len(x), level))
        bwf.add_chunks(
            tmp,
            [
                bwf.bext_chunk(
                    description=stem.prompt,
                    originator=f"selva-rt {__version__}",
                    reference=uuid.uuid4().hex,
                    created=datetime.now(),
                    time_reference=time_reference,
                    loudness=measured,
                    coding_history=history,
                ),
                bwf.ixml_chunk(
                    project=plan.clip.stem,
                    note=stem.prompt,
                    tracks=[stem.prompt] * len(x),
                    timecode=timecode,
                    time_reference=time_reference,
                    sample_rate=rate,
                    bits=STEM_BITS,
                ),
            ],
        )
    done = Delivered(stem, rate, len(written), measured, time_reference, gain_db, limited)
    return done, x * gain


def report(
    plan: OutputPlan,
    result,
    pipe,
    timings: dict[str, float] | None = None,
    delivered: list[Delivered] | None = None,
) -> dict:
    """The machine-readable account of one generation (`--json`); with `delivered` (what
    write_outputs returns) each stem's loudness and timecode position too."""
    timings = result.timings if timings is None else timings
    # Absolute paths: a tool that embeds the CLI may run it from any working folder.
    outputs = [
        {"prompt": s.prompt, "audio": str(s.audio.resolve())}
        | ({"video": str(s.video.resolve())} if s.video else {})
        for s in plan.stems
    ]
    for entry, done in zip(outputs, delivered or [], strict=False):
        entry["loudness"] = done.loudness.as_dict()
        if plan.loudness is not None:
            entry["loudness"] |= {
                "gain_db": round(done.gain_db, 2),
                "peak_limited": done.peak_limited,
            }
        entry["time_reference"] = done.time_reference
    timecode = plan.timecode
    return {
        "variant": pipe.variant.name,
        "clip": str(Path(plan.clip).resolve()),
        "seed": result.seed,
        "steps": result.steps,
        "cfg": result.cfg,
        "duration": result.duration,
        "start": result.start,
        "sample_rate": plan.sample_rate or result.sample_rate,
        "device": str(pipe.device),
        "precision": pipe.precision,
        # CPU threads: bf16 on the CPU rounds by oneDNN's blocking, which follows the count, so
        # stems are reproducible from the seed for one count on one kind of CPU (README).
        "threads": torch.get_num_threads(),
        "outputs": outputs,
        **({"timecode": _timecode_dict(timecode)} if timecode else {}),
        **({"otio": str(plan.otio.resolve())} if plan.otio else {}),
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
    }


def _timecode_dict(timecode: Timecode) -> dict:
    from .timecode import rate_text

    return {
        "start": str(timecode),
        "rate": rate_text(timecode.rate),
        "drop_frame": timecode.drop_frame,
    }


def describe(plan: OutputPlan, delivered: list[Delivered] | None = None) -> str:
    """The written files, for people; with `delivered`, each stem's loudness and timecode."""
    lines = []
    for i, s in enumerate(plan.stems):
        lines.append(f"{s.prompt!r}:")
        lines.append(f"  stem  {s.audio}")
        if delivered:
            m, at = delivered[i].loudness, delivered[i].time_reference
            lines.append(
                f"        {m.integrated:.1f} LUFS, true peak {m.true_peak:.1f} dBTP, "
                f"TimeReference {at} samples"
            )
        if s.video is not None:
            lines.append(f"  video {s.video}")
    if plan.otio is not None:
        lines.append(f"timeline {plan.otio}")
    return "\n".join(lines)
