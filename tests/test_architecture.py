"""The package's shape: short modules and functions, imports that only point downward, no import cycles."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdlib"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _kdlib_imports(node: ast.AST) -> set[str]:
    """The kdlib modules ``node``'s import statements name (``from kdlib import x`` names ``kdlib.x`` when x
    is a module)."""
    names: set[str] = set()
    modules = {_name(p) for p in MODULES}
    for item in ast.walk(node):
        if isinstance(item, ast.Import):
            names |= {a.name for a in item.names if a.name.startswith("kdlib")}
        elif isinstance(item, ast.ImportFrom) and item.module and item.module.startswith("kdlib"):
            for alias in item.names:
                child = f"{item.module}.{alias.name}"
                names.add(child if child in modules else item.module)
    return names


def _top_level_imports(tree: ast.Module) -> set[str]:
    return set().union(*(_kdlib_imports(n) for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)))


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_modules_and_functions_are_short(path: Path) -> None:
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{_name(path)} has over {MAX_MODULE_LINES} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{_name(path)}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_kdlib_import_inside_a_function(path: Path) -> None:
    """An import inside a function is how an import cycle hides; kdlib's imports are all at the top."""
    tree = ast.parse(path.read_text())
    inner = [f"line {node.lineno}" for node in ast.walk(tree)
             if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _kdlib_imports(node)]
    assert not inner, f"{_name(path)} imports kdlib inside a function at {', '.join(inner)}"


def test_imports_form_no_cycle() -> None:
    graph = {}
    for path in MODULES:
        module = _name(path)
        imports = _top_level_imports(ast.parse(path.read_text()))
        # a package's __init__ importing its own submodules is not a cycle with them
        graph[module] = {m for m in imports if m != module and not (path.name != "__init__.py"
                                                                   and module.startswith(m + "."))}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")
    # the batch path points downward: the loop and the losses never import the run, the study or the CLI
    above = {"kdlib.cli", "kdlib.train", "kdlib.study"}
    for low in ("kdlib.loop", "kdlib.distill", "kdlib.losses.functional"):
        assert not _reaches(graph, low) & above, low
    assert order


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for child in graph.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen
