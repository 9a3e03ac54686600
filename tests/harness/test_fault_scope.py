"""KVTEST_SIM_FAULT_SCOPE: a fault acts only in the tests it names."""

from __future__ import annotations

import json
import os

import pytest

from kvtest.backends.sim.faults import fault_from_env, fault_scope

TEST = "tests/samples/test_pull_blocks.py::test_pull_blocks[bf16-blocks(5)->(0)]"


def test_a_scoped_fault_acts_only_in_its_tests(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KVTEST_SIM_FAULT", "flip@pull_blocks:d0,drop@push_cache:d0")
    monkeypatch.setenv("KVTEST_SIM_FAULT_SCOPE", json.dumps({"flip@pull_blocks:d0": [TEST]}))
    monkeypatch.setenv("PYTEST_CURRENT_TEST", f"{TEST} (setup)")
    assert [str(f) for f in fault_from_env(os.environ)] == ["flip@pull_blocks:d0", "drop@push_cache:d0"]
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/samples/test_push_cache.py::test_push_cache[x] (call)")
    assert [str(f) for f in fault_from_env(os.environ)] == ["drop@push_cache:d0"], "unscoped faults act everywhere"


@pytest.mark.parametrize(
    "text",
    ["[1]", "{not json", '{"flip@pull_blocks:d0": "one test"}', '{"flop@pull_blocks:d0": []}'],
)
def test_a_bad_scope_is_refused_naming_it(text: str):
    with pytest.raises(ValueError, match=r"KVTEST_SIM_FAULT_SCOPE|invalid KVTEST_SIM_FAULT kind 'flop'"):
        fault_scope(text)
