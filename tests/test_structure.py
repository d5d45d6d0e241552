"""The package's shape, checked statically (``ast``, nothing imported): imports run one way, with
no circle (imports inside functions count too); library modules import neither ``argparse`` nor
the command line; no file is over 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fastdllm_warmstart"
NAME = PACKAGE.name
# The front ends: they may parse a command line; nothing else in the package may import them.
FRONT_ENDS = {f"{NAME}.cli", f"{NAME}.eval", f"{NAME}.flags", f"{NAME}.commands"}
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, module: str, known: Set[str]) -> Set[str]:
    """Every module this file imports, at top level or inside functions (not under TYPE_CHECKING)."""
    is_package = path.name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    found: Set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = here[:len(here) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                found.add(target)
                for alias in child.names:  # `from . import submodule`
                    if f"{target}.{alias.name}" in known:
                        found.add(f"{target}.{alias.name}")
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _graph() -> Dict[str, Set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {}
    for module, path in modules.items():
        ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        # An import of an ancestor package is no edge: it is always loaded before the module.
        graph[module] = {m for m in _imports(path, module, known) if m in known and m not in ancestors
                         and m != module}
    return graph


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def _front_end(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FRONT_ENDS)


def test_the_checker_sees_a_circle_and_imports_inside_functions(tmp_path):
    """The checks below can fail: a hand-made circle through a function-level import is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    source = tmp_path / "m.py"
    source.write_text("import os\ndef f():\n    from .x import y\n    import argparse\n"
                      "if TYPE_CHECKING:\n    from .z import w\n")
    assert _imports(source, "pkg.m", {"pkg.x", "pkg.z"}) == {"os", "pkg.x", "argparse"}


def test_no_import_circle_in_the_package():
    cycles = _cycles(_graph())
    assert not cycles, "import circles (imports inside functions included): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_library_modules_import_neither_argparse_nor_the_command_line():
    modules = _modules()
    known = set(modules)
    bad = []
    for module, path in modules.items():
        if _front_end(module):
            continue
        for target in _imports(path, module, known):
            if target == "argparse" or _front_end(target):
                bad.append(f"{module} imports {target}")
    assert not bad, "; ".join(bad)


def test_imports_run_cli_to_commands_to_library():
    graph = _graph()
    commands = {m for m in graph if m.startswith(f"{NAME}.commands")}
    assert commands, "the commands package is missing"
    for m in commands:
        assert f"{NAME}.cli" not in graph[m], f"{m} imports the cli"
    assert commands & graph[f"{NAME}.cli"], "the cli does not go through the commands"


@pytest.mark.parametrize("path", sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")))
def test_no_package_file_over_500_lines(path):
    lines = len((PACKAGE / path).read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path}: {lines} lines (limit {MAX_LINES})"
