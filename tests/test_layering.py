"""The package's import layering (DESIGN.md, "Layers"): imports run one way, with no cycles.

The imports are read with the stdlib ``ast`` from the source, not by importing the package,
so the test sees every import statement wherever it stands:

* **Lazy imports count.** An ``import`` inside a function (done to keep start-up fast or to
  dodge an import cycle at load time) is still a dependency of the module on the one it
  names, and counts for the layering and for cycles like any other. A lazy import is how
  a cycle hides from the interpreter; it does not make the design one-way.
* Imports under ``if TYPE_CHECKING:`` count for the layering (an annotation naming a
  higher layer's type is a dependency on that layer) but not for cycles (they never run).
* ``from groklab.pkg import name`` is an edge to ``groklab.pkg.name`` when that is a module
  and to ``groklab.pkg`` (its ``__init__``) otherwise. That Python runs a package's
  ``__init__`` before any of its submodules is not an edge: it is how packages work.

Layers, lowest first. A module may import its own layer and the layers below it:

0. ``config.py``, ``errors.py``, ``_version.py``, ``presets.py`` (presets only build configs).
1. ``tasks/`` and ``models/``: the same height, and neither imports the other's package (a
   model is built from sizes, not from a Task).
2. ``store.py``, ``run.py``, ``init_from.py``: the run directory. DESIGN.md lists them after
   ``train/`` in data-flow order (the trainer's output is a run directory), but the trainer
   *writes* that directory through the store (atomic writes, locks, resume, initialising from
   another run's checkpoint), so in import order the store is below the trainer.
3. ``train/``.
4. ``analysis/``: pure functions of saved runs.
5. ``sweep.py``: the engine (runs many configs, bisection, specs).
6. ``studies/`` and ``dcrit.py``: users of the engine (a study is specs plus figures; the
   critical-dataset-size search runs many configs through the engine).
7. ``report/``.
8. ``api.py`` and ``__init__.py``: the public Python API, a face over the whole library like
   the CLI; nothing in the library imports them (the version lives in ``_version.py``).
9. ``commands/``, ``cli.py``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = "groklab"

# (layer name, height, module prefixes). Higher may import lower or equal height; equal
# height with a different layer name is forbidden (tasks/ and models/).
LAYERS: list[tuple[str, int, tuple[str, ...]]] = [
    ("config", 0, ("groklab.config", "groklab.errors", "groklab._version", "groklab.presets")),
    ("tasks", 1, ("groklab.tasks",)),
    ("models", 1, ("groklab.models",)),
    ("store", 2, ("groklab.store", "groklab.run", "groklab.init_from")),
    ("train", 3, ("groklab.train",)),
    ("analysis", 4, ("groklab.analysis",)),
    ("sweep", 5, ("groklab.sweep",)),
    ("studies", 6, ("groklab.studies", "groklab.dcrit")),
    ("report", 7, ("groklab.report",)),
    ("api", 8, ("groklab.api", "groklab")),
    ("cli", 9, ("groklab.commands", "groklab.cli")),
]


@dataclass(frozen=True)
class Edge:
    src: str  # importing module
    dst: str  # imported module
    where: str  # file:line
    type_only: bool  # under ``if TYPE_CHECKING:``


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / PKG).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _edges(mod: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    is_pkg = path.name == "__init__.py"
    package = mod if is_pkg else mod.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(SRC.parent) if path.is_relative_to(SRC.parent) else path.name
    edges: list[Edge] = []

    def target(name: str) -> str | None:
        # the longest prefix of ``name`` that is a module of the package
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def add(dst: str | None, node: ast.stmt, type_only: bool) -> None:
        if dst is not None and dst != mod:
            edges.append(Edge(mod, dst, f"{rel}:{node.lineno}", type_only))

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PKG or alias.name.startswith(PKG + "."):
                    add(target(alias.name), node, type_only)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            if name == PKG or name.startswith(PKG + "."):
                for alias in node.names:
                    sub = f"{name}.{alias.name}"
                    add(sub if sub in modules else target(name), node, type_only)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, type_only)

    visit(tree, False)
    return edges


def _layer(mod: str) -> tuple[str, int]:
    best: tuple[int, str, int] | None = None
    for name, height, prefixes in LAYERS:
        for p in prefixes:
            # the package root names only groklab/__init__.py, so a new module with no layer
            # fails below instead of landing in the API layer
            inside = mod.startswith(p + ".") and p != PKG
            if (mod == p or inside) and (best is None or len(p) > best[0]):
                best = (len(p), name, height)
    assert best is not None, f"{mod}: no layer; add it to LAYERS in {Path(__file__).name}"
    return best[1], best[2]


def _graph() -> list[Edge]:
    modules = _modules()
    return [e for mod, path in modules.items() for e in _edges(mod, path, modules)]


def layer_violations(edges: list[Edge]) -> list[str]:
    out = []
    for e in edges:
        (sname, sh), (dname, dh) = _layer(e.src), _layer(e.dst)
        if dh > sh or (dh == sh and dname != sname):
            out.append(f"{e.where}: {e.src} ({sname}) imports {e.dst} ({dname})")
    return list(dict.fromkeys(out))  # one line per import statement and module


def import_cycles(edges: list[Edge]) -> list[str]:
    """Every strongly connected component of more than one module, with its edges."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if not e.type_only:
            graph.setdefault(e.src, set()).add(e.dst)
            graph.setdefault(e.dst, set())
    # Tarjan's algorithm, iterative (the graph is small, but recursion limits are not ours)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        sccs.append(sorted(comp))
    out = []
    for comp in sorted(sccs):
        members = set(comp)
        inner = [
            f"    {e.where}: {e.src} imports {e.dst}"
            for e in edges
            if e.src in members and e.dst in members and not e.type_only
        ]
        out.append("cycle between " + ", ".join(comp) + ":\n" + "\n".join(sorted(set(inner))))
    return out


def test_imports_run_down_the_layers() -> None:
    bad = layer_violations(_graph())
    assert not bad, "imports that run up the layers (see DESIGN.md):\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    bad = import_cycles(_graph())
    assert not bad, "import cycles (lazy imports count):\n" + "\n".join(bad)


def test_every_module_has_a_layer() -> None:
    for mod in _modules():
        _layer(mod)
    with pytest.raises(AssertionError, match="no layer"):
        _layer("groklab.somewhere_new")


@pytest.mark.parametrize(
    ("src", "dst", "ok"),
    [
        ("groklab.train.loop", "groklab.config", True),
        ("groklab.train.loop", "groklab.dcrit", False),
        ("groklab.models", "groklab.tasks.base", False),
        ("groklab.tasks.modular", "groklab.models", False),
        ("groklab.analysis.llc", "groklab.train.losses", True),
        ("groklab.sweep", "groklab.studies", False),
        ("groklab.commands.zoo", "groklab.dcrit", True),
        ("groklab.store", "groklab", False),
    ],
)
def test_the_checker_knows_up_from_down(src: str, dst: str, ok: bool) -> None:
    bad = layer_violations([Edge(src, dst, "x.py:1", False)])
    assert (not bad) == ok


def test_the_checker_finds_lazy_imports_and_cycles(tmp_path: Path) -> None:
    code = (
        "from typing import TYPE_CHECKING\n"
        "import groklab.config\n"
        "if TYPE_CHECKING:\n"
        "    from groklab.run import Run\n"
        "def f():\n"
        "    from groklab import sweep, config\n"
        "    from groklab.store import CONFIG\n"
    )
    path = tmp_path / "m.py"
    path.write_text(code)
    modules = dict.fromkeys(
        ["groklab", "groklab.config", "groklab.run", "groklab.sweep", "groklab.store"], path
    )
    modules["groklab.x"] = path
    edges = _edges("groklab.x", path, modules)
    got = {(e.dst, e.where.rsplit(":", 1)[1], e.type_only) for e in edges}
    assert got == {
        ("groklab.config", "2", False),
        ("groklab.run", "4", True),
        ("groklab.sweep", "6", False),
        ("groklab.config", "6", False),
        ("groklab.store", "7", False),
    }
    cyc = import_cycles(
        [
            Edge("groklab.a", "groklab.b", "a.py:3", False),
            Edge("groklab.b", "groklab.a", "b.py:9", False),
            Edge("groklab.b", "groklab.c", "b.py:1", True),
            Edge("groklab.c", "groklab.b", "c.py:1", False),
        ]
    )
    assert len(cyc) == 1
    assert "a.py:3" in cyc[0] and "b.py:9" in cyc[0] and "c.py" not in cyc[0]
