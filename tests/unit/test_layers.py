"""The package's layers (issue 22): a module imports only modules of its own layer or a lower one,
and no two packages import each other (directly or round a longer cycle). Read from the source, with
every import statement counted (module level, inside functions, under TYPE_CHECKING)."""
from __future__ import annotations

from pathlib import Path

from dmlrepro.study.imports import import_graph

SRC = Path(__file__).resolve().parents[2] / "src"

#: Lowest first. A top-level module or subpackage of dmlrepro ("unit") belongs to exactly one layer;
#: a new one must be placed here.
LAYERS = {
    "ground": ["dmlrepro", "errors", "atomic", "hashing", "readers", "registry", "config", "paths", "threads"],
    "domain": ["data", "backbones", "methods", "evaluation"],
    "study": ["study", "schemas"],
    "work": ["training", "reporting"],
    "stages": ["stages", "sharing"],
    "entry": ["cli", "__main__"],
}
LAYER_OF = {unit: (rank, name) for rank, (name, units) in enumerate(LAYERS.items()) for unit in units}


def graph():
    return import_graph(SRC / "dmlrepro")


def test_every_module_has_a_layer():
    g = graph()
    unplaced = sorted({g.unit(m) for m in g.modules} - set(LAYER_OF))
    assert not unplaced, f"place these parts of dmlrepro in a layer of tests/unit/test_layers.py: {unplaced}"


def layer_violations(g) -> list[str]:
    found = []
    for module, imports in sorted(g.imports.items()):
        source = LAYER_OF.get(g.unit(module))
        for imp in imports:
            target = LAYER_OF.get(g.unit(imp.target))
            if source and target and target[0] > source[0]:
                found.append(f"{module} ({source[1]}, {source[0]}) -> {imp.target} ({target[1]}, {target[0]})"
                             f"   [{g.modules[module].path}:{imp.line}]")
    return found


def test_no_module_imports_a_layer_above_its_own():
    violations = layer_violations(graph())
    assert not violations, (f"{len(violations)} imports of a higher layer (layers, lowest first: "
                            f"{', '.join(f'{i} {n}' for i, n in enumerate(LAYERS))}):\n  " + "\n  ".join(violations))


def unit_cycles(g) -> list[list[str]]:
    """The strongly connected groups of more than one unit in the graph of imports between units."""
    edges: dict[str, set[str]] = {}
    for module, imports in g.imports.items():
        for imp in imports:
            if g.unit(imp.target) != g.unit(module):
                edges.setdefault(g.unit(module), set()).add(g.unit(imp.target))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted({g.unit(m) for m in g.modules}):
        if node not in index:
            visit(node)
    return sorted(groups)


def test_no_import_cycle_between_packages():
    g = graph()
    lines = []
    for group in unit_cycles(g):
        lines.append(f"cycle between {', '.join(group)}:")
        lines += [f"    {m} -> {i.target}   [{g.modules[m].path}:{i.line}]"
                  for m, imports in sorted(g.imports.items()) if g.unit(m) in group
                  for i in imports if g.unit(i.target) in group and g.unit(i.target) != g.unit(m)]
    assert not lines, "\n".join(lines)


def test_the_checks_catch_a_violation_and_a_cycle(tmp_path):
    """The two checks on a package written here: config (ground) imports study, and study imports
    config back."""
    package = tmp_path / "dmlrepro"
    (package / "study").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "config.py").write_text("def f():\n    from .study import load\n")
    (package / "study/__init__.py").write_text("from ..config import f\nload = f\n")
    g = import_graph(package)
    assert layer_violations(g) == [
        "dmlrepro.config (ground, 0) -> dmlrepro.study (study, 2)   [dmlrepro/config.py:2]"]
    assert unit_cycles(g) == [["config", "study"]]
