"""The SCSI core's modules import each other in one direction only: state and decoding at the
bottom, handlers above them, the command table above the handlers, the target on top.
Imports inside functions count; annotation-only imports under TYPE_CHECKING do not."""

import ast
from pathlib import Path

import vmblock.scsi.target

# bottom to top; a module may import only modules of its own row or lower ones
LAYERS = [
    {"constants", "task"},
    {"sense"},
    {"cdb"},
    {"command_spec", "pr", "modepages"},
    {"lu"},
    {"sbc", "spc", "xcopy"},
    {"commands"},
    {"target"},
]
SCSI = Path(vmblock.scsi.target.__file__).parent


def runtime_imports(path: Path) -> set[str]:
    """Modules of vmblock.scsi that ``path`` imports when it runs."""
    tree = ast.parse(path.read_text())
    typing_only = {id(node) for block in ast.walk(tree)
                   if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.dump(block.test)
                   for stmt in block.body for node in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[2] for alias in node.names
                      if alias.name.startswith("vmblock.scsi.")}
        elif not isinstance(node, ast.ImportFrom):
            continue
        elif node.module == "vmblock.scsi":
            found |= {alias.name for alias in node.names}
        elif node.module and node.module.startswith("vmblock.scsi."):
            found.add(node.module.split(".")[2])
    return found


def test_every_module_has_a_layer():
    modules = {p.stem for p in SCSI.glob("*.py") if p.stem != "__init__"}
    assert modules == set().union(*LAYERS)


def test_no_module_imports_upwards():
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    upward = [(module, imported) for module in rank
              for imported in runtime_imports(SCSI / f"{module}.py")
              if rank[imported] > rank[module]]
    assert upward == []
