"""ARCHITECTURE.md against the code: the module map is complete, the layer rule holds, no import circles.

Static checks (the source is parsed with :mod:`ast`; nothing is imported), so they hold for
every module, including ones whose optional dependencies are not installed here:

* every package and module under ``bcedge/``, ``training/`` and ``export/`` has a row in the
  module map of ``ARCHITECTURE.md``, and every row names a file that exists;
* ``bcedge`` is the runtime: outside ``bcedge/cli/`` it never imports the desktop packages
  ``training`` and ``export`` (not at module level, not inside a function), and the CLI imports
  them only inside functions (so ``bcedge --help`` and the runtime work without them);
* module-level imports among ``bcedge`` modules form no circle;
* every test ARCHITECTURE.md names as the holder of an invariant exists;
* a module over :data:`LONG` lines says why it is one module (a "Why one module:" paragraph in
  its docstring).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bcedge", "training", "export")
DESKTOP = ("training", "export")
CLI = ROOT / "bcedge" / "cli"
#: Modules longer than this many lines must say why they are one module.
LONG = 500


def _python_files(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    """``bcedge/bench/rows.py`` -> ``bcedge.bench.rows``; ``bcedge/bench/__init__.py`` -> ``bcedge.bench``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _map_key(path: Path) -> str:
    """How the module map names a file: a package by its folder (``bcedge/bench/``), a module by its path."""
    rel = path.relative_to(ROOT).as_posix()
    return rel[: -len("__init__.py")] if path.name == "__init__.py" else rel


def _module_map() -> set[str]:
    """The paths named (in backticks) in the ``## Module map`` section of ARCHITECTURE.md."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    match = re.search(r"^## Module map\s*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, "ARCHITECTURE.md has no '## Module map' section"
    return set(re.findall(r"`((?:bcedge|training|export)/(?:[\w/.]*?(?:\.py|/))?)`", match.group(1)))


def test_module_map_lists_every_module() -> None:
    on_disk = {_map_key(p) for package in PACKAGES for p in _python_files(package)}
    listed = _module_map()
    missing = sorted(on_disk - listed)
    stale = sorted(listed - on_disk)
    assert not missing, f"add these to the module map of ARCHITECTURE.md: {missing}"
    assert not stale, f"the module map of ARCHITECTURE.md names files that do not exist: {stale}"


def test_module_map_check_sees_a_missing_row(tmp_path: Path) -> None:
    """The map parser finds rows and would miss a dropped one (guards against a vacuous map check)."""
    listed = _module_map()
    assert {"bcedge/", "bcedge/cli/", "bcedge/bench/machine.py", "training/", "export/"} <= listed
    assert "bcedge/no_such_module.py" not in listed


def test_named_tests_exist() -> None:
    """Every ``tests/x.py`` and ``tests/x.py::test_name`` in ARCHITECTURE.md exists (a bare
    ``test_name`` after one in the same table cell or paragraph belongs to that file)."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    missing = []
    named = 0
    for cell in re.split(r"\||\n\s*\n", text):
        current = None
        for file, function, bare in re.findall(r"`(tests/\w+\.py)(?:::(\w+))?`|`(test_\w+)`", cell):
            if file:
                current = ROOT / file
                if not current.is_file():
                    missing.append(file)
                    continue
            name = function or bare
            if not name:
                continue
            if current is None or not current.is_file():
                missing.append(f"{name} (no file before it)")
                continue
            named += 1
            if not re.search(rf"^def {name}\(", current.read_text(encoding="utf-8"), flags=re.M):
                missing.append(f"{current.relative_to(ROOT).as_posix()}::{name}")
    assert named >= 10, f"only {named} named tests found: the parser lost the table"
    assert not missing, f"ARCHITECTURE.md names tests that do not exist: {missing}"


def test_long_modules_say_why() -> None:
    unexplained = []
    for package in PACKAGES:
        for path in _python_files(package):
            text = path.read_text(encoding="utf-8")
            if text.count("\n") > LONG and "Why one module:" not in (ast.get_docstring(ast.parse(text)) or ""):
                unexplained.append(f"{path.relative_to(ROOT).as_posix()} ({text.count(chr(10))} lines)")
    assert not unexplained, (
        f"modules over {LONG} lines without a 'Why one module:' paragraph in their docstring "
        f"(split them, or say why they are one thing): {unexplained}"
    )


def _imports(tree: ast.AST, *, module_level_only: bool) -> Iterator[tuple[ast.stmt, bool]]:
    """(import statement, whether it runs at import time) for every import in ``tree``.

    Module level means: not inside a function or class body, and not under ``if TYPE_CHECKING:``
    (those never run). With ``module_level_only`` the others are not yielded.
    """

    def visit(node: ast.AST, top: bool) -> Iterator[tuple[ast.stmt, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                if top or not module_level_only:
                    yield child, top
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                if not module_level_only:
                    yield from visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                if not module_level_only:
                    yield from visit(child, False)
                for orelse in child.orelse:  # the else branch runs
                    yield from visit(ast.Module(body=[orelse], type_ignores=[]), top)
            else:
                yield from visit(child, top)

    yield from visit(tree, True)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(stmt: ast.stmt, module: str, is_package: bool) -> list[str]:
    """Absolute names an import statement refers to (``from a import b`` gives ``a`` and ``a.b``)."""
    if isinstance(stmt, ast.Import):
        return [alias.name for alias in stmt.names]
    assert isinstance(stmt, ast.ImportFrom)
    base = stmt.module or ""
    if stmt.level:
        parts = module.split(".")
        keep = len(parts) - stmt.level + (1 if is_package else 0)
        base = ".".join(parts[:keep] + ([base] if base else []))
    return [base] + [f"{base}.{alias.name}" for alias in stmt.names if alias.name != "*"]


def _parsed(package: str) -> Iterator[tuple[Path, str, ast.AST]]:
    for path in _python_files(package):
        yield path, _module_name(path), ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _desktop(name: str) -> bool:
    return name.split(".")[0] in DESKTOP


def test_runtime_never_imports_the_desktop_packages() -> None:
    """Outside bcedge/cli/: no import of training or export anywhere (module level or lazily)."""
    offenders = []
    for path, module, tree in _parsed("bcedge"):
        if CLI in path.parents:
            continue
        for stmt, top in _imports(tree, module_level_only=False):
            for target in _targets(stmt, module, path.name == "__init__.py")[:1]:
                if _desktop(target):
                    where = "module level" if top else "inside a function"
                    offenders.append(f"{path.relative_to(ROOT)}:{stmt.lineno} imports {target} ({where})")
    assert not offenders, "bcedge outside bcedge/cli/ imports the desktop side:\n" + "\n".join(offenders)


def test_cli_imports_the_desktop_packages_only_inside_commands() -> None:
    offenders = []
    for path, module, tree in _parsed("bcedge"):
        if CLI not in path.parents:
            continue
        for stmt, _top in _imports(tree, module_level_only=True):
            target = _targets(stmt, module, path.name == "__init__.py")[0]
            if _desktop(target):
                offenders.append(f"{path.relative_to(ROOT)}:{stmt.lineno} imports {target} at module level")
    assert not offenders, "\n".join(offenders)


def _import_graph() -> dict[str, set[str]]:
    """bcedge module -> the bcedge modules it imports when it is imported (module-level imports)."""
    parsed = list(_parsed("bcedge"))
    known = {module for _path, module, _tree in parsed}
    graph: dict[str, set[str]] = {}
    for path, module, tree in parsed:
        edges = graph.setdefault(module, set())
        for stmt, _top in _imports(tree, module_level_only=True):
            base, *names = _targets(stmt, module, path.name == "__init__.py")
            submodules = [n for n in names if n in known]
            # `from pkg import submodule` needs the submodule, not what pkg/__init__ defines (Python
            # imports the submodule even while pkg is still initialising); any other name needs pkg.
            needs_base = isinstance(stmt, ast.Import) or len(submodules) < len(names)
            for target in submodules + ([base] if needs_base else []):
                if target in known and target != module:
                    edges.add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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


def test_no_import_circles_among_bcedge_modules() -> None:
    circles = _cycles(_import_graph())
    assert not circles, f"module-level import circles among bcedge modules: {circles}"


def test_cycle_finder_finds_a_circle() -> None:
    """The circle finder itself reports a circle (guards against a vacuous check)."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import training.models\n", [("training.models", True)]),
        ("def f():\n    from export import tflite\n", [("export", False)]),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import export\n",
            [("typing", True), ("export", False)],
        ),
        ("try:\n    import training\nexcept ImportError:\n    pass\n", [("training", True)]),
    ],
)
def test_import_scanner(source: str, expected: list[tuple[str, bool]]) -> None:
    """Module level vs lazy as the layer checks see it."""
    found = [
        (_targets(s, "bcedge.x", False)[0], top) for s, top in _imports(ast.parse(source), module_level_only=False)
    ]
    assert found == expected
