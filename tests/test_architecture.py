"""The folders are the layers (docs/architecture.md): imports point down only, the package never
imports training/ or benchmarks/, Qt and napari stay in _napari/, settings stay torch-free, and
every registry of names lists what the torch code implements."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_cellflux"

# Bottom to top; a module may import its own layer and the layers below it.
LAYERS = (
    ("napari_cellflux", "napari_cellflux.errors", "napari_cellflux.settings", "napari_cellflux.atomic",
     "napari_cellflux.process"),  # process: the OpenMP / allocator settings made before torch loads
    ("napari_cellflux.runtime",),
    ("napari_cellflux.core",),
    ("napari_cellflux.models",),
    ("napari_cellflux.data",),
    ("napari_cellflux.generation", "napari_cellflux.phenotype"),  # phenotype: readouts beside generation
    ("napari_cellflux.api", "napari_cellflux.cli"),  # cli: a package (commands, parser)
    ("napari_cellflux._napari",),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> int:
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = name == prefix or name.startswith(prefix + ".")
            if matches and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{name} belongs to no layer; add it to LAYERS and docs/architecture.md"
    return rank


def imports(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import in ``path``, lazy ones inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports (napari_cellflux....)"
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
            found.append((node.module, node.lineno))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_point_down_the_layers(path):
    own = layer_of(module_name(path))
    for name, line in imports(path):
        top = name.split(".")[0]
        assert top not in ("training", "benchmarks"), f"{path.name}:{line} imports {name}: the package never imports {top}/"
        if top in ("napari", "qtpy", "magicgui", "superqt", "PyQt6", "vispy"):
            assert module_name(path).startswith("napari_cellflux._napari"), f"{path.name}:{line}: Qt / napari only in _napari/"
        if top == "napari_cellflux":  # a module or a name in one: the longest layer prefix decides
            assert layer_of(name) <= own, f"{module_name(path)}:{line} imports {name} from a layer above it"


def test_no_module_is_over_400_lines():
    long = {module_name(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > 420}
    assert not long, f"split these modules by job: {long}"


def test_settings_and_cli_parser_need_no_torch():
    """The CLI's parser and the widget's choices read settings.py, so `cellflux --help` is instant."""
    code = "import sys, napari_cellflux.settings, napari_cellflux.cli as c; c.build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_registries_list_what_the_torch_code_implements():
    from napari_cellflux import settings
    from napari_cellflux.core import solvers, unet
    from napari_cellflux.runtime import DTYPES

    assert tuple(solvers.SOLVERS) == settings.SOLVER_NAMES == tuple(settings.EVALUATIONS_PER_STEP)
    assert tuple(solvers.TIME_GRIDS) == settings.GRID_NAMES
    assert tuple(unet.PRESETS) == settings.PRESET_NAMES == tuple(settings.DATASET_KINDS)
    assert set(DTYPES) | {"auto", "fast"} == set(settings.PRECISIONS)
    assert set(settings.TRAINING_PRECISIONS) == set(settings.PRECISIONS) - {"fast"}
    assert set(settings.DATASET_KINDS.values()) <= set(settings.KINDS)


def test_module_level_imports_have_no_loops():
    """Imports that run when a module is imported (not lazy ones, not TYPE_CHECKING) form no cycle."""
    names = {module_name(p): p for p in MODULES}
    graph = {}
    for name, path in names.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("napari_cellflux"):
                deps |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        graph[name] = {d for d in deps if d in names and d != name}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in graph[module]:
            assert state.get(dep) != 1, f"import loop: {' -> '.join(path[path.index(dep):] + [dep]) if dep in path else dep}"
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
