"""The layers point one way: these tests read every module's imports (as written, lazy ones too).

- `sim` never imports `loadtests` (the load-test commands register themselves through an entry point);
- matplotlib is imported only inside the plotting package `sim/plots/`;
- the compiled engine `sim/fast/` does not import the reference engine (shared types: `sim.results`);
- no module imports another module's `_private` name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "sim").rglob("*.py"), *(ROOT / "loadtests").rglob("*.py")])


def imports(path: Path) -> list[tuple[str, str | None, int]]:
    """(module, imported name or None, line) for every import statement in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.module, alias.name, node.lineno) for alias in node.names]
    return found


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def test_the_sources_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in SOURCES}
    assert {"sim/config.py", "sim/des.py", "loadtests/device.py"} <= names
    assert len(SOURCES) > 40


def test_sim_never_imports_loadtests() -> None:
    wrong = [where(p, line) for p in SOURCES if p.is_relative_to(ROOT / "sim")
             for module, _, line in imports(p) if module.split(".")[0] == "loadtests"]
    assert wrong == []


def test_matplotlib_is_imported_only_in_the_plotting_package() -> None:
    plots = ROOT / "sim" / "plots"
    assert plots.is_dir() and (plots / "__init__.py").exists()
    wrong = [where(p, line) for p in SOURCES if not p.is_relative_to(plots)
             for module, _, line in imports(p) if module.split(".")[0] == "matplotlib"]
    assert wrong == []


def test_the_compiled_engine_does_not_import_the_reference_engine() -> None:
    fast = ROOT / "sim" / "fast"
    assert fast.is_dir()
    wrong = [where(p, line) for p in fast.rglob("*.py") for module, name, line in imports(p)
             if module in ("sim.des", "sim.server") or (module == "sim" and name in ("des", "server"))]
    assert wrong == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_private_name_is_imported_from_another_module(path: Path) -> None:
    wrong = [f"{where(path, line)} {module}.{name}" for module, name, line in imports(path)
             if module.split(".")[0] in ("sim", "loadtests") and name and name.startswith("_")
             and not name.endswith("__")]  # __version__ is public
    assert wrong == []


def test_the_checks_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import matplotlib.pyplot as plt\n    from loadtests.lab import run_lab\n"
                   "from sim.plots import _mark_events\n")
    found = imports(bad)
    assert ("matplotlib.pyplot", None, 2) in found and ("loadtests.lab", "run_lab", 3) in found
    assert ("sim.plots", "_mark_events", 4) in found
