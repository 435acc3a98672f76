"""The import graph of ``vmblock/`` and ``native/`` against the layer order of
docs/architecture.md: no upward import, no cycle, no module outside a layer.

Every import statement counts, including those inside functions (a lazy import hides a cycle
from Python, not from the structure); only imports under ``if TYPE_CHECKING:`` are left out,
since they name a type for annotations and load nothing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "architecture.md"
_ROW = re.compile(r"^\|\s*(\d+)\s*\|([^|]*)\|")


def layer_table(text: str) -> dict[str, int]:
    """{'vmblock.store': 4, ...} from the rows of the layer table."""
    table = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if m:
            for name in re.findall(r"`([\w.]+)`", m.group(2)):
                table[name] = int(m.group(1))
    return table


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, with native/ installed as vmblock.native."""
    files = {}
    for root, package in ((REPO / "vmblock", "vmblock"), (REPO / "native", "vmblock.native")):
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join([package, *parts])] = path
    return files


def _is_type_checking(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, (ast.Name, ast.Attribute))
            and ast.unparse(node.test).endswith("TYPE_CHECKING"))


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The vmblock modules ``module`` imports anywhere in its file (the longest known prefix)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()

    def resolve(name: str) -> str:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name

    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block)
                   for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(resolve(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import mod`` imports pkg.mod; ``from pkg import name`` imports pkg
            found.update(resolve(f"{base}.{a.name}") for a in node.names)
    found.discard("")
    found.discard(module)
    return found


def layer_of(module: str, table: dict[str, int]) -> int | None:
    name = module
    while name:
        if name in table:
            return table[name]
        name = name.rpartition(".")[0]
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = module_files()
    return {m: imports_of(m, p, set(files)) for m, p in files.items()}


@pytest.fixture(scope="module")
def table() -> dict[str, int]:
    return layer_table(DOC.read_text())


def test_every_module_has_a_layer(graph, table):
    assert [m for m in sorted(graph) if layer_of(m, table) is None] == []


def test_no_import_goes_up(graph, table):
    upward = [f"{m} (layer {layer_of(m, table)}) imports {t} (layer {layer_of(t, table)})"
              for m, targets in sorted(graph.items()) for t in sorted(targets)
              if (layer_of(t, table) or 0) > (layer_of(m, table) or 0)]
    assert upward == []


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_the_checks_see_what_they_check():
    """The parsers of this test on a made-up tree: an upward import and a lazy cycle are found."""
    table = layer_table("| 0 | `a.low` | x |\n| 1 | `a.high` | y |")
    assert table == {"a.low": 0, "a.high": 1}
    graph = {"a.low.m": {"a.high.n"}, "a.high.n": {"a.low.m"}}
    assert cycles(graph) == [["a.high.n", "a.low.m"]]
    assert layer_of("a.low.m", table) < layer_of("a.high.n", table)


def test_lazy_and_relative_imports_are_read(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from . import sib, other\nif TYPE_CHECKING:\n    from .. import top\n\n"
                   "def f():\n    from ..top.mod import x\n")
    known = {"pkg.sub", "pkg.sub.sib", "pkg.sub.other", "pkg.top", "pkg.top.mod", "pkg.sub.m"}
    assert imports_of("pkg.sub.m", src, known) == {"pkg.sub.sib", "pkg.sub.other", "pkg.top.mod"}
