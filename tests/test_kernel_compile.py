"""Both Triton kernels lower to sm_80 and sm_90 cubins, in bf16, fp16 and fp32, with the Triton
this suite installs and with Triton 3.6 (what GPU machines with torch 2.11 carry; .ci/run
installs it into the venv): what a GPU's first launch compiles, caught without one. Each compile
runs in a process of its own (tests/compile_kernels.py), since the CPU tests interpret Triton for
the whole pytest process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("compile_kernels.py")
KEYS = [
    f"{k}/{d}/sm_{a}" for k in ("sup", "psca") for d in ("bf16", "fp16", "fp32") for a in (80, 90)
]
# Triton 3.6 beside the installed one: .ci/run puts it in the venv (about 650 MB from the package
# index); a test never fetches it. In CI (CI=true) its absence is a failure, elsewhere a skip.
OTHER_TRITON = "3.6"
OTHER_TRITON_HOME = Path(sys.prefix) / f"triton-{OTHER_TRITON}"
INSTALL_OTHER = (
    f"{sys.executable} -m pip install -q --no-deps --target {OTHER_TRITON_HOME} "
    f"'triton=={OTHER_TRITON}.*'"
)


def compile_all(tmp_path: Path, pythonpath: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # Triton's compile cache (and its ~/.triton home) in the test's folder, not the user's home.
    env |= {"TRITON_CACHE_DIR": str(tmp_path / "cache"), "TRITON_HOME": str(tmp_path)}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--arch", "80,90", "--dtypes", "bf16,fp16,fp32"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def check(report: dict) -> None:
    results = report["results"]
    assert sorted(results) == sorted(KEYS)
    failed = {key: r["error"] for key, r in results.items() if "error" in r}
    assert not failed, f"Triton {report['triton']}: {failed}"
    for key, r in results.items():
        assert r["ok"] and r["target"], key
        if key.startswith("psca/"):  # the centre must use IEEE division, as torch does
            assert r["div_rn"], key


def test_kernels_compile_with_installed_triton(tmp_path):
    triton = pytest.importorskip("triton")
    report = compile_all(tmp_path)
    assert report["triton"] == triton.__version__
    check(report)
    assert list((tmp_path / "cache").iterdir()), "Triton cached nothing where it was told to"


def other_triton() -> Path:
    """Triton 3.6's folder, as .ci/run installs it."""
    if not (OTHER_TRITON_HOME / "triton" / "__init__.py").is_file():
        message = (
            f"Triton {OTHER_TRITON} is not in {OTHER_TRITON_HOME}; install it: {INSTALL_OTHER}"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return OTHER_TRITON_HOME


def test_kernels_compile_with_triton_3_6(tmp_path):
    pytest.importorskip("triton")
    report = compile_all(tmp_path, other_triton())
    assert report["triton"].startswith(OTHER_TRITON + ".")
    check(report)
