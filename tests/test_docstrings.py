"""Every public definition in ``vmblock/`` and ``native/`` has a docstring that says what it is
for: module-level classes and functions, and the methods and nested classes of public classes,
whose name does not start with ``_``. A new one without a docstring fails here, by name."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("vmblock", "native")
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def missing_docstrings(source: str, where: str = "<string>") -> list[str]:
    """'where:line qualified.name' of each public definition in ``source`` without a docstring."""
    out: list[str] = []

    def walk(body, prefix: str) -> None:
        for node in body:
            if isinstance(node, _DEFS) and not node.name.startswith("_"):
                if not ast.get_docstring(node):
                    out.append(f"{where}:{node.lineno} {prefix}{node.name}")
                if isinstance(node, ast.ClassDef):
                    walk(node.body, f"{prefix}{node.name}.")

    walk(ast.parse(source).body, "")
    return out


def test_every_public_definition_has_a_docstring():
    missing = []
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            missing += missing_docstrings(path.read_text(), str(path.relative_to(REPO)))
    assert not missing, ("public definitions without a docstring (say what each is for):\n"
                         + "\n".join(missing))


def test_the_walker_finds_a_missing_docstring():
    source = '''
def documented():
    """Why it exists."""

def bare():
    pass

def _private():
    pass

class Public:
    """A class."""

    def method(self):
        pass

    def _helper(self):
        pass

    class Inner:
        pass

class _Hidden:
    def method(self):
        pass
'''
    assert missing_docstrings(source, "m.py") == [
        "m.py:5 bare", "m.py:14 Public.method", "m.py:20 Public.Inner"]
