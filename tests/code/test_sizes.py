"""The code stays walkable: no class in gateway/ over 250 lines, no function over 60 (generated stubs aside)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"
GENERATED = ("v1", "tfs")
MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 60


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in GENERATED)


def oversized(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    """``file:line name (N lines)`` for every class or function of ``path`` over its limit."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ClassDef):
            limit = MAX_CLASS_LINES
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            limit = MAX_FUNCTION_LINES
        else:
            continue
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        lines = node.end_lineno - start + 1
        if lines > limit:
            found.append(f"{path.relative_to(root)}:{start} {node.name} ({lines} lines, limit {limit})")
    return found


def test_the_check_finds_an_oversized_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    path = tmp_path / "probe.py"
    path.write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert oversized(path, tmp_path) == [f"probe.py:5 long ({MAX_FUNCTION_LINES + 1} lines, limit 60)"]


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_class_or_function_is_too_long(path: Path) -> None:
    assert oversized(path) == []
