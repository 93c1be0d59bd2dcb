"""The core never depends on its edges: ``tokenspool`` <- ``api``, ``tokenspool`` <- ``worker``."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EDGES = {"api", "worker"}


def modules(package: str) -> list[Path]:
    paths = sorted((ROOT / package).rglob("*.py"))
    assert paths, f"no modules found under {package}/"
    return paths


def _imported_roots(node: ast.AST) -> Iterator[str]:
    """Top-level package names an import statement loads (relative imports stay inside)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name.split(".")[0]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        yield node.module.split(".")[0]


def module_level_imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Imports run when the module is imported: everything outside function bodies.

    Class bodies and ``if``/``try`` blocks at module level run at import, so they count.
    """
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            for root in _imported_roots(child):
                yield child.lineno, root  # type: ignore[attr-defined]
            stack.append(child)


def all_imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        for root in _imported_roots(node):
            yield node.lineno, root  # type: ignore[attr-defined]


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def test_module_level_import_finder_skips_function_bodies_only() -> None:
    tree = ast.parse(
        textwrap.dedent(
            """
            import api.app
            from worker import run
            import os, worker.main as wm
            from . import events
            if True:
                from api import limits
            class C:
                import worker
            def f():
                import api
            async def g():
                from worker import main
            """
        )
    )

    found = sorted(module_level_imports(tree))

    assert found == [
        (2, "api"),
        (3, "worker"),
        (4, "os"),
        (4, "worker"),
        (7, "api"),
        (9, "worker"),
    ]
    assert sorted(root for _, root in all_imports(tree)).count("api") == 3


@pytest.mark.parametrize("path", modules("tokenspool"), ids=lambda p: p.name)
def test_tokenspool_module_does_not_import_api_or_worker_at_module_level(path: Path) -> None:
    offending = [(line, root) for line, root in module_level_imports(parse(path)) if root in EDGES]

    assert offending == [], f"{path.relative_to(ROOT)} imports an edge package at module level"


@pytest.mark.parametrize(
    ("package", "forbidden"), [("api", "worker"), ("worker", "api")], ids=["api", "worker"]
)
def test_edge_packages_never_import_each_other(package: str, forbidden: str) -> None:
    offending = [
        (str(path.relative_to(ROOT)), line)
        for path in modules(package)
        for line, root in all_imports(parse(path))
        if root == forbidden
    ]

    assert offending == []


def test_importing_the_core_loads_neither_api_nor_worker() -> None:
    code = (
        "import tokenspool, sys; "
        "import tokenspool.cli, tokenspool.client, tokenspool.store, tokenspool.runner; "
        "assert 'api' not in sys.modules and 'worker' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('api', 'worker'))"
    )

    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stderr
