"""Per-part latency breakdown of a `selva-rt bench` result as a PNG (needs matplotlib).

    python -m selva_rt.benchmarks.plot benchmarks/results/<name>.json [-o <name>.png]

One horizontal bar per configuration, split into the parts (median seconds each; text
encoding included), with the speedup against reference mode written beside each bar.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

PARTS = ("text", "video_trunk", "video_select", "dit_conditions", "sampling", "decoder")


def plot(report: dict, out: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("the plot needs matplotlib: pip install matplotlib") from None
    results = report["results"]
    fig, ax = plt.subplots(figsize=(10, 1.8 + 0.55 * len(results)))
    names = [r["name"] for r in results][::-1]
    left = [0.0] * len(results)
    for part, color in zip(PARTS, plt.get_cmap("tab10").colors, strict=False):
        widths = [r["parts_s"][part]["median"] for r in results][::-1]
        ax.barh(names, widths, left=left, color=color, label=part)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    for y, r in enumerate(results[::-1]):
        speed = r.get("speedup_vs_reference")
        label = f" {r['total_s']['median']:.3g} s" + (f"  {speed:.2f}× vs ref" if speed else "")
        ax.text(left[y], y, label, va="center", fontsize=8)
    env, setup = report["environment"], report["setup"]
    ax.set_xlim(0, max(left) * 1.3)
    ax.set_xlabel("median seconds per run (text + frames to waveform)")
    ax.set_title(
        f"{setup['variant']}, {setup['duration']:g} s, {setup['steps']} steps on "
        f"{env['device']['name']} ({env['cpu']['threads']} threads)",
        fontsize=10,
    )
    ax.legend(fontsize=8, ncol=len(PARTS), loc="upper center", bbox_to_anchor=(0.5, -0.22))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m selva_rt.benchmarks.plot")
    p.add_argument("result", type=Path, help="a bench JSON file")
    p.add_argument("-o", "--output", type=Path, default=None, help="PNG (default: beside it)")
    args = p.parse_args(argv)
    out = args.output or args.result.with_suffix(".png")
    print(plot(json.loads(args.result.read_text()), out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
