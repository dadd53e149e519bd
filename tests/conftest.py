"""Fixtures shared by several test modules: the sample clip, the tiny variant's networks and its
ONNX build, the golden `e2e_tiny` case and a Pipeline over its golden-weight networks, with the
sizes, duration and settings the case records."""

import selva_rt  # noqa: F401, I001  (first: it takes the checkout's folders off sys.path)
import atexit
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

# Under pytest-xdist (`-n 2`, as .ci/run runs the suite) each worker, and every process it
# starts, computes on one thread: two workers then share the two cores instead of fighting over
# them. Set before torch is imported, which reads it once.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

# Triton runs a whole process either compiled or interpreted (kernels/jit.py). Without a GPU the
# kernel tests interpret it on the CPU: set before the imports below bring Triton in.
os.environ.setdefault("TRITON_INTERPRET", "0" if torch.cuda.is_available() else "1")
# Commands keep video and text features (and low-memory weights) under $SELVA_RT_HOME: a test run
# without one set keeps them in a folder of its own, which its subprocesses inherit, removed at
# its end.
if "SELVA_RT_HOME" not in os.environ:
    os.environ["SELVA_RT_HOME"] = tempfile.mkdtemp(prefix="selva-rt-tests-")
    atexit.register(shutil.rmtree, os.environ["SELVA_RT_HOME"], True)

from golden import (
    ERRORS,
    GOLDEN,
    check_seq_cfg,
    golden_file,
)
from selva_rt.benchmarks.golden_e2e import E2ECase, e2e_pipeline, e2e_variant, read_e2e
from selva_rt.export import build_engines
from selva_rt.runtime import media
from selva_rt.runtime.backends.graphs import MANIFEST
from selva_rt.runtime.models.networks import Networks, build_networks
from selva_rt.runtime.pipeline import Pipeline
from selva_rt.runtime.variants import TINY


def pytest_sessionfinish(session):
    if hasattr(session.config, "workeroutput"):  # an xdist worker: hand its errors over
        session.config.workeroutput["golden_errors"] = dict(ERRORS)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    for name, err in getattr(node, "workeroutput", {}).get("golden_errors", {}).items():
        ERRORS[name] = max(err, ERRORS.get(name, 0.0))


def pytest_terminal_summary(terminalreporter):
    if ERRORS:
        terminalreporter.section(f"golden ({GOLDEN}): worst relative L2 error per output")
        for name in sorted(ERRORS):
            terminalreporter.write_line(f"{name:48s} {ERRORS[name]:.3e}")


@pytest.fixture(scope="session", autouse=True)
def ray_temp_dir():
    """Ray's session folders (of clusters started here and in the subprocesses the tests start)
    in a folder of the run's own, removed at its end: Ray keeps them in /tmp/ray otherwise."""
    # Short and under /tmp: Ray's socket paths in it must stay under 108 characters.
    folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = folder
    yield Path(folder)
    if before is None:
        del os.environ["RAY_TMPDIR"]
    else:
        os.environ["RAY_TMPDIR"] = before
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def one_thread_per_worker():
    """Under pytest-xdist, one torch thread per worker, whatever a test module asked for."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sample_clip() -> Path:
    """The demo clip shipped with the package (runtime/assets/sample.mp4)."""
    return Path(media.__file__).parents[1] / "assets" / "sample.mp4"


@pytest.fixture(scope="module")
def tiny_pipe() -> Pipeline:
    """The tiny variant's pipeline, as `selva-rt` builds it (fp32 on the CPU)."""
    return Pipeline.from_pretrained("tiny", device="cpu", precision="fp32")


@pytest.fixture
def clip_root(tmp_path, sample_clip) -> Path:
    """A folder of clips (the sample as a.mp4): a server's --root."""
    root = tmp_path / "clips"
    root.mkdir()
    (root / "a.mp4").write_bytes(sample_clip.read_bytes())
    return root


@pytest.fixture(scope="module")
def tiny_nets() -> Networks:
    """The tiny variant's random networks, one set per module (tests may move or resize them)."""
    return build_networks(TINY, {})


def onnx_build(tmp_path_factory, variant: str) -> Path:
    """`selva-rt export --variant VARIANT --onnx-only` (fp32), made once per run: under
    pytest-xdist the first worker that needs it builds it into the run's shared folder while the
    others wait for it, and all read that one build."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' folders sit side by side in the run's
    out = root / "engines" / variant
    out.parent.mkdir(exist_ok=True)
    with FileLock(f"{out}.lock"):
        if not (out / MANIFEST).exists():
            shutil.rmtree(out, ignore_errors=True)  # a build cut off halfway
            argv = ["--variant", variant, "--out", str(out), "--onnx-only", "--threads", "2"]
            assert build_engines.main([*argv, "--quiet"]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_engines(tmp_path_factory) -> Path:
    """One fp32 ONNX build of every tiny part per session (the export and ORT backend tests)."""
    return onnx_build(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
def tiny_sep_engines(tmp_path_factory) -> Path:
    """One fp32 ONNX build of every tiny-sep part per session (separation on the graphs)."""
    return onnx_build(tmp_path_factory, "tiny-sep")


@pytest.fixture(scope="session")
def tiny_flowley_engines(tmp_path_factory) -> Path:
    """One fp32 ONNX build of every tiny-flowley part per session (Flowley on the graphs)."""
    return onnx_build(tmp_path_factory, "tiny-flowley")


@pytest.fixture(scope="session")
def e2e() -> E2ECase:
    """The golden `e2e_tiny` case: json, tensors, duration, sync frames, text features."""
    golden_file("e2e_tiny.json")  # a missing set fails here, naming the folder
    return read_e2e(GOLDEN)


@pytest.fixture(scope="session")
def golden_pipeline(e2e) -> Callable[[bool], Pipeline]:
    """`golden_pipeline(reference)`: a Pipeline over the networks of e2e_tiny, each loaded from
    its golden weights file with the configuration its json records, through the same loaders
    real checkpoints use; fresh networks on each call."""
    check_seq_cfg(e2e_variant(e2e).sequence_lengths(e2e.duration), e2e.meta["seq_cfg"])
    return lambda reference=False: e2e_pipeline(e2e, reference=reference)
