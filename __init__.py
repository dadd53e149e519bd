"""selva-rt: fast, faithful text-conditioned selective video-to-audio generation."""

import os
import sys

__version__ = "0.1.0"


def _leave_sys_path() -> None:
    """Take this package's folder and its subpackages' folders off sys.path.

    The repository root is the package, and its folder names (`kernels`, `export`, `runtime`,
    ...) are also the names of real top-level packages: transformers imports Hugging Face's
    `kernels`. Python puts the working folder first on sys.path for `python -m` and `-c` (the
    script's folder for `python export/build_engines.py`), and Ray hands a driver's sys.path to
    its workers, so run from a checkout these folders would shadow those packages, or import
    our modules a second time under another name. `selva_rt` is found through its install.
    """
    here = os.path.realpath(os.path.dirname(__file__))

    def ours(entry: str) -> bool:
        path = os.path.realpath(entry or os.curdir)
        inside = path == here or path.startswith(here + os.sep)
        return inside and os.path.isfile(os.path.join(path, "__init__.py"))

    sys.path[:] = [p for p in sys.path if not ours(p)]


_leave_sys_path()
