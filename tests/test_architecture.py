"""The house rules, checked on the code rather than remembered (docs/architecture.md, "The map").

The layers themselves are an import-linter contract (``.importlinter``, run by ``make lint``); this
module checks what a contract of layers cannot: module size, import cycles inside a layer, and
imports hidden inside functions."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for folder in ("src", "flows", "plugins") for p in (REPO / folder).rglob("*.py")
                 if "build" not in p.parts and "migrations" not in p.parts)
MAX_LINES = 400
LAZY_OWN_ALLOWED = ("src/loopml/cli/",)  # commands import the workspace when they run: --help stays fast
VENDOR_MODULES = {"loopml_mlflow.auth", "loopml_mlflow.pyfunc", "loopml_torchserve.handler",
                  "loopml_torchserve.router", "flows", "flows.demo", "flows.pipeline"}
"""Own modules that import a vendor SDK (or Prefect) at their top: imported lazily like one."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    parts = parts[1:] if parts[0] in ("src", "plugins") else parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.AST, *, in_functions: bool) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST, depth: int) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                if (depth > 0) == in_functions:
                    found.append(child)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, depth + 1)
            elif not (isinstance(child, ast.If) and getattr(child.test, "id", "") == "TYPE_CHECKING"):
                visit(child, depth)

    visit(tree, 0)
    return found


def imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return [f"{node.module}.{a.name}" for a in node.names] + [node.module or ""]


def test_no_module_is_over_400_lines() -> None:
    long = {str(p.relative_to(REPO)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, "split these by job (a module past 400 lines is doing two)"


def test_no_import_cycle_between_modules() -> None:
    names = {module_name(p): p for p in SOURCES}
    edges: dict[str, set[str]] = {}
    for name, path in names.items():
        tree = ast.parse(path.read_text())
        targets = {t for node in [*imports(tree, in_functions=False), *imports(tree, in_functions=True)]
                   for t in imported(node)}
        edges[name] = {t for t in targets if t in names and t != name and not name.startswith(t + ".")}
    state: dict[str, int] = {}
    path_now: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        path_now.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*path_now[path_now.index(nxt):], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt)
        path_now.pop()
        state[node] = 2

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
    for name in sorted(names):
        if name not in state:
            walk(name)


def test_functions_import_only_vendor_sdks_and_heavy_libraries() -> None:
    """Standard-library and loopml imports live at the top of a module; only third-party SDKs
    (torch, MLflow, Prefect, boto3, pandas …) may be imported lazily, where a light path needs it."""
    stdlib = set(sys.stdlib_module_names)
    hidden = []
    for path in SOURCES:
        rel = str(path.relative_to(REPO))
        for node in imports(ast.parse(path.read_text()), in_functions=True):
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            top = (module or "").split(".")[0]
            own = top in ("loopml", "flows") or top.startswith("loopml_")
            if top in stdlib or (own and module not in VENDOR_MODULES and not rel.startswith(LAZY_OWN_ALLOWED)):
                hidden.append(f"{rel}:{node.lineno} {module}")
    assert hidden == []
