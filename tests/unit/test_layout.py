"""The library's layering, read from its own imports: no module imports Prefect (flows/ is
Prefect's side), no two modules import each other in a circle, and `skillops --help` needs neither
torch nor pandas (test_cli.py). Run alone to see the import graph checked:

    .venv/bin/python -m pytest tests/unit/test_layout.py -q
"""

import ast
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "src" / "skillops"


def _runtime_nodes(tree: ast.AST):
    """Every node of the module but those under `if TYPE_CHECKING:` (annotations only: no circle)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports() -> dict[str, set[str]]:
    """skillops module -> the skillops modules it imports when it runs (at any depth of its code)."""
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        module = path.stem
        found = set()
        for node in _runtime_nodes(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "skillops":
                    found |= {alias.name for alias in node.names}
                elif node.module.startswith("skillops."):
                    found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("skillops.")}
        graph[module] = {name for name in found if (PACKAGE / f"{name}.py").is_file()} - {module}
    return graph


def _third_party(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
    return roots


def test_the_library_never_imports_prefect():
    assert not [p.name for p in PACKAGE.rglob("*.py") if "prefect" in _third_party(p)]


def test_no_two_modules_import_each_other_in_a_circle():
    graph = _imports()
    circles = []

    def visit(module, path):
        for imported in graph[module]:
            if imported in path:
                circles.append(path[path.index(imported) :] + [imported])
            elif len(path) < len(graph):
                visit(imported, [*path, imported])

    for module in graph:
        visit(module, [module])
    assert not circles, circles[:5]
