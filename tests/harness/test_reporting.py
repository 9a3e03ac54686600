"""Per-transfer figures reach JUnit properties, the results file and the terminal summary, for every role."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from kvtest.cli import main as kvtest_main

TIMED = """
import time
import pytest

def test_timed(kv):
    for _ in range(3):
        with kv.metrics.measure("pull_blocks", 4_000_000):
            time.sleep(0.01)
    kv.barrier("done")

def test_d_fails(kv):
    kv.step("check")
    assert kv.role == "p", "bytes differ on d"

def test_solo():
    pass
"""


def properties(path) -> dict[str, dict[str, str]]:
    root = ET.parse(path).getroot()
    return {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in root.iter("testcase")
    }


def test_junit_results_and_summary(pytester: pytest.Pytester):
    pytester.makepyfile(test_timed=TIMED)
    result = pytester.runpytest_subprocess("--junitxml=j.xml", "--kv-results=r.json")
    result.assert_outcomes(passed=2, failed=1)
    props = properties(pytester.path / "j.xml")["test_timed"]
    for role in ("p0", "d0"):
        assert props[f"kv.{role}.pull_blocks.bytes"] == "12000000"
        # 4 MB per at least 10 ms: at most 0.4 GB/s (a loaded machine only sleeps longer)
        assert 0 < float(props[f"kv.{role}.pull_blocks.gbps"]) <= 0.4
        assert float(props[f"kv.{role}.pull_blocks.p50_ms"]) >= 10

    doc = json.loads((pytester.path / "r.json").read_text())
    assert doc["kvtest_results"] == 1 and doc["fingerprint"]["backend"]
    timed = doc["tests"]["test_timed.py::test_timed"]
    assert timed["outcome"] == "passed"
    assert set(timed["roles"]) == {"p0", "d0"} and {t["role"] for t in timed["transfers"]} == {"p0", "d0"}
    # each role slept 3 x 10 ms inside its transfers; the cost puts the rest of the test beside them
    cost = timed["cost"]
    assert 0.03 <= cost["transfer_s"] and cost["wall_s"] >= cost["transfer_s"]
    assert cost["other_s"] == pytest.approx(cost["wall_s"] - cost["transfer_s"])
    failed = doc["tests"]["test_timed.py::test_d_fails"]
    assert failed["outcome"] == "failed"
    assert failed["roles"]["d0"]["outcome"] == "failed" and failed["roles"]["d0"]["step"] == "check"
    assert failed["roles"]["p0"]["outcome"] == "passed"
    assert failed["failure"] == failed["roles"]["d0"]["failure"] == "product"  # a wrong byte
    assert doc["tests"]["test_timed.py::test_solo"]["roles"] == {
        "p0": {
            "outcome": "passed",
            "step": None,
            "message": None,
            "duration_s": doc["tests"]["test_timed.py::test_solo"]["roles"]["p0"]["duration_s"],
            "failure": None,
            "phases": doc["tests"]["test_timed.py::test_solo"]["roles"]["p0"]["phases"],
        }
    }
    # every role's phases were measured (the barrier is a wait); what no phase covers is "other"
    for role in timed["roles"].values():
        assert {"transfer", "wait", "other"} <= set(role["phases"])
        assert role["phases"]["transfer"] >= 0.03

    result.stdout.fnmatch_lines(
        [
            "*kvtest: every role, bytes and GB/s*",
            "PASSED  test_timed.py::test_timed  p0 passed, d0 passed  22.9 MiB  pull_blocks * GB/s "
            "(6 calls, p50 1?.?? ms, p99 *.?? ms)  in transfers 0.0? s, outside *.?? s (*x)",
            "FAILED  test_timed.py::test_d_fails  p0 passed, d0 failed at 'check'  no transfers timed",
            "kvtest: harness cost over 1 tests with transfers: in transfers 0.0? s, outside *.?? s (*x)",
            "*kvtest: results written to r.json*",
        ]
    )


@pytest.mark.full
def test_compare_gates_two_runs(pytester: pytest.Pytester, capsys):
    pytester.makepyfile(test_timed=TIMED)
    pytester.runpytest_subprocess("--kv-results=base.json")
    pytester.runpytest_subprocess("--kv-results=cur.json", "-k", "not solo")
    base, cur = str(pytester.path / "base.json"), str(pytester.path / "cur.json")
    assert kvtest_main(["compare", base, base]) == 0
    capsys.readouterr()
    # test_solo passed in the baseline and is missing now: the gate fails and names it
    assert kvtest_main(["compare", base, cur, "--max-drop", "90%"]) == 1
    out = capsys.readouterr().out
    assert "test_timed.py::test_solo" in out and "MISSING" in out.upper()
