"""What `pip install .` ships, installed as a user installs it: a wheel built from a copy of the
checkout, installed without dependencies into a fresh venv (the dependencies come from this
interpreter's site folders through a .pth file, so nothing is fetched), then imported and run
from a folder outside the checkout. Every subpackage of the checkout must be in the wheel
(setuptools ships only what pyproject.toml lists; an editable install would hide a missing
entry), and so must the bundled sample clip."""

import json
import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_SHIPPED = {"tests", ".venv", "build", ".git", ".pytest_cache", ".ruff_cache"}


def not_shipped(folder: str, names: list[str]) -> list[str]:
    top = NOT_SHIPPED if Path(folder) == ROOT else set()
    return [n for n in names if n in top or n == "__pycache__" or n.endswith(".egg-info")]


def run(*cmd: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the fresh venv's python, the wheel)."""
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"  # a copy: building in the checkout would leave build/ behind
    shutil.copytree(ROOT, source, ignore=not_shipped)
    wheels = tmp / "wheels"
    run(
        sys.executable,
        *("-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"),
        *("-w", str(wheels), str(source)),
        cwd=tmp,
    )
    (wheel,) = wheels.glob("selva_rt-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = run(
        str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp
    ).stdout.strip()
    # This interpreter's site folders hold the dependencies (a venv inside the checkout too):
    # listed in a .pth, their own .pth files (the editable install's finder) are not read, so
    # selva_rt can only come from the wheel.
    folders = [p for p in (*site.getsitepackages(), *sys.path) if Path(p).is_dir()]
    deps = [p for p in dict.fromkeys(folders) if "site-packages" in p]
    (Path(purelib) / "zz_dependencies.pth").write_text("\n".join(deps) + "\n")
    run(
        sys.executable,
        *("-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index"),
        str(wheel),
        cwd=tmp,
    )
    return python, wheel


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}


def test_every_subpackage_is_in_the_wheel(installed):
    _, wheel = installed
    found = {
        ".".join(("selva_rt", *p.parent.relative_to(ROOT).parts))
        for p in ROOT.rglob("__init__.py")
        if not NOT_SHIPPED & set(p.relative_to(ROOT).parts)
    }
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {
        n.removesuffix("/__init__.py").replace("/", ".")
        for n in names
        if n.endswith("/__init__.py")
    }
    assert found == shipped
    assert "selva_rt/runtime/assets/sample.mp4" in names
    assert not [n for n in names if n.startswith(("selva_rt/tests/", "tests/"))]


def test_the_installed_package_runs_outside_the_checkout(installed, tmp_path):
    python, _ = installed
    where = run(
        str(python),
        "-c",
        "import json, selva_rt, selva_rt.runtime.cli, selva_rt.export.build_engines as b;"
        "print(json.dumps([selva_rt.__file__, b.__file__]))",
        cwd=tmp_path,
        env=clean_env(),
    )
    for path in json.loads(where.stdout):
        assert str(python.parents[1]) in path and str(ROOT) not in path, path
    # The console script on the bundled clip, as the README's first command.
    script = python.parent / "selva-rt"
    out = tmp_path / "demo_out"
    result = run(
        str(script),
        *("generate", str(Path(json.loads(where.stdout)[0]).parent / "runtime/assets/sample.mp4")),
        *("sheep bleating", "--variant", "tiny", "--precision", "fp32", "--steps", "2"),
        *("--duration", "1", "--out", str(out), "--json", "--quiet"),
        cwd=tmp_path,
        env=clean_env(),
    )
    report = json.loads(result.stdout)
    (entry,) = report["outputs"]
    assert Path(entry["audio"]).is_file() and Path(entry["video"]).is_file()


def test_the_panel_ships_in_the_wheel(installed):
    """The panel's files (served by `selva-rt serve`) are package data: each is in the wheel."""
    _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    folder = ROOT / "runtime" / "service" / "panel"
    files = {p.name for p in folder.iterdir() if p.is_file()}
    assert {"index.html", "panel.css", "panel.js"} <= files
    missing = {f for f in files if f"selva_rt/runtime/service/panel/{f}" not in names}
    assert not missing, missing
