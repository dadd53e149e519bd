"""What `pip install .` ships: every subpackage of the checkout is listed in pyproject.toml
(setuptools installs only what is listed; an editable install would hide a missing entry)."""

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {
        ".".join(("selva_rt", *p.parent.relative_to(ROOT).parts))
        for p in ROOT.rglob("__init__.py")
        if not {"tests", ".venv", "build"} & set(p.relative_to(ROOT).parts)
    }
    assert found == listed


def test_the_panel_ships_in_the_package():
    """The panel's files (served by `selva-rt serve`) are package data of their package."""
    from fnmatch import fnmatch

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = data["package-data"]["selva_rt.runtime.service"]
    folder = ROOT / "runtime" / "service"
    files = [p.relative_to(folder).as_posix() for p in (folder / "panel").iterdir()]
    assert {"panel/index.html", "panel/panel.css", "panel/panel.js"} <= set(files)
    assert all(any(fnmatch(f, pattern) for pattern in patterns) for f in files)
