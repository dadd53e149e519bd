"""`selva-rt spot TIMELINE --out DIR`: cues from the cut, one stem per cue through the batch
runner (resumable, results.jsonl, --ray), the timeline back with the stems on it.

Each cue is a batch job over its record-time picture (a media.Edit of the shots under it), named
`<cut>_<record timecode>` and stamped with that timecode (the stem's BWF TimeReference). A cue
that cannot run (a missing clip, a gap, a speed change) fails alone, with its reason; a rerun
skips what is done and re-renders the cues whose prompt, seed or picture changed, over their own
earlier files.
"""

import json
import sys
from fractions import Fraction
from pathlib import Path

from ..errors import SelvaError, UsageError
from ..service.batch import RESULTS, Results, add_engine_arguments, engines, run_batch
from ..service.jobs import Entry, Job
from ..variants import DEFAULT_SEED, VARIANTS
from . import cues as cue_rules
from .cut import require_otio, timeline_format
from .deliver import place, timeline_paths, write_timelines
from .read import read_cut

SHEETS = (".csv", ".json")


def add_arguments(parser) -> None:
    from ..backends import BACKENDS
    from ..delivery.outputs import AUDIO_FORMATS, OUT_RATES

    parser.add_argument(
        "timeline",
        help="the editor's cut: .otio, .xml (FCP7), .fcpxml/.fcpxmld, .edl, .aaf; or a cue "
        "sheet (.csv/.json) with --picture",
    )
    parser.add_argument("--out", default="selva_spot", help="output folder (default selva_spot)")
    parser.add_argument(
        "--media", action="append", default=[], metavar="DIR",
        help="relink media by file name from this folder (repeatable)",
    )  # fmt: skip
    parser.add_argument("--picture", default=None, help="a cue sheet's reference movie")
    parser.add_argument(
        "--rate", default=None, help="an EDL's frame rate when its media cannot tell (25, 29.97)"
    )
    parser.add_argument(
        "--category", action="append", default=[], metavar="COLOUR=NAME",
        help="marker colour -> category (repeatable; defaults: green foley, blue and cyan "
        "ambience, others effects)",
    )  # fmt: skip
    parser.add_argument("--variant", default="selva-small-16k", choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="for cues without one")
    parser.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default: the variant's)"
    )
    parser.add_argument("--cfg", type=float, default=None, help="classifier-free guidance")
    parser.add_argument("--negative-prompt", default="", help="for cues without one")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--backend", default="torch", choices=BACKENDS)
    parser.add_argument("--engines", default=None, help="folder built by `selva-rt export`")
    parser.add_argument("--format", default="wav", choices=AUDIO_FORMATS)
    parser.add_argument("--sample-rate", type=int, choices=OUT_RATES, default=None)
    add_engine_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    parser.add_argument(
        "--force", action="store_true", help="overwrite files in --out that spot did not write"
    )


def cmd_spot(args) -> int:
    from ..delivery.outputs import slug

    source = Path(args.timeline)
    mapping = cue_rules.categories(args.category)
    if source.suffix.lower() in SHEETS:
        cut, cues = cue_rules.read_sheet(source, args.picture and Path(args.picture), mapping)
        problems: list[str] = []
    else:
        timeline_format(source)
        require_otio()
        rate = _rate(args.rate)
        cut = read_cut(source, [Path(m) for m in args.media], rate)
        cues, problems = cue_rules.from_markers(cut, mapping)
    if not cues:
        raise UsageError(f"{source.name} has no markers to spot" + _first(problems))
    entries, names = [], {}
    for cue in cues:
        label = str(cut.timecode(cue.record)).replace(":", "").replace(";", "")
        name = f"{slug(cut.path.stem, 24)}_{label}"
        key = (name, slug(cue.prompt))
        names[key] = names.get(key, 0) + 1
        if names[key] > 1:
            name = f"{name}_{names[key]}"
        try:
            edit = cue_rules.picture(cut, cue)
            job = Job(
                clip=edit,
                prompts=(cue.prompt,),
                negative_prompt=cue.negative_prompt or args.negative_prompt,
                seed=args.seed if cue.seed is None else cue.seed,
                steps=VARIANTS[args.variant].steps if args.steps is None else args.steps,
                cfg=args.cfg,
                name=name,
                timecode=cut.timecode(cue.record),
                format=args.format,
                sample_rate=args.sample_rate,
                no_video=True,  # the cut's picture stays in the editor's timeline
            )
            entries.append(Entry(cue.number, job))
        except SelvaError as err:
            entries.append(Entry(cue.number, None, f"cue {cue.number}: {err}"))
    out = Path(args.out)
    with engines(args) as (factory, settings), Results(out) as results:
        for path in timeline_paths(cut, out):
            if path.exists() and not (args.force or results.wrote(path)):
                raise UsageError(
                    f"{path} already exists and spot did not write it; pass --force or --out"
                )
        summary = run_batch(
            entries, out, settings, factory, results, force=args.force, progress=not args.quiet
        )
        done = _stems(results, entries, cues, out, args.sample_rate)
        placed = place(cut, done, args.variant)
        written = write_timelines(cut, placed, out)
        results.append({"status": "timeline", "outputs": [{"audio": p.name} for p in written]})
    report = summary.to_dict() | {
        "cues": len(cues),
        "stems": len(placed),
        "timelines": [str(p) for p in written],
        "not_spotted": problems,
        "results": str(out / RESULTS),
    }
    if args.json:
        print(json.dumps(report))
    elif not args.quiet:
        for line in problems:
            print(f"not spotted: {line}", file=sys.stderr)
        for error in summary.errors:
            print(f"failed: {error}", file=sys.stderr)
        print(
            f"{len(cues)} cues: {summary.ok} rendered, {summary.skipped} already done, "
            f"{summary.failed} failed in {summary.elapsed_s:.1f} s; timelines: "
            + ", ".join(str(p) for p in written)
        )
    return 0 if summary.failed == 0 else 1


def _stems(results: Results, entries: list[Entry], cues, out: Path, sample_rate) -> list:
    """(cue, stem file, sample rate, seed) of every cue whose stem is in place."""
    by_number = {c.number: c for c in cues}
    done = []
    for entry in entries:
        record = results.done(entry.id) if entry.id else None
        if record is None:
            continue
        (output,) = record["outputs"]
        rate = record.get("sample_rate") or sample_rate or 0
        done.append((by_number[entry.line], out / output["audio"], rate, entry.job.seed))
    return done


def _rate(text: str | None) -> Fraction | None:
    """--rate: 25, 29.97, 23.976, 30000/1001 -> an exact timecode rate."""
    from ..delivery.timecode import timecode_rate

    if text is None:
        return None
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"--rate {text!r} is not a frame rate (e.g. 25 or 29.97)") from None
    if value <= 0:
        raise UsageError(f"--rate {text!r} is not a frame rate (e.g. 25 or 29.97)")
    return timecode_rate(value)


def _first(problems: list[str]) -> str:
    return f" ({problems[0]})" if problems else ""
