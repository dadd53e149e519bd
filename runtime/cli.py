"""`selva-rt`: the command line.

Every failure a user can cause ends in one line on stderr and a non-zero exit; `--debug` shows the
traceback. Outputs are planned and checked before any work starts, and written atomically.
"""

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from .errors import OutputError, SelvaError, UsageError
from .variants import DEFAULT_CFG, DEFAULT_DURATION, DEFAULT_SEED, DEFAULT_STEPS, VARIANTS

AUDIO_FORMATS = ("wav", "flac")
# Stream copy keeps the clip's container where its audio codec choice is clear (spec: AAC in MP4,
# PCM in MOV/MKV); anything else is remuxed into Matroska, which takes every video codec.
MUX_CONTAINERS = {".mp4": ".mp4", ".m4v": ".mp4", ".mov": ".mov", ".mkv": ".mkv"}
MAX_PROMPT_CHARS = 1000


def _slug(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return slug[:limit].rstrip("_") or "prompt"


def check_prompt(prompt: str) -> str:
    """Return the prompt stripped, or raise UsageError with one line saying what is wrong."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("prompt is not valid UTF-8 text; pass the prompt as UTF-8") from None
    stripped = prompt.strip()
    if not stripped:
        raise UsageError("prompt is empty; describe the sound to generate, e.g. 'dog barking'")
    if len(stripped) > MAX_PROMPT_CHARS:
        raise UsageError(
            f"prompt is {len(stripped)} characters long (at most {MAX_PROMPT_CHARS}); "
            "shorten it to the sound you want"
        )
    return stripped


def plan_outputs(
    clip: Path, prompts: list[str], out_dir: Path, fmt: str, video: bool, force: bool
) -> list[dict]:
    """Output paths per prompt, refusing (before any work) to clobber files or use a bad dir."""
    # Nothing is created until there is something to write: check the nearest existing folder.
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"output path {existing} is a file, not a directory; pass --out DIR")
    if not os.access(existing, os.W_OK | os.X_OK) or _read_only(existing):
        raise OutputError(f"output directory {out_dir} is not writable; pass --out DIR")
    container = MUX_CONTAINERS.get(clip.suffix.lower(), ".mkv")
    plans, seen = [], {}
    for prompt in prompts:
        stem = f"{clip.stem}_{_slug(prompt)}"
        seen[stem] = seen.get(stem, 0) + 1
        if seen[stem] > 1:
            stem = f"{stem}_{seen[stem]}"
        plan = {"prompt": prompt, "audio": out_dir / f"{stem}.{fmt}"}
        if video:
            plan["video"] = out_dir / f"{stem}{container}"
        plans.append(plan)
    if not force:
        existing = [
            str(p) for plan in plans for k, p in plan.items() if k != "prompt" and p.exists()
        ]
        if existing:
            raise OutputError(
                f"{existing[0]} already exists{' (and more)' if len(existing) > 1 else ''}; "
                "pass --force to overwrite or --out to write elsewhere"
            )
    return plans


def _read_only(path: Path) -> bool:
    """True for folders even root cannot write (read-only mounts, /proc)."""
    try:
        with tempfile.TemporaryFile(dir=path):
            return False
    except OSError:
        return True


def cmd_generate(args: argparse.Namespace) -> int:
    from . import media
    from .pipeline import Pipeline, resolve_device

    t_start = time.perf_counter()
    clip = Path(args.clip)
    prompts = [check_prompt(p) for p in args.prompts]
    negative = args.negative_prompt
    if negative:
        negative = check_prompt(negative)
    if args.steps < 1 or args.steps > 1000:
        raise UsageError(f"--steps {args.steps} is out of range; use 1..1000 (default 25)")
    if args.duration <= 0 or args.start < 0:
        raise UsageError("--duration must be > 0 and --start >= 0 (seconds)")
    resolve_device(args.device)  # fail fast on bad arguments and clips, before loading weights
    media.probe(clip)
    plans = plan_outputs(clip, prompts, Path(args.out), args.format, not args.no_video, args.force)

    pipe = Pipeline.from_pretrained(
        args.variant,
        device=args.device,
        precision=args.precision,
        quiet=args.quiet,
        backend=args.backend,
        engines=args.engines,
    )
    result = pipe.generate(
        clip,
        prompts,
        negative_prompt=negative or "",
        seed=args.seed,
        steps=args.steps,
        cfg=args.cfg,
        duration=args.duration,
        start=args.start,
        progress=not args.quiet,
    )
    t_write = time.perf_counter()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    out_rate = args.sample_rate or result.sample_rate
    for plan, wav in zip(plans, result.audio, strict=True):
        media.write_audio(
            plan["audio"],
            wav,
            result.sample_rate,
            fmt=args.format,
            out_rate=out_rate,
            force=args.force,
        )
        if "video" in plan:
            media.mux(
                clip,
                wav,
                result.sample_rate,
                plan["video"],
                start=result.start,
                duration=result.duration,
                force=args.force,
            )
    timings = dict(
        result.timings, write=time.perf_counter() - t_write, total=time.perf_counter() - t_start
    )

    if args.json:
        print(
            json.dumps(
                {
                    "variant": pipe.variant.name,
                    "seed": args.seed,
                    "steps": args.steps,
                    "cfg": args.cfg,
                    "duration": result.duration,
                    "start": result.start,
                    "sample_rate": out_rate,
                    "device": str(pipe.device),
                    "precision": pipe.precision,
                    "outputs": [{k: str(v) for k, v in plan.items()} for plan in plans],
                    "timings_s": {k: round(v, 4) for k, v in timings.items()},
                }
            )
        )
    elif not args.quiet:
        for plan in plans:
            print(f"{plan['prompt']!r}:")
            print(f"  stem  {plan['audio']}")
            if "video" in plan:
                print(f"  video {plan['video']}")
        print(
            f"done in {timings['total']:.1f} s ({result.duration:.2f} s of audio, "
            f"{pipe.variant.name} on {pipe.device})"
        )
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from . import weights
    from .variants import get_variant

    names = (
        [args.variant] if args.variant else [n for n, v in VARIANTS.items() if not v.random_weights]
    )
    if args.action == "list":
        print(f"weights home: {weights.weights_home()}")
        for name in names:
            variant = get_variant(name)
            missing = {f.path for f in weights.missing_files(variant)}
            print(f"{name}: {variant.description}")
            for f in variant.files:
                state = "missing" if f.path in missing else "present"
                print(f"  [{state:7s}] {f.repo}/{f.path}")
        return 0
    if args.action == "download":
        if not args.variant:
            raise UsageError(
                "name the variant to download, e.g. selva-rt weights download selva-small-16k"
            )
        for path in weights.download(get_variant(args.variant), quiet=args.quiet):
            if not args.quiet:
                print(path)
        return 0
    bad = 0
    for name in names:
        for f, status in weights.verify(get_variant(name)):
            bad += status not in ("ok", "no md5 published")
            print(f"{name}: {f.repo}/{f.path}: {status}")
    return 1 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selva-rt",
        description="Text-conditioned selective video-to-audio generation (SELVA / MMAudio).",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate", parents=[common], help="generate one audio stem per prompt for a clip"
    )
    gen.add_argument("clip", help="input video file")
    gen.add_argument("prompts", nargs="+", help="what to hear, e.g. 'sheep bleating'")
    gen.add_argument("--negative-prompt", default="", help="what not to hear (default: '')")
    gen.add_argument("--variant", default="selva-small-16k", choices=list(VARIANTS))
    gen.add_argument("--seed", type=int, default=DEFAULT_SEED)
    gen.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="Euler steps")
    gen.add_argument("--cfg", type=float, default=DEFAULT_CFG, help="classifier-free guidance")
    gen.add_argument("--duration", type=float, default=DEFAULT_DURATION, help="seconds")
    gen.add_argument("--start", type=float, default=0.0, help="start time in the clip (s)")
    gen.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    gen.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="auto: fp32 on CPU, bf16 on CUDA",
    )
    gen.add_argument(
        "--backend",
        default="torch",
        choices=("torch", "onnxruntime", "tensorrt"),
        help="what runs the parts (onnxruntime/tensorrt need --engines)",
    )
    gen.add_argument("--engines", default=None, help="folder built by `selva-rt export`")
    gen.add_argument("--out", default="selva_out", help="output directory (default selva_out)")
    gen.add_argument("--format", default="wav", choices=AUDIO_FORMATS)
    gen.add_argument(
        "--sample-rate",
        type=int,
        choices=(48000,),
        default=None,
        help="resample stems (e.g. 48000 for video delivery)",
    )
    gen.add_argument("--no-video", action="store_true", help="write stems only, no muxed video")
    gen.add_argument("--json", action="store_true", help="print one JSON object with the result")
    gen.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    gen.add_argument("--force", action="store_true", help="overwrite existing outputs")
    gen.set_defaults(func=cmd_generate)

    w = sub.add_parser(
        "weights", parents=[common], help="download, list or verify official weights"
    )
    w.add_argument("action", choices=("download", "list", "verify"))
    w.add_argument(
        "variant", nargs="?", choices=[n for n, v in VARIANTS.items() if not v.random_weights]
    )
    w.add_argument("--quiet", action="store_true")
    w.set_defaults(func=cmd_weights)
    for name, (_, help_text) in DELEGATED.items():  # listed in --help; main() hands them over
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


# Subcommands with parsers of their own; `selva-rt X --help` shows theirs.
DELEGATED = {
    "export": ("selva_rt.export.build_engines", "build ONNX graphs / TensorRT engines"),
    "bench": ("selva_rt.benchmarks.bench", "latency benchmark: fast vs reference mode, per part"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in DELEGATED:
        import importlib

        module = importlib.import_module(DELEGATED[argv[0]][0])
        return module.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SelvaError as e:
        if args.debug:
            raise
        print(f"selva-rt: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("selva-rt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `selva-rt weights list | head`: the reader is gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:  # noqa: BLE001 - the user gets one line; --debug gives the rest
        if args.debug:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(
            f"selva-rt: internal error: {type(e).__name__}: {first} (rerun with --debug)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
