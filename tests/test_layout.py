"""The package's shape: its folders never shadow a dependency's top-level module, its modules
import one another without circles or private names, and the pipeline knows neither the model
nor the backend it runs."""

import ast
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import selva_rt

ROOT = Path(selva_rt.__file__).resolve().parent
FOLDERS = sorted(
    p.name
    for p in ROOT.iterdir()
    if p.is_dir() and p.name.isidentifier() and not p.name.startswith("_")
)


def ours(name: str) -> str | None:
    """Where `import name` would come from, when that is the checkout's folder `name`."""
    spec = importlib.util.find_spec(name)
    places = [] if spec is None else [spec.origin, *(spec.submodule_search_locations or [])]
    inside = [p for p in places if p and Path(p).resolve().is_relative_to(ROOT / name)]
    return inside[0] if inside else None


def test_the_checkout_is_never_a_place_to_find_top_level_modules():
    """Not in this process (pytest, however started), and the folders resolve to nothing of
    ours: `kernels` is Hugging Face's (transformers imports it), `tests` and the rest are
    whatever a dependency ships or nothing."""
    assert {"kernels", "export", "runtime", "benchmarks", "tests"} <= set(FOLDERS)
    for entry in sys.path:
        assert Path(entry or os.curdir).resolve() != ROOT, f"{entry!r} is the checkout"
    for name in FOLDERS:
        assert ours(name) is None, f"`import {name}` finds the checkout's {ours(name)}"


@pytest.mark.parametrize(
    "how",
    [
        ["-c", "import selva_rt, transformers.integrations.hub_kernels"],
        ["-m", "selva_rt", "--version"],
        ["export/build_engines.py", "--help"],
    ],
    ids=["python -c", "python -m selva_rt", "python export/build_engines.py"],
)
def test_run_from_inside_the_checkout_the_folders_shadow_nothing(how):
    """What Python puts first on sys.path (the working folder for -m and -c, the script's
    folder for a script) is the checkout: selva_rt takes it off before anything imports a
    dependency whose name a folder shares (transformers 5 imports Hugging Face's `kernels`)."""
    probe = (
        "import importlib.util; "
        f"print([str(s.origin) for s in map(importlib.util.find_spec, {FOLDERS!r}) if s])"
    )
    run = subprocess.run(
        [sys.executable, *how], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    if how[0] == "-c":  # and after importing selva_rt, no folder of ours resolves at top level
        after = subprocess.run(
            [sys.executable, "-c", f"import selva_rt; {probe}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert after.returncode == 0, after.stderr
        assert not [f for f in FOLDERS if str(ROOT / f) in after.stdout], after.stdout


def test_a_dependency_named_like_a_folder_is_the_one_imported():
    """The guard has something to guard: some installed distribution ships a top-level module
    named like one of the folders (Hugging Face's `kernels` today), and it is that one."""
    shadowed = {
        name: dists
        for name, dists in importlib.metadata.packages_distributions().items()
        if name in FOLDERS
    }
    assert shadowed, "no dependency shares a folder's name: the guard tests nothing"
    for name in shadowed:
        assert ours(name) is None, f"`import {name}` finds the checkout's {ours(name)}"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", ".venv", "build") or any(p.startswith(".") for p in rel.parts):
            continue
        name = ".".join(("selva_rt", *rel.with_suffix("").parts)).removesuffix(".__init__")
        mods[name] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(module imported, name imported from it or None), module-level and in functions."""
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = name.split(".") if is_pkg else name.split(".")[:-1]
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub, None) if sub in mods else (target, alias.name))
        elif isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names]
    return [(m, n) for m, n in found if m in mods and m != name]


def test_no_import_circles_and_no_private_names():
    """Modules import one another in one direction (package __init__ files aside: they only
    gather names), and never another module's underscore names."""
    mods = _modules()
    edges, private = {}, []
    for name, path in mods.items():
        imports = _imports(name, path, mods)
        edges[name] = {m for m, _ in imports if mods[m].name != "__init__.py"}
        private += [
            f"{name} imports {m}.{n}"
            for m, n in imports
            if n and n.startswith("_") and not n.startswith("__")
        ]
    assert not private, private

    def reaches(start: str, goal: str, seen: set) -> bool:
        for nxt in edges.get(start, ()):
            if nxt == goal or (nxt not in seen and not seen.add(nxt) and reaches(nxt, goal, seen)):
                return True
        return False

    circles = sorted(name for name in edges if reaches(name, name, set()))
    assert not circles, f"modules in import circles: {circles}"


def test_the_pipeline_asks_no_model_or_backend_question():
    source = (ROOT / "runtime" / "pipeline.py").read_text()
    tree = ast.parse(source)
    asked = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "variant"
    }
    assert not asked & {"flowley", "separation", "selective", "uses_clip_video", "vatt"}, asked
    calls = {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert not calls & {"getattr", "hasattr"}, calls
    assert "backend ==" not in source
