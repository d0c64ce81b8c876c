"""The package's import graph, read from its source with :mod:`ast` (nothing is imported).

Each pipeline stage depends on the modules its command runs: the import closure of the stage's
entry module (:mod:`.stages` turns it into the files Snakemake's rules and dvc.yaml list). The
walk follows every import statement, at module level and inside functions, absolute and relative;
``from pkg import x`` also reaches the submodule ``pkg.x`` when x is one; and a module brings in the
``__init__.py`` of every package above it (importing ``dmlrepro.data.sop`` runs
``dmlrepro/__init__.py`` and ``dmlrepro/data/__init__.py``). Modules outside the package (the
standard library, third-party ones) are ignored. The layer test (tests/unit/test_layers.py) reads
the same graph.

The graph of a source tree is parsed once per process and parsed again only when one of its
files changes (their modification times and sizes are compared: a few milliseconds).
"""
from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Import:
    """One import of a package module: the module that imports (`source`), the one imported
    (`target`) and the line of the statement."""
    source: str
    target: str
    line: int


@dataclass(frozen=True)
class Module:
    name: str        # dotted: dmlrepro.data.sop
    path: Path       # relative to the package's parent folder: dmlrepro/data/sop.py
    is_package: bool  # an __init__.py


class ImportGraph:
    """The modules of one package and the imports between them.

    `imports[m]` are the package modules m imports explicitly (its parent packages are added by
    :meth:`closure`, not listed here); `unresolved` the imports of names under the package that
    name no module of it (a stale import after a module moved)."""

    def __init__(self, package_dir: Path):
        self.package_dir = Path(package_dir)
        self.package = self.package_dir.name
        self.modules: dict[str, Module] = {}
        for path in _source_files(self.package_dir):
            rel = path.relative_to(self.package_dir.parent)
            parts = rel.with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            if name in self.modules and self.modules[name].is_package:
                continue  # x/__init__.py shadows x.py, as Python's import does
            self.modules[name] = Module(name, rel, is_package)
        self.imports: dict[str, tuple[Import, ...]] = {}
        self.unresolved: list[Import] = []
        for module in self.modules.values():
            found, missing = self._imports_of(module)
            self.imports[module.name] = tuple(found)
            self.unresolved += missing

    def _imports_of(self, module: Module) -> tuple[list[Import], list[Import]]:
        tree = ast.parse((self.package_dir.parent / module.path).read_bytes(), str(module.path))
        own_package = module.name if module.is_package else module.name.rpartition(".")[0]
        found: dict[str, Import] = {}
        missing: list[Import] = []

        def add(target: str, line: int) -> None:
            if target == module.name or target in found:
                return
            if target in self.modules:
                found[target] = Import(module.name, target, line)
            else:
                missing.append(Import(module.name, target, line))

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if self._inside(alias.name):
                        add(alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = own_package.split(".")
                    if node.level - 1 >= len(base):
                        missing.append(Import(module.name, "." * node.level + (node.module or ""), node.lineno))
                        continue
                    base = base[:len(base) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                if not self._inside(origin):
                    continue
                names = [f"{origin}.{alias.name}" for alias in node.names if alias.name != "*"]
                submodules = [n for n in names if n in self.modules]
                # `from pkg import x` runs pkg/__init__.py, then x's module if x is one
                add(origin, node.lineno)
                for name in submodules:
                    add(name, node.lineno)
        return sorted(found.values(), key=lambda i: (i.line, i.target)), missing

    def _inside(self, name: str) -> bool:
        return name == self.package or name.startswith(self.package + ".")

    def parents(self, name: str) -> list[str]:
        """The packages whose __init__.py importing `name` runs first (outermost first)."""
        parts = name.split(".")
        return [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in self.modules]

    def closure(self, *names: str) -> list[str]:
        """Every package module that importing `names` can run (sorted): what they import, at any
        depth, with the packages above each."""
        unknown = [n for n in names if n not in self.modules]
        if unknown:
            raise KeyError(f"no module {', '.join(unknown)} under {self.package_dir}")
        seen: set[str] = set()
        todo = list(names)
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            todo += self.parents(name)
            todo += [i.target for i in self.imports[name]]
        return sorted(seen)

    def files(self, names) -> list[Path]:
        """The source files of `names`, relative to the package's parent folder, sorted."""
        return sorted(self.modules[n].path for n in names)

    def unit(self, name: str) -> str:
        """The package's top-level part `name` belongs to: `data` for dmlrepro.data.sop, `config`
        for dmlrepro.config, the package itself for its __init__.py."""
        parts = name.split(".")
        return parts[1] if len(parts) > 1 else parts[0]


def _source_files(package_dir: Path) -> list[Path]:
    files = []
    for folder, dirs, names in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        files += [Path(folder) / n for n in sorted(names) if n.endswith(".py")]
    return files


def _signature(package_dir: Path) -> tuple:
    return tuple((str(p), s.st_mtime_ns, s.st_size) for p in _source_files(package_dir) for s in [p.stat()])


_GRAPHS: dict[Path, tuple[tuple, ImportGraph]] = {}


def import_graph(package_dir: Path) -> ImportGraph:
    """The import graph of the package in `package_dir` (e.g. src/dmlrepro), parsed once per
    process and again when its files change."""
    key = Path(package_dir).resolve()
    signature = _signature(key)
    cached = _GRAPHS.get(key)
    if cached is None or cached[0] != signature:
        cached = _GRAPHS[key] = (signature, ImportGraph(key))
    return cached[1]
