"""The package's layers: imports only point down (core < datamodules < callbacks < models <
export < inference < training < search < hyperfd < cli), no two modules import each other through any chain (deferred
imports inside functions included), the toy modules are used only by tests and benchmarks,
benchmarks never import tests, and nothing imports the names the packages had before they moved
under ``facenas``."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "facenas"
LAYERS = [
    "core",
    "datamodules",
    "callbacks",
    "models",
    "export",
    "inference",
    "training",
    "search",
    "hyperfd",
    "cli",
]
TOP = len(LAYERS)  # facenas/__init__.py, __main__.py and the toy modules (facenas.demos)
OLD_NAMES = {"core", "datamodules", "callbacks", "models", "training", "search", "facenas_cli", "demos"}


def module_name(path: Path, root: Path) -> str:
    """``root/facenas/search/study.py`` -> ``facenas.search.study``; a package's __init__ is
    the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, name: str) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in a file, wherever it is (module level or
    inside a function), relative imports resolved; ``from a import b`` gives ``a.b``, which the
    graph keeps when it is a module and otherwise reduces to ``a``."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return out


def import_graph(root: Path, package: str = "facenas") -> dict[str, dict[str, int]]:
    """{module: {imported module of the same package: line}} for every module under
    ``root/package``. Importing ``a.b.c`` also runs ``a`` and ``a.b``: those packages are edges
    too, except the importer's own parent packages (they are already being imported)."""
    files = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        edges: dict[str, int] = {}
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for line, target in imported_names(path, name):
            while target and target not in files:
                target = target.rpartition(".")[0]
            if not target:
                continue
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                step = ".".join(parts[:i])
                if step in files and step not in own and step != name:
                    edges.setdefault(step, line)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the module count
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def describe(component: Iterable[str], graph: dict[str, dict[str, int]]) -> str:
    members = set(component)
    return "; ".join(f"{a} -> {b} (line {graph[a][b]})" for a in sorted(members) for b in graph[a] if b in members)


def rank(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else TOP


def test_no_import_cycle():
    graph = import_graph(REPO)
    assert len(graph) > 80, "the scan found too few modules"
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(c, graph) for c in found)


def test_the_cycle_check_finds_a_deferred_cycle(tmp_path):
    """The checker itself: a cycle closed only by an import inside a function, through a
    package's __init__, is found; removing that import removes it."""
    pkg = tmp_path / "facenas"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("from .a import f\n")
    (pkg / "low" / "a.py").write_text("def f():\n    from facenas.high import g\n    return g\n")
    (pkg / "high.py").write_text("from facenas.low.a import f\n\ndef g():\n    return f\n")
    graph = import_graph(tmp_path)
    assert cycles(graph) == [["facenas.high", "facenas.low", "facenas.low.a"]]
    (pkg / "low" / "a.py").write_text("def f():\n    return 1\n")
    assert cycles(import_graph(tmp_path)) == []


def test_imports_only_point_down():
    graph = import_graph(REPO)
    upward = [
        f"{a} -> {b} (line {line})"
        for a, edges in graph.items()
        for b, line in edges.items()
        if rank(a) < TOP and rank(b) > rank(a)
    ]
    assert not upward, "\n".join(upward)


def test_the_hyperfd_library_does_not_import_its_table_application():
    """facenas.hyperfd is the ranker library; facenas.hyperfd.table, the lookup-table application
    built on it, sits above it."""
    graph = import_graph(REPO)
    table = "facenas.hyperfd.table"
    upward = [
        f"{a} -> {b} (line {line})"
        for a, edges in graph.items()
        if a.startswith("facenas.hyperfd") and not (a == table or a.startswith(table + "."))
        for b, line in edges.items()
        if b == table or b.startswith(table + ".")
    ]
    assert not upward, "\n".join(upward)


def test_toy_modules_are_for_tests_and_benchmarks_only():
    graph = import_graph(REPO)
    users = [f"{a} -> {b}" for a, edges in graph.items() for b in edges if ".demos" in b and ".demos" not in a]
    assert not users, users


def _top_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level name) of every absolute import in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def test_nothing_imports_the_old_top_level_names():
    files = [*PACKAGE.rglob("*.py"), *(REPO / "tests").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")]
    found = [
        f"{f.relative_to(REPO)}:{line} imports {top}"
        for f in files
        for line, top in _top_level_imports(f)
        if top in OLD_NAMES
    ]
    assert not found, "\n".join(found)


def test_benchmarks_do_not_import_tests():
    found = [
        f"{f.relative_to(REPO)}:{line}"
        for f in sorted((REPO / "benchmarks").glob("*.py"))
        for line, top in _top_level_imports(f)
        if top == "tests"
    ]
    assert not found, found
