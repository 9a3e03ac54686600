"""benchmarks/floor.py: the medians it reads from the floor tests' results, and the verdict it prints
against the outside time smoke's target leaves a test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loading import load_file

ROOT = Path(__file__).resolve().parents[2]

floor = load_file(ROOT / "benchmarks" / "floor.py", "kvtest_floor_benchmark")


def _entry(wall_s: float, transfer_s: float = 0.0, outcome: str = "passed") -> dict[str, Any]:
    return {"outcome": outcome, "cost": {"wall_s": wall_s, "transfer_s": transfer_s,
                                         "other_s": wall_s - transfer_s}}


def _tests(kind: str, walls: list[float], transfer_s: float = 0.0) -> dict[str, Any]:
    return {f"benchmarks/floor_tests.py::{kind}[{i}]": _entry(w, transfer_s) for i, w in enumerate(walls)}


def _smoke(inside_s: float, tests: int) -> Any:
    return floor.ProfileCost(profile="smoke", phases={}, inside_s=inside_s, outside_s=4.0, timed_tests=tests,
                             tests=tests, outcomes={"passed": tests}, wall_s=None)


def test_each_kind_is_its_median_test() -> None:
    tests = {**_tests("test_rendezvous", [0.003, 0.002, 0.009]), **_tests("test_pull", [0.02, 0.01, 0.03], 0.001)}
    found = floor.floors(tests)
    assert found == {"test_rendezvous": floor.Floor(0.003, 0.0), "test_pull": floor.Floor(0.02, 0.001)}


def test_a_kind_with_a_test_that_did_not_pass_has_no_floor() -> None:
    tests = _tests("test_link", [0.01, 0.01])
    tests["benchmarks/floor_tests.py::test_link[9]"] = _entry(0.001, outcome="failed")
    assert floor.floors(tests) == {}
    lines = floor.report({}, _smoke(0.2, 50))
    assert any("link_clusters" in line and "failed or missing" in line for line in lines)


def test_the_verdict_reads_the_link_floor_against_four_times_smokes_transfers() -> None:
    smoke = _smoke(0.2, 50)  # 4 ms a test in transfers: 16 ms allowed outside
    over = floor.report({"test_link": floor.Floor(0.0175, 0.0)}, smoke)
    assert over[-2].endswith("4.0 ms a test in transfers (20.0x outside); its 4x target leaves 16.0 ms a test outside")
    assert over[-1].endswith("spends 17.5 ms before its first cache: over that allowance by 1.5 ms")
    within = floor.report({"test_link": floor.Floor(0.0125, 0.0)}, smoke)
    assert within[-1].endswith("within that allowance by 3.5 ms")


def test_a_kind_with_transfers_shows_its_own_ratio() -> None:
    lines = floor.report({"test_init": floor.Floor(0.004, 0.0), "test_pull": floor.Floor(0.014, 0.001)},
                         _smoke(0.2, 50))
    pull = next(line for line in lines if "whole pull test" in line)
    assert pull.endswith("14.0 ms, 1.0 in transfers (13.0x outside)")


def test_the_kept_verdict_reads_the_time_outside_the_transfer_of_a_test_on_a_kept_link() -> None:
    smoke = _smoke(0.2, 50)  # 16 ms allowed outside
    found = {"test_pull_linked": floor.Floor(0.020, 0.003)}
    over = floor.report(found, smoke)
    assert over[-1] == ("a pull test on an LLMDataDist and a link kept between tests spends 17.0 ms outside "
                        "its transfer: over that allowance by 1.0 ms")
    within = floor.report({"test_pull_linked": floor.Floor(0.020, 0.005)}, smoke)
    assert within[-1].endswith("spends 15.0 ms outside its transfer: within that allowance by 1.0 ms")
    assert not any("kept between tests spends" in line for line in floor.report({}, smoke))
