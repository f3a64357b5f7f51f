"""The project's shape, read from its sources with ``ast`` (nothing of it is imported).

* Layering: the packages stand in the order benchmarks -> migrate -> nodes
  -> snapshot -> workloads, and no module imports a package above its own
  (every import statement counts: inside functions and under
  ``if TYPE_CHECKING`` too).
* No import cycle between the project's modules, in the graph of the
  modules they import (relative imports included, and imports deferred into
  a function: such an import still depends on the module it names; those
  under ``if TYPE_CHECKING`` never run and are left out).
* No module imports a private name (a module or symbol with a leading
  underscore) from another top-level package; tests are exempt.
* Every module of migrate, nodes, snapshot and benchmarks has a docstring,
  and is at most 400 lines long or says why in a docstring line starting
  "Longer than 400 lines:".
* No source file cites the notes or style files kept outside the
  repository, nor a path into the shared folder beside it: facts are copied
  in, not referenced.
"""

from __future__ import annotations

import ast
import functools
import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Top to bottom: a package may import those after it, never those before it.
LAYERS = ("benchmarks", "migrate", "nodes", "snapshot", "workloads")
SIZED = ("migrate", "nodes", "snapshot", "benchmarks")
MAX_LINES = 400
LONG_MARK = "Longer than 400 lines:"
#: Spelled in pieces so that this file does not cite them itself.
CITED = ("../" + "shared", "NOTES" + ".md", "STYLE" + ".md")
CITING_SUFFIXES = (".py", ".c", ".h", ".sh", ".toml", ".md")
SKIPPED_DIRS = {".git", "__pycache__", "node_modules", "build"}


@dataclass(frozen=True)
class Import:
    """One import statement's target, resolved to absolute dotted names."""

    line: int
    module: str  # the module named after ``import`` or ``from``, absolute
    names: tuple[str, ...]  # for ``from M import a, b``: a and b; empty for ``import M``
    level: int  # dots of a relative import; 0 for an absolute one
    type_checking: bool  # under ``if TYPE_CHECKING``: read by type checkers only


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. nodes._hosting (a package by its own name)
    path: Path
    text: str
    tree: ast.Module

    @property
    def package(self) -> str:
        return self.name.split(".")[0]

    @property
    def rel(self) -> str:
        return self.path.relative_to(REPO).as_posix()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def modules() -> dict[str, Module]:
    """Every Python module of the five packages, by dotted name."""
    out = {}
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            text = path.read_text(encoding="utf-8")
            name = _module_name(path)
            out[name] = Module(name, path, text, ast.parse(text, filename=str(path)))
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(module: Module, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` in ``module``."""
    if not level:
        return name or ""
    package = module.name.split(".")
    if module.path.name != "__init__.py":
        package.pop()
    base = package[:len(package) - (level - 1)] if level > 1 else package
    return ".".join(base + ([name] if name else []))


@functools.cache
def imports(name: str) -> tuple[Import, ...]:
    """Every import statement of module ``name``, in order."""
    module = modules()[name]
    found: list[Import] = []

    def visit(node: ast.AST, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                visit_list(child.body, True)
                visit_list(child.orelse, type_checking)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(Import(child.lineno, alias.name, (), 0, type_checking))
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(module, child.level, child.module)
                names = tuple(alias.name for alias in child.names)
                found.append(Import(child.lineno, target, names, child.level, type_checking))
            visit(child, type_checking)

    def visit_list(nodes: list[ast.stmt], type_checking: bool) -> None:
        visit(ast.Module(body=nodes, type_ignores=[]), type_checking)

    visit(module.tree, False)
    return tuple(found)


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def test_layers_import_only_downwards() -> None:
    rank = {package: i for i, package in enumerate(LAYERS)}
    offenders = []
    for module in modules().values():
        for imp in imports(module.name):
            target = imp.module.split(".")[0]
            if target in rank and rank[target] < rank[module.package]:
                offenders.append(f"{module.rel}:{imp.line} ({module.package}) imports {imp.module} ({target})")
    assert not offenders, (
        "imports of a package above the importer's own (order: " + " -> ".join(LAYERS) + "):\n  "
        + "\n  ".join(offenders))


def _graph() -> dict[str, dict[str, int]]:
    """Import edges between project modules, but for type checkers': {importer: {imported: line}}."""
    known = modules()
    graph: dict[str, dict[str, int]] = {name: {} for name in known}
    for name in known:
        for imp in imports(name):
            if imp.type_checking:
                continue
            targets = []
            if imp.names:
                for symbol in imp.names:
                    sub = f"{imp.module}.{symbol}" if imp.module else symbol
                    targets.append(sub if sub in known else imp.module)
            else:
                targets.append(imp.module)
            for target in targets:
                if target in known and target != name:
                    graph[name].setdefault(target, imp.line)
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a path back to its start) in each strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's algorithm; the graph has ~150 nodes
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    cycles = []
    for component in components:
        members, start = set(component), component[0]
        # Breadth-first from start, within the component, to the shortest way back.
        previous: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in previous:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w in members and w not in previous:
                        previous[w] = v
                        nxt.append(w)
            frontier = nxt
        path = [start]
        v = previous[start]
        while v != start:
            path.append(v)
            v = previous[v]
        path.append(start)
        cycles.append(path[::-1])
    return cycles


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles = _cycles(graph)
    described = []
    for cycle in cycles:
        steps = [f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
        described.append(" -> ".join(steps + [cycle[-1]]))
    assert not cycles, "import cycles between modules (each import with its line):\n  " + "\n  ".join(described)


def test_no_private_imports_across_packages() -> None:
    offenders = []
    for module in modules().values():
        for imp in imports(module.name):
            if imp.level or not imp.module:
                continue  # a relative import stays inside its package
            parts = imp.module.split(".")
            if parts[0] not in LAYERS or parts[0] == module.package:
                continue
            private = [p for p in parts[1:] if _private(p)] + [n for n in imp.names if _private(n)]
            if private:
                offenders.append(f"{module.rel}:{imp.line} imports {', '.join(private)} "
                                 f"from {imp.module}")
    assert not offenders, ("private names imported from another top-level package (use its public names):\n  "
                           + "\n  ".join(offenders))


def test_modules_have_docstrings() -> None:
    missing = [m.rel for m in modules().values() if m.package in SIZED and not ast.get_docstring(m.tree)]
    assert not missing, "modules without a docstring saying what they own:\n  " + "\n  ".join(missing)


def test_modules_are_short_or_say_why() -> None:
    offenders = []
    for m in modules().values():
        if m.package not in SIZED:
            continue
        lines = len(m.text.splitlines())
        if lines <= MAX_LINES:
            continue
        doc = ast.get_docstring(m.tree) or ""
        if not any(line.strip().startswith(LONG_MARK) for line in doc.splitlines()):
            offenders.append(f"{m.rel}: {lines} lines")
    assert not offenders, (f"modules over {MAX_LINES} lines whose docstring has no line starting "
                           f"{LONG_MARK!r}:\n  " + "\n  ".join(offenders))


def _source_files() -> list[Path]:
    out = []
    for root, dirs, files in os.walk(REPO):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith(".venv")
                         and not (here / d / "pyvenv.cfg").exists())
        out.extend(here / f for f in sorted(files) if f.endswith(CITING_SUFFIXES))
    return out


def test_no_citations_of_files_outside_the_repository() -> None:
    offenders = []
    for path in _source_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            cited = [c for c in CITED if c in line]
            if cited:
                offenders.append(f"{path.relative_to(REPO).as_posix()}:{number} cites {', '.join(cited)}")
    assert not offenders, ("citations of files outside the repository (copy the fact in instead):\n  "
                           + "\n  ".join(offenders))


def test_every_package_ships_its_type_hints() -> None:
    """PEP 561: a py.typed marker in each package, and pyproject.toml puts it in the wheel."""
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package in ("migrate", "nodes", "snapshot"):
        assert (REPO / package / "py.typed").exists(), package
        assert "py.typed" in data.get(package, []), package
