"""`selva-rt`: the command line.

Every failure a user can cause ends in one line on stderr and a non-zero exit; `--debug` shows the
traceback. Outputs are planned and checked before any work starts, and written atomically.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .. import __version__
from .backends import BACKENDS
from .checks import check_negative_prompt, check_options, check_prompts
from .delivery.outputs import (
    AUDIO_FORMATS,
    OUT_RATES,
    describe,
    plan_outputs,
    report,
    write_outputs,
)
from .errors import SelvaError, UsageError
from .variants import (
    DEFAULT_DURATION,
    DEFAULT_SEED,
    VARIANTS,
    VATT_LLAMA,
    generating_variants,
    get_variant,
    separating_variants,
)


class Parser(argparse.ArgumentParser):
    """argparse with the one-line errors of every other failure: `prog: error: message` on
    stderr, exit status 2, no usage block (`--help` shows that)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def checked_request(args: argparse.Namespace, separation: bool) -> tuple[list[str], str, float]:
    """(prompts, negative prompt, cfg) of a `generate`/`separate` command line, checked with
    every option that needs no model, so a bad argument costs no loading; `args.steps` left out
    becomes the variant's."""
    from .device import resolve_device

    variant = get_variant(args.variant)
    prompts = check_prompts(args.prompts)
    negative = check_negative_prompt(args.negative_prompt, variant)
    cfg = variant.cfg if args.cfg is None else args.cfg
    if args.steps is None:
        args.steps = variant.steps
    check_options(
        steps=args.steps, cfg=cfg, seed=args.seed, duration=args.duration, start=args.start
    )
    if variant.separation and not separation:
        raise UsageError(f"{args.variant} separates a mixture: use selva-rt separate")
    if separation and not variant.separation:
        raise UsageError(f"{args.variant} does not separate; use an mmaudiosep-* variant")
    resolve_device(args.device)
    return prompts, negative, cfg


def planned(args: argparse.Namespace, source: str, prompts: list[str], video: bool):
    return plan_outputs(
        source,
        prompts,
        args.out,
        fmt=args.format,
        video=video,
        sample_rate=args.sample_rate,
        force=args.force,
        otio=args.otio,
        loudness=args.loudness,
    )


def loaded(args: argparse.Namespace, **extra):
    from .pipeline import Pipeline

    return Pipeline.from_pretrained(
        args.variant,
        device=args.device,
        precision=args.precision,
        backend=args.backend,
        engines=args.engines,
        graph_parts=args.graph_parts,
        quiet=args.quiet,
        cache=feature_cache(args),
        low_memory=args.low_memory,
        **extra,
    )


def feature_cache(args: argparse.Namespace, memory_gb: float = 0.0):
    from .cache import open_cache

    return open_cache(not args.no_cache, args.cache_gb, memory_gb)


def add_memory_options(parser: argparse.ArgumentParser) -> None:
    """What to keep: features (--no-cache, --cache-gb) and weights (--low-memory); generate,
    separate, batch, spot and serve share these."""
    from .cache import DEFAULT_DISK_GB

    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="neither read nor keep video and text features (default: kept under "
        "$SELVA_RT_HOME/features, so a new prompt on a clip seen before skips the video trunk)",
    )
    parser.add_argument(
        "--cache-gb",
        type=float,
        default=DEFAULT_DISK_GB,
        metavar="GB",
        help=f"disk the feature cache may use; least recently used entries go first "
        f"(default {DEFAULT_DISK_GB:g})",
    )
    parser.add_argument(
        "--low-memory",
        action="store_true",
        help="keep only the running stage's weights in memory (text encoders, then video "
        "encoders, then the DiT, then decoder and vocoder): a lower peak for a little time per "
        "request",
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from . import media

    t_start = time.perf_counter()
    prompts, negative, cfg = checked_request(args, separation=False)
    media.probe(args.clip)
    plan = planned(args, args.clip, prompts, video=not args.no_video)
    pipe = loaded(args)
    result = pipe.generate(
        args.clip,
        prompts,
        negative_prompt=negative,
        seed=args.seed,
        steps=args.steps,
        cfg=cfg,
        duration=args.duration,
        start=args.start,
        progress=not args.quiet,
    )
    return finish(args, plan, result, pipe, t_start)


def cmd_separate(args: argparse.Namespace) -> int:
    from . import media

    t_start = time.perf_counter()
    prompts, negative, cfg = checked_request(args, separation=True)
    # Check both inputs before any weights load: the picture if used, the mixture's audio track.
    video = not args.no_video and media.has_video(args.input)
    if video:
        media.probe(args.input)
    check_mixture(args.mixture or args.input)
    plan = planned(args, args.input, prompts, video)
    pipe = loaded(args, checkpoint=args.checkpoint)
    result = pipe.separate(
        args.input,
        prompts,
        mixture=args.mixture,
        video=video,
        negative_prompt=negative,
        seed=args.seed,
        steps=args.steps,
        cfg=cfg,
        duration=args.duration,
        start=args.start,
        progress=not args.quiet,
        normalize_mixture_latent=args.normalize_mixture_latent,
    )
    return finish(args, plan, result, pipe, t_start)


def check_mixture(path: str) -> None:
    """A readable audio track, or the one-line MediaError, before any model loads."""
    from . import media

    media.read_audio(path, 16000, 0.0, 0.1)


def finish(args, plan, result, pipe, t_start: float) -> int:
    """Write the outputs of `generate`/`separate` and tell the user (or a tool, with --json)."""
    t_write = time.perf_counter()
    delivered = write_outputs(plan, result)
    now = time.perf_counter()
    timings = dict(result.timings, write=now - t_write, total=now - t_start)
    for done in delivered:
        if done.peak_limited and not args.quiet:
            print(
                f"selva-rt: warning: {done.stem.audio.name} reaches "
                f"{done.loudness.integrated:.1f} LUFS, not {args.loudness:g}: more gain would clip",
                file=sys.stderr,
            )
    if args.json:
        print(json.dumps(report(plan, result, pipe, timings, delivered)))
    elif not args.quiet:
        print(describe(plan, delivered))
        print(
            f"done in {timings['total']:.1f} s ({result.duration:.2f} s of audio, "
            f"{pipe.variant.name} on {pipe.device})"
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Check every option, take the port and the journal, then load the model(s) and serve:
    a second server on the same port or --out is refused in one line before it loads anything."""
    from .service.server import JOURNAL, Limits, is_loopback, listen, serve

    if args.make_cert:
        from .service.tls import make_self_signed

        cert, key = make_self_signed(Path(args.make_cert), force=args.force)
        print(f"certificate {cert}\nkey         {key}")
        print(f"serve with: selva-rt serve --tls-cert {cert} --tls-key {key} --root ...")
        return 0
    token = args.token or os.environ.get("SELVA_RT_TOKEN") or None
    if not is_loopback(args.host) and token is None:
        raise UsageError(
            f"--host {args.host} is reachable from other machines; give --token TOKEN "
            "(or SELVA_RT_TOKEN) so only clients holding it can submit jobs"
        )
    if not args.root:
        raise UsageError("give --root FOLDER: the folder(s) clips may come from")
    roots = [Path(r) for r in args.root]
    for root in roots:
        if not root.is_dir():
            raise UsageError(f"--root {root} is not a folder; serve an existing folder of clips")
    if args.max_queue < 1 or args.max_upload_mb <= 0:
        raise UsageError("--max-queue and --max-upload-mb must be positive")
    tls = None
    if args.tls_cert or args.tls_key:
        from .service.tls import check_pair

        if not (args.tls_cert and args.tls_key):
            raise UsageError("HTTPS needs both --tls-cert and --tls-key")
        tls = (Path(args.tls_cert), Path(args.tls_key))
        check_pair(*tls)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    sock = listen(args.host, args.port)
    try:
        from .service.journal import Journal

        out.mkdir(parents=True, exist_ok=True)
        journal = Journal(out / JOURNAL)
        cluster = None
        if args.ray:
            from .service.batch_ray import RayCluster
            from .service.serve_ray import ray_pipes

            cluster = RayCluster(args.ray, quiet=args.quiet)
            pipe = ray_pipes(cluster, args.variant, args.device, args.precision, args.ray_workers)
        else:
            from .cache import SERVICE_MEMORY_GB
            from .pipeline import Pipeline

            pipe = Pipeline.from_pretrained(
                args.variant,
                device=args.device,
                precision=args.precision,
                quiet=args.quiet,
                cache=feature_cache(args, SERVICE_MEMORY_GB),
                low_memory=args.low_memory,
            )
        limits = Limits(queue=args.max_queue, upload=int(args.max_upload_mb * 2**20))
        try:
            serve(
                pipe,
                roots,
                out,
                sock,
                journal=journal,
                token=token,
                limits=limits,
                tls=tls,
                cors=tuple(args.cors_origin or ()),
                quiet=args.quiet,
            )
        finally:
            if cluster is not None:
                cluster.close()
    finally:
        sock.close()
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from . import weights

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
                hand = f" (by hand from {f.source})" if f.source else ""
                print(f"  [{state:7s}] {f.repo}/{f.path}{hand}{weights.licence_note(f)}")
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


def build_parser(more: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """The parser of the runtime's commands; `more` lists other commands (name -> help) that the
    top-level entry point (selva_rt/__main__.py) hands to their own parsers."""
    parser = Parser(
        prog="selva-rt",
        description="Text-conditioned selective video-to-audio generation (SELVA / MMAudio / "
        "MMAudioSep / Flowley / VATT).",
    )
    parser.add_argument("--version", action="version", version=f"selva-rt {__version__}")
    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate",
        parents=[common],
        help="generate one audio stem per prompt for a clip",
        description="Generate each prompt's sound for a clip, in sync with its picture: one "
        "stem per prompt (the whole clip, in windows beyond the trained 8 s, VATT 10 s), and the "
        "clip muxed with each stem.",
    )
    gen.add_argument("clip", help="input video file")
    gen.add_argument("prompts", nargs="+", help="what to hear, e.g. 'sheep bleating'")
    add_variant_option(gen, "selva-small-16k", generating_variants())
    add_run_options(gen, generating_variants())
    gen.add_argument("--no-video", action="store_true", help="write stems only, no muxed video")
    gen.set_defaults(func=cmd_generate)

    sep = sub.add_parser(
        "separate",
        parents=[common],
        help="separate one stem per prompt out of a clip's own audio (MMAudioSep)",
        description="Pull each prompt's sound out of a mixture: the clip's own audio track (or "
        "--mixture FILE), queried by the prompt and the clip's picture (or by the prompt alone "
        "for an audio file or with --no-video). MMAudioSep separates the whole input, in "
        "windows beyond 8 s; one stem per prompt, and the clip muxed with each stem.",
    )
    sep.add_argument(
        "input", help="a clip (audio = mixture, picture = visual query) or an audio file"
    )
    sep.add_argument("prompts", nargs="+", help="what to pull out, e.g. 'dog barking'")
    add_variant_option(sep, "mmaudiosep-large-44k", separating_variants())
    sep.add_argument("--mixture", default=None, help="take the mixture from this file instead")
    sep.add_argument(
        "--no-video",
        action="store_true",
        help="leave the picture out: a text-only query, stems only (no muxed video)",
    )
    sep.add_argument(
        "--checkpoint", default=None, help="MMAudioSep generator file (weights are not published)"
    )
    sep.add_argument(
        "--normalize-mixture-latent",
        action="store_true",
        help="normalise the mixture latent as MMAudioSep's training does (its inference does not)",
    )
    add_run_options(sep, separating_variants())
    sep.set_defaults(func=cmd_separate)

    srv = sub.add_parser(
        "serve", parents=[common], help="HTTP service: jobs in, stems out, model kept warm"
    )
    add_variant_option(srv, "selva-small-16k", generating_variants())
    srv.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    srv.add_argument("--port", type=int, default=8731)
    srv.add_argument("--root", action="append", help="folder clips may come from (repeatable)")
    srv.add_argument("--out", default="selva_serve", help="journal, uploads and outputs")
    srv.add_argument("--token", default=None, help="bearer token (required off loopback)")
    srv.add_argument("--tls-cert", default=None, help="PEM certificate: serve HTTPS")
    srv.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    srv.add_argument(
        "--make-cert",
        metavar="DIR",
        default=None,
        help="write a self-signed certificate for localhost into DIR, then exit",
    )
    srv.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="let pages from ORIGIN (e.g. https://host:port) call the API (repeatable)",
    )
    srv.add_argument(
        "--ray",
        metavar="ADDRESS",
        default=None,
        help="run jobs on a Ray cluster (auto, ray://HOST:10001, ...) or start one: local",
    )
    srv.add_argument(
        "--ray-workers", type=int, default=None, help="Ray actors (default: one per GPU or CPU)"
    )
    srv.add_argument("--force", action="store_true", help="with --make-cert: replace a pair")
    srv.add_argument("--max-queue", type=int, default=64, help="queued jobs before 429")
    srv.add_argument("--max-upload-mb", type=float, default=2048, help="largest upload")
    srv.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    srv.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    srv.add_argument("--quiet", action="store_true")
    add_memory_options(srv)
    srv.set_defaults(func=cmd_serve)

    w = sub.add_parser(
        "weights", parents=[common], help="download, list or verify official weights"
    )
    w.add_argument("action", choices=("download", "list", "verify"))
    w.add_argument(
        "variant", nargs="?", choices=[n for n, v in VARIANTS.items() if not v.random_weights]
    )
    w.add_argument("--quiet", action="store_true")
    w.set_defaults(func=cmd_weights)

    from .service import batch

    b = sub.add_parser(
        "batch", parents=[common], help="many clips from a JSONL job list or a folder, resumable"
    )
    batch.add_arguments(b)
    add_memory_options(b)
    b.set_defaults(func=batch.cmd_batch)

    from .spot import command as spot

    s = sub.add_parser(
        "spot",
        parents=[common],
        help="an editor's cut in (markers or a cue sheet), one stem per cue and the timeline out",
    )
    spot.add_arguments(s)
    add_memory_options(s)
    s.set_defaults(func=spot.cmd_spot)
    for name, help_text in (more or {}).items():  # listed in --help only
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def add_variant_option(parser: argparse.ArgumentParser, default: str, names: list[str]) -> None:
    def variant_name(name: str) -> str:
        if name in names:
            return name
        if name in VARIANTS:  # a real variant, for the other command
            kind, other = (
                ("separation", "separate")
                if VARIANTS[name].separation
                else ("generation", "generate")
            )
            raise argparse.ArgumentTypeError(
                f"{name} is a {kind} variant: use selva-rt {other} --variant {name}"
            )
        raise argparse.ArgumentTypeError(f"unknown variant {name!r} (one of {', '.join(names)})")

    parser.add_argument(
        "--variant",
        default=default,
        type=variant_name,
        metavar="VARIANT",
        help=f"one of {', '.join(names)} (default {default})",
    )


def add_run_options(gen: argparse.ArgumentParser, names: list[str]) -> None:
    """The options `generate` and `separate` share; `names`: the variants the command runs."""
    gen.add_argument("--negative-prompt", default="", help="what not to hear (default: '')")
    gen.add_argument("--seed", type=int, default=DEFAULT_SEED)
    gen.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"sampling steps, Euler or VATT's MaskGIT ({variant_defaults(names, 'steps')})",
    )
    gen.add_argument(
        "--cfg", type=float, help=f"classifier-free guidance ({variant_defaults(names, 'cfg')})"
    )
    gen.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds from --start (default: to the clip's end; beyond the trained "
        f"{DEFAULT_DURATION:g} s, VATT {VATT_LLAMA.generator.window:g} s, in overlapping windows)",
    )
    gen.add_argument("--start", type=float, default=0.0, help="start time in the clip (s)")
    gen.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    gen.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="auto: bf16 on CUDA and on CPUs with native bf16 (AVX-512 BF16, AMX), else fp32",
    )
    gen.add_argument(
        "--backend",
        default="torch",
        choices=BACKENDS,
        help="what runs the parts (onnxruntime/tensorrt need --engines)",
    )
    gen.add_argument("--engines", default=None, help="folder built by `selva-rt export`")
    gen.add_argument(
        "--graph-parts",
        default=None,
        metavar="PART,...",
        help="with --backend torch: run these parts (e.g. video_select,dit_step) from the "
        "ONNX Runtime graphs in --engines, the rest on torch",
    )
    gen.add_argument("--out", default="selva_out", help="output directory (default selva_out)")
    gen.add_argument("--format", default="wav", choices=AUDIO_FORMATS)
    gen.add_argument(
        "--sample-rate",
        type=int,
        choices=OUT_RATES,
        default=None,
        help="resample stems (e.g. 48000 for video delivery)",
    )
    gen.add_argument(
        "--otio",
        action="store_true",
        help="also write an OpenTimelineIO timeline: picture and stems at the clip's timecode",
    )
    gen.add_argument(
        "--loudness",
        type=float,
        default=None,
        metavar="LUFS",
        help="normalise each stem to this integrated loudness, e.g. -23 (default: as generated)",
    )
    gen.add_argument("--json", action="store_true", help="print one JSON object with the result")
    gen.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    gen.add_argument("--force", action="store_true", help="overwrite existing outputs")
    add_memory_options(gen)


def variant_defaults(names: list[str], field: str) -> str:
    """ "default: 4.5; 7.5 for flowley, tiny-flowley": each default of `names` for the Variant
    `field` (cfg, steps), the most common first."""
    by_value: dict[float, list[str]] = {}
    for name in names:
        by_value.setdefault(getattr(VARIANTS[name], field), []).append(name)
    common, *others = sorted(by_value, key=lambda c: -len(by_value[c]))
    rest = "".join(f"; {c:g} for {', '.join(by_value[c])}" for c in others)
    return f"default: {common:g}{rest}"


def main(argv: list[str] | None = None, more: dict[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(more)
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
