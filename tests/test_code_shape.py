"""The code's shape rules (the project guide): no function in rrm_fast/ longer than 80 lines, no
module longer than 400, and no assignment to another module's attributes (monkeypatching) in
rrm_fast/ or tests/ -- extension points (callbacks, an injected clock) instead."""
from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 400


def python_files(folder: str) -> list[Path]:
    # the tracked tree only: rrm_fast/kernels is a link to ../kernels in developer checkouts
    return sorted(p for p in (REPO / folder).rglob("*.py") if not any(part.is_symlink() for part in _parents(p)))


def _parents(path: Path):
    p = path
    while p != REPO:
        yield p
        p = p.parent


def test_functions_and_modules_stay_short():
    too_long = []
    for path in python_files("rrm_fast"):
        text = path.read_text()
        rel = path.relative_to(REPO)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{rel}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{rel}:{node.lineno} {node.name}(): {length} lines")
    assert not too_long, "split these (functions <= 80 lines, modules <= 400):\n" + "\n".join(too_long)


def imported_names(tree: ast.Module) -> set[str]:
    """Names a file binds with import statements (modules, or objects of other modules)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
    return names


def _root(node) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def patches(tree: ast.Module) -> list[tuple[int, str]]:
    """Assignments to an attribute of something imported, and setattr/monkeypatch.setattr on it."""
    imported, found = imported_names(tree), []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for t in targets:
            if isinstance(t, ast.Attribute) and _root(t) in imported:
                found.append((node.lineno, ast.unparse(t)))
        if isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            if func in ("setattr", "monkeypatch.setattr") and node.args:
                first = node.args[0]
                if (isinstance(first, ast.Constant) and isinstance(first.value, str)) or _root(first) in imported:
                    found.append((node.lineno, f"{func}({ast.unparse(first)}, ...)"))
    return found


def test_no_module_is_patched_from_outside():
    found = [f"{path.relative_to(REPO)}:{line} {what}" for folder in ("rrm_fast", "tests")
             for path in python_files(folder) for line, what in patches(ast.parse(path.read_text()))]
    assert not found, "inject instead (callbacks, a clock argument):\n" + "\n".join(found)


def test_the_patch_finder_finds_patches():
    code = ("import time\nfrom rrm_fast import train as t\nfrom x import Cls\n"
            "t.time = 1\nCls.observe = f\nmonkeypatch.setattr(t, 'save_state', g)\nmonkeypatch.setattr('a.b.c', 1)\n"
            "self.x = 1\nobj = Cls()\nobj.y = 2\n")
    assert [line for line, _ in patches(ast.parse(code))] == [4, 5, 6, 7]
