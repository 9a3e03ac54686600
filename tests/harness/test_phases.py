"""Phase costs: the clock's exclusive nesting, the results file's phases and ``other``, the summary line."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from kvtest import patterns
from kvtest.node import _PhasedBackend
from kvtest.results import metrics
from kvtest.results.metrics import PhaseClock, TransferLog, phase
from kvtest.results.report import phase_line
from kvtest.results.results import ResultsError, ResultsWriter, load_results, phase_totals, role_entry


@pytest.fixture
def clock():
    """A fresh active clock, and none active afterwards."""
    made = PhaseClock()
    made.activate()
    yield made
    metrics._ACTIVE = None


def test_nested_phases_are_exclusive(clock):
    with clock.phase("link"):
        time.sleep(0.05)
        with clock.phase("wait"):
            time.sleep(0.1)
        time.sleep(0.05)
    assert 0.1 <= clock.seconds["wait"] < 0.2
    # the outer phase's clock stops while the inner one runs
    assert 0.1 <= clock.seconds["link"] < 0.2


def test_phase_times_into_the_active_clock_and_nothing_without_one(clock):
    with phase("fill"):
        time.sleep(0.02)
    before = clock.seconds["fill"]
    assert before >= 0.02
    metrics._ACTIVE = None
    with phase("fill"):
        time.sleep(0.02)
    assert clock.seconds["fill"] == before


def test_other_threads_are_not_this_tests_phases(clock):
    def work():
        with phase("check"):
            time.sleep(0.02)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert "check" not in clock.seconds


def test_timed_wraps_a_call_as_a_phase(clock):
    slow = clock.timed("wait", lambda x: (time.sleep(0.02), x)[1])
    assert slow(7) == 7
    assert clock.seconds["wait"] >= 0.02


def test_a_transfer_is_phase_transfer():
    log = TransferLog(role="d0")
    with log.measure("pull_blocks", 100):
        time.sleep(0.01)
    assert log.clock.seconds["transfer"] >= log.records[0].seconds > 0


def test_patterns_time_fill_expect_and_check(clock):
    source = patterns.pattern([4, 64], torch.float16, seed=1, tensor_index=0)
    expected = patterns.with_rows(torch.zeros(4, 64, dtype=torch.float16), source, src_rows=[0], dst_rows=[1])
    patterns.check_all([expected], [expected.clone()], name="x")
    assert {"fill", "expect", "check"} <= set(clock.seconds)


class _SlowBackend:
    """Every device or host copy takes 20 ms."""

    def to_device(self, host):
        time.sleep(0.02)
        return host

    def make_on_device(self, shape, dtype, write):
        time.sleep(0.02)
        return torch.zeros(list(shape), dtype=dtype)

    def to_host(self, tensor):
        time.sleep(0.02)
        return tensor


def test_a_test_bodys_device_tensors_are_fill_and_host_copies_check(clock):
    backend = _PhasedBackend(_SlowBackend())
    backend.to_device(torch.zeros(2))
    backend.make_on_device((2,), torch.float16, torch.Tensor.zero_)
    assert clock.seconds["fill"] >= 0.04
    backend.to_host(torch.zeros(2))
    assert clock.seconds["check"] >= 0.02


def test_results_keep_phases_and_the_rest_as_other(tmp_path):
    writer = ResultsWriter(tmp_path / "r.json", run_id="r", fingerprint={})
    roles = {"p0": role_entry("passed", duration_s=2.0), "d0": role_entry("passed", duration_s=3.0)}
    writer.add("t::a", "passed", roles, phases={"p0": {"init": 0.5, "wait": 1.0}, "d0": {"fill": 2.5}})
    loaded = load_results(writer.path).tests["t::a"]
    assert loaded["roles"]["p0"]["phases"] == {"init": 0.5, "wait": 1.0, "other": 0.5}
    assert loaded["roles"]["d0"]["phases"] == {"fill": 2.5, "other": 0.5}
    assert phase_totals([loaded]) == {"fill": 2.5, "wait": 1.0, "init": 0.5, "other": 1.0}
    line = phase_line({"t::a": loaded})
    assert line == "kvtest: biggest phases over 5.00 role-seconds: fill 2.50 s (50%), wait 1.00 s (20%), other 1.00 s (20%)"


def test_a_file_without_phases_loads_with_none(tmp_path):
    writer = ResultsWriter(tmp_path / "r.json", run_id="r", fingerprint={})
    writer.add("t::a", "passed", {"p0": role_entry("passed", duration_s=1.0)})
    loaded = load_results(writer.path).tests["t::a"]
    assert loaded["roles"]["p0"]["phases"] == {}
    assert phase_line({"t::a": loaded}) is None


def test_a_negative_phase_is_refused(tmp_path):
    path = tmp_path / "r.json"
    writer = ResultsWriter(path, run_id="r", fingerprint={})
    writer.add("t::a", "passed", {"p0": role_entry("passed", duration_s=1.0)}, phases={"p0": {"init": 0.5}})
    path.write_text(path.read_text().replace('"init": 0.5', '"init": -0.5'))
    with pytest.raises(ResultsError, match=r"phases\['init'\] must be a finite number >= 0"):
        load_results(path)
