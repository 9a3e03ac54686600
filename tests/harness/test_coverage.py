"""The input-space coverage table (benchmarks/coverage.py): every corner marked required for an API
has a smoke case, and the classification itself says what it should on known inputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import ModuleType

import pytest
from loading import load_file

ROOT = Path(__file__).resolve().parents[2]


coverage = load_file(ROOT / "benchmarks" / "coverage.py", "kvtest_benchmarks_coverage")


@pytest.fixture(scope="module")
def modules() -> dict[str, ModuleType]:
    return {flow.file: coverage.load_sample(flow.file) for flow in coverage.FLOWS}


def test_every_required_corner_has_a_smoke_case(modules):
    found = coverage.table("smoke", dict(modules))
    gaps = coverage.missing(found)
    assert not gaps, "required corners without a smoke case (python benchmarks/coverage.py shows the table):\n" + (
        "\n".join(f"  {api}: {', '.join(names)}" for api, names in gaps.items())
    )


def test_every_api_of_the_issue_has_a_row(modules):
    found = coverage.table("smoke", dict(modules))
    assert set(coverage.REQUIRED) == set(found)
    assert all(coverage.REQUIRED[api] for api in coverage.REQUIRED)
    unknown = {c for want in coverage.REQUIRED.values() for c in want} - set(coverage.ALL_CORNERS)
    assert not unknown


def _without(module: ModuleType, drop) -> ModuleType:
    """A copy of a sample module whose smoke CASES lack the cases ``drop`` picks."""
    copy = ModuleType(module.__name__)
    copy.__dict__.update(module.__dict__)
    copy.CASES = {**module.CASES, "smoke": [c for c in module.CASES["smoke"] if not drop(c)]}
    return copy


@pytest.mark.parametrize(
    "file, drop, api, corner",
    [
        # the only smoke case p deallocates before d's pull
        ("test_pull_cache.py", lambda c: c.deallocate_first, "pull_cache", "deallocate, peer pulls pending key"),
        # the only push_blocks case whose source list descends
        ("test_push_blocks.py", lambda c: c.src == (5, 1, 0), "push_blocks", "descending"),
        # the only pull_blocks case p unregisters in while linked
        ("test_pull_blocks.py", lambda c: "unregister" in c.after, "register/unregister",
         "unregister while linked, peer pulls"),
        ("test_pull_blocks.py", lambda c: "relink" in c.after, "pull_blocks", "relink, pull again"),
        # the only copy_blocks case of one source block
        ("test_cache_apis.py", lambda c: getattr(c, "copies", ()) == ((4, (0, 2)),), "copy_blocks", "single"),
    ],
)
def test_a_removed_case_shows_as_a_missing_corner(modules, file, drop, api, corner):
    """The check fails when the only case of a required corner goes: drop it and the corner is missing."""
    assert corner not in coverage.missing(coverage.table("smoke", dict(modules))).get(api, [])
    cut = {**modules, file: _without(modules[file], drop)}
    assert corner in coverage.missing(coverage.table("smoke", cut)).get(api, [])


def test_a_test_that_is_gone_reaches_nothing(modules):
    module = ModuleType("empty")
    module.CASES = {"smoke": []}
    flow = coverage.FLOWS[0]
    assert coverage.flow_cases(flow, module, "smoke") == []
    cut = {**modules, flow.file: _without(modules[flow.file], lambda c: True)}
    assert "consumed key pulled again" in coverage.missing(coverage.table("smoke", cut))[flow.api]


@pytest.mark.parametrize(
    "src, dst, count, corners",
    [
        ((3, 2, 0), (0, 1, 2), 4, {"descending", "gaps", "first", "last", "orders differ"}),
        ((0, 3, 1), (5, 6, 7), 8, {"interleaved", "gaps", "first", "last", "orders differ"}),
        ((1, 2), (5, 6), 8, set()),
        ((7,), (0,), 8, {"single", "first", "last"}),
        ((2, 1), (6, 5), 8, {"descending"}),  # same order: both descend
    ],
)
def test_block_corners(src, dst, count, corners):
    assert coverage.block_corners(src, dst, count, count) == corners


@pytest.mark.parametrize(
    "layers, src, dst, corners",
    [
        (4, (0, 4), (0, 4), {"layers to last"}),
        (4, (1, 2), (3, 4), {"layers from >0", "layers to last", "one layer", "ranges differ"}),
        (4, (0, 2), (0, 2), set()),
    ],
)
def test_layer_corners(layers, src, dst, corners):
    assert coverage.layer_corners(layers, src, dst) == corners


def test_size_corners():
    assert coverage.size_corners(1024, 64 * 1024) == set()
    assert coverage.size_corners(1000, None) == {"not 512-multiple"}
    assert coverage.size_corners(1018, 3 * 1018) == {"not 512-multiple", "not word-multiple", "not page-multiple"}


def test_the_script_prints_the_table_and_no_gap(capsys):
    assert coverage.main([]) == 0
    out = capsys.readouterr().out
    assert "pull_cache" in out and not [line for line in out.splitlines() if line.startswith("MISSING ")]
    assert "- required and MISSING" in out


def test_cases_keep_their_ids_stable_for_unchanged_fields(modules):
    """A case field added for a corner stays out of the ids of the cases that do not use it."""
    case = modules["test_pull_blocks.py"].PullBlocksCase("fp16", 1, 2, 8, (0,), (1,))
    assert str(case) == "fp16-blocks(0)->(1)"
    assert str(dataclasses.replace(case, after=("relink", "unregister"))).endswith("-then-relink-unregister")


def test_the_docs_show_the_table_the_script_prints(modules, capsys):
    """docs/explanation/coverage.md carries the smoke table as printed: it changes with the cases."""
    coverage.main([])
    printed = capsys.readouterr().out.strip()
    page = (ROOT / "docs" / "explanation" / "coverage.md").read_text()
    assert printed in page, "docs/explanation/coverage.md: paste `python benchmarks/coverage.py`'s output"
