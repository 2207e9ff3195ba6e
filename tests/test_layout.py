"""The code's layout, checked on the source (no imports run): which layer may import what, no import cycles
(lazy imports inside functions included), modules that fit in a reading and functions that fit on a screen.

Layers (README, "Code map"): `search_space` (the paper's model, no Ray, no orchestrator), `orchestrator.io`,
`orchestrator.data`, `orchestrator.train` (the worker side of Ray Train, no Ray Tune), `orchestrator.sweep`
(the Tune side), `orchestrator.analysis` (reading results, no Ray) and `orchestrator.inference` (using a
retrained network, no Ray).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search_space", "orchestrator")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 70


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every module ``path`` imports, anywhere in the file (top level, functions, try blocks), with its line.
    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module of the project, else ``a.b``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((full if full in MODULES else base, node.lineno))
    return found


IMPORTS = {name: _imports(path) for name, path in MODULES.items()}

RULES = [
    ("search_space", ("ray", "orchestrator")),
    ("orchestrator.analysis", ("ray",)),
    ("orchestrator.io", ("ray.tune", "orchestrator.config", "orchestrator.data", "orchestrator.train",
                         "orchestrator.sweep", "orchestrator.analysis")),
    ("orchestrator.data", ("ray", "orchestrator.train", "orchestrator.sweep", "orchestrator.analysis")),
    ("orchestrator.train", ("ray.tune", "orchestrator.sweep", "orchestrator.analysis")),
    ("orchestrator.config", ("ray", "orchestrator.train", "orchestrator.sweep", "orchestrator.analysis")),
    ("orchestrator.inference", ("ray", "orchestrator.train", "orchestrator.sweep", "orchestrator.analysis")),
]
"""(layer, what no module of it may import). The analysis package reads results without Ray; the worker side
never sees Tune (a loop cannot tell whether a sweep runs it); lower layers do not reach up; using a retrained
network (inference) needs no Ray, so it may not import the layers that do."""


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("layer, forbidden", RULES, ids=[r[0] for r in RULES])
def test_layers_import_only_what_they_may(layer: str, forbidden: tuple[str, ...]):
    bad = [f"{MODULES[m].relative_to(ROOT)}:{line} imports {target}"
           for m, found in IMPORTS.items() if _within(m, layer)
           for target, line in found if any(_within(target, f) for f in forbidden)]
    assert not bad, "\n".join(bad)


def _project_edges() -> dict[str, set[str]]:
    return {m: {t for t, _ in found if t in MODULES and t != m} for m, found in IMPORTS.items()}


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycles_lazy_imports_included():
    cycle = _cycle(_project_edges())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", sorted(MODULES), ids=str)
def test_modules_fit_in_a_reading(name: str):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    where = MODULES[name].relative_to(ROOT)
    assert lines <= MAX_MODULE_LINES, f"{where} has {lines} lines (at most {MAX_MODULE_LINES})"


def _functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(f"{node.name}:{node.lineno}", node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]


@pytest.mark.parametrize("name", sorted(MODULES), ids=str)
def test_functions_fit_on_a_screen(name: str):
    long = [f"{fn} ({n} lines)" for fn, n in _functions(MODULES[name]) if n > MAX_FUNCTION_LINES]
    assert not long, f"{MODULES[name].relative_to(ROOT)}: " + ", ".join(long)
