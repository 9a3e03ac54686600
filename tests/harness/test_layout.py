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


# -- the package map --------------------------------------------------------------------------------
# docs/contributing.md draws it. A unit is a folder of kvtest (kvtest.run, kvtest.host, ...) or a group
# of top-level modules; each may import the units listed, and nothing else of kvtest's.

GROUPS = {
    "kvtest": "root",
    "kvtest.cases": "author",
    "kvtest.patterns": "author",
    "kvtest.node": "author",
    "kvtest.fixtures": "author",
    "kvtest.known_issues": "author",
    "kvtest.option_paths": "settings",
    "kvtest.cli": "cli",
    "kvtest.doctor": "cli",
}
ALLOWED: dict[str, set[str]] = {
    "root": {"host"},
    "host": set(),
    "upstream": set(),
    "roles": set(),
    "backends": {"root", "host"},
    "settings": {"root", "host", "roles"},
    "state": {"root", "settings", "roles", "backends"},
    "results": {"root", "host"},
    "run": {"root", "host", "roles", "settings", "state", "results", "backends"},
    "dropin": {"root", "host", "roles", "settings", "backends", "upstream"},
    "author": {"root", "host", "roles", "settings", "state", "backends", "results", "run", "author"},
    "cli": {"root", "host", "roles", "settings", "backends", "results", "dropin", "upstream"},
    "plugin": {"root", "host", "roles", "settings", "state", "backends", "results", "run", "dropin", "author"},
}
#: where pytest.UsageError may be raised: where configuration is read (options, ini, environment,
#: markers, a test module's CASES, the token file through the session adapters). Everything else raises
#: kvtest's own exceptions and the adapters translate them.
USAGE_ERROR_MODULES = {
    "kvtest.settings",
    "kvtest.state",
    "kvtest.plugin",
    "kvtest.cases",
    "kvtest.node",  # --local-host-ip checked where the rank table is built (npu only)
    "kvtest.dropin.vendor",
    "kvtest.run.session",
    "kvtest.run.leader_session",
    "kvtest.run.follower_session",
}


def unit_of(module: str) -> str:
    if module in GROUPS:
        return GROUPS[module]
    return module.split(".")[1]


def package_edges(graph: dict[str, set[str]]) -> dict[tuple[str, str], list[str]]:
    """(importer unit, imported unit) -> the module imports that make the edge."""
    edges: dict[tuple[str, str], list[str]] = {}
    for module, imported in sorted(graph.items()):
        for other in sorted(imported):
            a, b = unit_of(module), unit_of(other)
            if a != b:
                edges.setdefault((a, b), []).append(f"{module} -> {other}")
    return edges


def map_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for (a, b), why in package_edges(graph).items():
        if a not in ALLOWED:
            found.append(f"{a} is not on the package map (add it to ALLOWED and docs/contributing.md)")
        elif b not in ALLOWED[a]:
            found.append(f"{a} may not import {b}: {', '.join(why)}")
    return sorted(set(found))


def test_every_import_follows_the_package_map():
    found = map_violations(import_graph(PACKAGE))
    assert not found, "imports off the package map (docs/contributing.md):\n" + "\n".join(found)


def test_no_package_level_cycle():
    units: dict[str, set[str]] = {}
    for a, b in package_edges(import_graph(PACKAGE)):
        units.setdefault(a, set()).add(b)
    found = cycles(units)
    assert not found, "package-level import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_map_itself_has_no_cycle():
    assert cycles({a: set(b) - {a} for a, b in ALLOWED.items()}) == []


def test_the_map_check_finds_an_import_against_it():
    graph = {"kvtest.results.x": {"kvtest.run.y"}, "kvtest.run.y": {"kvtest.settings"}, "kvtest.settings": set()}
    assert map_violations(graph) == ["results may not import run: kvtest.results.x -> kvtest.run.y"]
    assert cycles({"settings": {"run"}, "run": {"settings"}}) == [["run", "settings"]]


# -- no module reads another's private names ---------------------------------------------------------

#: standard-library private names kvtest means to use
STDLIB_PRIVATE = {"os._exit", "os._Environ"}


def private_reads(source: str, path: str) -> list[str]:
    """``x._name`` where ``x`` is not ``self``/``cls``/``super()`` and ``_name`` is not defined in this
    module: a read of another module's (or another class's) private name."""
    tree = ast.parse(source, path)
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id in ("self", "cls"):
            continue
        if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
            continue
        text = ast.unparse(node)
        if node.attr in own or text in STDLIB_PRIVATE:
            continue
        found.append(f"{path}:{node.lineno}: {text}")
    return found


def test_no_module_reads_another_modules_private_names():
    found = [
        line
        for path in sorted(PACKAGE.rglob("*.py"))
        for line in private_reads(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert not found, "private names read across modules (give the owner a public method):\n" + "\n".join(found)


def test_the_private_read_check_finds_one():
    source = "from pkg import cache\n\ndef f(cm):\n    return cm._entries, cache._tensor_addrs, os._exit\n"
    assert private_reads(source, "m.py") == ["m.py:4: cm._entries", "m.py:4: cache._tensor_addrs"]
    own = "class A:\n    def __init__(self):\n        self._x = 1\n\ndef g(a):\n    return a._x\n"
    assert private_reads(own, "m.py") == []  # the module's own class


# -- pytest.UsageError only where configuration is read ----------------------------------------------


def usage_error_raisers(root: Path) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Raise) and node.exc is not None and "UsageError" in ast.unparse(node.exc):
                found.setdefault(module_name(path), []).append(node.lineno)
    return found


def test_usage_errors_are_raised_only_where_configuration_is_read():
    outside = {m: lines for m, lines in usage_error_raisers(PACKAGE).items() if m not in USAGE_ERROR_MODULES}
    assert not outside, (
        "pytest.UsageError raised outside the configuration boundary (raise kvtest's own error and "
        f"translate it in the hook adapter): {outside}"
    )
