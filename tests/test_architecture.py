"""The package's import graph: subpackages depend on each other in one direction only (no cycles)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "openrs_pl"


def package_imports() -> dict[str, set[str]]:
    """Top-level unit (subpackage or module) -> the other units it imports, at module level or inside functions."""
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        unit = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("openrs_pl.") and name.split(".")[1] != unit:
                    edges.setdefault(unit, set()).add(name.split(".")[1])
    return edges


def cycles(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Edges ``a -> b`` from which ``a`` can be reached again.

    >>> cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    [('a', 'b'), ('b', 'c'), ('c', 'a')]
    """

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(edges.get(node, ()))
        return False

    return sorted((a, b) for a, targets in edges.items() for b in targets if reaches(b, a))


def test_no_package_import_cycles() -> None:
    edges = package_imports()
    assert {"grpo", "rollout", "eval", "metrics", "data", "hub"} <= set(edges) | {t for v in edges.values() for t in v}
    assert cycles(edges) == []


def test_the_cycle_check_finds_a_real_cycle() -> None:
    edges = package_imports()
    edges.setdefault("rollout", set()).add("grpo")  # what importing the loss module from the callback would add
    assert ("rollout", "grpo") in cycles(edges)
