"""The plan of the package stays visible: nothing imports the plugin, and kvtest has no import cycles.

An import inside a function counts (it still ties the two modules together); one under
``if TYPE_CHECKING:`` does not (it never runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "kvtest"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The kvtest modules ``path`` imports at run time (TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in known and name != me}


def import_graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(p): p for p in root.rglob("*.py")}
    known = set(files)
    return {name: imports_of(path, known) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def test_no_import_cycle_inside_kvtest():
    found = cycles(import_graph(PACKAGE))
    assert not found, "import cycles inside kvtest/: " + "; ".join(" <-> ".join(c) for c in found)


def test_nothing_imports_the_plugin():
    offenders = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]:
        if path == PACKAGE / "plugin.py" or path == Path(__file__).resolve():
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if "kvtest.plugin" in names:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, "kvtest.plugin is imported by " + ", ".join(offenders) + " (use kvtest.state)"


def test_host_modules_use_the_standard_library_only():
    for path in (PACKAGE / "host").rglob("*.py"):
        graph = imports_of(path, {module_name(p) for p in PACKAGE.rglob("*.py")})
        outside = {m for m in graph if not m.startswith("kvtest.host")}
        assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}: kvtest/host is stdlib only"


@pytest.mark.parametrize(
    "source, expected",
    [
        # a plain cycle, one through a function-level import, and none through TYPE_CHECKING
        ({"a.py": "import pkg.b\n", "b.py": "import pkg.a\n"}, [["pkg.a", "pkg.b"]]),
        ({"a.py": "def f():\n    from pkg import b\n", "b.py": "from pkg.a import f\n"}, [["pkg.a", "pkg.b"]]),
        (
            {"a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\n",
             "b.py": "from pkg.a import f\n"},
            [],
        ),
        ({"a.py": "from . import b\n", "b.py": "from .a import f\n"}, [["pkg.a", "pkg.b"]]),
    ],
)
def test_the_cycle_check_finds_cycles(tmp_path, source, expected):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name, text in source.items():
        (pkg / name).write_text(text)
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert cycles(import_graph(pkg)) == expected
    finally:
        ROOT = saved


def _skips_on_own_options(path: Path) -> list[str]:
    return _skips_on_own_options_text(path.read_text(), path)


def _skips_on_own_options_text(source: str, path: Path) -> list[str]:
    """``skipif`` marks in ``source`` whose condition asks whether kvtest has one of its own options
    (``OPTIONS``, a ``--kv-`` flag): a test of kvtest's own feature must fail when it goes, not skip."""
    found = []
    for node in ast.walk(ast.parse(source, str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "skipif"):
            continue
        condition = ast.unparse(node.args[0]) if node.args else ""
        if "OPTIONS" in condition or "--kv-" in condition:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: skipif({condition})")
    return found


def test_no_skip_detects_kvtests_own_options():
    found = [line for path in sorted((ROOT / "tests").rglob("*.py")) for line in _skips_on_own_options(path)]
    assert not found, "feature-detection skips on kvtest's own options:\n" + "\n".join(found)


def test_the_own_option_skip_check_finds_one():
    probe = ROOT / "tests" / "harness" / "probe.py"
    source = 'import pytest\nneeds = pytest.mark.skipif(not any(o.flag == "--kv-x" for o in OPTIONS), reason="")\n'
    found = _skips_on_own_options_text(source, probe)
    assert found == ["tests/harness/probe.py:2: skipif(not any((o.flag == '--kv-x' for o in OPTIONS)))"], found
    assert _skips_on_own_options_text("import pytest\nx = pytest.mark.skipif(NETNS is None, reason='')\n", probe) == []
