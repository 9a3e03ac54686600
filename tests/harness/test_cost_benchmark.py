"""benchmarks/cost.py's run times: wall, user and system seconds kept beside a results file and shown
before/after (system time was the trap of an earlier change: an idle NIXL agent's busy progress thread)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from loading import load_file

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data" / "sim-smoke-results.json"


cost = load_file(ROOT / "benchmarks" / "cost.py", "kvtest_cost_benchmark")


def test_run_times_travel_with_the_results_file(tmp_path: Path) -> None:
    results = tmp_path / "smoke.json"
    shutil.copy(DATA, results)
    cost.RunTimes(60.0, 32.77, 11.55).save(results)
    assert (tmp_path / "smoke.times.json").is_file()
    loaded = cost._load("smoke", results, None)
    assert (loaded.wall_s, loaded.user_s, loaded.sys_s) == (60.0, 32.77, 11.55)
    line = cost.summary_lines(loaded, None)[0]
    in_tests = sum(e["cost"]["wall_s"] for e in cost.load_results(results).tests.values())
    assert 0 < in_tests < 60
    assert f", run 60 s (user 32.8 s, sys 11.6 s; {60 - in_tests:.1f} s in no test);" in line


def test_a_baseline_shows_its_run_times(tmp_path: Path) -> None:
    before = tmp_path / "before.json"
    shutil.copy(DATA, before)
    cost.RunTimes(68.0, 39.57, 41.46).save(before)
    now = cost._load("smoke", DATA, cost.RunTimes(52.0, 32.77, 11.55))
    lines = cost.summary_lines(now, cost._load("smoke", before, None))
    assert "smoke before, run 68 s (user 39.6 s, sys 41.5 s; " in lines[1]
    assert " s in no test): in transfers" in lines[1]


def test_a_results_file_without_times_has_none(tmp_path: Path) -> None:
    results = tmp_path / "old.json"
    shutil.copy(DATA, results)
    loaded = cost._load("smoke", results, None)
    assert loaded.wall_s is None and loaded.user_s is None
    assert ", run " not in cost.summary_lines(loaded, None)[0]


def test_a_broken_times_file_is_one_line(tmp_path: Path) -> None:
    results = tmp_path / "smoke.json"
    shutil.copy(DATA, results)
    (tmp_path / "smoke.times.json").write_text('{"wall_s": 1}')
    with pytest.raises(SystemExit, match=r"smoke.times.json is not a run-times file"):
        cost._load("smoke", results, None)


def test_the_budget_line_reads_the_outside_time_against_the_issues_transfer_figures() -> None:
    now = cost._load("smoke", DATA, None)
    budget = 4 * cost.ISSUE_INSIDE_S["smoke"]
    (line,) = cost.budget_lines({"smoke": now})
    assert f"smoke outside {now.outside_s:.2f} s" in line and f"({budget:.1f} s)" in line
    assert line.endswith(("within (not a target)", "over (not a target)"))
    assert ("within" in line) == (now.outside_s <= budget)
    over = cost.ProfileCost("smoke", {}, 0.1, budget + 1, 1, 1, {"passed": 1}, None)
    assert cost.budget_lines({"smoke": over})[0].endswith("over (not a target)")
    assert cost.targets({"smoke": over}) == [("smoke outside/inside 74.0x <= 4x", False)]
