"""`selva-rt` / `python -m selva_rt`: the runtime's commands (runtime/cli.py), plus `export` and
`bench`, which live in the subpackages built on the runtime: only this top-level entry point
knows all three, so runtime/ imports nothing from export/ or benchmarks/."""

import sys

from .runtime import cli
from .runtime.device import use_physical_cores

# Subcommands with parsers of their own (`selva-rt X --help` shows theirs): name -> help.
DELEGATED = {
    "export": "build ONNX graphs / TensorRT engines",
    "bench": "latency benchmark: fast vs reference mode, per part",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The console command owns its process, so it sets the CPU threads; the library leaves a
    # host application's own torch.set_num_threads alone.
    use_physical_cores()
    if argv[:1] == ["export"]:
        from .export import build_engines

        return build_engines.main(argv[1:])
    if argv[:1] == ["bench"]:
        from .benchmarks import bench, vatt_bench

        return (vatt_bench if vatt_bench.handles(argv[1:]) else bench).main(argv[1:])
    return cli.main(argv, DELEGATED)


if __name__ == "__main__":
    sys.exit(main())
