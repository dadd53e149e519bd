"""Both Triton kernels lower to sm_80 and sm_90 cubins, in bf16, fp16 and fp32, with the Triton
this suite installs and with Triton 3.6 (what GPU machines with torch 2.11 carry): what a GPU's
first launch compiles, caught without one. Each compile runs in a process of its own
(tests/compile_kernels.py), since the CPU tests interpret Triton for the whole pytest process."""

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
# Triton 3.6 goes into a cache folder once (about 650 MB, seconds from the package index).
OTHER_TRITON = "3.6"
CACHE = Path(
    os.environ.get("SELVA_RT_TEST_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "selva-rt-tests"
)


def compile_all(pythonpath: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
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


def test_kernels_compile_with_installed_triton():
    triton = pytest.importorskip("triton")
    report = compile_all()
    assert report["triton"] == triton.__version__
    check(report)


def install_other_triton() -> Path:
    """Triton 3.6 in the test cache (installed on first use); skips only if it cannot be had."""
    target = CACHE / f"triton-{OTHER_TRITON}"
    if not (target / "triton" / "__init__.py").is_file():
        tmp = target.with_name(target.name + ".partial")
        out = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp)]
            + ["--upgrade", f"triton=={OTHER_TRITON}.*"],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if out.returncode != 0:
            pytest.skip(f"triton=={OTHER_TRITON}.* cannot be installed here: {out.stderr[-500:]}")
        tmp.rename(target)
    return target


def test_kernels_compile_with_triton_3_6():
    pytest.importorskip("triton")
    report = compile_all(install_other_triton())
    assert report["triton"].startswith(OTHER_TRITON + ".")
    check(report)
