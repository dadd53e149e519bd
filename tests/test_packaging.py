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
