"""Imports inside vidrl/ point one way: no module imports itself back through others, and no
package imports one above it or beside it. Every import statement counts, those inside
functions too (a lazy import is still a dependency), read from the source with `ast`."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vidrl"

LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"configbase", "overrides", "models", "weights", "actors"}),
    frozenset({"data"}),
    frozenset({"rewards", "rollout", "learner"}),
    frozenset({"selection", "evaluation"}),
    frozenset({"cluster"}),
    frozenset({"demo"}),
    frozenset({"cli", "__init__"}),
)
"""From the ground up: a part may import its own package and anything on a lower floor, never a
floor above, nor another package on its own floor. `selection` and `evaluation` read rewards
(scores, the reward's own interval IoU) and so stand one floor above them; `cluster` wires
every component; the demo drives jobs; the command line and the package's face stand on top."""


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for file in PACKAGE.rglob("*.py"):
        parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = file
    return out


def imported(file: Path, known: dict[str, Path]) -> Iterator[str]:
    """The vidrl modules `file` imports anywhere in it (`from a.b import c` names a.b.c when c
    is a module of its own)."""
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("vidrl"):
                yield name


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imported(file, known)) - {name} for name, file in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that import each other in a loop (Tarjan's strongly connected
    components with more than one member)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while component[-1:] != [node]:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def floor(module: str) -> tuple[int, str]:
    """(floor, top-level part) of a module: vidrl.learner.worker -> (2, "learner")."""
    part = module.split(".")[1] if "." in module else "__init__"
    for level, parts in enumerate(LAYERS):
        if part in parts:
            return level, part
    raise AssertionError(f"{module}: its part {part!r} is on no floor of LAYERS; add it there")


def test_the_cycle_finder_finds_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_vidrl_imports_itself_back() -> None:
    assert cycles(graph()) == []


def test_imports_point_down_the_floors() -> None:
    wrong = []
    for source, targets in graph().items():
        level, part = floor(source)
        for target in targets:
            target_level, target_part = floor(target)
            if target_part != part and target_level >= level:
                wrong.append(f"{source} -> {target}")
    assert wrong == [], "imports that run up or sideways:\n" + "\n".join(sorted(wrong))
