"""The outputs of a generation: planned and checked before any model loads, written all or
nothing, and reported (for people and, with `--json`, for tools).

    plan = plan_outputs(clip, prompts, Path("out"), fmt="wav", video=True)   # refuses early
    pipe = Pipeline.from_pretrained(...); result = pipe.generate(clip, prompts)
    write_outputs(plan, result)                                              # all or nothing
    print(json.dumps(report(plan, result, pipe)))

The CLI, the benchmark's file-to-file run, batch jobs and the server all go through here.
"""

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import OutputError

AUDIO_FORMATS = ("wav", "flac")
OUT_RATES = (48000,)  # stems may be resampled to these for video delivery
# Muxed video: output suffix -> (muxer, audio codec, PyAV sample format of the frames fed to it).
# Stream copy keeps the clip's container where its audio codec choice is clear (AAC in MP4, PCM in
# MOV/MKV); anything else is remuxed into Matroska, which takes every video codec.
MUX_FORMATS = {
    ".mp4": ("mp4", "aac", "fltp"),
    ".m4v": ("mp4", "aac", "fltp"),
    ".mov": ("mov", "pcm_s24le", "s32"),
    ".mkv": ("matroska", "pcm_s24le", "s32"),
}
FALLBACK_CONTAINER = ".mkv"


@dataclass(frozen=True)
class Stem:
    """The files of one prompt: the audio stem and, unless disabled, the muxed video."""

    prompt: str
    audio: Path
    video: Path | None = None


@dataclass(frozen=True)
class OutputPlan:
    clip: Path
    stems: tuple[Stem, ...]
    fmt: str = "wav"
    sample_rate: int | None = None  # None: the model's rate
    force: bool = False

    def paths(self) -> list[Path]:
        return [p for s in self.stems for p in (s.audio, s.video) if p is not None]


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe form of a prompt."""
    s = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return s[:limit].rstrip("_") or "prompt"


def plan_outputs(
    clip: str | os.PathLike,
    prompts: list[str],
    out_dir: str | os.PathLike,
    *,
    fmt: str = "wav",
    video: bool = True,
    sample_rate: int | None = None,
    force: bool = False,
    name: str | None = None,
) -> OutputPlan:
    """Output paths per prompt (`<name or clip stem>_<prompt slug>.<fmt>` and the muxed video),
    refusing before any work to clobber files (without `force`) or to write where it cannot."""
    clip, out_dir = Path(clip), Path(out_dir)
    if fmt not in AUDIO_FORMATS:
        raise OutputError(f"stems are written as {' or '.join(AUDIO_FORMATS)}, not {fmt!r}")
    if sample_rate is not None and sample_rate not in OUT_RATES:
        raise OutputError(f"stems can be resampled to {OUT_RATES}, not {sample_rate}")
    _check_writable(out_dir)
    container = clip.suffix.lower() if clip.suffix.lower() in MUX_FORMATS else FALLBACK_CONTAINER
    stems, seen = [], {}
    for prompt in prompts:
        stem = f"{name or clip.stem}_{slug(prompt)}"
        seen[stem] = seen.get(stem, 0) + 1
        if seen[stem] > 1:
            stem = f"{stem}_{seen[stem]}"
        video_path = out_dir / f"{stem}{container}" if video else None
        stems.append(Stem(prompt, out_dir / f"{stem}.{fmt}", video_path))
    plan = OutputPlan(clip, tuple(stems), fmt, sample_rate, force)
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


def write_outputs(plan: OutputPlan, result) -> OutputPlan:
    """Write every stem (and muxed video) of `result` (a GenerationResult for the plan's prompts):
    each file goes to a temporary name beside its target, and only when all are complete are
    they renamed into place, so a failure leaves none of them."""
    from . import media

    if len(result.audio) != len(plan.stems):
        raise ValueError(f"{len(result.audio)} stems for {len(plan.stems)} planned outputs")
    out_dir = plan.stems[0].audio.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []  # (temporary, final)

    def stage(final: Path) -> Path:
        if final.exists() and not plan.force:
            raise OutputError(f"{final} exists; pass --force to overwrite it")
        tmp = final.with_name(f".{final.stem}.{os.getpid()}.part{final.suffix}")
        staged.append((tmp, final))
        return tmp

    try:
        for stem, wav in zip(plan.stems, result.audio, strict=True):
            media.write_audio(
                stage(stem.audio),
                wav,
                result.sample_rate,
                fmt=plan.fmt,
                out_rate=plan.sample_rate,
                force=True,
            )
            if stem.video is not None:
                media.mux(
                    plan.clip,
                    wav,
                    result.sample_rate,
                    stage(stem.video),
                    start=result.start,
                    duration=result.duration,
                    force=True,
                )
        for tmp, final in staged:
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    return plan


def report(plan: OutputPlan, result, pipe, timings: dict[str, float] | None = None) -> dict:
    """The machine-readable account of one generation (`--json`)."""
    timings = result.timings if timings is None else timings
    return {
        "variant": pipe.variant.name,
        "clip": str(plan.clip),
        "seed": result.seed,
        "steps": result.steps,
        "cfg": result.cfg,
        "duration": result.duration,
        "start": result.start,
        "sample_rate": plan.sample_rate or result.sample_rate,
        "device": str(pipe.device),
        "precision": pipe.precision,
        "outputs": [
            {"prompt": s.prompt, "audio": str(s.audio)}
            | ({"video": str(s.video)} if s.video else {})
            for s in plan.stems
        ],
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
    }


def describe(plan: OutputPlan) -> str:
    """The written files, for people."""
    lines = []
    for s in plan.stems:
        lines.append(f"{s.prompt!r}:")
        lines.append(f"  stem  {s.audio}")
        if s.video is not None:
            lines.append(f"  video {s.video}")
    return "\n".join(lines)
