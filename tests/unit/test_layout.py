"""The library's layering, read from its own imports: no module imports Prefect (flows/ is
Prefect's side), no two modules (subpackages included) import each other in a circle, and `skillops --help` needs neither
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


def _module_name(path: Path) -> str:
    """A file's module under skillops, dotted: `config`, `gate.authority`; a package is its `__init__`."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, name: str | None = None) -> str | None:
    """The skillops module an import means: `from skillops.gate import authority` is the module
    gate.authority, `from skillops.gate import Authority` the package gate; None outside skillops."""
    if module != "skillops" and not module.startswith("skillops."):
        return None
    base = module.removeprefix("skillops").removeprefix(".")
    if name and (candidate := f"{base}.{name}".lstrip(".")) in MODULES:
        return candidate
    return base if base in MODULES else None


def _imports() -> dict[str, set[str]]:
    """skillops module -> the skillops modules it imports when it runs (at any depth of its code),
    in every subpackage."""
    graph = {}
    for module, path in MODULES.items():
        found = set()
        for node in _runtime_nodes(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {_resolve(node.module, alias.name) for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {_resolve(alias.name) for alias in node.names}
        graph[module] = found - {None, module, ""}
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


def test_the_walk_reaches_every_subpackage():
    """The circle check reads modules in subpackages too, and sees their imports: a walk of the
    top level only would check the gate's modules not at all."""
    graph = _imports()
    assert {"gate.authority", "gate.judging", "stack.throttle", "stages.promotion", "training.trainer"} <= set(graph)
    assert {"tracking.registry", "gate.authority"} <= graph["gate.judging"]


# The shared ground every room stands on; everything else lives in the room of its concern.
TOP_LEVEL = {"cli", "config", "context", "errors", "mlflow_model", "paths", "settings", "uris"}


def test_the_top_level_holds_only_the_shared_ground():
    """A new module goes into the folder of its concern (inputs, training, judging, serving,
    tracking, stack, gate, stages), not beside the shared ground."""
    top = {name for name in MODULES if name and "." not in name and not (PACKAGE / name).is_dir()}
    assert top == TOP_LEVEL, f"modules at the top level of src/skillops: {sorted(top - TOP_LEVEL)}"
